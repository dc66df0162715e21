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
from pathlib import Path
from typing import Any, Awaitable, Callable, Generic, Iterable, Protocol, TypeVar

import httpcore
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
    """A verifying client context: the CA bundle if given, else the system store."""
    ctx = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class ResolvingBackend(httpcore.AsyncNetworkBackend):
    """Connects ``host:port`` to another address; TLS still checks ``host``.

    ``overrides`` maps ``"host:port"`` or ``"host"`` to ``"ip:port"``. httpcore
    passes the URL's host as ``server_hostname`` to ``start_tls`` whatever
    address the TCP connection went to, so only routing changes.
    """

    def __init__(self, overrides: dict[str, str], inner: httpcore.AsyncNetworkBackend | None = None):
        self.overrides = {k.lower(): v for k, v in overrides.items()}
        self.inner = inner or _auto_backend()

    def target(self, host: str, port: int) -> tuple[str, int]:
        to = self.overrides.get(f"{host.lower()}:{port}") or self.overrides.get(host.lower())
        if to is None:
            return host, port
        ip, _, p = to.rpartition(":")
        return ip.strip("[]"), int(p)

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None, socket_options=None):
        ip, p = self.target(host, port)
        return await self.inner.connect_tcp(ip, p, timeout=timeout, local_address=local_address,
                                            socket_options=socket_options)

    async def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options=None):
        return await self.inner.connect_unix_socket(path, timeout=timeout, socket_options=socket_options)

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def _auto_backend() -> httpcore.AsyncNetworkBackend:
    from httpcore._backends.auto import AutoBackend  # chooses trio under trio
    return AutoBackend()


def https_transport(ssl_context: ssl.SSLContext, resolve: dict[str, str]) -> httpx.AsyncBaseTransport:
    """An httpx transport over verified TLS with the connection-level resolve override."""
    transport = httpx.AsyncHTTPTransport(verify=ssl_context, http2=True, retries=0)
    # httpx does not expose httpcore's network_backend; rebuild its pool with ours.
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=ssl_context, http1=True, http2=True, retries=0,
        network_backend=ResolvingBackend(resolve))
    return transport


def _tls_failure(exc: BaseException) -> FederationError | None:
    """Classify a connect error by the ``ssl`` error somewhere in its chain."""
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, ssl.SSLCertVerificationError):
            return BadCertificate(f"certificate verification failed: {e.verify_message or e}")
        if isinstance(e, ssl.SSLError):
            return NotTls(f"TLS handshake failed ({e.reason or e}); the peer may not speak TLS")
        e = e.__cause__ or e.__context__
    return None


# --- the HTTPS fetcher ------------------------------------------------------------------

class HttpsFetcher:
    """GET/POST over verified TLS; returns the body of a 2xx answer.

    ``transport`` replaces the network (the in-process test harness routes by
    Host to ASGI apps); by default it is :func:`https_transport`.
    """

    def __init__(self, ssl_context: ssl.SSLContext, *, resolve: dict[str, str] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 connect_timeout_s: float = 5.0, request_timeout_s: float = 10.0,
                 max_answer_bytes: int = 1 << 20):
        self.ssl_context = ssl_context
        self.max_answer_bytes = max_answer_bytes
        self.requests = 0   # number of requests sent (tests count cache hits with it)
        self._http = httpx.AsyncClient(
            transport=transport or https_transport(ssl_context, resolve or {}),
            timeout=httpx.Timeout(request_timeout_s, connect=connect_timeout_s),
            trust_env=False, follow_redirects=False)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(self, method: str, url: str, *, content: bytes = b"",
                      headers: dict[str, str] | None = None, domain: str | None = None,
                      expect: str | None = None) -> bytes:
        """Send one request; raise a FederationError unless the answer is 2xx.

        ``expect`` is the media type the answer must have (if given).
        """
        if not url.startswith("https://"):
            raise NotTls(f"refusing a non-https URL {url!r}", domain=domain, url=url)
        self.requests += 1
        try:
            async with self._http.stream(method, url, content=content or None,
                                         headers=headers) as resp:
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
        return bytes(body)


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
