"""The Queuing Service's async shell (``spec/queuing_service.md``).

The protocol rules are the sans-IO :class:`~.core.QsCore`'s; this module
runs them in a Trio program:

* :class:`QsService` runs each core call in a worker thread (the core talks
  to SQLite, GUIDE §4), wakes websocket listeners (:class:`QueueNotifier`,
  ``#negotiate-websocket-connection``) and the outbound sender of each
  domain a fan-out was forwarded to (``#local-enqueue-message``), frames
  outbound QsToQsMessages, and runs the outbound sender. What expires (inactive
  client records, ``#qs-configuration-options``; KeyPackages past their
  lifetime) is deleted by the homeserver's sweeper (:mod:`phoenix_ref.sweeper`)
  through the core.
* Federated enqueue (``#federated-qs-to-qs-communication``): the core is
  given the source QS's verifying keys from the remote key cache, if the
  cache holds them. When the core raises :class:`~.core.UnknownSourceKey`
  the service fetches the keys (afresh if the cached ones failed) and calls
  the core exactly once more — the AS's pattern for remote credentials
  (``authentication/service.py``). :class:`RemoteSourceKeys` gets them from
  :class:`~phoenix_ref.federation.keys.RemoteKeyCache` over verified TLS.
* :class:`KeystoreQsKeys` hands the core the homeserver keystore's QS keys.
"""

from __future__ import annotations

import logging
from collections import Counter
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable, Protocol, TypeVar

import trio

from ..codec import DecodeError, decode, encode
from ..errors import Forbidden, ProtocolError, Unauthorized, UpstreamError
from ..federation.client import FederationError, MalformedAnswer, NotFederated, RemoteRefused, Unreachable
from ..federation.keys import RemoteKeyCache
from ..federation.outbound import Delivered, OutboundItem, OutboundSender, Outcome, outcome_of_failure
from ..ids import Fqdn, QsCid
from ..keystore import Keystore
from .core import FederatedBatchResult, FederatedEnqueueResult, LocalEnqueueResult, QsCore, UnknownSourceKey
from .fanout import config_key_id
from .messages import (BatchAccepted, FanOutMessage, FederatedEnqueueBatchResponse, FederatedEnqueueResponse,
                       QsToQsBatch, QsToQsMessage, QueueDeleted)

__all__ = ["QueueNotifier", "SourceKeys", "RemoteSourceKeys", "KeystoreQsKeys", "QsService"]

log = logging.getLogger(__name__)
T = TypeVar("T")


# --- websocket notifications (#negotiate-websocket-connection) ------------------------------

class QueueNotifier:
    """Per-queue wake-ups for websocket connections.

    A connection ``subscribe``\\ s to its QsCid and receives one item on its
    channel whenever messages land in that queue (coalesced: a listener
    that has not read yet gets no second item); the channel ends when the
    client record is deleted (:meth:`disconnect`). Lives in the Trio thread.
    """

    def __init__(self) -> None:
        self._listeners: dict[QsCid, set[trio.MemorySendChannel]] = {}

    @asynccontextmanager
    async def subscribe(self, qs_cid: QsCid) -> AsyncIterator[trio.MemoryReceiveChannel]:
        send, receive = trio.open_memory_channel(1)
        self._listeners.setdefault(qs_cid, set()).add(send)
        try:
            yield receive
        finally:
            listeners = self._listeners.get(qs_cid)
            if listeners is not None:
                listeners.discard(send)
                if not listeners:
                    del self._listeners[qs_cid]
            send.close()
            receive.close()

    def disconnect(self, qs_cids) -> int:
        """The client records of these queues are gone: close their listeners'
        channels (a listener's ``async for`` ends once it has read what was
        pending); returns how many were closed."""
        closed = 0
        for qs_cid in set(qs_cids):
            for send in self._listeners.pop(qs_cid, ()):
                send.close()
                closed += 1
        return closed

    def notify(self, qs_cids) -> int:
        """Wake the listeners of these queues; returns how many were woken."""
        if not self._listeners:   # nobody is watching: no need to hash a whole fan-out's ids
            return 0
        woken = 0
        for qs_cid in set(qs_cids):
            for send in list(self._listeners.get(qs_cid, ())):
                try:
                    send.send_nowait(None)
                    woken += 1
                except trio.WouldBlock:
                    pass  # a wake-up is already pending
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    pass
        return woken

    def listeners(self, qs_cid: QsCid) -> int:
        return len(self._listeners.get(qs_cid, ()))


# --- the keys the core is given -------------------------------------------------------------

class SourceKeys(Protocol):
    """Verifying keys of remote QSs, for federated enqueue."""

    def cached(self, domain: Fqdn) -> list[bytes] | None:
        """The keys at hand without I/O, or None."""

    async def fetch(self, domain: Fqdn, refresh: bool) -> list[bytes]:
        """The keys, fetched if not at hand (``refresh``: even if they are);
        a failure raises a :class:`~phoenix_ref.errors.ProtocolError`."""


class RemoteSourceKeys:
    """:class:`SourceKeys` from the remote key cache (verified TLS, one
    refetch per cooldown). A source that cannot be reached now is a 502 (the
    sender retries later); a domain we do not federate with is a 403; any
    other failure means the source cannot be authenticated (401)."""

    def __init__(self, cache: RemoteKeyCache):
        self.cache = cache

    def cached(self, domain: Fqdn) -> list[bytes] | None:
        return self.cache.cached_qs_verifying_keys(domain.value)

    async def fetch(self, domain: Fqdn, refresh: bool) -> list[bytes]:
        try:
            return await self.cache.qs_verifying_keys(domain.value, refresh=refresh)
        except Unreachable as e:
            raise UpstreamError(f"cannot reach {domain} for its verifying key: {e}",
                                code="source_unreachable") from None
        except NotFederated as e:
            raise Forbidden(str(e), code="domain_not_allowed") from None
        except FederationError as e:
            raise Unauthorized(f"no usable verifying key from {domain}: {e}", code="unknown_source_key") from None


class KeystoreQsKeys:
    """The QS keys of :class:`~.core.QsKeys`, read from the homeserver's
    keystore at every use, so an operator's key rotation takes effect at once:
    the current QueueConfig key is handed out, and configs sealed to any key
    the QS publishes (the keystore's list, current first) still open."""

    def __init__(self, keystore: Keystore):
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

    def published_verifying_keys(self) -> list[bytes]:
        return [k.public for k in self.keystore.qs_signing_keys]

    def published_queue_config_keys(self) -> list[bytes]:
        return [k.public for k in self.keystore.qs_queue_config_keys]


# --- the service ---------------------------------------------------------------------------

def _current_trio_token() -> trio.lowlevel.TrioToken | None:
    try:
        return trio.lowlevel.current_trio_token()
    except RuntimeError:   # built outside a Trio run
        return None


class QsService:
    """Async shell around :class:`QsCore` for the routes and the homeserver
    (module docstring).

    * ``call(method, *args)`` runs one core method in a worker thread;
    * :meth:`take_handovers` and :meth:`handovers_taken` are the DS's entry
      point (Python calls, never an HTTP route); :meth:`local_enqueue` is one
      hand-over on its own (tests, benchmarks);
    * :meth:`federated_enqueue` checks a remote QS's message with keys from
      ``source_keys`` (none: every federated message is refused, 401);
    * :meth:`frame_outbound` frames an outbound item for the federation client;
      :meth:`on_delivered` decodes the remote answer and hands its
      ``QueueDeleted`` list to ``on_queue_deleted`` (the DS's callback);
    * :meth:`run` is the background work.
    """

    def __init__(self, core: QsCore, clock, *, source_keys: SourceKeys | None = None,
                 notifier: QueueNotifier | None = None,
                 on_queue_deleted: Callable[[list[QueueDeleted]], None] | None = None):
        self.core = core
        self.clock = clock
        self.source_keys = source_keys
        self.notifier = notifier or QueueNotifier()
        self.on_queue_deleted = on_queue_deleted
        self._trio_token = _current_trio_token()
        core.on_clients_deleted = self._clients_deleted
        #: The OutboundSender that :meth:`run` runs (woken after a forward).
        self.outbound_sender: OutboundSender | None = None
        #: counters for tests and metrics, e.g. "federated_enqueue_sent"/"_received"
        self.stats: Counter[str] = Counter()
        #: told the number of messages in every QS-to-QS request accepted (metrics)
        self.on_batch_received: Callable[[int], None] | None = None

    async def call(self, method, *args):
        return await trio.to_thread.run_sync(method, *args)

    def _clients_deleted(self, qs_cids: list[QsCid]) -> None:
        """Core hook (worker thread): close the websockets of deleted client
        records in the Trio thread."""
        if self._trio_token is None:
            self.notifier.disconnect(qs_cids)
        else:
            self._trio_token.run_sync_soon(self.notifier.disconnect, qs_cids)

    # --- background work ------------------------------------------------------------------

    async def run(self, sender: OutboundSender, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Run ``sender`` (pending queues resume at once) until cancelled."""
        self.outbound_sender = sender
        await sender.run(task_status=task_status)

    # --- enqueue ----------------------------------------------------------------------------

    async def local_enqueue(self, message: FanOutMessage, message_id: bytes | None = None) -> LocalEnqueueResult:
        """:meth:`QsCore.local_enqueue` in a worker thread, then wake the
        websockets of the queues that got the message and the outbound
        senders of the domains it was forwarded to. With ``message_id`` a
        repeated hand-over does nothing (``result.duplicate``)."""
        result = await trio.to_thread.run_sync(self.core.local_enqueue, message, self.clock.now_ms(), message_id)
        self.handovers_taken([result])
        return result

    # The DS's hand-over of the fan-outs of one request (or of its outbox
    # after a restart), in two halves, so that the DS runs the first in the
    # same worker-thread call as its own write: one hand-off per request
    # (issue 17; :class:`~phoenix_ref.delivery.service.DsService`).

    def take_handovers(self, handovers: list[tuple[FanOutMessage, bytes | None]]
                       ) -> tuple[list[LocalEnqueueResult], ProtocolError | None]:
        """:meth:`QsCore.local_enqueue_many` at this moment. Blocking (one
        store transaction): call it in a worker thread, then give the results
        to :meth:`handovers_taken` on the Trio thread."""
        return self.core.local_enqueue_many(handovers, self.clock.now_ms())

    def handovers_taken(self, results: list[LocalEnqueueResult]) -> None:
        """The wake-ups after hand-overs were taken (:meth:`take_handovers`,
        :meth:`local_enqueue`): the websockets of the queues that got a
        message, the outbound senders of the domains one was forwarded to."""
        self.notifier.notify([c for r in results for c in r.enqueued])
        if self.outbound_sender is not None:
            for domain, messages in Counter(d.value for r in results for d in r.forwarded).items():
                self.outbound_sender.wake(domain, messages)

    async def federated_enqueue(self, message: QsToQsMessage, received: bytes | None = None
                                ) -> FederatedEnqueueResult:
        """``#federated-qs-to-qs-communication``: the core checks the message
        with the source's cached keys; if it raises UnknownSourceKey, the keys
        are fetched (afresh if cached ones failed) and the core checks once
        more. A second refusal is the answer: there is no loop."""
        self.stats["federated_enqueue_received"] += 1
        now_ms = self.clock.now_ms()
        result = await self._with_source_keys(
            message.source, lambda keys: self.core.federated_enqueue(message, now_ms, keys, received=received))
        if result.duplicate:
            self.stats["federated_enqueue_duplicates"] += 1
        if self.on_batch_received is not None:
            self.on_batch_received(1)   # a QsToQsMessage carries one FanOutMessage
        self.notifier.notify(result.enqueued)
        return result

    async def federated_enqueue_batch(self, batch: QsToQsBatch, received: bytes | None = None
                                      ) -> FederatedBatchResult:
        """A :class:`~.messages.QsToQsBatch` (docs/decisions.md, "QS-to-QS
        batches"): the whole batch is one core call in one worker thread —
        one signature check, one store transaction — with the key fetch of
        :meth:`federated_enqueue` when the source's keys are not at hand."""
        self.stats["federated_enqueue_received"] += len(batch.entries)
        self.stats["federated_batches_received"] += 1
        now_ms = self.clock.now_ms()
        result = await self._with_source_keys(
            batch.source, lambda keys: self.core.federated_enqueue_batch(batch, now_ms, keys, received=received))
        self.stats["federated_enqueue_duplicates"] += result.duplicates
        if self.on_batch_received is not None:
            self.on_batch_received(len(batch.entries))
        self.notifier.notify(result.enqueued)
        return result

    async def _with_source_keys(self, source: Fqdn, work: Callable[[list[bytes] | None], T]) -> T:
        """``work(keys)`` in a worker thread with the source's cached keys;
        on :class:`UnknownSourceKey` once more with keys fetched (afresh if
        cached ones failed)."""
        cached = self.source_keys.cached(source) if self.source_keys else None
        try:
            return await trio.to_thread.run_sync(work, cached)
        except UnknownSourceKey:
            if self.source_keys is None:
                raise
            keys = await self.source_keys.fetch(source, cached is not None)
            return await trio.to_thread.run_sync(work, keys)

    # --- outbound ---------------------------------------------------------------------------

    def frame_outbound(self, item: OutboundItem) -> bytes:
        return self.core.frame_outbound(item, self.clock.now_ms())

    def frame_outbound_batch(self, items: list[OutboundItem]) -> bytes:
        return self.core.frame_outbound_batch(items, self.clock.now_ms())

    @staticmethod
    def batch_outcomes(items: list[OutboundItem], answer: bytes) -> list[Outcome]:
        """What a :class:`~.messages.FederatedEnqueueBatchResponse` means for
        each item sent: an accepted entry is :class:`Delivered` with the
        encoded FederatedEnqueueResponse (what a lone message's answer
        body is, for :meth:`on_delivered`); a refused one means what the
        same refusal of a lone message means (:func:`outcome_of_failure`:
        429 and 5xx retry, another 4xx is final). An answer that does not
        decode, or has not one result per item, is a
        :class:`~phoenix_ref.federation.client.MalformedAnswer` (every item
        is retried)."""
        try:
            results = decode(FederatedEnqueueBatchResponse, answer).results
        except DecodeError as e:
            raise MalformedAnswer(f"bad answer to a QS-to-QS batch: {e}", domain=items[0].destination) from None
        if len(results) != len(items):
            raise MalformedAnswer(f"{len(results)} results for a batch of {len(items)} messages",
                                  domain=items[0].destination)
        outcomes: list[Outcome] = []
        for item, r in zip(items, results):
            if isinstance(r, BatchAccepted):
                outcomes.append(Delivered(encode(r.response)))
            else:
                refused = RemoteRefused(f"{r.status} {r.code}: {r.message}", status=r.status, code=r.code,
                                        retry_after=r.retry_after or None, domain=item.destination)
                outcomes.append(outcome_of_failure(refused))
        return outcomes

    def on_delivered(self, item: OutboundItem, response: bytes) -> None:
        """The destination took ``item``: hand the ``QueueDeleted`` entries of
        its answer to ``on_queue_deleted``. An empty answer is what a
        ``409 duplicate_message`` stands for (a receiver that answers a
        replay with a refusal, not with its first answer): nothing to report."""
        if not response:
            return
        try:
            answer = decode(FederatedEnqueueResponse, response)
        except DecodeError as e:
            log.warning("bad answer from %s to a federated enqueue: %s", item.destination, e)
            return
        if answer.queue_deleted and self.on_queue_deleted is not None:
            self.on_queue_deleted(answer.queue_deleted)
