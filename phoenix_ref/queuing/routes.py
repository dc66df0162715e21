"""The QS over HTTP: handlers for the QS rows of :mod:`phoenix_ref.endpoints`,
the websocket, and the QS's background work in the homeserver.

What lives here (the protocol rules are in :mod:`.core`):

* :func:`handlers` — one handler per QS row. Every client endpoint calls one
  :class:`~.core.QsCore` method in a worker thread; the QsAuthToken travels
  in the body and the core checks it; the HTTP layer checks Privacy Pass for
  the rows that require it (``spec/queuing_service.md#authentication``: all
  client endpoints but *dequeue messages* and *negotiate websocket
  connection*) before the handler runs.
* :func:`websocket_handlers` — ``#negotiate-websocket-connection`` as a real
  websocket (framing in :mod:`.messages`); a plain HTTP GET of the same path
  gets ``426 websocket_required`` once its token checks out. The QS closes
  a socket whose client record is deleted with 4410 ``client_record_deleted``.
* :func:`start` / :func:`stop` — at homeserver startup: the
  :class:`~.core.QsService` over the homeserver's QS store and key material,
  and the :class:`~phoenix_ref.federation.outbound.OutboundSender` that
  delivers the durable QS-to-QS queues, running in the homeserver's nursery
  (``app.nursery``); pending queues resume at once.
* The federated enqueue route (``#federated-qs-to-qs-communication``): the
  source's verifying key comes from the remote key cache, fetched over
  verified TLS (``federation/keys.py``).

**Local enqueue is not a route.** ``#local-homeserver-endpoints`` leaves
access control to the infrastructure; phoenix_ref's DS and QS share a
process, so the DS calls :meth:`~.core.QsService.local_enqueue` on
``hs.qs`` directly and nothing on the public listener accepts a bare
FanOutMessage.
"""

from __future__ import annotations

import logging
from typing import Any

import trio
from quart import websocket as current_websocket

from .. import endpoints
from ..codec import encode
from ..errors import Forbidden, Malformed, ProtocolError, Unauthorized, UpstreamError
from ..federation.client import FederationError, NotFederated, Unreachable
from ..federation.keys import QsQueueConfigEncryptionKeyResponse, QsVerifyingKeyResponse
from ..federation.outbound import BackoffPolicy, Delivered, OutboundItem, OutboundSender, Outcome
from ..http import MEDIA_TYPE, Call, Handler, decode_body
from ..ids import Fqdn
from ..queues import Queues
from .core import QsConfig, QsCore, QsService
from .fanout import config_key_id
from .messages import QsWsMessage, WsConnected, WsQueueUpdate, WsRequest

__all__ = ["handlers", "websocket_handlers", "start", "stop", "UpgradeRequired", "KeystoreQsKeys",
           "WS_CLOSE_BASE"]

log = logging.getLogger(__name__)

#: A refused websocket closes with ``WS_CLOSE_BASE + HTTP status`` (RFC 6455
#: §7.4.2: 4000-4999 are for applications), the error code as reason; one
#: whose client record was deleted with 4410 (410 Gone), ``client_record_deleted``.
WS_CLOSE_BASE = 4000


class UpgradeRequired(ProtocolError):
    """A plain HTTP request to the websocket endpoint (RFC 9110 §15.5.22)."""
    status, code = 426, "websocket_required"


class KeystoreQsKeys:
    """The QS keys of :class:`~.core.QsKeys`, read from the homeserver's
    keystore at every use, so an operator's key rotation takes effect at once:
    the current QueueConfig key is handed out, and configs sealed to any key
    the QS publishes (the keystore's list, current first) still open."""

    def __init__(self, keystore):
        self.keystore = keystore
        self._by_id: tuple[tuple[bytes, ...], dict[bytes, bytes]] = ((), {})

    @property
    def signing_key(self):
        return self.keystore.qs_signing_keys[0]

    @property
    def queue_config_key(self):
        return self.keystore.qs_queue_config_keys[0]

    def queue_config_keys_by_id(self) -> dict[bytes, bytes]:
        keys = tuple(k.public for k in self.keystore.qs_queue_config_keys)
        if keys != self._by_id[0]:   # recomputed only after a rotation
            self._by_id = (keys, {config_key_id(k.public): k.private for k in self.keystore.qs_queue_config_keys})
        return self._by_id[1]


#: The client endpoints; each is served by the QsCore method of the same name.
CLIENT_OPERATIONS = (
    "create_user_record", "update_user_record", "get_user_record", "delete_user_record",
    "create_client_record", "update_client_record", "delete_client_record", "block_group",
    "publish_key_packages", "get_add_package", "dequeue_messages",
)


def _service(hs) -> QsService:
    if hs.qs is None:  # only before startup or after shutdown
        raise UpstreamError("the QS is not running", code="qs_not_running")
    return hs.qs


def handlers(hs) -> dict[str, Handler]:
    """The QS rows of the endpoint table → handlers (see module docstring)."""

    def client_handler(method_name: str) -> Handler:
        async def handler(call: Call) -> Any:
            svc = _service(hs)
            return await svc.call(getattr(svc.core, method_name), call.body, call.now_ms)
        handler.__name__ = method_name
        return handler

    async def qs_verifying_key(call: Call) -> QsVerifyingKeyResponse:
        """``spec/queuing_service.md#fetch-qs-verifying-key``: current key first."""
        return QsVerifyingKeyResponse([k.public for k in hs.keystore.qs_signing_keys])

    async def queue_config_encryption_key(call: Call) -> QsQueueConfigEncryptionKeyResponse:
        """``spec/queuing_service.md#fetch-queue-config-encryption-key``: current key first."""
        return QsQueueConfigEncryptionKeyResponse([k.public for k in hs.keystore.qs_queue_config_keys])

    async def websocket(call: Call) -> None:
        """``#negotiate-websocket-connection`` reached without a websocket upgrade."""
        svc = _service(hs)
        await svc.call(svc.core.authorize_websocket, call.body, call.now_ms)
        raise UpgradeRequired("open this endpoint as a websocket (RFC 6455) and send the WsRequest "
                              "as the first binary message")

    async def federated_enqueue(call: Call):
        """``#federated-qs-to-qs-communication``: checks in :meth:`QsCore.federated_enqueue`."""
        svc = _service(hs)
        svc.stats["federated_enqueue_received"] += 1
        cached = hs.federation.keys.cached_qs_verifying_keys(call.body.source.value)
        result = await svc.federated_enqueue(call.body, lambda d, r: _source_keys(hs, d, r), call.raw or None,
                                             cached)
        return result.response

    table: dict[str, Handler] = {name: client_handler(name) for name in CLIENT_OPERATIONS}
    table.update(qs_verifying_key=qs_verifying_key, queue_config_encryption_key=queue_config_encryption_key,
                 websocket=websocket, federated_enqueue=federated_enqueue)
    return table


async def _source_keys(hs, domain: Fqdn, refresh: bool) -> list[bytes]:
    """The verifying keys of the sending QS (remote key cache, verified TLS).

    A source that cannot be reached right now is a 502 (the sender retries
    later); any other failure means it cannot be authenticated (401)."""
    try:
        return await hs.federation.keys.qs_verifying_keys(domain.value, refresh=refresh)
    except Unreachable as e:
        raise UpstreamError(f"cannot reach {domain} for its verifying key: {e}",
                            code="source_unreachable") from None
    except NotFederated as e:
        raise Forbidden(str(e), code="domain_not_allowed") from None
    except FederationError as e:
        raise Unauthorized(f"no usable verifying key from {domain}: {e}", code="unknown_source_key") from None


# --- the websocket (#negotiate-websocket-connection) --------------------------------------------

def websocket_handlers(hs) -> dict[str, Any]:
    """Websocket views for the rows with ``websocket`` set (framing: :mod:`.messages`)."""

    async def websocket() -> None:
        ws = current_websocket
        await ws.accept()
        try:
            if ws.scheme != "wss":
                raise Forbidden("this endpoint is served over TLS (wss) only", code="tls_required")
            first = None
            with trio.move_on_after(hs.config.limits.request_timeout_s):
                first = await ws.receive()
            if first is None:
                raise ProtocolError_(408, "request_timeout", "no WsRequest within the request timeout")
            if not isinstance(first, (bytes, bytearray)):
                raise Malformed("the WsRequest is a binary message", code="text_message")
            request = decode_body(WsRequest, bytes(first), hs.config.limits.max_body_bytes)
            svc = _service(hs)
        except ProtocolError as e:
            await ws.close(WS_CLOSE_BASE + e.status, e.code)
            return
        # Subscribe before authorising: a deletion of the client record after
        # this point ends the subscription, one before it fails the check, so
        # no socket outlives its record. Nothing is sent before WsConnected.
        async with svc.notifier.subscribe(request.params.qs_cid) as wakeups:
            try:
                await svc.call(svc.core.authorize_websocket, request, hs.clock.now_ms())
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


async def _refuse_further_messages(ws, scope: trio.CancelScope) -> None:
    """After the WsRequest the client only listens; anything it sends closes the socket."""
    await ws.receive()
    await ws.close(WS_CLOSE_BASE + 400, "unexpected_message")
    scope.cancel()


def ProtocolError_(status: int, code: str, message: str) -> ProtocolError:
    err = ProtocolError(message, code=code)
    err.status = status
    return err


# --- background work: the service and the outbound sender ----------------------------------------

def _qs_config(hs) -> QsConfig:
    cfg = hs.config
    allow = frozenset(Fqdn(d) for d in cfg.federation_allow) if cfg.federation_allow else None
    return QsConfig(Fqdn(cfg.domain), federation_allow=allow,
                    federation_deny=frozenset(Fqdn(d) for d in cfg.federation_deny),
                    max_client_record_age_ms=cfg.limits.qs_max_client_age_s * 1000)


def backoff_policy(limits) -> BackoffPolicy:
    """The outbound retry policy from the homeserver's ``[limits]``."""
    return BackoffPolicy(base_delay=limits.federation_retry_base_s, max_delay=limits.federation_retry_max_s,
                         attempt_timeout=limits.request_timeout_s * 2)


async def start(hs) -> QsService:
    """Build the QS service over ``hs.qs_store`` and start its outbound
    sender in ``hs.app.nursery``; returns the service (``hs.qs``)."""
    store = hs.qs_store
    core = QsCore(_qs_config(hs), KeystoreQsKeys(hs.keystore), store.records, Queues(store.queue_store),
                  store.outbound, transaction=store.transaction)
    svc = QsService(core, hs.clock, on_queue_deleted=lambda deleted: _queue_deleted(hs, deleted))

    async def send(item: OutboundItem) -> Outcome:
        return await _send_federated(hs, svc, item)

    sender = OutboundSender(store.outbound, send, policy=backoff_policy(hs.config.limits),
                            on_delivered=svc.on_delivered, now_ms=hs.clock.now_ms)
    svc.outbound_sender = sender
    svc.cancel_scope = trio.CancelScope()

    async def run(task_status=trio.TASK_STATUS_IGNORED) -> None:
        with svc.cancel_scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(sender.run)
                nursery.start_soon(svc.prune_periodically, hs.config.limits.qs_prune_interval_s)
                task_status.started()

    await hs.app.nursery.start(run)
    return svc


async def stop(hs) -> None:
    """Stop the outbound sender (pending messages stay in the store) and the pruning."""
    svc = hs.qs
    if svc is not None and svc.cancel_scope is not None:
        svc.cancel_scope.cancel()


def _queue_deleted(hs, deleted) -> None:
    """Remote QSs' ``QueueDeleted`` answers go to the DS (``#local-enqueue-message``)
    through ``hs.on_queue_deleted`` once the DS sets it."""
    callback = getattr(hs, "on_queue_deleted", None)
    if callback is None:
        log.info("%s: %d QueueDeleted answers and no DS callback", hs.domain, len(deleted))
        return
    callback(deleted)


async def _send_federated(hs, svc: QsService, item: OutboundItem) -> Outcome:
    """One delivery attempt of an outbound item: POST the freshly signed
    QsToQsMessage to the destination's federated enqueue endpoint; its
    answer body is the FederatedEnqueueResponse. A refusal or a failure
    raises, and :func:`~phoenix_ref.federation.outbound.outcome_of_failure`
    (applied by the sender to whatever a send raises) says what it means."""
    ep = endpoints.by_name("qs", "federated_enqueue")
    body = svc.frame_outbound(item)
    svc.stats["federated_enqueue_sent"] += 1
    hs.federation.check_federates(item.destination)
    urls = await hs.federation.discovery.discover(item.destination)
    return Delivered(await hs.federation.fetcher.request(
        ep.method, urls.base("qs") + ep.path, content=body, headers={"content-type": MEDIA_TYPE},
        domain=item.destination, expect=MEDIA_TYPE, retry_safe=True))   # the receiver deduplicates
