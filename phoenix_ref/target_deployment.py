"""``Deployment("target", names)``: the suite's homeservers are somebody else's.

In target mode (``pytest --phoenix-target FILE``, :mod:`phoenix_ref.target`)
the conformance suite starts nothing. :class:`TargetDeployment` maps the
names a test asks for (``hs1``/``hs2``/``hs3``, or their domains
``a.example``/…) onto the target's homeservers and gives what a client over
HTTPS can have: :meth:`TargetDeployment.client` (verified TLS to the
target's addresses), :meth:`TargetDeployment.websocket`,
:meth:`TargetDeployment.tls_stream` (a verified TLS connection for tests
that write protocol bytes themselves), a read-only real clock, and per node
its ``name``, ``domain`` and :meth:`TargetNode.url`.

Everything else a local ``Deployment`` offers reaches into a homeserver the
suite runs itself — the ``Homeserver`` object (``node.hs``), its config and
files, moving the shared clock, stopping and restarting nodes, variants
such as a wrong CA. Here each of those raises :class:`NeedsControl`, whose
message tells the test's author to mark the test
``@pytest.mark.needs_control(...)``: a marked test is not run against a
target and is reported *unsupported* (``phoenix_ref.spec_plugin``). So a
test that silently depended on control fails loudly instead of passing on
something it never checked.

A test whose needs depend on the target — a third homeserver, limits the
deployment file does not declare — gets :class:`Unsupported`, which the
plugin reports as unsupported, with the reason.
"""

from __future__ import annotations

import ssl
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Sequence

import httpx

from .clock import Clock
from .config import Limits
from .federation.client import HttpsTransport, client_ssl_context, open_tls_stream
from .target import SUITE_DOMAINS, Target, TargetHomeserver

_BY_DOMAIN = {d: n for n, d in SUITE_DOMAINS.items()}


class NeedsControl(RuntimeError):
    """An unmarked test reached for control a remote target cannot give."""

    def __init__(self, what: str):
        super().__init__(
            f"target mode: this test reaches for {what}, which a remote target cannot give; "
            f"mark it @pytest.mark.needs_control(\"...\") so that target runs report it unsupported")
        self.what = what


class Unsupported(Exception):
    """This target cannot run this test (a homeserver or a configuration it lacks).

    The spec plugin reports the test as *unsupported*, with this message.
    """


class TargetClock(Clock):
    """The real wall clock, which a test can read but not move."""

    def advance(self, ms: int) -> None:
        raise NeedsControl("the homeservers' clock (clock.advance)")

    @property
    def t(self) -> int:
        return self.now_ms()

    @t.setter
    def t(self, value: int) -> None:
        raise NeedsControl("the homeservers' clock (setting clock.t)")


def ssl_context(cas: Sequence[Any]) -> ssl.SSLContext:
    """A verifying TLS 1.3 client context trusting exactly the given CA files
    (none given: the system store, as ``client_ssl_context``)."""
    if not cas:
        return client_ssl_context(None)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)   # checks host names and certificates
    for ca in dict.fromkeys(str(c) for c in cas):
        ctx.load_verify_locations(cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


@asynccontextmanager
async def tls_stream_to(address: tuple[str, int], domain: str, ctx: ssl.SSLContext,
                        alpn: str) -> AsyncIterator[Any]:
    """A TLS connection to ``address`` verified for ``domain`` that has
    negotiated ``alpn``, as a Trio SSL stream (closed on leaving)."""
    stream = await open_tls_stream(address, domain, ctx, alpn)
    try:
        if stream.selected_alpn_protocol() != alpn:
            raise ssl.SSLError(f"{domain} did not agree to {alpn} (ALPN: {stream.selected_alpn_protocol()})")
        yield stream
    finally:
        await stream.aclose()


class TargetNode:
    """One of the target's homeservers, as a test sees it."""

    def __init__(self, name: str, homeserver: TargetHomeserver):
        self.name = name
        self.domain = homeserver.domain
        self.homeserver = homeserver

    def url(self, service: str, path: str) -> str:
        """``https://<service>.<domain><path>`` (``""``: the bare domain); the
        client's resolve override sends it to the homeserver's address."""
        host = f"{service}.{self.domain}" if service else self.domain
        return f"https://{host}{path}"

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise NeedsControl(f"the internals of homeserver {self.name} (node.{attr})")

    def __repr__(self) -> str:
        return f"TargetNode({self.name!r}, {self.domain!r})"


class TargetDeployment:
    """A running target's homeservers under the names a test uses (module docstring)."""

    mode = "target"

    def __init__(self, target: Target, names: Sequence[str] = ("hs1", "hs2"), *,
                 wrong_ca: Sequence[str] = (), plain_http: Sequence[str] = (),
                 no_well_known: Sequence[str] = (), clock: Any = None,
                 discovery_overrides: bool = False, limits: Limits | None = None, metrics: bool = False):
        variants = [what for what, asked in (
            ("a homeserver with a certificate from another CA (wrong_ca)", wrong_ca),
            ("a homeserver serving plain HTTP (plain_http)", plain_http),
            ("a homeserver without .well-known delegation (no_well_known)", no_well_known),
            ("a clock of its own for the homeservers (clock=)", clock is not None),
            ("static discovery overrides in the homeservers' configs (discovery_overrides)", discovery_overrides),
            ("the homeservers' operator metrics listeners (metrics)", metrics)) if asked]
        if variants:
            raise NeedsControl("; ".join(variants))
        self.target = target
        self.clock = TargetClock()
        self.limits = limits
        self.nodes: dict[str, TargetNode] = {}
        for asked in dict.fromkeys(names):
            suite_name = asked if asked in SUITE_DOMAINS else _BY_DOMAIN.get(asked)
            if suite_name is None:
                raise NeedsControl(f"a homeserver named {asked!r} (a target has hs1, hs2, hs3 only)")
            hs = target.homeservers.get(suite_name)
            if hs is None:
                raise Unsupported(f"needs {suite_name} ({SUITE_DOMAINS[suite_name]}); the target "
                                  f"{target.path.name} has {', '.join(target.homeservers)}")
            self.nodes[asked] = TargetNode(asked, hs)
        missing = target.missing_limits(limits) if limits is not None else []
        if missing:
            raise Unsupported(f"needs a target configured with {', '.join(missing)}; declare them under "
                              f"[limits] in {target.path.name} if it is")

    def __getitem__(self, name: str) -> TargetNode:
        return self.nodes[name]

    async def __aenter__(self) -> "TargetDeployment":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        return None

    # --- what a client over HTTPS has ------------------------------------------------------

    def _homeservers(self) -> list[TargetHomeserver]:
        return list(self.target.homeservers.values())

    def resolve(self) -> dict[str, str]:
        """Host name → ``ip:port`` for every homeserver with an address."""
        return {h: f"{hs.address[0]}:{hs.address[1]}" for hs in self._homeservers() if hs.address
                for h in hs.hosts()}

    def client(self, *, ca_bundle: Any = None) -> httpx.AsyncClient:
        """An HTTPS client reaching every homeserver of the target, verifying
        against the target's CAs (or ``ca_bundle``). The caller closes it."""
        cas = [ca_bundle] if ca_bundle else [hs.ca for hs in self._homeservers() if hs.ca]
        transport = HttpsTransport(ssl_context(cas), self.resolve())
        return httpx.AsyncClient(transport=transport, trust_env=False, timeout=10.0)

    @asynccontextmanager
    async def websocket(self, name: str, service: str, path: str) -> AsyncIterator[Any]:
        """A client websocket to ``wss://<service>.<domain of name><path>``
        over verified TLS (the same object as ``Deployment.websocket`` gives)."""
        from .client.qs_client import WsprotoTransport
        hs = self.nodes[name].homeserver
        host = f"{service}.{hs.domain}"
        ws = WsprotoTransport(host, path)
        try:
            await ws.connect(hs.address or (host, 443), ssl_context=ssl_context([hs.ca] if hs.ca else []))
            yield ws
        finally:
            await ws.aclose()

    @asynccontextmanager
    async def tls_stream(self, name: str, alpn: str) -> AsyncIterator[Any]:
        """A verified TLS 1.3 connection to homeserver ``name``'s domain that
        has negotiated ``alpn`` (the same object as ``Deployment.tls_stream``
        gives)."""
        hs = self.nodes[name].homeserver
        async with tls_stream_to(hs.address or (hs.domain, 443), hs.domain,
                               ssl_context([hs.ca] if hs.ca else []), alpn) as stream:
            yield stream

    # --- what it does not have ----------------------------------------------------------------

    async def set_down(self, name: str) -> None:
        raise NeedsControl(f"stopping homeserver {name} (set_down)")

    async def set_up(self, name: str) -> None:
        raise NeedsControl(f"starting homeserver {name} (set_up)")

    async def restart(self, name: str) -> None:
        raise NeedsControl(f"restarting homeserver {name} (restart)")

    def asgi_client(self, name: str, scheme: str = "https") -> httpx.AsyncClient:
        raise NeedsControl(f"homeserver {name}'s ASGI app (asgi_client)")

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise NeedsControl(f"the deployment's internals (deployment.{attr})")
