"""The outgoing HTTPS transport (``federation/client.py`` HttpsTransport):
resolve override on public httpx API, and one retry on a connection the
server closed (docs/decisions.md, "Connection reuse")."""

from __future__ import annotations

import httpx
import pytest
import trio

from phoenix_ref.config import Limits
from phoenix_ref.federation.client import RETRY_SAFE, HttpsFetcher, HttpsTransport, client_ssl_context
from phoenix_ref.testing import Deployment, names_of


class _ClosingPool:
    """Stands in for one connection pool: fails the first request with ``error``."""

    def __init__(self, error: Exception):
        self.error: Exception | None = error
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        return httpx.Response(200, request=request)


def _transport_with(pool: _ClosingPool) -> HttpsTransport:
    t = HttpsTransport(client_ssl_context(None))
    t._pools[""] = pool
    return t


@pytest.mark.parametrize("method,extensions,error,retried", [
    ("GET", {}, httpx.RemoteProtocolError("closed"), True),             # idempotent
    ("POST", {RETRY_SAFE: True}, httpx.RemoteProtocolError("closed"), True),  # receiver deduplicates
    ("POST", {}, httpx.RemoteProtocolError("closed"), False),           # may have been processed
    ("POST", {}, httpx.ReadError("reset"), False),
    ("POST", {}, httpx.WriteError("broken pipe"), True),               # never read by the server
])
async def test_retry_once_only_where_it_cannot_do_harm(method, extensions, error, retried):
    pool = _ClosingPool(error)
    t = _transport_with(pool)
    request = httpx.Request(method, "https://qs.b.example/x", content=b"body", extensions=extensions)
    if retried:
        assert (await t.handle_async_request(request)).status_code == 200
        assert len(pool.requests) == 2 and t.retries == 1
        assert pool.requests[1].read() == b"body"
    else:
        with pytest.raises(type(error)):
            await t.handle_async_request(request)
        assert len(pool.requests) == 1 and t.retries == 0


async def test_a_second_failure_is_not_retried_again():
    class AlwaysClosed(_ClosingPool):
        async def handle_async_request(self, request):
            self.requests.append(request)
            raise httpx.RemoteProtocolError("closed")

    pool = AlwaysClosed(None)
    t = _transport_with(pool)
    with pytest.raises(httpx.RemoteProtocolError):
        await t.handle_async_request(httpx.Request("GET", "https://qs.b.example/x"))
    assert len(pool.requests) == 2


async def test_requests_survive_a_server_that_closes_after_n_requests():
    """anycorn closes a connection after ``max_requests_per_connection``
    requests; both the reference client's transport and the federation
    fetcher go on over a fresh connection."""
    with trio.fail_after(60):
        async with Deployment("sockets", ["hs1"], limits=Limits(max_requests_per_connection=3)) as d:
            node = d["hs1"]
            ca = d.tmp / "ca" / "ca.pem"
            resolve = {h: f"127.0.0.1:{node.port}" for h in names_of(node.domain)}
            url = node.url("qs", "/phoenix/v1/qs_verifying_key")
            transport = HttpsTransport(client_ssl_context(ca), resolve)
            connections = []

            async def trace(event: str, info: dict) -> None:
                if event == "connection.start_tls.complete":
                    connections.append(event)

            async with httpx.AsyncClient(transport=transport, trust_env=False) as http:
                for _ in range(12):
                    assert (await http.get(url, extensions={"trace": trace})).status_code == 200
            assert len(connections) >= 4           # the server did close connections under us
            fetcher = HttpsFetcher(client_ssl_context(ca), resolve=resolve)
            try:
                for _ in range(12):
                    assert await fetcher.request("GET", url, domain=node.domain)
            finally:
                await fetcher.aclose()


def test_the_endpoint_table_says_which_requests_may_be_repeated():
    from phoenix_ref.endpoints import ENDPOINTS, by_name
    from phoenix_ref.federation.client import retry_extensions
    assert retry_extensions(by_name("qs", "dequeue_messages")) == {RETRY_SAFE: True}
    assert retry_extensions(by_name("as", "as_dequeue_messages")) == {RETRY_SAFE: True}
    assert retry_extensions(by_name("qs", "qs_verifying_key")) == {RETRY_SAFE: True}
    for name in ("create_user_record", "get_add_package", "publish_key_packages"):
        assert retry_extensions(by_name("qs", name)) is None
    for name in ("init_user_registration", "finish_user_registration", "user_connection_package"):
        assert retry_extensions(by_name("as", name)) is None
    assert all(not ep.idempotent for ep in ENDPOINTS if ep.federated and ep.method == "POST"
               and ep.name not in ("user_profile",))


async def test_reference_clients_mark_idempotent_calls():
    """QsClient and AsClient hand the row's retry marker to their HTTP client."""
    from phoenix_ref.client.as_client import AsClient, Registration
    from phoenix_ref.client.qs_client import QsClient

    class Recorder:
        def __init__(self):
            self.calls = []

        async def request(self, method, url, **kw):
            self.calls.append((url.rsplit("/", 1)[1], kw.get("extensions")))
            return httpx.Response(200, content=b"")

        async def post(self, url, **kw):
            return await self.request("POST", url, **kw)

    rec = Recorder()
    try:
        await QsClient(rec).call("b.example", "qs_verifying_key")
    except Exception:   # the empty answer does not decode; the request was made
        pass
    _, init = Registration.start("b.example", b"pw", bytes(32), 1_700_000_000_000)
    try:
        await AsClient(rec).call("b.example", "init_user_registration", init)
    except Exception:
        pass
    assert rec.calls[0] == ("qs_verifying_key", {RETRY_SAFE: True})
    assert rec.calls[1][0] == "init_user_registration" and not rec.calls[1][1]
