"""AS handlers for the AS rows of the endpoint table (:mod:`phoenix_ref.endpoints`).

Each handler takes a :class:`~phoenix_ref.http.Call` and returns the row's
response struct; the HTTP layer does decoding, TLS and error mapping.
"""

from __future__ import annotations

from ..credentials import AsCredentialsResponse
from ..http import Call, Handler
from ..keystore import Keystore


def as_credentials_response(keystore: Keystore, revoked: list[bytes], now_ms: int) -> AsCredentialsResponse:
    """*Get AS credentials* (``spec/authentication_service.md#get-as-credentials``).

    Lists the AS and intermediate credentials valid at ``now_ms``, current
    first, and the revoked fingerprints. A revoked credential stays listed
    until it expires, so a verifier can report "revoked" instead of
    "unknown signer" (and does not refetch for it) — docs/decisions.md.
    """
    roots = [c for c, _ in keystore.as_credentials if c.expiration_data.is_valid_at(now_ms)]
    inters = [c for c, _ in keystore.as_intermediates if c.expiration_data.is_valid_at(now_ms)]
    return AsCredentialsResponse(roots, inters, list(revoked))


def handlers(hs) -> dict[str, Handler]:
    async def as_credentials(call: Call) -> AsCredentialsResponse:
        return as_credentials_response(hs.keystore, await hs.as_store.revoked(), call.now_ms)

    return {"as_credentials": as_credentials}
