"""Unit tests: discovery order and caching, the HTTPS fetcher's refusals,
the resolve override, fetch_many, the remote key cache, in-memory TLS."""

import ssl

import pytest
import trio
import trustme

from phoenix_ref.clock import FixedClock
from phoenix_ref.config import Config
from phoenix_ref.credentials import (SHA256, AsCredential, AsCredentialsResponse, AsIntermediateCredential,
                                     AsIntermediateCredentialCsr, CredentialCiphersuite)
from phoenix_ref.crypto import SigningKey
from phoenix_ref.endpoints import by_name
from phoenix_ref.federation.client import (HttpsFetcher, MalformedAnswer, NotFederated,
                                           NotTls, RemoteRefused, HttpsTransport, TtlCache, Unreachable,
                                           client_ssl_context, fetch_many)
from phoenix_ref.federation.facade import FederationClient
from phoenix_ref.federation.discovery import (Discovery, check_base_url, parse_well_known,
                                              subdomain_rule, well_known_document)
from phoenix_ref.federation.keys import RemoteKeyCache, key_id
from phoenix_ref.queuing.messages import QsVerifyingKeyResponse
from phoenix_ref.ids import Fqdn
from phoenix_ref.testing import tls_handshake

URLS = {s: f"https://{s}.b.example:8444" for s in ("as", "ds", "qs")}


class FakeFetcher:
    """Answers GET requests from a dict url → bytes | FederationError."""

    def __init__(self, answers):
        self.answers = answers
        self.urls = []

    async def request(self, method, url, **kw):
        self.urls.append(url)
        answer = self.answers.get(url, Unreachable("no route"))
        if isinstance(answer, Exception):
            raise answer
        return answer


WK = "https://b.example/.well-known/phoenix"


@pytest.mark.parametrize("url, error", [
    ("http://as.b.example", NotTls), ("https://as.b.example/path", MalformedAnswer),
    ("https://user@as.b.example", MalformedAnswer), ("ftp://as.b.example", MalformedAnswer),
    ("https://as.b.example:99999", MalformedAnswer), ("https://", MalformedAnswer), (42, MalformedAnswer),
])
def test_bad_base_urls(url, error):
    with pytest.raises(error):
        check_base_url(url)


def test_base_url_normalised():
    assert check_base_url("https://QS.B.example:8444/") == "https://qs.b.example:8444"


def test_well_known_document_round_trip():
    urls = parse_well_known("b.example", well_known_document(URLS))
    assert (urls.as_url, urls.source) == ("https://as.b.example:8444", "well_known")
    with pytest.raises(NotTls):
        parse_well_known("b.example", well_known_document(dict(URLS, qs="http://qs.b.example")))


async def test_override_comes_first_and_sends_nothing():
    f = FakeFetcher({})
    d = Discovery(f, overrides={"B.example": URLS})
    urls = await d.discover("b.example")
    assert urls.source == "override" and urls.qs_url == URLS["qs"] and f.urls == []


async def test_well_known_then_cache_then_ttl():
    clock = FixedClock()
    f = FakeFetcher({WK: well_known_document(URLS)})
    d = Discovery(f, clock=clock, ttl_ms=1000)
    assert (await d.discover("b.example")).source == "well_known"
    await d.discover("b.example")
    assert len(f.urls) == 1
    clock.advance(1000)
    await d.discover("b.example")
    assert len(f.urls) == 2


@pytest.mark.parametrize("answer", [
    RemoteRefused("404", status=404), b"<html>hello</html>", b"[1, 2]", b'{"as": "https://as.b.example"}',
    MalformedAnswer("too big"), NotTls("handshake"),
])
async def test_no_usable_well_known_falls_back_to_the_subdomain_rule(answer):
    d = Discovery(FakeFetcher({WK: answer}))
    assert await d.discover("b.example") == subdomain_rule("b.example")


async def test_a_well_known_with_a_bad_url_is_an_error():
    d = Discovery(FakeFetcher({WK: well_known_document(dict(URLS, ds="https://ds.b.example/x"))}))
    with pytest.raises(MalformedAnswer):
        await d.discover("b.example")


async def test_fallback_while_unreachable_is_not_cached():
    f = FakeFetcher({})
    d = Discovery(f)
    assert (await d.discover("b.example")).source == "subdomain"
    f.answers[WK] = well_known_document(URLS)
    assert (await d.discover("b.example")).source == "well_known"


async def test_discover_rejects_a_bad_domain():
    with pytest.raises(MalformedAnswer):
        await Discovery(FakeFetcher({})).discover("not a domain")


async def test_fetcher_refuses_plain_http_without_connecting():
    fetcher = HttpsFetcher(client_ssl_context(None))
    try:
        with pytest.raises(NotTls):
            await fetcher.request("GET", "http://qs.b.example/phoenix/v1/qs_verifying_key")
        assert fetcher.requests == 0
    finally:
        await fetcher.aclose()


async def test_fetcher_maps_connection_refused_to_unreachable():
    with trio.socket.socket() as s:           # a port nobody listens on
        await s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fetcher = HttpsFetcher(client_ssl_context(None), resolve={"qs.b.example": f"127.0.0.1:{port}"},
                           connect_timeout_s=2)
    try:
        with pytest.raises(Unreachable):
            await fetcher.request("GET", "https://qs.b.example/x", domain="b.example")
    finally:
        await fetcher.aclose()


def test_resolve_override_targets():
    b = HttpsTransport(client_ssl_context(None), {"qs.b.example:443": "127.0.0.1:9001",
                                                  "AS.b.example": "127.0.0.1:9002"})
    assert b.target("qs.b.example", 443) == ("127.0.0.1", 9001)
    assert b.target("qs.b.example", 8443) is None
    assert b.target("as.b.example", 1) == ("127.0.0.1", 9002)


async def test_fetch_many_isolates_failures_and_propagates_bugs():
    async def fetch(domain):
        await trio.sleep(0)
        if domain == "down.example":
            raise Unreachable("down")
        return domain.upper()

    results = await fetch_many(["a.example", "down.example", "b.example", "a.example"], fetch)
    assert results["a.example"] == "A.EXAMPLE" and results["b.example"] == "B.EXAMPLE"
    assert isinstance(results["down.example"], Unreachable)

    async def buggy(domain):
        raise ZeroDivisionError

    with pytest.raises(ExceptionGroup) as info:
        await fetch_many(["a.example"], buggy)
    assert info.group_contains(ZeroDivisionError)


# --- the remote key cache ------------------------------------------------------------------

class FakeClient:
    """Stands in for FederationClient.get_struct: answers per endpoint name."""

    def __init__(self, answers):
        self.answers = answers
        self.calls = 0

    async def get_struct(self, domain, endpoint):
        self.calls += 1
        await trio.sleep(0.01)
        answer = self.answers[endpoint.name]
        return answer() if callable(answer) else answer


async def test_cache_ttl_and_single_flight():
    clock = FixedClock()
    key = SigningKey.generate().public
    client = FakeClient({"qs_verifying_key": QsVerifyingKeyResponse([key])})
    cache = RemoteKeyCache(client, by_name, clock=clock, ttl_ms=1000, cooldown_ms=100)
    async with trio.open_nursery() as n:      # concurrent callers share one fetch
        for _ in range(5):
            n.start_soon(cache.qs_verifying_keys, "b.example")
    assert client.calls == 1
    clock.advance(999)
    await cache.qs_verifying_keys("b.example", want_key_id=key_id(key))
    assert client.calls == 1
    clock.advance(1)
    await cache.qs_verifying_keys("b.example")
    assert client.calls == 2


async def test_find_qs_key_refetches_once_per_cooldown():
    clock = FixedClock()
    keys = [SigningKey.generate().public]
    client = FakeClient({"qs_verifying_key": lambda: QsVerifyingKeyResponse(list(keys))})
    cache = RemoteKeyCache(client, by_name, clock=clock, ttl_ms=10_000, cooldown_ms=100)
    assert await cache.find_qs_key("b.example", lambda k: k == keys[0]) == keys[0]
    new = SigningKey.generate().public
    keys.insert(0, new)
    assert await cache.find_qs_key("b.example", lambda k: k == new) is None   # within cooldown
    clock.advance(100)
    assert await cache.find_qs_key("b.example", lambda k: k == new) == new
    assert client.calls == 2
    await cache.qs_verifying_keys("b.example", refresh=True)                  # cooldown again
    assert client.calls == 2


@pytest.mark.parametrize("keys", [[], [b"short"], [bytes(32), bytes(33)]])
async def test_malformed_key_lists_are_refused(keys):
    cache = RemoteKeyCache(FakeClient({"qs_verifying_key": QsVerifyingKeyResponse(keys)}), by_name)
    with pytest.raises(MalformedAnswer):
        await cache.qs_verifying_keys("b.example")


async def test_as_answer_for_another_domain_is_refused():
    key = SigningKey.generate()
    cred = AsCredential.create("c.example", key, 0, 2**62)
    cache = RemoteKeyCache(FakeClient({"as_credentials": AsCredentialsResponse([cred], [], [])}), by_name)
    with pytest.raises(MalformedAnswer):
        await cache.trust_store("b.example")
    good = AsCredential.create("b.example", key, 0, 2**62)
    cache = RemoteKeyCache(FakeClient({"as_credentials": AsCredentialsResponse([good], [], [])}), by_name)
    assert (await cache.trust_store("b.example")).domains()[0].value == "b.example"


async def test_as_answer_with_an_unsupported_ciphersuite_still_serves_its_usable_credentials():
    """An intermediate of a suite this implementation does not know is skipped
    (credentials.TrustStore.add), also when a caller asks for a fingerprint
    the cached answer lacks — never an error blamed on the caller."""
    clock = FixedClock()
    as_key, inter_key = SigningKey.generate(), SigningKey.generate()
    root = AsCredential.create("b.example", as_key, 0, 2**62)
    good = AsIntermediateCredential.create(root, as_key, inter_key, 0, 2**61)
    future_suite = CredentialCiphersuite(SHA256, 0x0808)   # ed448: decodes, unsupported
    odd = AsIntermediateCredential(AsIntermediateCredentialCsr.create(inter_key, root, 0, 2**61, future_suite),
                                   b"\0" * 64)
    client = FakeClient({"as_credentials": AsCredentialsResponse([root], [odd, good], [])})
    cache = RemoteKeyCache(client, by_name, clock=clock, cooldown_ms=100)
    await cache.trust_store("b.example")
    clock.advance(100)
    store = await cache.trust_store("b.example", want_fingerprint=good.fingerprint())
    assert store.knows_fingerprint(Fqdn("b.example"), good.fingerprint())
    store = await cache.trust_store("b.example", want_fingerprint=b"\1" * 32)   # unknown: one refetch
    assert client.calls == 2 and not store.knows_fingerprint(Fqdn("b.example"), b"\1" * 32)


def test_ttl_cache_is_bounded_dropping_expired_then_oldest():
    cache = TtlCache(ttl_ms=100, max_entries=3)
    cache.put("a", 1, 0)
    cache.put("b", 2, 50)
    cache.put("c", 3, 60)
    cache.put("a", 4, 70)                      # refreshed: now the newest
    cache.put("d", 5, 80)                      # full, nothing expired: the oldest ("b") goes
    assert cache.keys() == ["c", "a", "d"]
    assert cache.get("a", 169) == (70, 4) and cache.get("a", 170) is None
    cache.put("e", 6, 165)                     # "c" (60) expired: dropped first
    assert sorted(cache.keys()) == ["a", "d", "e"]


async def test_key_cache_of_many_domains_stays_bounded():
    """Any unauthenticated token request names a domain; the cache must not
    grow with every domain ever named."""
    key = SigningKey.generate().public
    cache = RemoteKeyCache(FakeClient({"qs_verifying_key": QsVerifyingKeyResponse([key])}), by_name)
    cache._cache.max_entries = 5
    for i in range(20):
        await cache.qs_verifying_keys(f"d{i}.example")
    assert len(cache._cache) == 5 and cache._locks == {}


async def test_federation_client_honours_the_deny_list(tmp_path):
    cfg = Config(domain="a.example", data_dir=tmp_path, keys_dir=tmp_path, federation_deny=("b.example",))
    client = FederationClient(cfg, by_name)
    try:
        with pytest.raises(NotFederated):
            await client.keys.qs_verifying_keys("b.example")
        assert client.fetcher.requests == 0
    finally:
        await client.aclose()


# --- TLS in memory (the in-process harness) --------------------------------------------------

def _contexts(ca, names):
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(server)
    client = ssl.create_default_context()
    return client, server


def test_memory_tls_handshake_checks_ca_and_name():
    ca = trustme.CA()
    client, server = _contexts(ca, ["qs.b.example"])
    ca.configure_trust(client)
    tls_handshake(client, server, "qs.b.example")
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_handshake(client, server, "qs.c.example")            # wrong name
    stranger = ssl.create_default_context()
    trustme.CA().configure_trust(stranger)
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_handshake(stranger, server, "qs.b.example")         # other CA
    with pytest.raises(ssl.SSLError):
        tls_handshake(client, None, "qs.b.example")              # plain HTTP peer

