"""A multi-homeserver test harness: named homeservers over (real or emulated) TLS.

``Deployment`` runs homeservers ``hs1``, ``hs2``, ``hs3`` (domains
``a.example``, ``b.example``, ``c.example``; other names get
``<name>.example``) in one of two modes:

* ``"in_process"``: every homeserver's app runs in this Trio run (lifespan
  through ``app.running()``); HTTP goes through an httpx transport that
  routes by host name to the right app with scheme ``https``. Before
  delivering a request it runs a real TLS handshake in memory between the
  caller's ``ssl.SSLContext`` and the target's certificate, so certificate
  checks (and a plain-HTTP peer) fail exactly as on a network. Like the
  keep-alive pool of a real httpx client, a transport reuses a connection
  that completed its handshake: it handshakes again only after the
  homeserver went down or restarted (or its server context changed).
* ``"sockets"``: anycorn serves every homeserver over TLS 1.3 on 127.0.0.1
  (port bound first with port 0); the federation clients use the resolve
  override so the certificates are checked against the real names.

All certificates come from one ``trustme`` CA, whose ``ca.pem`` is every
homeserver's outbound CA bundle. Variants for negative tests:
``wrong_ca=[names]`` (certificate from another CA), ``plain_http=[names]``
(served without TLS), ``no_well_known=[names]`` (no delegation document).
:meth:`Deployment.set_down` makes a homeserver unreachable (in-process: its
connections are refused; sockets: its server is stopped and the port
closed) and :meth:`Deployment.set_up` brings it back with the same data.
``metrics=True`` gives every homeserver an operator metrics listener on a
free loopback port (:meth:`Node.metrics_client` scrapes it).

A third mode, ``"target"``, starts nothing: the homeservers are a deployment
somebody else runs, described by a deployment file (``pytest
--phoenix-target FILE``, which calls :func:`use_target`).
``Deployment("target", names)`` is then a
:class:`~phoenix_ref.target_deployment.TargetDeployment`, which gives only
what HTTPS gives. While a target is in use, asking for a local mode is a
:class:`~phoenix_ref.target_deployment.NeedsControl` error.

Time: one :class:`~phoenix_ref.clock.FixedClock` (starting at the real time)
is shared by every homeserver, so tests move TTLs and expiry by hand.

Life cycle: ``async with Deployment(...) as d`` runs the homeservers in a
nursery opened and closed by that ``async with`` in the entering task (also
when a pytest-trio fixture yields inside it). Leaving it — normally, with
an error, or cancelled — stops every node (bounded by ``STOP_TIMEOUT_S``),
closes the listening sockets and removes the temporary directory; a failed
start-up does the same and re-raises.

Usage::

    async with Deployment("sockets") as d:
        keys = await d["hs1"].hs.federation.keys.qs_verifying_keys(d["hs2"].domain)
"""

from __future__ import annotations

import shutil
import socket
import ssl
import tempfile
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Sequence

import httpx
import trio

from .cli import generate_config, load_or_create_ca, serve, server_ssl_context, write_server_cert
from .clock import Clock, FixedClock
from .config import Config, Limits, OperatorSettings
from .federation.client import client_ssl_context, https_transport
from .homeserver import Homeserver
from .target import Target
from .target_deployment import NeedsControl, TargetDeployment, tls_stream_to

MODES = ("in_process", "sockets")   # the modes that run phoenix_ref homeservers here
TARGET = "target"                   # the mode that tests somebody else's (use_target)
DOMAINS = {"hs1": "a.example", "hs2": "b.example", "hs3": "c.example"}
SERVICES = ("as", "ds", "qs")
STOP_TIMEOUT_S = 30.0   # teardown: how long the nodes get to stop before they are cancelled


def _free_port() -> int:
    """A TCP port on loopback that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def names_of(domain: str) -> list[str]:
    return [domain] + [f"{s}.{domain}" for s in SERVICES]


# --- TLS in memory (in-process mode) --------------------------------------------------------

#: What a plain-HTTP server answers to a TLS ClientHello (h11 refuses it).
PLAIN_HTTP_ANSWER = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


def tls_handshake(client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext | None, hostname: str) -> None:
    """Run a TLS handshake between two contexts through memory buffers.

    Raises the client's ``ssl.SSLError`` (``SSLCertVerificationError`` for a
    certificate that does not verify for ``hostname``). ``server_ctx`` None
    stands for a peer that speaks plain HTTP.
    """
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=hostname)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True) if server_ctx else None
    client_done = server_done = False
    for _ in range(8):
        if not client_done:
            try:
                client.do_handshake()
                client_done = True
            except ssl.SSLWantReadError:
                pass
        if server is None:
            c_out.read()
            c_in.write(PLAIN_HTTP_ANSWER)
            server_done = True
        else:
            s_in.write(c_out.read())
            if not server_done:
                try:
                    server.do_handshake()
                    server_done = True
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLError:
                    server_done = True   # the client reads the alert and fails below
            c_in.write(s_out.read())
        if client_done and server_done:
            return
    raise ssl.SSLError("TLS handshake did not complete")


class InProcessNetwork:
    """Host name → node; hands out transports bound to a caller's SSL context."""

    def __init__(self, deployment: "Deployment"):
        self.deployment = deployment

    def node_for(self, host: str) -> "Node | None":
        for node in self.deployment.nodes.values():
            if host.lower() in names_of(node.domain):
                return node
        return None

    def transport(self, ssl_context: ssl.SSLContext) -> httpx.AsyncBaseTransport:
        return _RoutingTransport(self, ssl_context)


class _RoutingTransport(httpx.AsyncBaseTransport):
    """Routes requests to in-process apps, modelling a keep-alive connection pool.

    A real httpx client keeps a connection per host open and runs the TLS
    handshake once per connection, not per request. This transport does the
    same: it remembers, per host, the node incarnation (``Node.epoch``) and
    server context its last successful handshake was made with, and skips the
    handshake while both are unchanged. A node going down or restarting (a
    new epoch) or changing its server context drops the connection, so the
    next request handshakes again and certificate checks fail as before.
    This is harness realism only; no server behaviour depends on it.
    """

    def __init__(self, network: InProcessNetwork, ssl_context: ssl.SSLContext):
        self.network = network
        self.ssl_context = ssl_context
        self._pool: dict[str, tuple[int, ssl.SSLContext]] = {}   # host → (node epoch, server ctx)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        node = self.network.node_for(host)
        if node is None:
            raise httpx.ConnectError(f"{host}: name does not resolve", request=request)
        if not node.up or node.hs is None:
            raise httpx.ConnectError(f"{host}: connection refused", request=request)
        if request.url.scheme == "https":
            pooled = self._pool.get(host)
            if pooled is None or pooled[0] != node.epoch or pooled[1] is not node.server_ssl_context:
                self._pool.pop(host, None)
                try:
                    tls_handshake(self.ssl_context, node.server_ssl_context, host)
                except ssl.SSLError as e:
                    raise httpx.ConnectError(f"{host}: {e}", request=request) from e
                self._pool[host] = (node.epoch, node.server_ssl_context)
        elif node.server_ssl_context is not None:
            raise httpx.ConnectError(f"{host}: plain HTTP to a TLS port", request=request)
        return await httpx.ASGITransport(app=node.hs.asgi).handle_async_request(request)


# --- nodes and the deployment ----------------------------------------------------------------

@dataclass
class Node:
    """One homeserver of a deployment."""
    name: str
    domain: str
    dir: Path
    config: Config
    port: int = 0
    wrong_ca: bool = False
    plain_http: bool = False
    hs: Homeserver | None = None
    up: bool = False
    server_ssl_context: ssl.SSLContext | None = None
    epoch: int = 0                # bumped at every start and stop: pooled connections end
    _stop: trio.Event | None = field(default=None, repr=False)
    _stopped: trio.Event | None = field(default=None, repr=False)

    def metrics_client(self) -> httpx.AsyncClient:
        """A client of this node's operator metrics listener
        (``http://ADDRESS:PORT``): over the network in "sockets" mode,
        straight to the metrics app in-process. The caller closes it."""
        listen = self.config.operator.metrics_listen
        if listen is None or self.hs is None:
            raise RuntimeError(f"{self.name} has no metrics listener (Deployment(metrics=True))")
        if self.port:
            return httpx.AsyncClient(base_url=f"http://{listen}", trust_env=False, timeout=10.0)
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.hs.metrics_asgi),
                                 base_url=f"http://{listen}", trust_env=False)

    def url(self, service: str, path: str) -> str:
        """The URL of ``path`` on one of this node's services (``""`` for the bare domain)."""
        host = f"{service}.{self.domain}" if service else self.domain
        port = f":{self.port}" if self.port else ""
        return f"https://{host}{port}{path}"


_target: Target | None = None


def use_target(target: Target | None) -> None:
    """Make ``Deployment("target", ...)`` mean ``target`` (None: no target).

    The spec plugin calls it for ``--phoenix-target``; while a target is in
    use, the local modes are refused (the run is about the target)."""
    global _target
    _target = target


class Deployment:
    """Named homeservers for tests and demos (see module docstring)."""

    def __new__(cls, mode: str = "in_process", names: Sequence[str] = ("hs1", "hs2"), **kwargs: Any):
        if mode == TARGET:
            if _target is None:
                raise ValueError("mode 'target' needs a deployment file (pytest --phoenix-target FILE)")
            return TargetDeployment(_target, names, **kwargs)   # (not a Deployment: __init__ is skipped)
        if _target is not None:
            raise NeedsControl(f"phoenix_ref homeservers of its own (Deployment({mode!r}))")
        return super().__new__(cls)

    def __init__(self, mode: str = "in_process", names: Sequence[str] = ("hs1", "hs2"), *,
                 wrong_ca: Sequence[str] = (), plain_http: Sequence[str] = (),
                 no_well_known: Sequence[str] = (), clock: FixedClock | None = None,
                 discovery_overrides: bool = False, limits: Limits | None = None, metrics: bool = False):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.mode = mode
        self.names = list(dict.fromkeys([*names, *wrong_ca, *plain_http]))
        self.wrong_ca, self.plain_http, self.no_well_known = set(wrong_ca), set(plain_http), set(no_well_known)
        self.discovery_overrides = discovery_overrides
        self.limits = limits          # every homeserver's config limits (None: defaults)
        self.metrics = metrics        # every homeserver with an operator metrics listener
        self.clock = clock or FixedClock(Clock().now_ms())
        self.nodes: dict[str, Node] = {}
        self.network = InProcessNetwork(self)
        self.ca = None
        self.tmp: Path | None = None
        self._nursery: trio.Nursery | None = None
        self._running_cm: Any = None
        self._sockets: dict[str, socket.socket] = {}

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]

    # --- setup and teardown -----------------------------------------------------------------

    async def __aenter__(self) -> "Deployment":
        if self._running_cm is not None:
            raise RuntimeError("this Deployment is already running")
        cm = self._running()
        entered = await cm.__aenter__()   # on failure it has cleaned up already
        self._running_cm = cm
        return entered

    async def __aexit__(self, *exc: Any) -> bool | None:
        cm, self._running_cm = self._running_cm, None
        return await cm.__aexit__(*exc)

    @asynccontextmanager
    async def _running(self) -> AsyncIterator["Deployment"]:
        """The deployment's whole life in one task: files, nursery, nodes.

        ``__aenter__``/``__aexit__`` only delegate here, so the nursery is a
        plain ``async with`` that opens and closes in the entering task, and a
        failed start-up unwinds exactly like a failed test body: nodes stop,
        sockets close, the temporary directory goes, the error propagates
        (a lone error unwrapped from the nursery's exception group).
        """
        self.tmp = Path(tempfile.mkdtemp(prefix="phoenix-deployment-"))
        try:
            await trio.to_thread.run_sync(self._prepare)
            sole = None
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    try:
                        for name in self.names:
                            await self.set_up(name)
                        yield self
                    finally:
                        await self._stop_all()
                        nursery.cancel_scope.cancel()   # whatever did not stop in time
            except BaseExceptionGroup as group:
                if len(group.exceptions) != 1:
                    raise
                sole = group.exceptions[0]
            if sole is not None:   # the caller sees its own error, not a group of one
                raise sole
        finally:
            self._nursery = None
            for sock in self._sockets.values():
                sock.close()
            self._sockets.clear()
            shutil.rmtree(self.tmp, ignore_errors=True)

    async def _stop_all(self) -> None:
        """Stop every running node, shielded (the caller may be cancelled) and
        bounded (a node that does not stop in time is cancelled with the nursery)."""
        with trio.CancelScope(shield=True), trio.move_on_after(STOP_TIMEOUT_S):
            for name, node in self.nodes.items():
                if node.up:
                    await self.set_down(name)

    def _domain(self, name: str) -> str:
        return DOMAINS.get(name, f"{name}.example")

    def _prepare(self) -> None:
        """Blocking part of setup: CA, ports, configs and key material."""
        self.ca = load_or_create_ca(self.tmp / "ca")
        other_ca = load_or_create_ca(self.tmp / "other-ca") if self.wrong_ca else None
        ports = {}
        if self.mode == "sockets":
            for name in self.names:
                self._sockets[name] = self._bind(0)
                ports[name] = self._sockets[name].getsockname()[1]
        resolve = {h: f"127.0.0.1:{ports[n]}" for n in self.names
                   for h in names_of(self._domain(n))} if ports else {}
        for name in self.names:
            domain, port = self._domain(name), ports.get(name, 443)
            d = self.tmp / name
            overrides = {}
            if self.discovery_overrides:
                overrides = {self._domain(n): {s: f"https://{s}.{self._domain(n)}:{ports.get(n, 443)}"
                                               for s in SERVICES} for n in self.names if n != name}
            extra: dict[str, Any] = {"limits": self.limits} if self.limits is not None else {}
            if self.metrics:   # a free loopback port (served in "sockets" mode; in-process, use Node.metrics_client)
                extra["operator"] = OperatorSettings(metrics_listen=f"127.0.0.1:{_free_port()}")
            cfg = generate_config(d, domain, port=port, test_ca=True, test_ca_dir=self.tmp / "ca",
                                  now_ms=self.clock.now_ms(), resolve=resolve, discovery=overrides,
                                  well_known_enabled=name not in self.no_well_known, **extra)
            if name in self.wrong_ca:
                write_server_cert(other_ca, domain, d)   # replaces cert.pem/key.pem
            node = Node(name, domain, d, cfg, port=ports.get(name, 0),
                        wrong_ca=name in self.wrong_ca, plain_http=name in self.plain_http)
            if not node.plain_http:
                node.server_ssl_context = server_ssl_context(d / "cert.pem", d / "key.pem")
            self.nodes[name] = node

    @staticmethod
    def _bind(port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(128)
        sock.set_inheritable(False)
        return sock

    # --- running and stopping homeservers ------------------------------------------------------

    def _new_homeserver(self, node: Node) -> Homeserver:
        transport = self.network.transport if self.mode == "in_process" else None
        return Homeserver(node.config, clock=self.clock, federation_transport=transport)

    async def set_up(self, name: str) -> Node:
        """Start (or restart) homeserver ``name`` from its config and data directory.

        Each homeserver lives in its own task of the deployment's nursery, so
        homeservers can stop and start in any order.
        """
        if self._nursery is None:
            raise RuntimeError("the Deployment is not running (use `async with Deployment(...)`)")
        node = self.nodes[name]
        if node.up:
            return node
        node.hs = self._new_homeserver(node)
        node.epoch += 1
        node._stop = trio.Event()
        node._stopped = trio.Event()
        runner = self._run_in_process if self.mode == "in_process" else self._run_sockets
        await self._nursery.start(runner, node)
        node.up = True
        return node

    async def _run_in_process(self, node: Node, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with node.hs.app.running():
                task_status.started()
                await node._stop.wait()
        finally:
            node._stopped.set()

    async def _run_sockets(self, node: Node, task_status=trio.TASK_STATUS_IGNORED) -> None:
        sock = self._sockets.get(node.name) or self._bind(node.port)
        self._sockets[node.name] = sock
        try:
            await serve(node.config, homeserver=node.hs, sock=sock, tls=not node.plain_http,
                        shutdown_trigger=node._stop.wait, task_status=task_status)
        finally:
            self._sockets.pop(node.name).close()   # the port now refuses connections
            node._stopped.set()

    async def set_down(self, name: str) -> None:
        """Make homeserver ``name`` unreachable (its data stays)."""
        node = self.nodes[name]
        node.up = False
        node.epoch += 1
        if node._stop is not None:
            node._stop.set()
            await node._stopped.wait()
            node._stop = node._stopped = None

    async def restart(self, name: str) -> Node:
        await self.set_down(name)
        return await self.set_up(name)

    # --- clients for tests ------------------------------------------------------------------------

    def client(self, *, ca_bundle: Path | None = None) -> httpx.AsyncClient:
        """An HTTPS client that reaches every node, verifying against the deployment CA.

        The caller closes it (``async with d.client() as c``).
        """
        ctx = client_ssl_context(ca_bundle or self.tmp / "ca" / "ca.pem")
        if self.mode == "in_process":
            transport = self.network.transport(ctx)
        else:
            resolve = {h: f"127.0.0.1:{n.port}" for n in self.nodes.values() for h in names_of(n.domain)}
            transport = https_transport(ctx, resolve)
        return httpx.AsyncClient(transport=transport, trust_env=False, timeout=10.0)

    def asgi_client(self, name: str, scheme: str = "https") -> httpx.AsyncClient:
        """A client straight to node ``name``'s app (no TLS emulation; in-process only)."""
        node = self.nodes[name]
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=node.hs.asgi),
                                 base_url=f"{scheme}://{node.domain}", trust_env=False)

    @asynccontextmanager
    async def websocket(self, name: str, service: str, path: str) -> AsyncIterator[Any]:
        """A client websocket to ``wss://<service>.<domain of name><path>``.

        Sockets mode: a real TLS connection (``wsproto`` over a Trio SSL
        stream, certificate checked against the deployment CA). In-process
        mode: the TLS handshake is emulated as for HTTP, then the ASGI
        websocket events go straight to the node's app. Either way the object
        has ``send_bytes``, ``receive_bytes`` and ``aclose``;
        ``receive_bytes`` raises
        :class:`~phoenix_ref.client.qs_client.WebsocketRefused` on close.
        """
        from .client.qs_client import WsprotoTransport
        node = self.nodes[name]
        host = f"{service}.{node.domain}"
        if self.mode == "sockets":
            ws = WsprotoTransport(host, path)
            try:
                await ws.connect(("127.0.0.1", node.port), str(self.tmp / "ca" / "ca.pem"))
                yield ws
            finally:
                await ws.aclose()
            return
        if not node.up or node.hs is None:
            raise ConnectionRefusedError(f"{host}: connection refused")
        tls_handshake(client_ssl_context(self.tmp / "ca" / "ca.pem"), node.server_ssl_context, host)
        async with trio.open_nursery() as nursery:
            ws = AsgiWebsocket(node.hs.asgi, host, path)
            await ws.connect(nursery)
            try:
                yield ws
            finally:
                await ws.aclose()
                nursery.cancel_scope.cancel()

    @asynccontextmanager
    async def tls_stream(self, name: str, alpn: str) -> AsyncIterator[trio.SSLStream]:
        """A verified TLS 1.3 connection to node ``name``'s domain that has
        negotiated ``alpn`` (``"h2"``, ``"http/1.1"``), for tests that write
        protocol bytes themselves. Sockets mode only: in-process nodes have
        no HTTP server."""
        if self.mode != "sockets":
            raise NeedsControl(f"a raw TLS connection to {name} (Deployment({self.mode!r}) has no sockets)")
        node = self.nodes[name]
        async with tls_stream_to(("127.0.0.1", node.port), node.domain,
                               client_ssl_context(self.tmp / "ca" / "ca.pem"), alpn) as stream:
            yield stream


class AsgiWebsocket:
    """A websocket client speaking ASGI events to an app (in-process mode)."""

    def __init__(self, app: Any, host: str, path: str):
        self.app = app
        self.scope = {"type": "websocket", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
                      "scheme": "wss", "path": path, "raw_path": path.encode(), "query_string": b"",
                      "root_path": "", "headers": [(b"host", host.encode())], "subprotocols": [],
                      "client": ("127.0.0.1", 50000), "server": (host, 443), "extensions": {}}
        self._to_app, self._app_in = trio.open_memory_channel(16)
        self._app_out, self._from_app = trio.open_memory_channel(16)
        self.closed: tuple[int, str] | None = None

    async def connect(self, nursery: trio.Nursery) -> None:
        async def run_app() -> None:
            try:
                await self.app(self.scope, self._app_in.receive, self._app_out.send)
            finally:
                await self._app_out.send({"type": "websocket.close", "code": 1006, "reason": "app ended"})

        nursery.start_soon(run_app)
        await self._to_app.send({"type": "websocket.connect"})
        event = await self._from_app.receive()
        if event["type"] != "websocket.accept":
            from .client.qs_client import WebsocketRefused
            raise WebsocketRefused(event.get("code", 1006), event.get("reason", "") or "refused")

    async def send_bytes(self, data: bytes) -> None:
        await self._to_app.send({"type": "websocket.receive", "bytes": data})

    async def receive_bytes(self) -> bytes:
        from .client.qs_client import WebsocketRefused
        while True:
            event = await self._from_app.receive()
            if event["type"] == "websocket.close":
                self.closed = (event.get("code", 1000), event.get("reason", "") or "")
                raise WebsocketRefused(*self.closed)
            if event["type"] == "websocket.send" and event.get("bytes") is not None:
                return event["bytes"]
            if event["type"] == "websocket.send":
                raise WebsocketRefused(1003, "unexpected text message")

    async def aclose(self) -> None:
        try:
            self._to_app.send_nowait({"type": "websocket.disconnect", "code": 1000})
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            pass


__all__ = ["Deployment", "Node", "MODES", "TARGET", "use_target", "DOMAINS", "tls_handshake", "InProcessNetwork", "AsgiWebsocket"]

