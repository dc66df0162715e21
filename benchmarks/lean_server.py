"""A lean HTTPS server for measuring what the HTTP server framework costs.

It serves an ASGI app over TLS with nothing between Trio's TLS stream and
the sans-IO protocol libraries of the pinned stack (``h2`` and ``h11``): a
request's body is read whole, the app is called once with it, and its
answer is written back within HTTP/2's flow control. That is all. It has
no timeouts, no limits, no graceful shutdown, no websockets and no
containment of a misbehaving client — everything a server needs and
anycorn carries — so it is a measuring instrument, never a server to
deploy. Two benchmarks use it:

* ``stack_floor.py``, its ``lean`` row: the bare counter app of the ``raw``
  row, so the two rows differ only in the server;
* ``delivery_bench.py --lean-a``: homeserver A, the one that serves every
  send, runs here instead of on anycorn (``python benchmarks/lean_server.py
  --config CONFIG``: the homeserver, its request log and its operator
  listener exactly as ``phoenix-ref serve`` runs them, only the public
  listener replaced), which shows how much of a delivery's cost a server of
  the project's own could win back (docs/decisions.md, "The HTTP server
  stays anycorn").
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h11
import trio

#: HTTP/2 forbids these connection-specific response headers (RFC 9113 §8.2.2).
_H2_FORBIDDEN = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"})
#: What ends a connection quietly: the client went away or broke the protocol.
_CONNECTION_ENDED = (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError,
                     h2.exceptions.ProtocolError)


async def call_app(app: Any, scope: dict[str, Any], body: bytes) -> tuple[int, list, bytes]:
    """Call ``app`` for one request whose whole ``body`` has arrived; return its status, headers and body."""
    answer: dict[str, Any] = {"status": 500, "headers": [], "body": b""}
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if delivered:                       # nothing more comes; an app that waits for a disconnect waits
            await trio.sleep_forever()
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer["status"], answer["headers"] = message["status"], list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            answer["body"] += message.get("body", b"")

    await app(scope, receive, send)
    return answer["status"], answer["headers"], answer["body"]


def http_scope(method: bytes, target: bytes, headers: list, http_version: str, port: int) -> dict[str, Any]:
    path, _, query = target.partition(b"?")
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": http_version,
            "method": method.decode("ascii"), "scheme": "https", "path": path.decode("utf-8", "replace"),
            "raw_path": path, "query_string": query, "root_path": "", "headers": headers,
            "client": ("127.0.0.1", 0), "server": ("127.0.0.1", port), "extensions": {}}


class _H2:
    """One HTTP/2 connection: each request's app call is a task of its own."""

    def __init__(self, app: Any, stream: trio.SSLStream, port: int):
        self.app, self.stream, self.port = app, stream, port
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.write_lock = trio.Lock()
        self.window_opened = trio.Event()   # set, and replaced, whenever the peer opens a flow-control window
        self.requests: dict[int, tuple[list, bytearray]] = {}

    async def flush(self) -> None:
        async with self.write_lock:
            if data := self.conn.data_to_send():
                await self.stream.send_all(data)

    async def run(self) -> None:
        self.conn.initiate_connection()
        await self.flush()
        async with trio.open_nursery() as nursery:
            while data := await self.stream.receive_some():
                for event in self.conn.receive_data(data):
                    self.handle(event, nursery)
                await self.flush()
            nursery.cancel_scope.cancel()

    def handle(self, event: h2.events.Event, nursery: trio.Nursery) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self.requests[event.stream_id] = (event.headers, bytearray())
        elif isinstance(event, h2.events.DataReceived):
            self.requests[event.stream_id][1].extend(event.data)
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            headers, body = self.requests.pop(event.stream_id)
            nursery.start_soon(self.answer, event.stream_id, headers, bytes(body))
        elif isinstance(event, h2.events.StreamReset):
            self.requests.pop(event.stream_id, None)
        elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            self.window_opened.set()
            self.window_opened = trio.Event()

    async def answer(self, stream_id: int, headers: list, body: bytes) -> None:
        pseudo = {k: v for k, v in headers if k.startswith(b":")}
        fields = [(k, v) for k, v in headers if not k.startswith(b":")] + [(b"host", pseudo.get(b":authority", b""))]
        scope = http_scope(pseudo[b":method"], pseudo[b":path"], fields, "2", self.port)
        status, out_headers, out = await call_app(self.app, scope, body)
        self.conn.send_headers(stream_id, [(b":status", str(status).encode())]
                               + [(k.lower(), v) for k, v in out_headers if k.lower() not in _H2_FORBIDDEN])
        while True:
            n = min(len(out), self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size)
            if out and n <= 0:              # the window is shut: send what is queued, wait for it to open
                opened = self.window_opened
                await self.flush()
                await opened.wait()
                continue
            self.conn.send_data(stream_id, out[:n], end_stream=n == len(out))
            out = out[n:]
            if not out:
                break
        await self.flush()


async def _over_h11(app: Any, stream: trio.SSLStream, port: int) -> None:
    """One HTTP/1.1 connection: one request after another."""
    conn = h11.Connection(h11.SERVER)
    request, body = None, bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some())
        elif isinstance(event, h11.Request):
            request, body = event, bytearray()
        elif isinstance(event, h11.Data):
            body.extend(event.data)
        elif isinstance(event, h11.EndOfMessage):
            scope = http_scope(request.method, request.target, list(request.headers), "1.1", port)
            status, headers, out = await call_app(app, scope, bytes(body))
            headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
            await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers + [
                (b"content-length", str(len(out)).encode())])) + conn.send(h11.Data(data=out))
                + conn.send(h11.EndOfMessage()))
            conn.start_next_cycle()
        elif isinstance(event, h11.ConnectionClosed):
            return


async def serve_asgi(app: Any, context: Any, port: int, host: str = "127.0.0.1", *,
                     task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``app`` over TLS (``context``, which chooses the protocol by ALPN) on ``host:port``."""
    async def connection(stream: trio.SSLStream) -> None:
        try:
            await stream.do_handshake()
            if stream.selected_alpn_protocol() == "h2":
                await _H2(app, stream, port).run()
            else:
                await _over_h11(app, stream, port)
        except* _CONNECTION_ENDED:
            pass

    await trio.serve_ssl_over_tcp(connection, port, context, host=host, task_status=task_status)


async def serve_homeserver(config: Any, *, homeserver: Any, shutdown_trigger: Any, **_: Any) -> None:
    """``phoenix_ref.cli.serve`` with the public listener on :func:`serve_asgi`: the app's lifespan runs
    in-process, the operator listener (``/metrics``) stays on anycorn, as ``serve`` runs it."""
    import anycorn

    from phoenix_ref import anycorn_changes
    from phoenix_ref.cli import metrics_server_config, server_ssl_context
    anycorn_changes.install()
    async with homeserver.app.running(), trio.open_nursery() as nursery:
        if config.operator.metrics_listen is not None:
            await nursery.start(functools.partial(anycorn.serve, homeserver.metrics_asgi,
                                                  metrics_server_config(config)))
        await nursery.start(functools.partial(serve_asgi, homeserver.asgi,
                                              server_ssl_context(config.tls_cert, config.tls_key),
                                              config.listen_port, config.listen_host))
        await shutdown_trigger()
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from phoenix_ref import cli
    sys.exit(cli.main(["serve", *sys.argv[1:]], server=serve_homeserver))
