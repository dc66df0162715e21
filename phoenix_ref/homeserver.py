"""One homeserver: config → key material, stores, federation client → one ASGI app.

A homeserver is one domain ``D`` with three services reached at
``as.D``, ``ds.D`` and ``qs.D`` (``spec/federation/use_cases.md#homeserver-domain-and-discovery``)
plus the delegation document ``https://D/.well-known/phoenix``
(``federation/discovery.py``). :class:`Homeserver` serves all of them as
one ASGI app (:mod:`phoenix_ref.asgi`) that routes by ``Host``; an unknown
host gets ``404 unknown_host``.

This module is the composition root: the one place that builds, from the
config, the stores, the sans-IO cores, the async services around them
(:class:`~phoenix_ref.authentication.service.AsService`,
:class:`~phoenix_ref.queuing.service.QsService`, the outbound sender of the
QS-to-QS queues) and the routes. Route modules get typed dependencies — a
function returning the running service — and translate HTTP to service calls
and back; nothing else reaches into the homeserver.

Lifecycle: the routes are registered when the app is built; the app's
lifespan startup loads the keystore, opens one SQLite store per service in
the data directory, builds the federation client and the services, and
starts their background work (the QS's outbound sender, the DS's outbox
hand-over, and the one sweeper that deletes expired state,
:mod:`phoenix_ref.sweeper`) in ``app.nursery`` (the nursery the app keeps
open for its lifespan, :mod:`phoenix_ref.asgi`) under one cancel scope;
shutdown cancels it and closes the stores. In-process tests run the
lifespan with ``app.running()``. A route called before startup or after
shutdown answers 502 ``<service>_not_running``.

Plug-in points: endpoint rows in ``endpoints.py`` with handlers in
``<service>/routes.py``; Privacy Pass via :attr:`Homeserver.privacy_pass`
(called for every row whose ``privacy_pass`` is set), by default the
homeserver's :class:`~phoenix_ref.privacy_pass_gate.PrivacyPassGate`.
"""

from __future__ import annotations

import functools
import gc
import logging
import ssl
from typing import Any, Callable, TypeVar

import trio

from . import admin, endpoints
from .asgi import App, Request, Response
from .authentication import routes as as_routes
from .authentication.service import AsService
from .authentication.store import AsStore
from .clock import Clock
from .config import Config, Limits
from .delivery import routes as ds_routes
from .delivery.core import DsConfig, DsCore
from .delivery.service import DsService
from .delivery.store import DsStore
from .errors import NotFound, UpstreamError
from .federation.client import RemoteRefused
from .federation.facade import FederationClient
from .federation.discovery import WELL_KNOWN_PATH, well_known_document
from .federation.outbound import (BackoffPolicy, BatchLimits, Delivered, OutboundItem, OutboundSender, Outcome,
                                  expired_rejection, outcome_of_failure)
from .federation.outbound_crypto import OutboundKeys
from .ids import Fqdn, InvalidId
from .http import MEDIA_TYPE, Call, CallCheck, RequestLog, decode_body, make_view, require_tls
from .keystore import Keystore
from .metrics import HomeserverMetrics, attempt_kinds, metrics_app
from .privacy_pass_gate import PrivacyPassGate
from .queues import Queues
from .queuing import routes as qs_routes
from .queuing.core import QsConfig, QsCore
from .queuing.messages import MAX_BATCH_MESSAGES, QueueDeleted
from .queuing.service import KeystoreQsKeys, QsService, RemoteSourceKeys
from .queuing.store import QsStore
from .sweeper import Rule, Sweeper

log = logging.getLogger(__name__)

T = TypeVar("T")

_UNKNOWN_HOST = "unknown.invalid"


def normalise_host(value: str) -> str:
    """A Host header → lower-case host name without port or trailing dot.

    Anything that is not a valid domain name becomes ``unknown.invalid``,
    which no route serves (404 ``unknown_host``); the router never sees
    a malformed name.
    """
    host = value.strip()
    if host.startswith("["):             # IPv6 literal: never one of ours
        return _UNKNOWN_HOST
    host = host.rsplit(":", 1)[0] if ":" in host else host
    try:
        return str(Fqdn(host))
    except InvalidId:
        return _UNKNOWN_HOST


class _HostNormaliser:
    """ASGI middleware: rewrite ``Host`` to its normalised form before routing."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"host"]
            host = next((v for k, v in scope.get("headers", []) if k.lower() == b"host"), b"")
            norm = normalise_host(host.decode("latin-1"))
            scope = dict(scope, headers=[(b"host", norm.encode())] + headers)
        await self.app(scope, receive, send)


class Homeserver:
    """One domain's AS, DS and QS (see module docstring).

    ``clock`` is the wall clock for every service; ``federation_transport``
    replaces the network of the federation client (in-process tests);
    ``request_log``, if given, gets a record for every request served, every
    federation request sent and every outbound delivery attempt
    (:class:`~phoenix_ref.http.RequestLog`; the caller closes it).

    With ``[operator] metrics_listen`` set, :attr:`metrics` counts what the
    request log records and what the services report
    (:mod:`phoenix_ref.metrics`; without a request log from the caller the
    homeserver makes one that writes nowhere), and :attr:`metrics_asgi` is
    the app the operator listener serves (``cli.serve`` binds it).
    """

    def __init__(self, config: Config, *, clock: Clock | None = None,
                 federation_transport: Callable[[ssl.SSLContext], Any] | None = None,
                 request_log: RequestLog | None = None):
        self.config = config
        self.domain = config.domain
        self.clock = clock or Clock()
        self._federation_transport = federation_transport
        self.request_log = request_log
        self.keystore: Keystore | None = None
        self.as_store: AsStore | None = None
        self.qs_store: QsStore | None = None
        self.ds_store: DsStore | None = None
        self.federation: FederationClient | None = None
        #: Privacy Pass check for rows with ``privacy_pass`` set: ``await
        #: privacy_pass(endpoint, call)`` raises Unauthorized on a bad token.
        #: None until the Privacy Pass issuer is plugged in (then unchecked).
        self.privacy_pass: CallCheck | None = None
        #: Issuer keys, spent tokens and issuance counters (privacy_pass_gate.py),
        #: opened at startup; it becomes ``privacy_pass`` unless one was set.
        self.privacy_pass_gate: PrivacyPassGate | None = None
        #: The running QS (:class:`~.queuing.service.QsService`), set at startup:
        #: the DS hands FanOutMessages to ``qs.take_handovers`` (never over HTTP).
        self.qs: QsService | None = None
        #: The running AS (:class:`~.authentication.service.AsService`), set at startup.
        self.as_service: AsService | None = None
        #: The running DS (:class:`~.delivery.service.DsService`), set at startup.
        self.ds: DsService | None = None
        #: Where remote QSs' ``QueueDeleted`` answers go instead of the DS
        #: (``#local-enqueue-message``), if a test sets it.
        self.on_queue_deleted: Callable[[list[QueueDeleted]], None] | None = None
        #: The sweeper of expired state (set at startup; phoenix_ref/sweeper.py).
        self.sweeper: Sweeper | None = None
        #: The background work's cancel scope and "it has ended" (set at startup).
        self._background: trio.CancelScope | None = None
        self._background_done: trio.Event | None = None
        self.operator = Operator(self)
        #: Prometheus counters (None: ``[operator] metrics_listen`` is not set).
        self.metrics: HomeserverMetrics | None = None
        if config.operator.metrics_listen is not None:
            self.metrics = HomeserverMetrics(self.hosts(), outbound_store=lambda: self.qs_store and self.qs_store.outbound,
                                             now_ms=self.clock.now_ms)
            if self.request_log is None:
                self.request_log = RequestLog(None, self.domain)
            self.request_log.listeners.append(self.metrics.record)
        self.metrics_asgi = metrics_app(lambda: self.metrics)
        self.app = self._build_app()
        # the request log sees the normalised Host, as the routes do
        self.asgi = _HostNormaliser(self.request_log.middleware(self.app) if self.request_log else self.app)

    # --- app -------------------------------------------------------------------------

    def hosts(self) -> dict[str, str]:
        """Host name → what it serves."""
        return {self.config.host(s): s for s in ("as", "ds", "qs")} | {self.domain: "well-known"}

    def _build_app(self) -> App:
        app = App(startup=self._startup, shutdown=self._shutdown,
                  body_timeout_s=self.config.limits.request_timeout_s * 3)
        as_service = lambda: _started(self.as_service, "as")   # noqa: E731
        qs_service = lambda: _started(self.qs, "qs")           # noqa: E731
        handlers = {"as": as_routes.handlers(as_service),
                    "ds": ds_routes.handlers(lambda: _started(self.keystore, "ds"),
                                             lambda: _started(self.ds, "ds")),
                    "qs": qs_routes.handlers(qs_service)}
        for service, table in handlers.items():
            rows = {ep.name for ep in endpoints.ENDPOINTS if ep.service == service}
            if rows != set(table):
                raise RuntimeError(f"{service}: endpoint table {sorted(rows)} and handlers "
                                   f"{sorted(table)} disagree")
        ws_views = qs_routes.websocket_handlers(qs_service, self.config.limits)
        for ep in endpoints.ENDPOINTS:
            host = self.config.host(str(ep.service))
            app.route(host, ep.path, ep.method,
                      make_view(ep, handlers[str(ep.service)][ep.name], now_ms=self.clock.now_ms,
                                max_body=self.config.limits.max_body_bytes, check=self._check_call))
            if ep.websocket:   # the same path, opened as a websocket (RFC 6455)
                app.websocket(host, ep.path, ws_views[ep.name])
        app.route(self.domain, WELL_KNOWN_PATH, "GET", self._well_known)
        return app

    async def _well_known(self, request: Request) -> Response:
        """``GET https://D/.well-known/phoenix`` (delegation, docs/decisions.md)."""
        require_tls(request)
        if not self.config.well_known_enabled:
            raise NotFound("this homeserver publishes no delegation", code="unknown_endpoint")
        max_body = self.config.limits.max_body_bytes
        decode_body(None, await request.body(max_body), max_body)   # takes no body
        return Response(well_known_document(self.config.announced_urls()), content_type="application/json")

    async def _check_call(self, endpoint: endpoints.Endpoint, call: Call) -> None:
        if endpoint.privacy_pass and self.privacy_pass is not None:
            role = await self.privacy_pass(endpoint, call)
            if self.metrics is not None and isinstance(role, str):   # the gate says whose token it was
                self.metrics.redeemed(str(endpoint.service), role)

    # --- lifespan ------------------------------------------------------------------------

    async def _startup(self) -> None:
        cfg = self.config
        gc.set_threshold(*cfg.performance.gc_thresholds)   # process-wide (config.Performance)
        self.keystore = await trio.to_thread.run_sync(Keystore.load, cfg.keys_dir, cfg.domain)
        self.as_store = await trio.to_thread.run_sync(
            lambda: AsStore(cfg.data_dir / "as.sqlite3", max_messages=cfg.limits.as_max_messages))
        self.qs_store = await QsStore.open(cfg.data_dir / "qs.sqlite3",
                                           OutboundKeys(self.keystore.qs_outbound_secrets))
        self.ds_store = await trio.to_thread.run_sync(
            DsStore, cfg.data_dir / "ds.sqlite3", OutboundKeys(self.keystore.qs_outbound_secrets))
        # one Privacy Pass gate for AS, DS and QS (issuer keys, spent tokens);
        # it checks tokens unless a test plugged in its own check
        self.privacy_pass_gate = await PrivacyPassGate.open(cfg.data_dir / "privacy_pass.sqlite3", cfg.domain,
                                                            self.clock.now_ms())
        if self.privacy_pass is None or isinstance(self.privacy_pass, PrivacyPassGate):
            self.privacy_pass = self.privacy_pass_gate
        self.federation = FederationClient(cfg, endpoints.by_name, clock=self.clock,
                                           transport=self._federation_transport,
                                           on_request=self.request_log.sent if self.request_log else None)
        self.as_service = AsService(cfg, self.keystore, self.as_store, self.privacy_pass_gate,
                                    self.federation.keys, self.clock)
        if self.metrics is not None:
            self.as_service.on_tokens_issued = self.metrics.issued
        self.qs = self._build_qs()
        self.ds = DsService(DsCore(ds_config(cfg), self.keystore.ds_signing_keys), self.ds_store,
                            self.qs, self.clock)
        await self._start_background()

    def _build_qs(self) -> QsService:
        store = self.qs_store
        core = QsCore(qs_config(self.config), KeystoreQsKeys(self.keystore), store.records,
                      Queues(store.queue_store), store.outbound, transaction=store.transaction,
                      purge_deleted=store.purge_deleted)
        qs = QsService(core, self.clock, source_keys=RemoteSourceKeys(self.federation.keys),
                       on_queue_deleted=self._queue_deleted)
        if self.metrics is not None:
            qs.on_batch_received = self.metrics.batch_received.observe
        return qs

    async def _start_background(self) -> None:
        """The QS's outbound sender (pending queues resume at once), the DS's
        outbox hand-over and the sweeper in ``app.nursery``; shutdown cancels them."""
        limits, qs = self.config.limits, self.qs
        sender = OutboundSender(self.qs_store.outbound, functools.partial(_send_federated, self, qs),
                                send_batch=functools.partial(_send_federated_batch, self, qs),
                                batch_limits=BatchLimits(min(limits.federation_batch_max_messages, MAX_BATCH_MESSAGES),
                                                         limits.federation_batch_max_bytes,
                                                         limits.federation_batch_linger_ms / 1000,
                                                         limits.federation_batch_gather),
                                policy=backoff_policy(limits), on_delivered=qs.on_delivered,
                                now_ms=self.clock.now_ms, max_age_ms=limits.federation_outbound_max_age_s * 1000,
                                on_attempt=self._attempted if self.request_log is not None else None)
        self.sweeper = Sweeper(await self._sweep_rules(sender), self.clock.now_ms, limits.sweep_interval_s,
                               name=self.domain)
        self._background = trio.CancelScope()
        done = self._background_done = trio.Event()

        async def run(task_status=trio.TASK_STATUS_IGNORED) -> None:
            try:
                with self._background:
                    async with trio.open_nursery() as nursery:
                        await nursery.start(qs.run, sender)
                        await nursery.start(self.ds.run)
                        await nursery.start(self.sweeper.run)
                        nursery.start_soon(self.watch_operator_changes)
                        task_status.started()
            finally:
                done.set()

        await self.app.nursery.start(run)

    async def _sweep_rules(self, sender: OutboundSender) -> list[Rule]:
        """Every kind of state that expires
        (``spec/general_concepts/state_expiration.md``; docs/storage.md says
        which rule deletes which rows). Inside encrypted DS states, past
        states and inactive members are handled when a member's request
        opens the state (``delivery/core.py``); the sweeper holds no EAR key."""
        limits, qs_core, ds_store = self.config.limits, self.qs.core, self.ds_store
        max_age_ms = limits.federation_outbound_max_age_s * 1000
        outbound = self.qs_store.outbound

        def expire_outbound(now_ms: int) -> int:
            # the clock was read before the held heads are (OutboundSender docstring)
            return outbound.expire(now_ms - max_age_ms, expired_rejection(max_age_ms), now_ms, sender.held())

        return [*await self.as_service.sweep_rules(self.clock.now_ms()),
                Rule("qs inactive client records", lambda now: len(qs_core.prune_inactive(now))),
                Rule("qs expired KeyPackages", qs_core.expire_key_packages),
                Rule("qs outbound messages past their age", expire_outbound),
                Rule("ds expired groups", lambda now: ds_store.expire_groups(now, limits.ds_group_expiry_days)),
                Rule("ds expired placeholders", ds_store.expire_placeholders),
                Rule("ds padding bucket from the stored sizes (A19)", self._refresh_padding)]

    def _refresh_padding(self, now_ms: int) -> int:
        """Sweeper rule: recompute the DS padding bucket; the number of groups it saw."""
        sizes = self.ds_store.state_sizes()
        self.ds.core.set_bucket(sizes)
        return len(sizes)

    def _attempted(self, items: list[OutboundItem], outcomes: list[Outcome], *, attempt: int, seconds: float,
                   retry_in: float | None) -> None:
        """An outbound delivery attempt ended: one ``attempt`` record per
        kind of outcome it had (one, unless the receiver answered the
        messages of a batch differently), with how many messages had it."""
        for kind, count, extra in attempt_kinds(outcomes):
            self.request_log.attempt(destination=items[0].destination, outcome=kind, attempt=attempt,
                                     ms=seconds * 1000, messages=count,
                                     retry_in=retry_in if kind == "retry" else None, **extra)

    async def watch_operator_changes(self) -> None:
        """Every ``operator_poll_interval_s``: :meth:`check_operator_changes`.
        A failed round is logged; the next one tries again."""
        while True:
            await trio.sleep(self.config.limits.operator_poll_interval_s)
            try:
                await self.check_operator_changes()
            except Exception:
                log.exception("%s: looking for operator changes failed", self.domain)

    async def check_operator_changes(self) -> bool:
        """Take over what ``phoenix-ref admin`` changed beside this running
        homeserver: key files it wrote (a rotation, a new intermediate) are
        loaded into the keystore in place, the QS-to-QS queue keys follow,
        and revocations it recorded make the AS rebuild its trust in its
        own credentials. Returns whether anything changed."""
        keys_changed = await trio.to_thread.run_sync(self.keystore.refresh)
        if keys_changed:
            self.qs_store.outbound.set_keys(OutboundKeys(self.keystore.qs_outbound_secrets))
            log.info("%s: loaded key material changed by the operator", self.domain)
        revoked = await trio.to_thread.run_sync(self.as_store.notice_revocations)
        if revoked:
            log.info("%s: noticed credentials revoked by the operator", self.domain)
        return keys_changed or revoked

    def _queue_deleted(self, deleted: list[QueueDeleted]) -> None:
        """Remote QSs' ``QueueDeleted`` answers → the DS (decision A30). The
        QS calls this in the Trio thread; the DS stores them in a task of the
        app's nursery. Should the process stop before that task ran, the
        answers are lost, and the next fan-out to the same deleted queue
        brings them back."""
        if self.on_queue_deleted is not None:
            self.on_queue_deleted(deleted)
        elif self.ds is not None:
            self.app.nursery.start_soon(self.ds.queue_deleted, deleted)

    async def _shutdown(self) -> None:
        if self._background is not None:   # pending outbound messages stay in the store
            self._background.cancel()
            await self._background_done.wait()   # no worker thread uses a store once it is closed
        if self.federation is not None:
            await self.federation.aclose()
        for store in (self.as_store, self.qs_store, self.ds_store, self.privacy_pass_gate):
            if store is not None:
                await trio.to_thread.run_sync(store.close)


def _started(value: T | None, service: str) -> T:
    """``value`` once the homeserver has started; before, a 502 ``<service>_not_running``."""
    if value is None:
        raise UpstreamError(f"the {service.upper()} is not running", code=f"{service}_not_running")
    return value


def qs_config(cfg: Config) -> QsConfig:
    """The QS core's configuration from the homeserver's."""
    allow = frozenset(Fqdn(d) for d in cfg.federation_allow) if cfg.federation_allow else None
    return QsConfig(Fqdn(cfg.domain), federation_allow=allow,
                    federation_deny=frozenset(Fqdn(d) for d in cfg.federation_deny),
                    max_client_record_age_ms=cfg.limits.qs_max_client_age_s * 1000)


def ds_config(cfg: Config) -> DsConfig:
    """The DS core's configuration from the homeserver's."""
    return DsConfig(Fqdn(cfg.domain), max_inactivity_days=cfg.limits.ds_max_inactivity_days,
                    max_key_package_age_days=cfg.limits.ds_max_key_package_age_days,
                    padding_percentile=cfg.limits.ds_padding_percentile)


def backoff_policy(limits: Limits) -> BackoffPolicy:
    """The outbound retry policy from the homeserver's ``[limits]``."""
    return BackoffPolicy(base_delay=limits.federation_retry_base_s, max_delay=limits.federation_retry_max_s,
                         attempt_timeout=limits.request_timeout_s * 2)


async def _send_federated(hs, svc: QsService, item: OutboundItem) -> Outcome:
    """One delivery attempt of an outbound item: POST the freshly signed
    QsToQsMessage to the destination's federated enqueue endpoint; its
    answer body is the FederatedEnqueueResponse. A refusal or a failure
    raises, and :func:`~phoenix_ref.federation.outbound.outcome_of_failure`
    (applied by the sender to whatever a send raises) says what it means.
    The frame may go twice on a closed connection: the receiver deduplicates
    it by message id (``retry_safe``)."""
    ep = endpoints.by_name("qs", "federated_enqueue")
    body = svc.frame_outbound(item)
    svc.stats["federated_enqueue_sent"] += 1
    hs.federation.check_federates(item.destination)
    urls = await hs.federation.discovery.discover(item.destination)
    if hs.metrics is not None:
        hs.metrics.batch_sent.observe(1)   # a lone message travels as a QsToQsMessage
    return Delivered(await hs.federation.fetcher.request(
        ep.method, urls.base("qs") + ep.path, content=body, headers={"content-type": MEDIA_TYPE},
        domain=item.destination, expect=MEDIA_TYPE, retry_safe=True))


async def _send_federated_batch(hs, svc: QsService, items: list[OutboundItem]) -> list[Outcome]:
    """One delivery attempt of several outbound items of one destination
    (a backlog): POST them as one signed QsToQsBatch to the destination's
    ``federated_enqueue_batch`` endpoint; its answer has one result per
    item (:meth:`QsService.batch_outcomes`). A refusal of the request as a
    whole, or a failure, raises and concerns every item — except a 404: a
    peer that has no such endpoint gets the items one by one, each as a
    QsToQsMessage. Safe to send twice:
    the receiver deduplicates each entry by its message id."""
    ep = endpoints.by_name("qs", "federated_enqueue_batch")
    body = svc.frame_outbound_batch(items)
    svc.stats["federated_enqueue_sent"] += len(items)
    svc.stats["federated_batches_sent"] += 1
    destination = items[0].destination
    hs.federation.check_federates(destination)
    urls = await hs.federation.discovery.discover(destination)
    if hs.metrics is not None:
        hs.metrics.batch_sent.observe(len(items))
    try:
        answer = await hs.federation.fetcher.request(
            ep.method, urls.base("qs") + ep.path, content=body, headers={"content-type": MEDIA_TYPE},
            domain=destination, expect=MEDIA_TYPE, retry_safe=True)
    except RemoteRefused as e:
        if e.status != 404:
            raise
        # a peer without the batch row (another implementation): each message alone, in order
        return [await _send_alone(hs, svc, item) for item in items]
    return svc.batch_outcomes(items, answer)


async def _send_alone(hs, svc: QsService, item: OutboundItem) -> Outcome:
    """:func:`_send_federated` with a failure turned into its outcome (a
    programming error still raises)."""
    try:
        return await _send_federated(hs, svc, item)
    except Exception as e:
        outcome = outcome_of_failure(e)
        if outcome is None:
            raise
        return outcome


class Operator:
    """Operator actions inside a running homeserver (key rotation,
    revocation): the same as ``phoenix-ref admin`` (:mod:`phoenix_ref.admin`)
    does from outside, taking effect at once instead of at the next
    :meth:`Homeserver.watch_operator_changes` round."""

    def __init__(self, hs: Homeserver):
        self.hs = hs

    async def revoke_intermediate(self, fingerprint: bytes | None = None) -> bytes:
        """:func:`phoenix_ref.admin.revoke_intermediate` on this homeserver's
        keystore and AS store; returns the revoked fingerprint."""
        return await trio.to_thread.run_sync(admin.revoke_intermediate, self.hs.keystore, self.hs.as_store,
                                             fingerprint, self.hs.clock.now_ms())

    async def rotate_qs_signing_key(self) -> bytes:
        return (await trio.to_thread.run_sync(self.hs.keystore.rotate_qs_signing_key)).public

    async def rotate_ds_signing_key(self) -> bytes:
        return (await trio.to_thread.run_sync(self.hs.keystore.rotate_ds_signing_key)).public

    async def rotate_queue_config_key(self) -> bytes:
        return (await trio.to_thread.run_sync(self.hs.keystore.rotate_queue_config_key)).public
