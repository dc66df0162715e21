"""The homeserver's ASGI application: routes by ``Host``, path and method,
websockets, and the lifespan that runs the homeserver's background work.

A homeserver serves one fixed table of endpoints (:mod:`phoenix_ref.endpoints`)
and one delegation document; every row is answered by the one generic view
of :mod:`phoenix_ref.http`. Of a web framework it needs only what this module
holds: a route table keyed by exact host and path, a request object with the
headers and a size- and time-bounded body, a response, a websocket, the
lifespan, and the mapping of every refusal to an ``ErrorResponse``.

Why not Quart-Trio, GUIDE §1's starting design (docs/decisions.md, "HTTP
layer on plain ASGI"): Quart builds a request context, URL adapter,
response object and signal dispatch around every request, and measured on
an empty request that costs more CPU than the rest of the application
(``benchmarks/stack_floor.py``), on a path every message crosses twice.

Refusals, so that bad input never gets a 5xx (GUIDE §2):

* a host this homeserver does not serve: 404 ``unknown_host``;
* a path it has no endpoint at: 404 ``unknown_endpoint``;
* a method the path does not take: 405 ``method_not_allowed`` (``HEAD`` is
  taken wherever ``GET`` is, and answered without body);
* a body over the limit: 413 ``too_large``; one that does not arrive within
  the body timeout: 408 ``request_timeout``;
* a :class:`~phoenix_ref.errors.ProtocolError` from a view: its status and code;
* anything else from a view is a bug: logged, 500 ``internal_error``.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator, Mapping

import trio

from .codec import encode
from .errors import (ErrorResponse, InternalError, MethodNotAllowed, NotFound, ProtocolError, RequestTimeout,
                     TooLarge, describe)

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/phoenix"


class ClientGone(Exception):
    """The client went away (``http.disconnect``/``websocket.disconnect``)
    before the exchange ended; nothing more can be sent to it."""


# --- request and response ----------------------------------------------------------------------

class Headers(Mapping[str, str]):
    """Request headers, names matched without regard to case. A name sent
    more than once keeps its first value (the one header a view reads,
    ``Authorization``, is a single value)."""

    __slots__ = ("_values",)

    def __init__(self, raw: list[tuple[bytes, bytes]]):
        values: dict[str, str] = {}
        for name, value in raw:
            values.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
        self._values = values

    def __getitem__(self, name: str) -> str:
        return self._values[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


class Request:
    """One HTTP request as a view sees it; the body is read on demand."""

    def __init__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                 body_timeout_s: float):
        self.method: str = scope["method"]
        self.scheme: str = scope.get("scheme", "http")
        self.path: str = scope["path"]
        self.headers = Headers(scope.get("headers", []))
        self.host: str = self.headers.get("host", "")
        client = scope.get("client")
        #: the peer's address, or None when the server does not tell it
        self.remote_addr: str | None = client[0] if client else None
        self._receive = receive
        self._body_timeout_s = body_timeout_s

    @property
    def content_length(self) -> int | None:
        """The declared body length; None when absent or not a number."""
        value = self.headers.get("content-length")
        return int(value) if value is not None and value.isdigit() else None

    @property
    def mimetype(self) -> str:
        """The media type of the body, without parameters, in lower case."""
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()

    async def body(self, max_len: int) -> bytes:
        """The whole body. 413 once it is longer than ``max_len`` (a declared
        length is checked before anything is read), 408 if it has not all
        arrived within the body timeout, :class:`ClientGone` if the client left."""
        declared = self.content_length
        if declared is not None and declared > max_len:
            raise TooLarge(f"declared body of {declared} bytes exceeds {max_len}")
        chunks, size = [], 0
        with trio.move_on_after(self._body_timeout_s):
            while True:
                message = await self._receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone()
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > max_len:
                    raise TooLarge(f"body of more than {max_len} bytes")
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
        raise RequestTimeout(f"the body did not arrive within {self._body_timeout_s:g} s")


@dataclass
class Response:
    """An answer: status, body and its media type, further headers."""
    body: bytes = b""
    status_code: int = 200
    content_type: str = MEDIA_TYPE
    headers: dict[str, str] = field(default_factory=dict)

    async def send(self, send: Callable[[dict[str, Any]], Awaitable[None]], *, head: bool = False) -> None:
        """Send it as one ``http.response.start`` and one body message (an
        empty body for ``head``, the length still that of the full body)."""
        headers = [(b"content-type", self.content_type.encode("latin-1")),
                   (b"content-length", str(len(self.body)).encode())]
        headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()]
        await send({"type": "http.response.start", "status": self.status_code, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if head else self.body})


def error_response(err: ProtocolError) -> Response:
    """The HTTP answer for a refusal: status, ErrorResponse body, Retry-After."""
    resp = Response(encode(ErrorResponse(err.code, err.message[:1000])), err.status)
    if err.retry_after is not None:
        resp.headers["Retry-After"] = str(int(err.retry_after))
    return resp


# --- websocket ---------------------------------------------------------------------------------

class Websocket:
    """The server end of one websocket (RFC 6455) over ASGI. ``receive``
    raises :class:`ClientGone` when the client closed or went away."""

    def __init__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                 send: Callable[[dict[str, Any]], Awaitable[None]]):
        self.scheme: str = scope.get("scheme", "ws")
        self.path: str = scope["path"]
        self.headers = Headers(scope.get("headers", []))
        self._receive, self._send = receive, send
        self.accepted = self.closed = False

    async def accept(self) -> None:
        message = await self._receive()           # ASGI: websocket.connect comes first
        if message["type"] != "websocket.connect":
            raise ClientGone()
        await self._send({"type": "websocket.accept"})
        self.accepted = True

    async def receive(self) -> bytes | str:
        """The next message: bytes for a binary one, str for a text one."""
        message = await self._receive()
        if message["type"] != "websocket.receive":
            self.closed = True                    # nothing can be sent any more
            raise ClientGone()
        return message["bytes"] if message.get("bytes") is not None else message.get("text", "")

    async def send(self, data: bytes) -> None:
        await self._send({"type": "websocket.send", "bytes": data})

    async def close(self, code: int, reason: str = "") -> None:
        """Close with ``code`` and ``reason``; before :meth:`accept`, this
        refuses the handshake (the server answers 403)."""
        if not self.closed:
            self.closed = True
            await self._send({"type": "websocket.close", "code": code, "reason": reason})


# --- the application ---------------------------------------------------------------------------

HttpView = Callable[[Request], Awaitable[Response]]
WebsocketView = Callable[[Websocket], Awaitable[None]]


class App:
    """The ASGI application (see module docstring).

    ``startup`` and ``shutdown`` run at the start and end of the lifespan;
    between them :attr:`nursery` is open for background work, which
    shutdown's end cancels. An ASGI server drives the lifespan; in-process
    tests use :meth:`running`. ``body_timeout_s`` bounds how long a request
    body may take to arrive.
    """

    def __init__(self, *, startup: Callable[[], Awaitable[None]], shutdown: Callable[[], Awaitable[None]],
                 body_timeout_s: float):
        self._startup, self._shutdown = startup, shutdown
        self.body_timeout_s = body_timeout_s
        #: why the lifespan's startup failed, if it did (the caller reports it)
        self.startup_error: BaseException | None = None
        self._http: dict[str, dict[str, dict[str, HttpView]]] = {}     # host → path → method → view
        self._websockets: dict[tuple[str, str], WebsocketView] = {}
        self._nursery: trio.Nursery | None = None

    def route(self, host: str, path: str, method: str, view: HttpView) -> None:
        by_method = self._http.setdefault(host, {}).setdefault(path, {})
        if method in by_method:
            raise ValueError(f"{method} {host}{path} has a view already")
        by_method[method] = view

    def websocket(self, host: str, path: str, view: WebsocketView) -> None:
        self._websockets[(host, path)] = view

    def routes(self) -> list[tuple[str, str, str]]:
        """Every (host, method, path) with an HTTP view."""
        return [(host, method, path) for host, paths in self._http.items()
                for path, methods in paths.items() for method in methods]

    @property
    def nursery(self) -> trio.Nursery:
        """The nursery of the background work, open while the app runs."""
        if self._nursery is None:
            raise RuntimeError("the app is not running")
        return self._nursery

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Start the app, yield while it runs, shut it down (also on error)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                await self._startup()
                try:
                    yield
                finally:
                    with trio.CancelScope(shield=True):
                        await self._shutdown()
            finally:
                self._nursery = None
                nursery.cancel_scope.cancel()

    async def __call__(self, scope: dict[str, Any], receive, send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._serve_http(scope, receive, send)
        elif kind == "websocket":
            await self._serve_websocket(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive, send) -> None:
        await receive()                                   # lifespan.startup
        started = False
        try:
            async with self.running():
                started = True
                await send({"type": "lifespan.startup.complete"})
                await receive()                           # lifespan.shutdown
        except Exception as e:
            log.exception("the homeserver failed to %s", "stop" if started else "start")
            if not started:
                self.startup_error = e
            await send({"type": f"lifespan.{'shutdown' if started else 'startup'}.failed",
                        "message": describe(e)})
            return
        await send({"type": "lifespan.shutdown.complete"})

    def _view(self, request: Request) -> HttpView:
        paths = self._http.get(request.host)
        if paths is None:
            raise NotFound(f"no Phoenix service at host {request.host!r}", code="unknown_host")
        methods = paths.get(request.path)
        if methods is None:
            raise NotFound(f"no endpoint {request.path!r}", code="unknown_endpoint")
        view = methods.get("GET" if request.method == "HEAD" else request.method)
        if view is None:
            raise MethodNotAllowed(f"method {request.method} not allowed here")
        return view

    async def _serve_http(self, scope, receive, send) -> None:
        request = Request(scope, receive, self.body_timeout_s)
        try:
            response = await self._view(request)(request)
        except ProtocolError as e:
            response = error_response(e)
        except ClientGone:
            return
        except Exception:
            log.exception("internal error while handling %s %s", request.method, request.path)
            response = error_response(InternalError("internal error"))
        await response.send(send, head=request.method == "HEAD")

    async def _serve_websocket(self, scope, receive, send) -> None:
        ws = Websocket(scope, receive, send)
        host = ws.headers.get("host", "")
        view = self._websockets.get((host, ws.path))
        try:
            if view is None:
                await ws.close(1008, "no websocket endpoint here")
                return
            await view(ws)
            await ws.close(1000)
        except ClientGone:
            return
        except Exception:
            log.exception("internal error in the websocket at %s", ws.path)
            await ws.close(1011, "internal_error")
