"""DS handlers for the DS rows of the endpoint table.

:func:`handlers` takes ``keystore`` and ``service``, functions returning the
keystore and the :class:`~.service.DsService` the homeserver builds at
startup (the handlers are built before it starts). The HTTP layer has
decoded the body and checked the Privacy Pass token; the service does the
rest.
"""

from __future__ import annotations

from typing import Callable

from ..http import Call, Handler
from ..keystore import Keystore
from .messages import DsVerifyingKeyResponse
from .service import DsService

__all__ = ["handlers"]

#: Endpoints that act on a group through :meth:`DsService.group_request`.
_GROUP_REQUESTS = ("ds_update_queue_info", "ds_add_users", "ds_remove_users", "ds_update_client",
                   "ds_self_remove_user", "ds_send_message", "ds_delete_group", "ds_join_connection_group",
                   "ds_resync_client")


def handlers(keystore: Callable[[], Keystore], service: Callable[[], DsService]) -> dict[str, Handler]:
    async def ds_verifying_key(call: Call) -> DsVerifyingKeyResponse:
        """The DS verifying keys (``spec/federation/use_cases.md#authentication-key-distribution``)."""
        return DsVerifyingKeyResponse([k.public for k in keystore().ds_signing_keys])

    async def ds_request_group_id(call: Call):
        return await service().request_group_id()

    async def ds_create_group(call: Call):
        return await service().create_group(call.body)

    async def ds_welcome_info(call: Call):
        return await service().welcome_info(call.body)

    async def ds_external_commit_info(call: Call):
        return await service().external_commit_info(call.body)

    def group_request(name: str) -> Handler:
        async def handler(call: Call):
            return await service().group_request(name, call.body)
        handler.__name__ = name
        return handler

    return {"ds_verifying_key": ds_verifying_key, "ds_request_group_id": ds_request_group_id,
            "ds_create_group": ds_create_group, "ds_welcome_info": ds_welcome_info,
            "ds_external_commit_info": ds_external_commit_info,
            **{name: group_request(name) for name in _GROUP_REQUESTS}}
