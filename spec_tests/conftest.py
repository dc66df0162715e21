"""Fixtures of the conformance suite: named homeservers over TLS.

``deployment`` gives homeservers ``hs1`` (a.example) and ``hs2`` (b.example),
once in-process and once on real sockets (``phoenix_ref.testing``) — or,
with ``pytest --phoenix-target FILE``, once: the target's
(``phoenix_ref.target_deployment``). Tests that need other homeservers or
negative variants (wrong CA, plain HTTP) open their own
``Deployment(deployment_mode, ...)``.
"""

import pytest

from phoenix_ref.spec_plugin import deployment_modes
from phoenix_ref.testing import Deployment


def pytest_generate_tests(metafunc):
    if "deployment_mode" in metafunc.fixturenames:
        metafunc.parametrize("deployment_mode", deployment_modes(metafunc.config), indirect=True)


@pytest.fixture
def deployment_mode(request) -> str:
    return request.param


@pytest.fixture
async def deployment(deployment_mode):
    async with Deployment(deployment_mode, ["hs1", "hs2"]) as d:
        yield d
