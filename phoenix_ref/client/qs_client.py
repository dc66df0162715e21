"""The client side of the Queuing Service (``spec/queuing_service.md``).

Two layers, like the services:

* :class:`QsIdentity` — sans-IO: one client's QS keys (user record auth
  key, client record auth key, queue encryption key pair, friendship token),
  its QsUid/QsCid once created, and its mirror of the queue's ratchet
  (``spec/queuing_service/queue_encryption.md``). It builds every request
  with its QsAuthToken (``#authentication``: the sender id the endpoint
  names, bound to the homeserver, the endpoint and the params —
  :mod:`phoenix_ref.auth_tokens`), seals queue configs for groups
  (``spec/glossary.md#sealed-queue-config``) and decrypts dequeued messages.
* :class:`QsClient` — the same requests over HTTPS to ``qs.<domain>``, with
  a Privacy Pass token on every endpoint that needs one (the caller
  supplies where tokens come from), and the websocket
  (``#negotiate-websocket-connection``) over any websocket transport, e.g.
  :class:`WsprotoTransport` (``wsproto`` over a Trio TLS stream).

Tests, the demo and the benchmark use this module; secrets live in memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

import trio

from .. import endpoints
from ..auth_tokens import QsAuthToken, RequestBinding
from ..codec import decode, encode
from ..crypto import HpkeKeyPair, SigningKey
from ..ids import Fqdn, QsCid, QsUid
from ..queue_crypto import QueueMessage, QueueRatchetState, read_queue_messages
from ..queuing import messages as m
from ..queuing.fanout import seal_queue_config
from .calls import PrivacyPassSource, call_endpoint

__all__ = ["QsIdentity", "QsClient", "new_friendship_token", "QsNotifications", "WsprotoTransport",
           "USER_OPERATIONS", "WebsocketRefused"]

#: Endpoints authenticated by the QsUid (the user record auth key); the
#: other token-authenticated ones by the QsCid.
USER_OPERATIONS = frozenset({"update_user_record", "get_user_record", "delete_user_record",
                             "create_client_record"})


def new_friendship_token() -> bytes:
    """A fresh, random friendship token (``spec/glossary.md#friendship-token``)."""
    return os.urandom(32)


def _row(name: str) -> endpoints.Endpoint:
    return endpoints.by_name("qs", name)


@dataclass
class QsIdentity:
    """One client's QS keys, ids and queue reader (see module docstring)."""
    domain: Fqdn
    user_key: SigningKey
    client_key: SigningKey
    queue_key: HpkeKeyPair
    friendship_token: bytes
    qs_uid: QsUid | None = None
    qs_cid: QsCid | None = None
    ratchet: QueueRatchetState = field(default_factory=lambda: QueueRatchetState(None, 0))

    @classmethod
    def new(cls, domain: Fqdn | str) -> "QsIdentity":
        return cls(Fqdn(str(domain)), SigningKey.generate(), SigningKey.generate(), HpkeKeyPair.generate(),
                   new_friendship_token())

    # --- requests -------------------------------------------------------------------------

    def create_user_record_params(self) -> m.CreateUserRecordParams:
        """``#create-new-qs-user-record`` (no QsAuthToken)."""
        return m.CreateUserRecordParams(self.user_key.public, self.friendship_token, self.client_key.public,
                                        self.queue_key.public)

    def created(self, response: m.CreateUserRecordResponse) -> None:
        self.qs_uid, self.qs_cid = response.qs_uid, response.qs_cid

    def token(self, name: str, params: Any, now_ms: int) -> QsAuthToken:
        """The QsAuthToken for endpoint ``name`` with these params."""
        as_user = name in USER_OPERATIONS
        sender = self.qs_uid if as_user else self.qs_cid
        key = self.user_key if as_user else self.client_key
        binding = RequestBinding(self.domain, _row(name).path, encode(params))
        return QsAuthToken.create(key, sender, now_ms, binding)

    def request(self, name: str, params: Any, now_ms: int) -> Any:
        """``…Request {auth, params}`` for a token-authenticated endpoint."""
        return _row(name).request(self.token(name, params, now_ms), params)

    def dequeue_request(self, now_ms: int, max_messages: int = 500) -> m.DequeueMessagesRequest:
        """Dequeue from the next sequence number the reader expects."""
        return self.request("dequeue_messages",
                            m.DequeueMessagesParams(self.qs_cid, self.ratchet.generation, max_messages), now_ms)

    def ws_request(self, now_ms: int) -> m.WsRequest:
        return self.request("websocket", m.WsParams(self.qs_cid), now_ms)

    # --- queue configs and reading ---------------------------------------------------------

    def sealed_config(self, qs_config_key: bytes, push_token_key: bytes | None = None) -> bytes:
        """A fresh SealedQueueConfig for one group (unlinkable to the others)."""
        return seal_queue_config(qs_config_key, m.QueueConfig(push_token_key, self.qs_cid),
                                 queue_encryption_key=self.queue_key, client_record_key=self.client_key)

    def client_queue_config(self, qs_config_key: bytes) -> m.ClientQueueConfig:
        return m.ClientQueueConfig(self.domain, self.sealed_config(qs_config_key))

    def read(self, messages: list[QueueMessage]) -> list[bytes]:
        """Decrypt dequeued messages in order; returns the enqueued plaintexts
        (encoded MessageContents). Messages already read are skipped."""
        out, self.ratchet = read_queue_messages(self.queue_key.private, self.ratchet, messages)
        return out


class WebsocketRefused(Exception):
    """The QS closed the websocket: ``code`` is 4000 + HTTP status, ``reason`` the error code."""

    def __init__(self, code: int, reason: str):
        super().__init__(f"websocket closed {code} {reason}")
        self.code = code
        self.reason = reason


class QsClient:
    """HTTPS calls to the QS of any domain.

    ``http`` is an ``httpx.AsyncClient`` whose TLS verification the caller set
    up; ``base_url(domain)`` gives ``https://qs.<domain>[:port]`` (default:
    the subdomain rule). ``privacy_pass(domain)`` returns a Privacy Pass token
    for ``domain``'s QS (or None); it is called for every endpoint that
    requires one (``#authentication``). ``now_ms`` is the client's clock.
    Refusals raise the :class:`~phoenix_ref.errors.ProtocolError` subclass
    of their status.
    """

    def __init__(self, http: Any, *, base_url: Callable[[Fqdn], str] | None = None,
                 privacy_pass: PrivacyPassSource | None = None, now_ms: Callable[[], int] | None = None):
        from ..clock import Clock
        self.http = http
        self.base_url = base_url or (lambda domain: f"https://qs.{domain}")
        self.privacy_pass = privacy_pass
        self.now_ms = now_ms or Clock().now_ms

    async def call(self, domain: Fqdn | str, name: str, body: Any = None) -> Any:
        """Send ``body`` to endpoint ``name`` of ``domain``'s QS; decode the answer."""
        domain = Fqdn(str(domain))
        return await call_endpoint(self.http, self.base_url(domain), _row(name), domain, body, self.privacy_pass)

    # --- convenience over call() ----------------------------------------------------------

    async def queue_config_key(self, domain: Fqdn | str) -> bytes:
        """The current queue config encryption key of ``domain``'s QS."""
        return (await self.call(domain, "queue_config_encryption_key")).encryption_keys[0]

    async def register(self, domain: Fqdn | str) -> QsIdentity:
        """A new identity with a QS user record (and its first client record)."""
        me = QsIdentity.new(domain)
        me.created(await self.call(domain, "create_user_record", me.create_user_record_params()))
        return me

    async def send(self, me: QsIdentity, name: str, params: Any) -> Any:
        """A token-authenticated endpoint of ``me``'s QS."""
        return await self.call(me.domain, name, me.request(name, params, self.now_ms()))

    async def dequeue(self, me: QsIdentity, max_messages: int = 500) -> m.DequeueMessagesResponse:
        return await self.call(me.domain, "dequeue_messages", me.dequeue_request(self.now_ms(), max_messages))

    async def receive(self, me: QsIdentity, max_messages: int = 500) -> list[bytes]:
        """Dequeue and decrypt what is new."""
        return me.read((await self.dequeue(me, max_messages)).messages)

    async def client_queue_config(self, me: QsIdentity) -> m.ClientQueueConfig:
        return me.client_queue_config(await self.queue_config_key(me.domain))

    # --- websocket ----------------------------------------------------------------------------

    async def open_websocket(self, me: QsIdentity, transport: Any) -> "QsNotifications":
        """``#negotiate-websocket-connection`` over an open websocket
        ``transport`` to ``qs.<me.domain>`` (:class:`WsprotoTransport`, or the
        test harness's in-process one): send the WsRequest, wait for
        ``WsConnected``. Raises :class:`WebsocketRefused` if the QS refuses."""
        notifications = QsNotifications(transport)
        await transport.send_bytes(encode(me.ws_request(self.now_ms())))
        first = await notifications.next_event()
        if not isinstance(first, m.WsConnected):
            raise WebsocketRefused(0, f"expected WsConnected, got {first!r}")
        return notifications


class QsNotifications:
    """The QS's messages on an authenticated websocket (``QsWsMessage``)."""

    def __init__(self, transport: Any):
        self.transport = transport

    async def next_event(self) -> Any:
        """The next ``WsConnected``/``WsQueueUpdate``; :class:`WebsocketRefused`
        when the QS closes the socket."""
        return decode(m.QsWsMessage, await self.transport.receive_bytes())


class WsprotoTransport:
    """A client websocket over a Trio TLS stream, framed by ``wsproto``
    (RFC 6455 over HTTP/1.1). Binary messages only: :meth:`send_bytes`,
    :meth:`receive_bytes` (raises :class:`WebsocketRefused` when the peer
    closes). ``wsproto`` is the websocket library the server stack (anycorn)
    already depends on."""

    def __init__(self, host: str, path: str):
        self.host = host
        self.path = path
        self.stream: trio.SSLStream | None = None
        self._ws = None
        self._pending: list[Any] = []

    async def connect(self, host_port: tuple[str, int], ca_bundle: str | None = None, *,
                      ssl_context: Any = None) -> None:
        """Open TLS to ``host_port`` (verifying ``self.host`` against
        ``ca_bundle``, or the given client ``ssl_context``) and upgrade."""
        from wsproto import WSConnection
        from wsproto.connection import ConnectionType
        from wsproto.events import AcceptConnection, Request
        from ..federation.client import client_ssl_context, open_tls_stream
        ctx = ssl_context or client_ssl_context(ca_bundle)
        # websockets over HTTP/1.1 (RFC 6455)
        self.stream = await open_tls_stream(host_port, self.host, ctx, "http/1.1")
        self._ws = WSConnection(ConnectionType.CLIENT)
        await self._send(Request(host=self.host, target=self.path))
        event = await self._event()
        if not isinstance(event, AcceptConnection):
            raise WebsocketRefused(0, f"handshake refused: {type(event).__name__}")

    async def _send(self, event: Any) -> None:
        await self.stream.send_all(self._ws.send(event))

    async def _event(self) -> Any:
        while not self._pending:
            data = await self.stream.receive_some(65536)
            self._ws.receive_data(data or None)
            self._pending.extend(self._ws.events())
            if not data and not self._pending:
                raise WebsocketRefused(1006, "connection lost")
        return self._pending.pop(0)

    async def receive_bytes(self) -> bytes:
        from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
        buf = b""
        while True:
            event = await self._event()
            if isinstance(event, CloseConnection):
                try:
                    await self._send(event.response())
                except Exception:  # noqa: BLE001 - the peer may be gone already
                    pass
                raise WebsocketRefused(event.code, event.reason or "")
            if isinstance(event, Ping):
                await self._send(event.response())
            elif isinstance(event, TextMessage):
                raise WebsocketRefused(1003, "unexpected text message")
            elif isinstance(event, BytesMessage):
                buf += bytes(event.data)
                if event.message_finished:
                    return buf

    async def send_bytes(self, data: bytes) -> None:
        from wsproto.events import BytesMessage
        await self._send(BytesMessage(data=data))

    async def aclose(self) -> None:
        from wsproto.events import CloseConnection
        if self.stream is None:
            return
        try:
            if self._ws is not None and self._ws.state.name == "OPEN":
                await self._send(CloseConnection(code=1000))
        except Exception:  # noqa: BLE001
            pass
        await self.stream.aclose()
        self.stream = None

