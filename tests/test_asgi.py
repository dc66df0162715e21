"""The homeserver's ASGI application (phoenix_ref/asgi.py), driven with raw
ASGI messages: routing and its refusals, bodies under size and time limits,
errors, websockets and the lifespan."""

from __future__ import annotations

import httpx
import pytest
import trio

from phoenix_ref.asgi import App, ClientGone, Response, Websocket
from phoenix_ref.codec import decode
from phoenix_ref.errors import ErrorResponse, Forbidden

HOST = "qs.a.example"


def make_app(events=None, *, startup=None, body_timeout_s=5.0) -> App:
    events = [] if events is None else events

    async def default_startup():
        events.append("startup")

    async def shutdown():
        events.append("shutdown")

    app = App(startup=startup or default_startup, shutdown=shutdown, body_timeout_s=body_timeout_s)

    async def echo(request):
        return Response(await request.body(10))

    async def refuse(request):
        raise Forbidden("not you", code="go_away", retry_after=None)

    async def bug(request):
        raise KeyError("a bug")

    app.route(HOST, "/echo", "POST", echo)
    app.route(HOST, "/hello", "GET", lambda request: _answer(b"hello"))
    app.route(HOST, "/refuse", "GET", refuse)
    app.route(HOST, "/bug", "GET", bug)
    return app


async def _answer(body: bytes) -> Response:
    return Response(body, content_type="text/plain")


async def request(app, method, path, *, host=HOST, body=b"", headers=None) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as c:
        return await c.request(method, f"https://{host}{path}", content=body,
                               headers={"host": host, **(headers or {})})


def code(resp: httpx.Response) -> str:
    return decode(ErrorResponse, resp.content).code


async def drive(app, scope: dict, incoming: list[dict]) -> list[dict]:
    """Run ``app`` on ``scope`` with ``incoming`` as the client's messages,
    after which the client sends nothing more; the messages the app sent
    (within 5 s)."""
    pending, sent = iter(incoming), []

    async def receive():
        for message in pending:
            return message
        await trio.sleep_forever()

    async def send(message):
        sent.append(message)

    with trio.fail_after(5):
        await app(scope, receive, send)
    return sent


async def test_routes_by_host_path_and_method():
    app = make_app()
    ok = await request(app, "POST", "/echo", body=b"abc")
    assert (ok.status_code, ok.content, ok.headers["content-type"]) == (200, b"abc", "application/phoenix")
    assert code(await request(app, "GET", "/echo", host="ds.a.example")) == "unknown_host"
    assert code(await request(app, "GET", "/nothing")) == "unknown_endpoint"
    wrong = await request(app, "PUT", "/echo")
    assert wrong.status_code == 405 and code(wrong) == "method_not_allowed"
    assert app.routes() == [(HOST, "POST", "/echo"), (HOST, "GET", "/hello"), (HOST, "GET", "/refuse"),
                            (HOST, "GET", "/bug")]
    with pytest.raises(ValueError):
        app.route(HOST, "/echo", "POST", lambda r: None)


async def test_head_is_taken_where_get_is_and_has_no_body():
    resp = await request(make_app(), "HEAD", "/hello")
    assert resp.status_code == 200 and resp.content == b"" and resp.headers["content-length"] == "5"


async def test_refusals_keep_their_status_and_bugs_are_a_500(caplog):
    app = make_app()
    refused = await request(app, "GET", "/refuse")
    assert refused.status_code == 403 and code(refused) == "go_away"
    broken = await request(app, "GET", "/bug")
    assert broken.status_code == 500 and code(broken) == "internal_error"
    assert "internal error while handling GET /bug" in caplog.text


async def test_body_over_the_limit_is_413_declared_or_streamed():
    app = make_app()
    assert (await request(app, "POST", "/echo", body=b"x" * 11)).status_code == 413

    async def chunks():                               # no content-length: counted while read
        for _ in range(4):
            yield b"xxxx"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as c:
        resp = await c.post(f"https://{HOST}/echo", content=chunks())
    assert resp.status_code == 413 and code(resp) == "too_large"


async def test_a_body_that_does_not_arrive_in_time_is_408():
    scope = {"type": "http", "method": "POST", "scheme": "https", "path": "/echo",
             "headers": [(b"host", HOST.encode())], "client": ("127.0.0.1", 1)}
    sent = await drive(make_app(body_timeout_s=0.05), scope, [])     # the body never comes
    assert sent[0]["status"] == 408 and decode(ErrorResponse, sent[1]["body"]).code == "request_timeout"


async def test_a_client_that_leaves_during_the_body_gets_no_answer():
    scope = {"type": "http", "method": "POST", "scheme": "https", "path": "/echo",
             "headers": [(b"host", HOST.encode())]}
    assert await drive(make_app(), scope, [{"type": "http.disconnect"}]) == []


def ws_scope(path: str) -> dict:
    return {"type": "websocket", "scheme": "wss", "path": path, "headers": [(b"host", HOST.encode())]}


async def test_a_websocket_on_a_path_without_one_is_refused_in_the_handshake():
    sent = await drive(make_app(), ws_scope("/hello"), [{"type": "websocket.connect"}])
    assert [m["type"] for m in sent] == ["websocket.close"]


async def test_a_websocket_view_sees_messages_and_the_client_leaving():
    app = make_app()
    seen = []

    async def view(ws: Websocket):
        await ws.accept()
        try:
            while True:
                seen.append(await ws.receive())
        except ClientGone:
            seen.append("gone")
            raise

    app.websocket(HOST, "/ws", view)
    sent = await drive(app, ws_scope("/ws"), [
        {"type": "websocket.connect"}, {"type": "websocket.receive", "bytes": b"\x01"},
        {"type": "websocket.receive", "text": "hi"}, {"type": "websocket.disconnect", "code": 1001}])
    assert seen == [b"\x01", "hi", "gone"]
    assert [m["type"] for m in sent] == ["websocket.accept"]     # nothing sent to a client that left


async def test_a_websocket_view_that_returns_closes_normally():
    app = make_app()

    async def view(ws: Websocket):
        await ws.accept()
        await ws.send(b"bye")

    app.websocket(HOST, "/ws", view)
    sent = await drive(app, ws_scope("/ws"), [{"type": "websocket.connect"}])
    assert [(m["type"], m.get("code")) for m in sent] == [("websocket.accept", None), ("websocket.send", None),
                                                          ("websocket.close", 1000)]


async def test_running_starts_keeps_a_nursery_and_shuts_down():
    events = []
    app = make_app(events)
    with pytest.raises(RuntimeError):
        app.nursery
    async with app.running():
        assert events == ["startup"]
        app.nursery.start_soon(trio.sleep_forever)    # cancelled when the app stops
    assert events == ["startup", "shutdown"]
    with pytest.raises(RuntimeError):
        app.nursery


async def test_the_lifespan_reports_a_failed_startup(caplog):
    async def failing():
        raise OSError("no data directory")

    app = make_app(startup=failing)
    sent = await drive(app, {"type": "lifespan"}, [{"type": "lifespan.startup"}])
    assert sent == [{"type": "lifespan.startup.failed", "message": "OSError: no data directory"}]
    assert isinstance(app.startup_error, BaseExceptionGroup)      # what the caller reports


async def test_the_lifespan_runs_startup_then_shutdown():
    events = []
    sent = await drive(make_app(events), {"type": "lifespan"},
                       [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert events == ["startup", "shutdown"]
