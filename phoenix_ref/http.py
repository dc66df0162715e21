"""The thin HTTP layer shared by the AS, DS and QS (GUIDE §1, §2).

One generic view serves every row of the endpoint table
(:mod:`phoenix_ref.endpoints`): it refuses plain HTTP, reads the body under
a size limit, decodes it strictly into the row's request struct, calls the
service handler with a :class:`Call`, and encodes the response struct.
Errors leave as an ``ErrorResponse {code, message}`` body with the status
of the :class:`~phoenix_ref.errors.ProtocolError` (the application of
:mod:`phoenix_ref.asgi` maps them) — bad input never gives a 5xx. Media
type of every body: ``application/phoenix`` (docs/decisions.md).

:class:`RequestLog` makes one record per request served, per federation
request sent and per outbound delivery attempt, for a JSON-lines file
(``phoenix-ref serve --request-log FILE``), the log (stderr) and the
Prometheus metrics.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

from .asgi import MEDIA_TYPE, Headers, Request, Response, error_response
from .codec import DecodeError, decode, encode
from .errors import Forbidden, Malformed, ProtocolError, TooLarge, Unauthorized

log = logging.getLogger(__name__)

__all__ = ["MEDIA_TYPE", "Call", "CallCheck", "Handler", "RequestLog", "decode_body", "error_response",
           "make_view", "require_tls", "source_of"]


class UnsupportedMediaType(ProtocolError):
    status, code = 415, "unsupported_media_type"


class TlsRequired(Forbidden):
    """spec/federation/use_cases.md#authentication-key-distribution: key
    material (and, in phoenix_ref, every endpoint) only over TLS."""
    code = "tls_required"


@dataclass(frozen=True)
class Call:
    """What a service handler receives: the decoded request and its context."""
    body: Any                 # instance of the endpoint's request struct, or None
    headers: Any              # the request headers (case-insensitive mapping)
    now_ms: int
    #: the request body exactly as received. ``body`` was decoded from it
    #: strictly, so it is ``body``'s canonical encoding: a handler may check
    #: a signature over a slice of it instead of re-encoding ``body``.
    raw: bytes = b""
    #: the network source of the request (:func:`source_of`), for bounds
    #: on what unauthenticated requests may hold.
    source: str | None = None


def source_of(address: str | None) -> str | None:
    """The network source a peer address counts as: an IPv4 address itself,
    an IPv6 address its /64 (one host usually holds a whole /64). None when
    the transport gives no address (docs/decisions.md, "Pending
    registrations per source")."""
    if not address:
        return None
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


Handler = Callable[[Call], Awaitable[Any]]
#: Checks the transport-level authentication of a call (Privacy Pass header).
CallCheck = Callable[[Any, Call], Awaitable[None]]


def require_tls(request: Request) -> None:
    """Refuse a request that did not arrive over TLS (ASGI scheme ``http``)."""
    if request.scheme != "https":
        raise TlsRequired("this endpoint is served over TLS (https) only")


def decode_body(cls: type | None, data: bytes, max_len: int) -> Any:
    """Strictly decode a request body; every failure is a 400 (or 413).

    A body for an endpoint without request struct must be empty. Any
    exception raised while decoding — not only :class:`DecodeError` — means
    the input was bad, so it becomes ``Malformed`` rather than a 5xx.
    """
    if len(data) > max_len:
        raise TooLarge(f"body of {len(data)} bytes exceeds {max_len}")
    if cls is None:
        if data:
            raise Malformed("this endpoint takes no request body", code="unexpected_body")
        return None
    try:
        return decode(cls, data, max_len=max_len)
    except DecodeError as e:
        raise Malformed(f"cannot decode {cls.__name__}: {e}") from None
    except ProtocolError:
        raise
    except Exception as e:  # a validator inside a struct rejected the value
        raise Malformed(f"cannot decode {cls.__name__}: {type(e).__name__}: {e}") from None


class MissingAuthentication(Unauthorized):
    """An endpoint that needs a token or a signature got a request with none."""
    code = "authentication_required"


def make_view(endpoint: Any, handler: Handler, *, now_ms: Callable[[], int],
              max_body: int, check: CallCheck | None = None) -> Callable[[Request], Awaitable[Response]]:
    """The view for one endpoint-table row (see module docstring).

    Authentication comes before parsing: a row with a Privacy Pass token has
    it checked (and spent) before the body is decoded, and a row whose
    request carries its spec authentication (a token or a signature in the
    body) refuses an empty body with 401, not 400 — no decoding work for
    requests that could never be authorised.
    """
    needs_auth_in_body = endpoint.request is not None and endpoint.auth != "none"

    async def view(request: Request) -> Response:
        require_tls(request)
        data = await request.body(max_body)
        source, now = source_of(request.remote_addr), now_ms()
        if check is not None:
            await check(endpoint, Call(None, request.headers, now, b"", source))
        if needs_auth_in_body and not data:
            raise MissingAuthentication(f"{endpoint.name} needs its authentication ({endpoint.auth}) "
                                        "in the request body")
        if endpoint.request is not None:
            ctype = request.mimetype
            if ctype != MEDIA_TYPE:
                raise UnsupportedMediaType(f"request bodies are {MEDIA_TYPE}, not {ctype or 'untyped'}")
        call = Call(decode_body(endpoint.request, data, max_body), request.headers, now, data, source)
        result = await handler(call)
        return Response(encode(result) if endpoint.response is not None else b"")

    view.__name__ = f"view_{endpoint.service}_{endpoint.name}"
    return view


# --- request log -------------------------------------------------------------------------

class RequestLog:
    """One record per request the homeserver served (``"dir": "in"``),
    written as its answer starts (so a client that has the answer finds the
    line), one per request its federation client sent to another homeserver
    (``"dir": "out"``), written when the answer has arrived or the request
    failed, and one per delivery attempt of its outbound federation queues
    (``"dir": "attempt"``), written once the attempt's outcome is known.

    Where the records go — any of, each optional:

    * ``path``: an append-only file of JSON lines (``phoenix-ref serve
      --request-log FILE``; ``phoenix-ref demo`` reads it to show what each
      homeserver did);
    * ``logger``: a :mod:`logging` record at INFO per line, the entry in its
      ``request`` attribute (``phoenix-ref serve`` logs them to stderr, as
      JSON with ``--log-format json``: :mod:`phoenix_ref.logs`);
    * :attr:`listeners`: callables given each entry (the homeserver's
      Prometheus metrics count them, :mod:`phoenix_ref.metrics`).

    Every entry has ``t`` (Unix time in seconds when it was written), ``hs``
    (the homeserver's domain) and ``dir``. ``in`` and ``out`` add ``method``,
    ``host``, ``path`` (no query string) and ``ms`` (milliseconds from the
    start of the request until then). An ``in`` entry adds ``status`` (101
    for an accepted websocket; null when the request ended before any
    answer, e.g. the client went away) and ``agent`` (the User-Agent, at most
    100 characters); an ``out`` entry adds ``to`` (the destination domain)
    and either ``status`` or ``error`` (the failure's class name, e.g.
    ``Unreachable``). An ``attempt`` entry has ``to``, ``outcome``
    (``delivered``, ``retry`` or ``dead_letter``), ``messages`` (how many
    messages of the attempt had that outcome: one record per attempt
    unless the receiver answered the messages of a batch differently),
    ``attempt`` (1 for the first try of the queue's head), ``ms``,
    ``retry_in`` (seconds, for a retry) and, for a dead letter, the
    refusal's ``status`` and ``code``.
    Nothing else — no body, no token, no address, no client or user id
    (docs/decisions.md, "Request log").

    Each file line goes out in one ``write`` on a file opened with
    ``O_APPEND``, so several processes may share a file and a reader sees
    whole lines (a line that is still being written lacks its newline).
    """

    def __init__(self, path: "os.PathLike[str] | str | None", domain: str, *,
                 logger: logging.Logger | None = None):
        self.path = path
        self.domain = domain
        self.logger = logger
        #: called with every entry (a dict), before it is written anywhere
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self._fd: int | None = None
        if path is not None:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def close(self) -> None:
        """Close the file (the other sinks go on)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _write(self, entry: dict[str, Any]) -> None:
        entry = {"t": round(time.time(), 4), "hs": self.domain, **entry}
        for listener in self.listeners:
            try:
                listener(entry)
            except Exception:   # counting must never cost a request its answer
                log.exception("a request log listener failed")
        if self._fd is not None:
            os.write(self._fd, json.dumps(entry, separators=(",", ":")).encode() + b"\n")
        if self.logger is not None and self.logger.isEnabledFor(logging.INFO):
            self.logger.info("%s", LazyText(entry), extra={"request": entry})

    def served(self, *, host: str, method: str, path: str, status: int | None, ms: float, agent: str) -> None:
        self._write({"dir": "in", "method": method, "host": host, "path": path[:200], "status": status,
                     "ms": round(ms, 1), "agent": agent[:100]})

    def sent(self, *, destination: str | None, method: str, url: str, status: int | None,
             error: str | None, ms: float) -> None:
        parts = urlsplit(url)
        entry: dict[str, Any] = {"dir": "out", "method": method, "host": parts.hostname or "",
                                 "path": parts.path[:200], "to": destination or parts.hostname or "",
                                 "ms": round(ms, 1)}
        entry.update({"status": status} if error is None else {"error": error})
        self._write(entry)

    def attempt(self, *, destination: str, outcome: str, attempt: int, ms: float, messages: int = 1,
                retry_in: float | None = None, status: int | None = None, code: str | None = None) -> None:
        entry: dict[str, Any] = {"dir": "attempt", "to": destination, "outcome": outcome, "messages": messages,
                                 "attempt": attempt, "ms": round(ms, 1)}
        if retry_in is not None:
            entry["retry_in"] = round(retry_in, 3)
        if status is not None:
            entry.update(status=status, code=(code or "")[:100] or None)
        self._write(entry)

    def middleware(self, app: Any) -> Any:
        """``app`` wrapped so that every HTTP request and websocket it serves is logged."""
        return _RequestLogging(app, self)


class LazyText:
    """The text form of a request log entry (``key=value …``), built only if
    a handler formats the record."""

    __slots__ = ("entry",)

    def __init__(self, entry: dict[str, Any]):
        self.entry = entry

    def __str__(self) -> str:
        return " ".join(f"{k}={json.dumps(v) if isinstance(v, str) and (' ' in v or not v) else v}"
                        for k, v in self.entry.items() if k != "t")


class _RequestLogging:
    """ASGI middleware of :class:`RequestLog`: notes the status the app
    answers with and writes one line when the request has ended."""

    def __init__(self, app: Any, log: RequestLog):
        self.app = app
        self.log = log

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        logged = False

        def write(status: int | None) -> None:
            nonlocal logged
            logged = True
            headers = Headers(scope.get("headers", []))
            self.log.served(host=headers.get("host", ""),
                            method=scope.get("method", "GET") if scope["type"] == "http" else "WEBSOCKET",
                            path=scope.get("path", ""), status=status, ms=(time.monotonic() - started) * 1000,
                            agent=headers.get("user-agent", ""))

        async def noting_send(message):
            if not logged:
                kind = message["type"]
                if kind == "http.response.start" or kind == "websocket.http.response.start":
                    write(message["status"])
                elif kind == "websocket.accept":
                    write(101)
                elif kind == "websocket.close":
                    write(403)        # refused before the handshake completed
            await send(message)

        try:
            await self.app(scope, receive, noting_send)
        finally:
            if not logged:
                write(None)
