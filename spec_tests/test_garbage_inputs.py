"""Garbage in, 4xx out: every endpoint of the endpoint table, fuzzed.

GUIDE §2: bad input gets a 4xx with an ``ErrorResponse`` body, never a 5xx.
For every row of ``phoenix_ref.endpoints.ENDPOINTS`` (so endpoints added
later are covered without touching this file) and for the delegation
document, hypothesis builds requests that carry exactly one defect — a
wrong method, a garbage or oversized body, a random ``Host``, a wrong path,
plain HTTP — plus random noise (headers, content types). The answer must be
the status that defect calls for, with a decodable ``ErrorResponse``.

Every endpoint gets ``CI_EXAMPLES`` cases in an ordinary run and
``LONG_EXAMPLES`` (≥ 50 000) in the ``slow`` variant that ``--run-slow``
enables. All requests of the module go to one long-lived homeserver
(:class:`ServedHomeserver`, its own Trio run in a worker thread): starting a
homeserver per case would cost ~0.1 s each, and a server must keep
answering correctly after any amount of garbage anyway.
"""

import threading

import httpx
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from phoenix_ref.cli import generate_config
from phoenix_ref.codec import decode
from phoenix_ref.config import Limits
from phoenix_ref.endpoints import ENDPOINTS, Endpoint
from phoenix_ref.errors import ErrorResponse
from phoenix_ref.federation.discovery import WELL_KNOWN_PATH
from phoenix_ref.homeserver import Homeserver
from phoenix_ref.http import MEDIA_TYPE
from phoenix_ref.spec_plugin import spec

pytestmark = pytest.mark.needs_control("phoenix_ref homeserver apps of its own (with a small body limit) next to the test")

DOMAIN = "a.example"
MAX_BODY = 16 * 1024
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "PROPFIND", "TRACE"]
RESERVED = {"host", "content-length", "transfer-encoding", "content-type", "connection"}
CI_EXAMPLES = 50           # per endpoint, in every run
LONG_EXAMPLES = 50_000     # per endpoint, with --run-slow
TIMEOUT_S = 30             # for the homeserver to start, and for one answer

WELL_KNOWN = Endpoint("well_known", None, "GET", WELL_KNOWN_PATH, None, None, None, False,
                      "spec/federation/use_cases.md#homeserver-domain-and-discovery")
ROWS = [*ENDPOINTS, WELL_KNOWN]


def host_of(ep: Endpoint) -> str:
    return DOMAIN if ep.service is None else f"{ep.service}.{DOMAIN}"


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    return generate_config(tmp_path_factory.mktemp("garbage") / "a", DOMAIN,
                           limits=Limits(max_body_bytes=MAX_BODY))


token = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-", min_size=1, max_size=20)
printable = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)
noise_headers = st.dictionaries(token.filter(lambda k: k.lower() not in RESERVED), printable, max_size=4)
content_types = st.one_of(st.none(), st.just(MEDIA_TYPE), st.just("application/json"),
                          st.just("text/plain; charset=utf-8"), printable)
hosts = st.one_of(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.-", min_size=1, max_size=40),   # cheaper than a regex
    st.sampled_from(["", "[::1]", "127.0.0.1", "xs.a.example", "a.example.evil", "AS.A.EXAMPLE.:99999",
                     "qs.b.example", "as.a.example:abc", "ds..a.example"]),
    printable)


@st.composite
def garbage_request(draw, ep: Endpoint):
    defect = draw(st.sampled_from(["method", "body", "huge", "host", "path", "scheme"]))
    method, body, host, path, scheme = ep.method, b"", host_of(ep), ep.path, "https"
    ctype = draw(content_types) if ep.request is None else MEDIA_TYPE
    if defect == "method":
        method = draw(st.sampled_from([m for m in METHODS if m != ep.method
                                       and not (ep.method == "GET" and m == "HEAD")]))
    elif defect == "body":
        body = draw(st.binary(min_size=1, max_size=2048))
        ctype = draw(st.one_of(st.just(MEDIA_TYPE), content_types))
    elif defect == "huge":
        body = bytes(MAX_BODY + 1 + draw(st.integers(0, 4096)))
    elif defect == "host":
        host = draw(hosts.filter(lambda h: h.strip().lower().split(":")[0].rstrip(".") != host_of(ep)))
    elif defect == "path":
        path = ep.path + "/" + draw(token) if draw(st.booleans()) else "/" + draw(token)
    else:
        scheme = "http"
    headers = draw(noise_headers)
    if ctype is not None:
        headers["content-type"] = ctype
    headers["host"] = host
    return defect, method, f"{scheme}://{host_of(ep)}{path}", headers, body


def expected_statuses(ep: Endpoint, defect: str, body: bytes, headers: dict) -> set[int]:
    """What the request's single defect must produce."""
    if defect == "host":
        return {404}
    if defect == "path":
        return {404}
    if defect == "method":
        return {405}
    if defect == "scheme":
        return {403}
    if defect == "huge":
        return {413}
    if ep.privacy_pass:
        return {401}          # authentication before parsing: no valid token, no decoding
    # garbage body: 400 when it does not decode (or the endpoint takes none),
    # 415 for the wrong media type; a body that happens to decode is a real
    # request and may succeed
    allowed = {400, 415}
    if ep.request is not None:
        try:
            decode(ep.request, body)
            allowed |= {200, 401, 403, 404, 409, 429}
        except Exception:  # noqa: BLE001 - any decode failure: garbage indeed
            pass
    return allowed


class ServedHomeserver:
    """A homeserver running in its own Trio run in a background thread,
    answering requests made from synchronous (hypothesis) test code."""

    def __init__(self, config):
        self.config = config
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="garbage-homeserver", daemon=True)

    def __enter__(self) -> "ServedHomeserver":
        self._thread.start()
        if not self._ready.wait(TIMEOUT_S):
            raise TimeoutError("the homeserver did not start")
        if self._failed is not None:
            raise self._failed
        return self

    def __exit__(self, *exc) -> None:
        if self._thread.is_alive():
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
            self._thread.join(TIMEOUT_S)

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as e:  # noqa: BLE001 - reported to the test thread
            self._failed = e
            self._ready.set()

    async def _serve(self) -> None:
        hs = Homeserver(self.config)
        async with hs.app.running():
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=hs.asgi), trust_env=False) as c:
                self._client, self._stop = c, trio.Event()
                self._token = trio.lowlevel.current_trio_token()
                self._ready.set()
                await self._stop.wait()

    def request(self, method, url, headers, body) -> httpx.Response:
        """One request, answered within ``TIMEOUT_S`` (a hang fails the test)."""
        async def bounded() -> httpx.Response:
            with trio.fail_after(TIMEOUT_S):
                return await self._client.request(method, url, headers=headers, content=body)
        return trio.from_thread.run(bounded, trio_token=self._token)


@pytest.fixture(scope="module")
def server(config):
    with ServedHomeserver(config) as served:
        yield served


# the control checks what each endpoint's section describes (its
# authentication, its answer), not one of its requirement sentences
@pytest.mark.parametrize("ep", [pytest.param(e, marks=spec(e.section, "informative")) for e in ROWS],
                         ids=[f"{e.service or 'well-known'}-{e.name}" for e in ROWS])
def test_endpoint_answers_a_clean_request(server, ep):
    """The control: without a defect the endpoint works (so 4xx below means something)."""
    headers = {} if ep.request is None else {"content-type": MEDIA_TYPE}
    resp = server.request(ep.method, f"https://{host_of(ep)}{ep.path}", headers, b"")
    if ep.privacy_pass:                         # authentication comes before parsing
        assert resp.status_code == 401          # no Privacy Pass token
        assert decode(ErrorResponse, resp.content).code == "token_required"
    elif ep.request is not None and ep.auth != "none":
        assert resp.status_code == 401          # no token or signature in the (empty) body
        assert decode(ErrorResponse, resp.content).code == "authentication_required"
    elif ep.request is not None:
        assert resp.status_code == 400          # an empty body is not a request struct
    else:
        assert resp.status_code == 200
        if ep.response is not None:
            decode(ep.response, resp.content)


def check_garbage(server: ServedHomeserver, ep: Endpoint, data) -> None:
    defect, method, url, headers, body = data.draw(garbage_request(ep))
    resp = server.request(method, url, headers, body)
    assert resp.status_code < 500, (defect, resp.status_code, resp.content[:200])
    allowed = expected_statuses(ep, defect, body, headers)
    assert resp.status_code in allowed, (defect, method, headers, resp.status_code, resp.content[:200])
    if resp.status_code >= 400 and method != "HEAD":
        assert resp.headers["content-type"] == MEDIA_TYPE
        err = decode(ErrorResponse, resp.content)
        assert err.code and err.message


def garbage_test(examples: int):
    """The fuzz test of every endpoint with ``examples`` cases each."""
    # the spec has no section on malformed requests; what it asks is that
    # "an adversary should not be able to render a server unavailable"
    @spec("threat_model.md#availability", "SHOULD")
    @pytest.mark.parametrize("ep", ROWS, ids=[f"{e.service or 'well-known'}-{e.name}" for e in ROWS])
    def test(server, ep):
        @settings(max_examples=examples, deadline=None, database=None)
        @given(data=st.data())
        def one_case(data):
            check_garbage(server, ep, data)

        one_case()
    return test


test_garbage_gets_a_4xx_error_response = garbage_test(CI_EXAMPLES)
test_garbage_long_run_gets_a_4xx_error_response = pytest.mark.slow(garbage_test(LONG_EXAMPLES))


# --- the same garbage over HTTP/2 on a real socket ---------------------------------------------

H2_DEFECTS = ("body", "huge", "method")


@spec("threat_model.md#availability", "SHOULD")
async def test_garbage_over_http2_on_a_real_socket():
    """Every row gets a garbage body, an oversized body (sent on after the
    answer, the case that ended hypercorn's serve loop) and a wrong method
    over HTTP/2 to a homeserver on a real socket; each gets its 4xx (or the
    oversized body a reset stream), and the homeserver still answers after
    all of them."""
    import random

    from phoenix_ref.testing import Deployment
    rng = random.Random(20261204)
    with trio.fail_after(120):
        async with Deployment("sockets", ["hs1"], limits=Limits(max_body_bytes=MAX_BODY)) as d:
            node = d["hs1"]
            async with d.client() as http:
                for ep in ROWS:
                    for defect in H2_DEFECTS:
                        method, body = ep.method, b""
                        if defect == "body":
                            body = rng.randbytes(rng.randint(1, 2048))
                        elif defect == "huge":
                            body = rng.randbytes(200_000)
                        else:
                            method = "PUT"
                        headers = {"content-type": MEDIA_TYPE}
                        url = node.url(str(ep.service) if ep.service else "", ep.path)
                        try:
                            resp = await http.request(method, url, headers=headers, content=body)
                        except httpx.RemoteProtocolError:
                            assert defect == "huge", (ep.name, defect)
                            continue
                        assert resp.http_version == "HTTP/2"
                        assert resp.status_code in expected_statuses(ep, defect, body, headers), \
                            (ep.name, defect, resp.status_code, resp.content[:200])
                        assert decode(ErrorResponse, resp.content).code
            async with d.client() as http:
                assert (await http.get(node.url("qs", "/phoenix/v1/qs_verifying_key"))).status_code == 200
