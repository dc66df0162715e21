"""The composition root (homeserver.py): routes registered before startup
reach the services only once the homeserver has started."""

from __future__ import annotations

import httpx
import pytest

from phoenix_ref.cli import generate_config
from phoenix_ref.codec import decode
from phoenix_ref.errors import ErrorResponse
from phoenix_ref.homeserver import Homeserver
from phoenix_ref.queuing.messages import QsVerifyingKeyResponse


@pytest.mark.parametrize("url, code", [
    ("https://as.a.example/phoenix/v1/as_credentials", "as_not_running"),
    ("https://qs.a.example/phoenix/v1/qs_verifying_key", "qs_not_running"),
    ("https://ds.a.example/phoenix/v1/ds_verifying_key", "ds_not_running"),
])
async def test_a_route_called_before_startup_is_a_502_not_a_crash(tmp_path, url, code):
    hs = Homeserver(generate_config(tmp_path / "a", "a.example"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=hs.asgi)) as c:
        resp = await c.get(url)                       # the app's lifespan never ran
    assert resp.status_code == 502 and decode(ErrorResponse, resp.content).code == code


async def test_startup_builds_the_services_the_routes_use(tmp_path):
    hs = Homeserver(generate_config(tmp_path / "a", "a.example"))
    async with hs.app.running():
        assert hs.qs is not None and hs.as_service is not None
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=hs.asgi)) as c:
            resp = await c.get("https://qs.a.example/phoenix/v1/qs_verifying_key")
        assert decode(QsVerifyingKeyResponse, resp.content).verifying_keys == \
            [k.public for k in hs.keystore.qs_signing_keys]
        assert hs.as_service.keystore is hs.keystore and hs.as_service.store is hs.as_store


async def test_shutdown_closes_the_stores_only_after_the_background_work_ended(tmp_path, caplog):
    """The first pruning rounds start with the homeserver; a shutdown right
    after startup must wait for them instead of closing a store under a
    worker thread (which logged "Cannot operate on a closed database")."""
    config = generate_config(tmp_path / "a", "a.example")
    for _ in range(5):
        hs = Homeserver(config)
        async with hs.app.running():
            pass
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []
