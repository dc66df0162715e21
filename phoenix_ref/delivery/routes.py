"""DS handlers for the DS rows of the endpoint table.

:func:`handlers` takes ``keystore``, a function returning the keystore the
homeserver loads at startup (the handlers are built before it starts).
"""

from __future__ import annotations

from typing import Callable

from ..http import Call, Handler
from ..keystore import Keystore
from .messages import DsVerifyingKeyResponse

__all__ = ["handlers"]


def handlers(keystore: Callable[[], Keystore]) -> dict[str, Handler]:
    async def ds_verifying_key(call: Call) -> DsVerifyingKeyResponse:
        """The DS verifying keys (``spec/federation/use_cases.md#authentication-key-distribution``)."""
        return DsVerifyingKeyResponse([k.public for k in keystore().ds_signing_keys])

    return {"ds_verifying_key": ds_verifying_key}
