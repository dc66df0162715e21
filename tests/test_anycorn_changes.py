"""What the homeserver changes in anycorn (``phoenix_ref/anycorn_changes.py``;
docs/decisions.md, "HTTP server: what the homeserver changes in anycorn"),
on the stack ``phoenix-ref serve`` runs: anycorn over TLS 1.3 on a loopback
socket. Every test here fails without the module.

1. An error while serving one connection ends that connection only: random
   bytes and random HTTP/2 frames on a few hundred connections used to end
   the server (an HTTP/1.1 request asking to upgrade to h2c, then the
   client's close, made a write hit the shut TLS stream).
2. An HTTP/2 connection at its request limit answers every request it took.
   Without the drain, anycorn's GOAWAY cut off the answers of the requests
   in flight: in the concurrent case below about two thirds of the 80
   requests failed, and the homeserver handled about 120.
3. HTTP/2 PRIORITY frames are ignored: 1001 of them used to end the server
   (tested black-box, so against any implementation, in
   ``spec_tests/test_http2_robustness.py``).
4. An h2c upgrade over TLS is ignored: the request is answered over
   HTTP/1.1, and junk after it no longer logs errors.
"""

from __future__ import annotations

import logging
import random

import httpx
import trio

from phoenix_ref.config import Limits
from phoenix_ref.federation.client import HttpsTransport, client_ssl_context
from phoenix_ref.metrics import Scrape
from phoenix_ref.spec_plugin import spec
from phoenix_ref.testing import Deployment, names_of

LIMIT = 5            # requests per connection


async def _handled(node) -> float:
    """Requests the homeserver has handled, by its own count."""
    async with node.metrics_client() as http:
        return Scrape((await http.get("/metrics")).text).value("phoenix_http_requests_total")


async def _requests(n: int, in_flight: int) -> tuple[float, dict]:
    """``n`` GETs to a homeserver whose connections take LIMIT requests each,
    ``in_flight`` at a time. A GET whose answer was lost is sent once more by
    the transport, so a lost answer shows as a request handled twice.
    Returns the requests the homeserver handled and what the client saw."""
    got = {"ok": 0, "failed": [], "connections": 0, "versions": set()}

    async def trace(event: str, info: dict) -> None:
        if event == "connection.start_tls.complete":
            got["connections"] += 1

    with trio.fail_after(120):
        async with Deployment("sockets", ["hs1"], limits=Limits(max_requests_per_connection=LIMIT),
                              metrics=True) as d:
            node = d["hs1"]
            before = await _handled(node)
            resolve = {h: f"127.0.0.1:{node.port}" for h in names_of(node.domain)}
            transport = HttpsTransport(client_ssl_context(d.tmp / "ca" / "ca.pem"), resolve)
            url = node.url("", "/.well-known/phoenix")
            slots = trio.Semaphore(in_flight)
            async with httpx.AsyncClient(transport=transport, trust_env=False, timeout=20.0) as http:
                async def one() -> None:
                    async with slots:
                        try:
                            resp = await http.get(url, extensions={"trace": trace})
                        except Exception as e:   # noqa: BLE001 - counted; the callers judge them
                            got["failed"].append(repr(e))
                            return
                        assert resp.status_code == 200
                        got["ok"] += 1
                        got["versions"].add(resp.http_version)

                async with trio.open_nursery() as nursery:
                    for _ in range(n):
                        nursery.start_soon(one)
            handled = await _handled(node) - before
    return handled, got


async def test_one_request_at_a_time_every_answer_arrives():
    n = 6 * LIMIT
    handled, got = await _requests(n, 1)
    assert got["versions"] == {"HTTP/2"}
    assert got["connections"] >= n // LIMIT, got      # the server ended connections at its limit
    assert got["ok"] == n and not got["failed"], got
    assert handled == n, (handled, got)               # and no answer was lost and asked again


@spec("threat_model.md#availability", "SHOULD")
async def test_many_requests_in_flight_every_request_taken_is_answered():
    n = 80
    handled, got = await _requests(n, 10)
    assert got["versions"] == {"HTTP/2"}
    assert got["connections"] >= n // LIMIT, got
    # Every request the homeserver handled had its answer delivered: none was
    # handled, lost and handled again. What may remain is httpcore's side of a
    # race: a stream whose answer arrived together with the GOAWAY can be
    # failed by the client anyway (it checks for the GOAWAY before looking at
    # the answers it already has). That is rare (2 requests in 1 of 34 runs of
    # this test), hence the small allowance.
    assert got["ok"] >= n - 4, got
    assert handled - got["ok"] <= 4, (handled, got)


async def test_a_request_that_does_not_finish_holds_the_drain_for_graceful_timeout_only(tmp_path):
    """The limit is reached while one request is still being handled (it
    never finishes here): the GOAWAY goes out after ``graceful_timeout``, and
    the request the connection did not take is sent again on a new
    connection rather than waiting for the slow one. A bare ASGI app served
    like ``serve`` serves a homeserver (anycorn, TLS 1.3, the drain installed)."""
    import socket
    import ssl

    import anycorn
    import trustme

    from phoenix_ref import anycorn_changes
    from phoenix_ref.config import Config
    from phoenix_ref.cli import server_config

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["path"] == "/slow":
            await trio.sleep_forever()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"fast"})

    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    cert.cert_chain_pems[0].write_to_path(tmp_path / "cert.pem")
    cert.private_key_pem.write_to_path(tmp_path / "key.pem")
    config = Config.from_dict({"domain": "a.example",
                               "tls": {"cert": str(tmp_path / "cert.pem"), "key": str(tmp_path / "key.pem")},
                               "limits": {"max_requests_per_connection": 2}}, base=tmp_path)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    sc = server_config(config, bind=[f"127.0.0.1:{port}"])
    sc.graceful_timeout = 0.5
    anycorn_changes.install()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            stop = trio.Event()
            await nursery.start(lambda task_status: anycorn.serve(app, sc, shutdown_trigger=stop.wait,
                                                                  task_status=task_status))
            ctx = ssl.create_default_context()
            ca.configure_trust(ctx)
            async with httpx.AsyncClient(verify=ctx, http2=True, trust_env=False, timeout=20.0) as http:
                base = f"https://localhost:{port}"
                outcome = {}

                async def slow() -> None:
                    try:
                        await http.get(base + "/slow")
                    except httpx.TransportError as e:
                        outcome["slow"] = type(e).__name__

                nursery.start_soon(slow)
                await trio.sleep(0.2)                      # request 1 of 2: being handled
                assert (await http.get(base + "/fast")).status_code == 200   # 2 of 2: the limit
                started = trio.current_time()
                resp = await http.get(base + "/fast")      # not taken by that connection
                waited = trio.current_time() - started
                assert resp.status_code == 200 and resp.http_version == "HTTP/2"
                assert waited < 5, waited                  # the drain's bound (0.5 s), not the slow request
                await trio.sleep(0.5)
                assert outcome == {"slow": "RemoteProtocolError"}   # cut off by the late GOAWAY
            stop.set()


async def _still_serving(node, ca) -> None:
    resolve = {h: f"127.0.0.1:{node.port}" for h in names_of(node.domain)}
    async with httpx.AsyncClient(transport=HttpsTransport(client_ssl_context(ca), resolve),
                                 trust_env=False, timeout=10.0) as http:
        resp = await http.get(node.url("", "/.well-known/phoenix"))
    assert resp.status_code == 200 and resp.http_version == "HTTP/2"


@spec("threat_model.md#availability", "SHOULD")
async def test_random_bytes_and_frames_on_many_connections_leave_the_server_serving():
    """300 TLS connections (ALPN h2 or http/1.1), each sending random bytes
    after a plausible start, or random HTTP/2 frames after a valid preface,
    then closing; the homeserver is still there, and none of those
    connections leaves a task behind (seeded: the same input at every run)."""

    rng = random.Random(20261205)
    starts = [b"", b"GET / HTTP/1.1\r\nHost: a.example\r\n",
              b"POST /phoenix/v1/dequeue_messages HTTP/1.1\r\nHost: qs.a.example\r\nContent-Length: 5\r\n\r\n",
              b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
              b"GET / HTTP/1.1\r\nHost: a.example\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n"
              b"Connection: Upgrade, HTTP2-Settings\r\n\r\n"]

    def frames() -> bytes:
        import h2.config
        import h2.connection
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        data = bytearray(conn.data_to_send())
        for _ in range(rng.randint(1, 30)):
            stream_id = rng.choice([0, 1, 3, 5, rng.randint(0, 2**31 - 1)])
            payload = rng.randbytes(rng.choice([0, 1, 4, 5, 6, 8, 9, 13, rng.randint(0, 300)]))
            data += (len(payload).to_bytes(3, "big") + bytes([rng.randint(0, 12), rng.randint(0, 255)])
                     + stream_id.to_bytes(4, "big") + payload)
        return bytes(data)

    with trio.fail_after(120):
        async with Deployment("sockets", ["hs1"]) as d:
            await trio.sleep(0.2)
            tasks_before = _tasks()
            for _ in range(300):
                alpn = rng.choice(["h2", "http/1.1"])
                data = frames() if alpn == "h2" and rng.random() < 0.8 else \
                    rng.choice(starts) + rng.randbytes(rng.randint(0, 500))
                try:
                    async with d.tls_stream("hs1", alpn) as stream:
                        await stream.send_all(data)
                        with trio.move_on_after(0.2):
                            while await stream.receive_some(65536):
                                pass
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass                   # the server cut the connection: its right
            await _still_serving(d["hs1"], d.tmp / "ca" / "ca.pem")
            # and nothing of those connections stays behind once the last
            # idle one has met anycorn's keep-alive timeout (5 s)
            with trio.fail_after(30):
                while _tasks() > tasks_before:
                    await trio.sleep(0.5)


def _tasks() -> int:
    """The tasks running in this Trio run (the homeserver runs in it, sockets mode)."""
    count, todo = 0, [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        count += 1
        todo.extend(t for nursery in task.child_nurseries for t in nursery.child_tasks)
    return count


#: a request asking to upgrade to h2c, as RFC 7540 §3.2 had a client ask for it
H2C_UPGRADE = [(b"connection", b"Upgrade, HTTP2-Settings"), (b"upgrade", b"h2c"),
               (b"http2-settings", b"AAMAAABkAAQAAP__")]


async def _answer(conn, stream) -> tuple[int, bytes]:
    """The status and HTTP version of the next answer on an HTTP/1.1
    connection (``conn``, an h11 client); a 101 is the answer itself."""
    import h11

    answer = None
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.InformationalResponse):
            return event.status_code, event.http_version
        elif isinstance(event, h11.Response):
            answer = event.status_code, event.http_version
        elif isinstance(event, h11.EndOfMessage):
            conn.start_next_cycle()
            return answer


@spec("threat_model.md#availability", "SHOULD")
async def test_an_h2c_upgrade_over_tls_is_ignored(caplog):
    """A request asking to upgrade to h2c (HTTP/2 over cleartext, RFC 9113
    §3.1 deprecates the upgrade) on a TLS connection is answered over
    HTTP/1.1, and so is the next request on that connection; a client that
    asks for it, sends junk after it and closes costs the server no error
    (each used to log two, ending in ``ssl.SSLError: PROTOCOL_IS_SHUTDOWN``:
    anycorn switched to HTTP/2 and then wrote to a TLS stream it had shut)."""
    import h11

    with trio.fail_after(60):
        async with Deployment("sockets", ["hs1"]) as d:
            host = d["hs1"].domain.encode()

            def get(extra: list) -> h11.Request:
                return h11.Request(method="GET", target="/.well-known/phoenix", headers=[(b"host", host), *extra])
            async with d.tls_stream("hs1", "http/1.1") as stream:
                conn = h11.Connection(h11.CLIENT)
                answers = []
                for request in (get(H2C_UPGRADE), get([])):
                    await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
                    answers.append(await _answer(conn, stream))
                    if answers[-1][0] == 101:
                        break                        # switched: no second HTTP/1.1 request
                assert answers == [(200, b"1.1"), (200, b"1.1")]
            upgrade = h11.Connection(h11.CLIENT).send(get(H2C_UPGRADE))
            rng = random.Random(20261205)
            with caplog.at_level(logging.ERROR):
                for _ in range(20):
                    async with d.tls_stream("hs1", "http/1.1") as stream:
                        try:
                            await stream.send_all(upgrade + rng.randbytes(rng.randint(1, 500)))
                            with trio.move_on_after(0.2):
                                while await stream.receive_some(65536):
                                    pass
                        except trio.BrokenResourceError:
                            pass                     # the server closed it first: its right
                await trio.sleep(0.5)
            assert [(r.name, r.getMessage()) for r in caplog.records if r.levelno >= logging.ERROR] == []
            await _still_serving(d["hs1"], d.tmp / "ca" / "ca.pem")
