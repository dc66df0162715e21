"""One homeserver: config → key material, stores, federation client → one ASGI app.

A homeserver is one domain ``D`` with three services reached at
``as.D``, ``ds.D`` and ``qs.D`` (``spec/federation/use_cases.md#homeserver-domain-and-discovery``)
plus the delegation document ``https://D/.well-known/phoenix``
(``federation/discovery.py``). :class:`Homeserver` serves all of them as
one Quart-Trio app that routes by ``Host``; an unknown host gets
``404 unknown_host``.

Lifecycle: the app's lifespan startup loads the keystore and opens one
SQLite store per service in the data directory, and builds the federation
client; shutdown closes them. Background tasks of services run in
``app.nursery`` (Quart-Trio's lifespan nursery).

Plug-in points for the services built later: endpoint rows in
``endpoints.py`` with handlers in ``<service>/routes.py``; Privacy Pass via
:attr:`Homeserver.privacy_pass` (called for every row whose
``privacy_pass`` is set), by default the homeserver's
:class:`~phoenix_ref.privacy_pass_gate.PrivacyPassGate`.
"""

from __future__ import annotations

import gc
import logging
import ssl
from typing import Any, Callable

import trio
from quart import Response
from quart_trio import QuartTrio

from . import endpoints
from .authentication import routes as as_routes
from .authentication.store import AsStore
from .clock import Clock
from .config import Config
from .delivery import routes as ds_routes
from .delivery.store import DsStore
from .federation.client import FederationClient
from .federation.discovery import WELL_KNOWN_PATH, well_known_document
from .federation.outbound_crypto import OutboundKeys
from .ids import Fqdn, InvalidId
from .http import Call, CallCheck, decode_body, install_error_handlers, make_view, read_body, require_tls
from .keystore import Keystore
from .privacy_pass_gate import PrivacyPassGate
from .queuing import routes as qs_routes
from .queuing.store import QsStore

log = logging.getLogger(__name__)

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
    replaces the network of the federation client (in-process tests).
    """

    def __init__(self, config: Config, *, clock: Clock | None = None,
                 federation_transport: Callable[[ssl.SSLContext], Any] | None = None):
        self.config = config
        self.domain = config.domain
        self.clock = clock or Clock()
        self._federation_transport = federation_transport
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
        #: The running QS (queuing/core.py QsService), set at startup: the DS
        #: hands FanOutMessages to ``qs.local_enqueue`` (never over HTTP).
        self.qs = None
        self.operator = Operator(self)
        self.app = self._build_app()
        self.asgi = _HostNormaliser(self.app)

    # --- app -------------------------------------------------------------------------

    def hosts(self) -> dict[str, str]:
        """Host name → what it serves."""
        return {self.config.host(s): s for s in ("as", "ds", "qs")} | {self.domain: "well-known"}

    def _build_app(self) -> QuartTrio:
        app = QuartTrio(__name__, host_matching=True, static_folder=None)
        app.config["MAX_CONTENT_LENGTH"] = self.config.limits.max_body_bytes
        app.config["BODY_TIMEOUT"] = int(self.config.limits.request_timeout_s * 3)
        handlers = {"as": as_routes.handlers(self), "ds": ds_routes.handlers(self),
                    "qs": qs_routes.handlers(self)}
        for service, table in handlers.items():
            rows = {ep.name for ep in endpoints.ENDPOINTS if ep.service == service}
            if rows != set(table):
                raise RuntimeError(f"{service}: endpoint table {sorted(rows)} and handlers "
                                   f"{sorted(table)} disagree")
        for ep in endpoints.ENDPOINTS:
            view = make_view(ep, handlers[str(ep.service)][ep.name], now_ms=self.clock.now_ms,
                             max_body=self.config.limits.max_body_bytes, check=self._check_call)
            app.add_url_rule(ep.path, endpoint=f"{ep.service}.{ep.name}", view_func=view,
                             methods=[ep.method], host=self.config.host(str(ep.service)),
                             provide_automatic_options=False)
        ws_views = qs_routes.websocket_handlers(self)
        for ep in endpoints.ENDPOINTS:
            if ep.websocket:   # the same path, opened as a websocket (RFC 6455)
                app.add_websocket(ep.path, endpoint=f"{ep.service}.{ep.name}.websocket",
                                  view_func=ws_views[ep.name], host=self.config.host(str(ep.service)))
        app.add_url_rule(WELL_KNOWN_PATH, endpoint="well_known", view_func=self._well_known,
                         methods=["GET"], host=self.domain, provide_automatic_options=False)
        install_error_handlers(app, lambda host: host in self.hosts())
        app.before_serving(self._startup)
        app.after_serving(self._shutdown)
        return app

    async def _well_known(self) -> Response:
        """``GET https://D/.well-known/phoenix`` (delegation, docs/decisions.md)."""
        require_tls()
        if not self.config.well_known_enabled:
            from .errors import NotFound
            raise NotFound("this homeserver publishes no delegation", code="unknown_endpoint")
        max_body = self.config.limits.max_body_bytes
        decode_body(None, await read_body(max_body), max_body)   # takes no body
        return Response(well_known_document(self.config.announced_urls()), status=200,
                        content_type="application/json")

    async def _check_call(self, endpoint: endpoints.Endpoint, call: Call) -> None:
        if endpoint.privacy_pass and self.privacy_pass is not None:
            await self.privacy_pass(endpoint, call)

    # --- lifespan ------------------------------------------------------------------------

    async def _startup(self) -> None:
        cfg = self.config
        gc.set_threshold(*cfg.performance.gc_thresholds)   # process-wide (config.Performance)
        self.keystore = await trio.to_thread.run_sync(Keystore.load, cfg.keys_dir, cfg.domain)
        self.as_store = await trio.to_thread.run_sync(
            lambda: AsStore(cfg.data_dir / "as.sqlite3", max_messages=cfg.limits.as_max_messages))
        self.qs_store = await QsStore.open(cfg.data_dir / "qs.sqlite3",
                                           OutboundKeys(self.keystore.qs_outbound_secrets))
        self.ds_store = await DsStore.open(cfg.data_dir / "ds.sqlite3")
        # one Privacy Pass gate for AS, DS and QS (issuer keys, spent tokens);
        # it checks tokens unless a test plugged in its own check
        self.privacy_pass_gate = await PrivacyPassGate.open(cfg.data_dir / "privacy_pass.sqlite3", cfg.domain,
                                                            self.clock.now_ms())
        if self.privacy_pass is None or isinstance(self.privacy_pass, PrivacyPassGate):
            self.privacy_pass = self.privacy_pass_gate
        self.federation = FederationClient(cfg, clock=self.clock, transport=self._federation_transport)
        self.qs = await qs_routes.start(self)   # QS service + outbound sender in app.nursery
        await as_routes.start(self)             # AS pruning of inactive client entries

    async def _shutdown(self) -> None:
        await qs_routes.stop(self)
        await as_routes.stop(self)
        if self.federation is not None:
            await self.federation.aclose()
        for store in (self.as_store, self.qs_store, self.ds_store, self.privacy_pass_gate):
            if store is not None:
                await trio.to_thread.run_sync(store.close)


class Operator:
    """Operator actions on a running homeserver (key rotation, revocation)."""

    def __init__(self, hs: Homeserver):
        self.hs = hs

    async def revoke_intermediate(self, fingerprint: bytes | None = None) -> bytes:
        """Revoke an AS intermediate credential (default: the current one) and,
        if it was the current one, issue a fresh intermediate so the AS keeps
        signing. *Get AS credentials* lists the revoked fingerprint from now on
        (``spec/authentication_service.md#get-as-credentials``)."""
        ks = self.hs.keystore
        current = ks.as_intermediates[0][0].fingerprint()
        fp = current if fingerprint is None else fingerprint
        if fp not in {c.fingerprint() for c, _ in ks.as_intermediates}:
            raise KeyError("no such intermediate credential")
        await self.hs.as_store.revoke(fp, self.hs.clock.now_ms())
        if fp == current:
            await trio.to_thread.run_sync(ks.issue_intermediate, self.hs.clock.now_ms())
        return fp

    async def rotate_qs_signing_key(self) -> bytes:
        return (await trio.to_thread.run_sync(self.hs.keystore.rotate_qs_signing_key)).public

    async def rotate_ds_signing_key(self) -> bytes:
        return (await trio.to_thread.run_sync(self.hs.keystore.rotate_ds_signing_key)).public

    async def rotate_queue_config_key(self) -> bytes:
        return (await trio.to_thread.run_sync(self.hs.keystore.rotate_queue_config_key)).public
