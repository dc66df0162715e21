"""AS handlers for the AS rows of the endpoint table.

Each handler takes a :class:`~phoenix_ref.http.Call` and returns the row's
response struct; the HTTP layer has already refused plain HTTP, decoded the
body strictly and redeemed the Privacy Pass token where the row requires one
(:mod:`phoenix_ref.privacy_pass_gate`). What is left is one call of the
:class:`~phoenix_ref.authentication.service.AsService`, which runs the
sans-IO core; the core checks the endpoint's authentication mode itself
(``spec/authentication_service.md#authentication``).

:func:`handlers` takes ``service``, a function returning the running
AsService (the handlers are built before the homeserver starts).
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from ..credentials import AsCredentialsResponse
from ..http import Call, Handler
from ..privacy_pass_gate import IssuerKeysResponse
from .core import OPERATIONS
from .service import AsService

__all__ = ["handlers"]


def handlers(service: Callable[[], AsService]) -> dict[str, Handler]:
    async def as_credentials(call: Call) -> AsCredentialsResponse:
        """``#get-as-credentials``."""
        return await service().credentials(call.now_ms)

    async def privacy_pass_issuer_keys(call: Call) -> IssuerKeysResponse:
        """Clients fetch the key to request tokens under (docs/decisions.md)."""
        return await service().issuer_keys(call.now_ms)

    async def request_tokens(call: Call) -> Any:
        return await service().request_tokens(call)

    async def init_user_registration(call: Call) -> Any:
        return await service().init_user_registration(call)

    def run(name: str) -> Callable[[Call], Awaitable[Any]]:
        async def handler(call: Call) -> Any:
            return await service().run(name, call)
        handler.__name__ = name
        return handler

    table: dict[str, Handler] = {"as_credentials": as_credentials,
                                 "privacy_pass_issuer_keys": privacy_pass_issuer_keys}
    special = {"request_tokens": request_tokens, "init_user_registration": init_user_registration}
    for op in OPERATIONS:
        table[op.name] = special.get(op.name) or run(op.name)
    return table
