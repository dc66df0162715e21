"""The QS over HTTP: handlers for the QS rows of the endpoint table and the
websocket. They translate HTTP to core calls and back; the protocol rules are
in :mod:`.core`, the async shell in :mod:`.service`, and the homeserver
(``homeserver.py``) builds the service and runs its background work.

* :func:`handlers` — one handler per QS row. Every client endpoint calls one
  :class:`~.core.QsCore` method in a worker thread; the QsAuthToken travels
  in the body and the core checks it; the HTTP layer checks Privacy Pass for
  the rows that require it (``spec/queuing_service.md#authentication``: all
  client endpoints but *dequeue messages* and *negotiate websocket
  connection*) before the handler runs. ``#federated-qs-to-qs-communication``
  goes to :meth:`~.service.QsService.federated_enqueue` (one message) and
  :meth:`~.service.QsService.federated_enqueue_batch` (several).
* :func:`websocket_handlers` — ``#negotiate-websocket-connection`` as a real
  websocket (framing in :mod:`.messages`); a plain HTTP GET of the same path
  gets ``426 websocket_required`` once its token checks out. The QS closes
  a socket whose client record is deleted with 4410 ``client_record_deleted``.

Both take ``service``: a function returning the running
:class:`~.service.QsService` (the handlers are built before the homeserver
starts); it raises 502 ``qs_not_running`` before startup and after shutdown.

**Local enqueue is not a route.** ``#local-homeserver-endpoints`` leaves
access control to the infrastructure; phoenix_ref's DS and QS share a
process, so the DS calls :meth:`~.service.QsService.local_enqueue` on
``hs.qs`` directly and nothing on the public listener accepts a bare
FanOutMessage.
"""

from __future__ import annotations

from typing import Any, Callable

import trio

from ..asgi import ClientGone, Websocket
from ..codec import encode
from ..config import Limits
from ..errors import Forbidden, Malformed, ProtocolError, RequestTimeout
from ..http import Call, Handler, decode_body
from .messages import (QsQueueConfigEncryptionKeyResponse, QsVerifyingKeyResponse, QsWsMessage, WsConnected,
                       WsQueueUpdate, WsRequest)
from .service import QsService

__all__ = ["handlers", "websocket_handlers", "UpgradeRequired", "WS_CLOSE_BASE", "CLIENT_OPERATIONS"]

#: A refused websocket closes with ``WS_CLOSE_BASE + HTTP status`` (RFC 6455
#: §7.4.2: 4000-4999 are for applications), the error code as reason; one
#: whose client record was deleted with 4410 (410 Gone), ``client_record_deleted``.
WS_CLOSE_BASE = 4000


class UpgradeRequired(ProtocolError):
    """A plain HTTP request to the websocket endpoint (RFC 9110 §15.5.22)."""
    status, code = 426, "websocket_required"


#: The client endpoints; each is served by the QsCore method of the same name.
CLIENT_OPERATIONS = (
    "create_user_record", "update_user_record", "get_user_record", "delete_user_record",
    "create_client_record", "update_client_record", "delete_client_record", "block_group",
    "publish_key_packages", "get_add_package", "dequeue_messages",
)


def handlers(service: Callable[[], QsService]) -> dict[str, Handler]:
    """The QS rows of the endpoint table → handlers (see module docstring)."""

    def client_handler(method_name: str) -> Handler:
        async def handler(call: Call) -> Any:
            svc = service()
            return await svc.call(getattr(svc.core, method_name), call.body, call.now_ms)
        handler.__name__ = method_name
        return handler

    async def qs_verifying_key(call: Call) -> QsVerifyingKeyResponse:
        return service().core.qs_verifying_key()

    async def queue_config_encryption_key(call: Call) -> QsQueueConfigEncryptionKeyResponse:
        return service().core.queue_config_encryption_key()

    async def websocket(call: Call) -> None:
        """``#negotiate-websocket-connection`` reached without a websocket upgrade."""
        svc = service()
        await svc.call(svc.core.authorize_websocket, call.body, call.now_ms)
        raise UpgradeRequired("open this endpoint as a websocket (RFC 6455) and send the WsRequest "
                              "as the first binary message")

    async def federated_enqueue(call: Call):
        return (await service().federated_enqueue(call.body, call.raw or None)).response

    async def federated_enqueue_batch(call: Call):
        return (await service().federated_enqueue_batch(call.body, call.raw or None)).response()

    table: dict[str, Handler] = {name: client_handler(name) for name in CLIENT_OPERATIONS}
    table.update(qs_verifying_key=qs_verifying_key, queue_config_encryption_key=queue_config_encryption_key,
                 websocket=websocket, federated_enqueue=federated_enqueue,
                 federated_enqueue_batch=federated_enqueue_batch)
    return table


# --- the websocket (#negotiate-websocket-connection) --------------------------------------------

def websocket_handlers(service: Callable[[], QsService], limits: Limits) -> dict[str, Any]:
    """Websocket views for the rows with ``websocket`` set (framing: :mod:`.messages`)."""

    async def websocket(ws: Websocket) -> None:
        await ws.accept()
        try:
            if ws.scheme != "wss":
                raise Forbidden("this endpoint is served over TLS (wss) only", code="tls_required")
            first = None
            with trio.move_on_after(limits.request_timeout_s):
                first = await ws.receive()
            if first is None:
                raise RequestTimeout("no WsRequest within the request timeout")
            if not isinstance(first, (bytes, bytearray)):
                raise Malformed("the WsRequest is a binary message", code="text_message")
            request = decode_body(WsRequest, bytes(first), limits.max_body_bytes)
            svc = service()
        except ProtocolError as e:
            await ws.close(WS_CLOSE_BASE + e.status, e.code)
            return
        # Subscribe before authorising: a deletion of the client record after
        # this point ends the subscription, one before it fails the check, so
        # no socket outlives its record. Nothing is sent before WsConnected.
        async with svc.notifier.subscribe(request.params.qs_cid) as wakeups:
            try:
                await svc.call(svc.core.authorize_websocket, request, svc.clock.now_ms())
            except ProtocolError as e:
                await ws.close(WS_CLOSE_BASE + e.status, e.code)
                return
            await ws.send(encode(WsConnected(), QsWsMessage))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_refuse_further_messages, ws, nursery.cancel_scope)
                async for _ in wakeups:
                    await ws.send(encode(WsQueueUpdate(), QsWsMessage))
                # the subscription ended: the client record was deleted
                await ws.close(WS_CLOSE_BASE + 410, "client_record_deleted")
                nursery.cancel_scope.cancel()

    return {"websocket": websocket}


async def _refuse_further_messages(ws: Websocket, scope: trio.CancelScope) -> None:
    """After the WsRequest the client only listens; anything it sends closes
    the socket. The client's leaving ends the subscription too."""
    try:
        await ws.receive()
    except ClientGone:
        pass                               # nothing left to close
    else:
        await ws.close(WS_CLOSE_BASE + 400, "unexpected_message")
    scope.cancel()
