"""Outbound HTTPS for federation: verified TLS, typed errors, ``fetch_many``.

``spec/federation/use_cases.md#authentication-key-distribution``: key
material is fetched only over TLS, "to ensure that homeserver authentication
is tied to the local web root of trust of the caller". So:

* every URL must be ``https://`` (:class:`NotTls` otherwise), and the
  certificate is always verified against the configured CA bundle (or the
  system store) — there is no switch to turn verification off;
* a *resolve override* (``host[:port] → ip:port``) redirects the TCP
  connection only, like ``curl --resolve``: SNI and certificate checks still
  use the real name, so labs and tests exercise real TLS;
* every request has connect and read timeouts;
* failures are typed :class:`FederationError` subclasses, so callers can
  tell a down peer (:class:`Unreachable`) from an impostor
  (:class:`BadCertificate`) or a broken one (:class:`MalformedAnswer`,
  :class:`RemoteRefused`).

:class:`~.facade.FederationClient` (``facade.py``) composes the HTTPS
fetcher with discovery (``discovery.py``) and the remote key cache
(``keys.py``); it is the single object a homeserver's services use to talk
to other homeservers.
"""

from __future__ import annotations

import ssl
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Generic, Iterable, Protocol, TypeVar

import httpx
import trio

from ..codec import DecodeError, decode
from ..errors import ErrorResponse

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")


# --- typed errors ---------------------------------------------------------------------

class FederationError(Exception):
    """A remote homeserver could not be used. ``domain``/``url`` say which."""

    def __init__(self, message: str, *, domain: str | None = None, url: str | None = None):
        super().__init__(message)
        self.domain = domain
        self.url = url


class Unreachable(FederationError):
    """No answer: connection refused, name unknown, timeout."""


class BadCertificate(FederationError):
    """The peer's TLS certificate does not verify for the name we asked for."""


class NotTls(FederationError):
    """An ``http://`` URL, or a peer that does not speak TLS at all."""


class OldTls(NotTls):
    """The peer speaks TLS, but not TLS 1.3, the only version Phoenix allows."""


class MalformedAnswer(FederationError):
    """An answer that does not decode as the expected struct (or is too large)."""


class RemoteRefused(FederationError):
    """The peer answered with an error status (``status``, ``code`` from its ErrorResponse)."""

    def __init__(self, message: str, *, status: int, code: str | None = None,
                 retry_after: int | None = None, **kw: Any):
        super().__init__(message, **kw)
        self.status = status
        self.code = code
        self.retry_after = retry_after


class NotFederated(FederationError):
    """The operator's allow/deny list excludes this domain
    (spec/general_concepts/federation.md#federation)."""


# --- TLS and the resolve override -----------------------------------------------------

def client_ssl_context(ca_bundle: Path | str | None) -> ssl.SSLContext:
    """A verifying TLS 1.3 client context: the CA bundle if given, else the system store.

    TLS 1.3 only, on every outgoing connection of a homeserver and of the
    reference client:
    ``spec/threat_model/stride/security_requirements.md#basic-confidentiality-and-authentication``
    (docs/decisions.md, "TLS 1.3 only"). A peer that offers only TLS 1.2
    fails the handshake (:class:`NotTls` from :class:`HttpsFetcher`).
    """
    ctx = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


async def open_tls_stream(address: tuple[str, int], server_hostname: str, ctx: ssl.SSLContext,
                          alpn: str) -> trio.SSLStream:
    """A TCP connection to ``address`` with TLS through ``ctx``, verified for
    ``server_hostname`` and offering ``alpn``, its handshake done (closed
    again if the handshake fails). For the connections httpx does not make:
    the reference client's websocket, the suite's raw protocol bytes."""
    ctx.set_alpn_protocols([alpn])
    stream = trio.SSLStream(await trio.open_tcp_stream(*address), ctx, server_hostname=server_hostname,
                            https_compatible=True)
    try:
        await stream.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream


#: Request extension a sender sets when the receiver deduplicates the request
#: (QS-to-QS frames), so sending it twice is harmless: :class:`HttpsTransport`
#: may then retry it after a connection closed before its answer came.
RETRY_SAFE = "phoenix_retry_safe"

_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def retry_extensions(endpoint: Any) -> dict[str, bool] | None:
    """The httpx request extensions for a call of an endpoint-table row:
    :data:`RETRY_SAFE` when the row is idempotent (``Endpoint.idempotent``)."""
    return {RETRY_SAFE: True} if endpoint.idempotent else None


class HttpsTransport(httpx.AsyncBaseTransport):
    """Verified TLS 1.3 (HTTP/2 and 1.1 offered, or with ``http2=False`` only
    HTTP/1.1) with a resolve override and one retry on a connection the
    server closed.

    **HTTP/1.1 for federation**: the federation client sends one request at
    a time per destination (the outbound sender of each queue), so HTTP/2's
    multiplexing buys it nothing, while HTTP/2's framing costs CPU on both
    ends of every request; :class:`FederationClient` therefore passes
    ``http2=False`` (docs/decisions.md, "Federation requests over HTTP/1.1").
    Clients, which keep many requests in flight, keep HTTP/2.

    **Resolve override** (``overrides``: ``"host:port"`` or ``"host"`` →
    ``"ip:port"``), like ``curl --resolve``: the TCP connection goes to the
    override address while TLS still names and verifies the real host (the
    ``sni_hostname`` request extension) and the ``Host`` header keeps it. Each
    overridden host gets a connection pool of its own, so a connection
    verified for one name never carries requests for another.

    **Closed connections**: a server may close a kept-alive connection at any
    time (anycorn after ``keep_alive_max_requests``, 1000 by default). A
    request that meets such a closed connection is sent once more on a fresh
    one when that cannot do harm: always when writing the request failed (the
    server never read it), and when the connection ended before an answer
    only for idempotent methods and requests marked :data:`RETRY_SAFE`
    (docs/decisions.md, "Connection reuse").
    """

    def __init__(self, ssl_context: ssl.SSLContext, overrides: dict[str, str] | None = None, *,
                 http2: bool = True):
        self.ssl_context = ssl_context
        self.http2 = http2
        self.overrides = {k.lower(): v for k, v in (overrides or {}).items()}
        self._pools: dict[str, httpx.AsyncHTTPTransport] = {}
        self.retries = 0   # requests sent a second time (tests and operators read it)

    def _pool(self, key: str) -> httpx.AsyncHTTPTransport:
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = httpx.AsyncHTTPTransport(verify=self.ssl_context, http2=self.http2, retries=0)
        return pool

    def target(self, host: str, port: int) -> tuple[str, int] | None:
        """The override address for ``host:port``, or None."""
        to = self.overrides.get(f"{host.lower()}:{port}") or self.overrides.get(host.lower())
        if to is None:
            return None
        ip, _, p = to.rpartition(":")
        return ip.strip("[]"), int(p)

    def _route(self, request: httpx.Request) -> tuple[httpx.AsyncHTTPTransport, httpx.Request]:
        url = request.url
        to = self.target(url.host, url.port or 443)
        if to is None:
            return self._pool(""), request
        routed = httpx.Request(request.method, url.copy_with(host=to[0], port=to[1]), headers=request.headers,
                               stream=request.stream,
                               extensions={**request.extensions, "sni_hostname": url.host})
        return self._pool(f"{url.host}:{url.port}"), routed

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        pool, routed = self._route(request)
        try:
            return await pool.handle_async_request(routed)
        except httpx.WriteError:
            pass                                    # the server never read the whole request
        except (httpx.RemoteProtocolError, httpx.ReadError):
            if request.method not in _IDEMPOTENT_METHODS and not request.extensions.get(RETRY_SAFE):
                raise
        self.retries += 1
        return await pool.handle_async_request(routed)

    async def aclose(self) -> None:
        for pool in self._pools.values():
            await pool.aclose()


def https_transport(ssl_context: ssl.SSLContext, resolve: dict[str, str], *,
                    http2: bool = True) -> httpx.AsyncBaseTransport:
    """An httpx transport over verified TLS with the resolve override (:class:`HttpsTransport`)."""
    return HttpsTransport(ssl_context, resolve, http2=http2)


#: OpenSSL's reasons for a handshake without a common protocol version.
_OLD_TLS_REASONS = frozenset({"TLSV1_ALERT_PROTOCOL_VERSION", "UNSUPPORTED_PROTOCOL", "WRONG_SSL_VERSION",
                              "NO_PROTOCOLS_AVAILABLE"})


def _tls_failure(exc: BaseException) -> FederationError | None:
    """Classify a connect error by the ``ssl`` error somewhere in its chain."""
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, ssl.SSLCertVerificationError):
            return BadCertificate(f"certificate verification failed: {e.verify_message or e}")
        if isinstance(e, ssl.SSLError) and e.reason in _OLD_TLS_REASONS:
            return OldTls(f"the peer offers no TLS 1.3 ({e.reason}); Phoenix requires it")
        if isinstance(e, ssl.SSLError):
            return NotTls(f"TLS handshake failed ({e.reason or e}); the peer may not speak TLS")
        e = e.__cause__ or e.__context__
    return None


# --- the HTTPS fetcher ------------------------------------------------------------------

#: The User-Agent of every request a homeserver sends to another: it names
#: the software, not the sending domain.
USER_AGENT = "phoenix-ref homeserver"


class RequestObserver(Protocol):
    """Told about every request :class:`HttpsFetcher` sent, once it ended:
    the answer's ``status``, or the name of the ``error`` that ended it (:meth:`~phoenix_ref.http.RequestLog.sent`)."""

    def __call__(self, *, destination: str | None, method: str, url: str, status: int | None,
                 error: str | None, ms: float) -> None: ...


class HttpsFetcher:
    """GET/POST over verified TLS; returns the body of a 2xx answer.

    ``transport`` replaces the network (the in-process test harness routes by
    Host to ASGI apps); by default it is :func:`https_transport`.
    """

    def __init__(self, ssl_context: ssl.SSLContext, *, resolve: dict[str, str] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 connect_timeout_s: float = 5.0, request_timeout_s: float = 10.0,
                 max_answer_bytes: int = 1 << 20, on_request: RequestObserver | None = None):
        self.ssl_context = ssl_context
        self.max_answer_bytes = max_answer_bytes
        self.requests = 0   # number of requests sent (tests count cache hits with it)
        self.on_request = on_request
        self._http = httpx.AsyncClient(
            transport=transport or https_transport(ssl_context, resolve or {}, http2=False),
            timeout=httpx.Timeout(request_timeout_s, connect=connect_timeout_s),
            headers={"user-agent": USER_AGENT}, trust_env=False, follow_redirects=False)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(self, method: str, url: str, *, content: bytes = b"",
                      headers: dict[str, str] | None = None, domain: str | None = None,
                      expect: str | None = None, retry_safe: bool = False) -> bytes:
        """Send one request; raise a FederationError unless the answer is 2xx.

        ``expect`` is the media type the answer must have (if given);
        ``retry_safe`` says the receiver deduplicates this request, so it may
        be sent again after a connection closed under it (:data:`RETRY_SAFE`).
        """
        if not url.startswith("https://"):
            raise NotTls(f"refusing a non-https URL {url!r}", domain=domain, url=url)
        self.requests += 1
        if self.on_request is None:
            return (await self._request(method, url, content, headers, domain, expect, retry_safe))[1]
        started, status, error = time.monotonic(), None, None
        try:
            status, body = await self._request(method, url, content, headers, domain, expect, retry_safe)
            return body
        except RemoteRefused as e:
            status = e.status
            raise
        except BaseException as e:
            error = type(e).__name__
            raise
        finally:
            self.on_request(destination=domain, method=method, url=url, status=status, error=error,
                            ms=(time.monotonic() - started) * 1000)

    async def _request(self, method: str, url: str, content: bytes, headers: dict[str, str] | None,
                       domain: str | None, expect: str | None, retry_safe: bool) -> tuple[int, bytes]:
        try:
            async with self._http.stream(method, url, content=content or None, headers=headers,
                                         extensions={RETRY_SAFE: True} if retry_safe else None) as resp:
                body = bytearray()
                async for chunk in resp.aiter_raw():
                    body += chunk
                    if len(body) > self.max_answer_bytes:
                        raise MalformedAnswer(f"answer larger than {self.max_answer_bytes} bytes",
                                              domain=domain, url=url)
        except httpx.TimeoutException as e:
            raise Unreachable(f"timeout: {e!r}", domain=domain, url=url) from e
        except (httpx.ConnectError, httpx.NetworkError) as e:
            typed = _tls_failure(e)
            if typed is None:
                raise Unreachable(f"cannot connect: {e}", domain=domain, url=url) from e
            typed.domain, typed.url = domain, url
            raise typed from e
        except httpx.HTTPError as e:
            typed = _tls_failure(e)
            if typed is not None:
                typed.domain, typed.url = domain, url
                raise typed from e
            if isinstance(e, httpx.RemoteProtocolError) and "disconnected" in str(e).lower():
                # the peer closed the connection (e.g. it is shutting down)
                raise Unreachable(f"connection closed: {e}", domain=domain, url=url) from e
            raise MalformedAnswer(f"broken HTTP answer: {e!r}", domain=domain, url=url) from e
        if resp.status_code >= 300:
            raise _refused(resp, bytes(body), domain, url)
        if expect is not None:
            ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != expect:
                raise MalformedAnswer(f"answer is {ctype!r}, expected {expect!r}", domain=domain, url=url)
        return resp.status_code, bytes(body)


def _refused(resp: httpx.Response, body: bytes, domain: str | None, url: str) -> RemoteRefused:
    code = message = None
    try:
        err = decode(ErrorResponse, body)
        code, message = err.code, err.message
    except DecodeError:
        pass
    retry = resp.headers.get("retry-after")
    return RemoteRefused(f"{url} answered {resp.status_code} {code or ''}: {message or ''}".strip(),
                         status=resp.status_code, code=code,
                         retry_after=int(retry) if retry and retry.isdigit() else None,
                         domain=domain, url=url)


# --- caches of what remote homeservers answered ------------------------------------------

class TtlCache(Generic[K, V]):
    """Answers of remote homeservers with the time they were fetched.

    :meth:`get` returns only entries younger than ``ttl_ms``. The cache holds
    at most ``max_entries``: unauthenticated requests can name any domain
    (a client credential of ``x.example`` makes the AS fetch ``x.example``'s
    credentials), so when full it drops expired entries, then the oldest.
    """

    def __init__(self, ttl_ms: int, max_entries: int = 10_000):
        self.ttl_ms = ttl_ms
        self.max_entries = max_entries
        self._entries: dict[K, tuple[int, V]] = {}

    def get(self, key: K, now_ms: int) -> tuple[int, V] | None:
        """``(fetched_ms, value)`` if ``key`` was fetched less than ``ttl_ms`` ago."""
        hit = self._entries.get(key)
        return hit if hit is not None and now_ms - hit[0] < self.ttl_ms else None

    def put(self, key: K, value: V, now_ms: int) -> None:
        self._entries.pop(key, None)                 # re-inserted: now the newest
        if len(self._entries) >= self.max_entries:
            for k in [k for k, (t, _) in self._entries.items() if now_ms - t >= self.ttl_ms]:
                del self._entries[k]
            while len(self._entries) >= self.max_entries:
                del self._entries[next(iter(self._entries))]
        self._entries[key] = (now_ms, value)

    def discard(self, key: K) -> None:
        self._entries.pop(key, None)

    def keys(self) -> list[K]:
        return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


# --- structured concurrency over several domains -----------------------------------------

async def fetch_many(domains: Iterable[str],
                     fetch: Callable[[str], Awaitable[T]]) -> dict[str, T | FederationError]:
    """Run ``fetch(domain)`` for every domain concurrently in one nursery.

    One failing domain does not disturb the others: the result maps each
    domain to its value or to the FederationError it raised. Other
    exceptions (bugs) propagate and cancel the rest, as Trio intends.
    """
    results: dict[str, T | FederationError] = {}

    async def one(domain: str) -> None:
        try:
            results[domain] = await fetch(domain)
        except FederationError as e:
            results[domain] = e

    async with trio.open_nursery() as nursery:
        for d in dict.fromkeys(domains):
            nursery.start_soon(one, d)
    return results


# --- the facade ---------------------------------------------------------------------------

class Row(Protocol):
    """An endpoint as the client calls it: a row of :mod:`phoenix_ref.endpoints`."""
    service: Any
    method: str
    path: str
    response: type | None


#: (service, endpoint name) → its row: the endpoint table's ``by_name``,
#: handed in by whoever builds the client, so that this package does not
#: import the table (which imports the services, which import this package).
RowLookup = Callable[[str, str], Row]
