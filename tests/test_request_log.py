"""The request log (``phoenix-ref serve --request-log``): one JSON line per
request served, written before the answer leaves, and one per federation
request sent, with its status or the failure that ended it."""

from __future__ import annotations

import json

import httpx
import pytest

from phoenix_ref.federation.client import USER_AGENT, HttpsFetcher, Unreachable, client_ssl_context
from phoenix_ref.http import RequestLog


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_served_requests_are_logged_before_the_answer_leaves(tmp_path):
    log = RequestLog(tmp_path / "r.jsonl", "a.example")
    seen_when_answering = []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 418, "headers": []})
        seen_when_answering.append(len(lines(tmp_path / "r.jsonl")))
        await send({"type": "http.response.body", "body": b"no"})

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=log.middleware(app)),
                                 headers={"user-agent": "tester"}) as http:
        resp = await http.get("https://qs.a.example/phoenix/v1/qs_verifying_key?x=1")
    log.close()
    assert resp.status_code == 418 and seen_when_answering == [1]
    [entry] = lines(tmp_path / "r.jsonl")
    assert entry.pop("t") > 0 and entry.pop("ms") >= 0
    assert entry == {"hs": "a.example", "dir": "in", "method": "GET", "host": "qs.a.example",
                     "path": "/phoenix/v1/qs_verifying_key", "status": 418, "agent": "tester"}


async def test_federation_requests_are_logged_with_status_or_failure(tmp_path):
    log = RequestLog(tmp_path / "r.jsonl", "a.example")
    agents = []

    async def peer(scope, receive, send):      # b.example, answering everything with "ok"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    class Network(httpx.AsyncBaseTransport):
        """b.example answers; c.example is down."""
        async def handle_async_request(self, request):
            agents.append(request.headers["user-agent"])
            if request.url.host == "qs.c.example":
                raise httpx.ConnectError("connection refused", request=request)
            return await httpx.ASGITransport(app=peer).handle_async_request(request)

    fetcher = HttpsFetcher(client_ssl_context(None), transport=Network(), on_request=log.sent)
    assert await fetcher.request("GET", "https://qs.b.example/phoenix/v1/qs_verifying_key",
                                 domain="b.example") == b"ok"
    with pytest.raises(Unreachable):
        await fetcher.request("POST", "https://qs.c.example/phoenix/v1/federated_enqueue", content=b"x",
                              domain="c.example")
    await fetcher.aclose()
    log.close()
    ok, failed = lines(tmp_path / "r.jsonl")
    assert agents == [USER_AGENT, USER_AGENT]
    assert (ok["dir"], ok["to"], ok["host"], ok["path"], ok["status"]) == (
        "out", "b.example", "qs.b.example", "/phoenix/v1/qs_verifying_key", 200)
    assert (failed["to"], failed["method"], failed["error"]) == ("c.example", "POST", "Unreachable")
    assert "status" not in failed
