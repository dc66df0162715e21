"""DS handlers for the DS rows of the endpoint table (:mod:`phoenix_ref.endpoints`)."""

from __future__ import annotations

from ..federation.keys import DsVerifyingKeyResponse
from ..http import Call, Handler


def handlers(hs) -> dict[str, Handler]:
    async def ds_verifying_key(call: Call) -> DsVerifyingKeyResponse:
        """The DS verifying keys (``spec/federation/use_cases.md#authentication-key-distribution``)."""
        return DsVerifyingKeyResponse([k.public for k in hs.keystore.ds_signing_keys])

    return {"ds_verifying_key": ds_verifying_key}
