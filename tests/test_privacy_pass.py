"""Privacy Pass token type 0x0005: issuance, redemption, keys, limits, storage.

The test vectors are read from the draft's own appendix
(``shared/rfcs/draft-ietf-privacypass-batched-tokens.md``, section "Test
Vectors"): ``#test-vectors-voprf`` (single issuance, ristretto255) and
``#test-vectors-batched-voprf`` (amortized batch issuance, ristretto255).
Each vector is its own test case, id ``<draft file>-<anchor>-<index>``.
"""

import base64
import dataclasses
import re
import sqlite3
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phoenix_ref import privacy_pass as pp
from phoenix_ref.codec import decode, encode
from phoenix_ref.errors import ProtocolError, RateLimited
from phoenix_ref.privacy_pass_store import PrivacyPassStore
from phoenix_ref.shared import shared_dir
from phoenix_ref.spec_plugin import spec

h = bytes.fromhex
DRAFT = "draft-ietf-privacypass-batched-tokens.md"
DOMAIN = "a.example"
CHALLENGE = pp.homeserver_challenge(DOMAIN)


# --- the draft's test vectors ----------------------------------------------------------

def _draft_vectors(anchor: str) -> list[dict]:
    """Parse the ``// Test vector N:`` blocks of one appendix section.

    Values are hex wrapped over several lines; list values (``nonces``,
    ``blinds``, ``tokens``) are ``- hex`` items, also wrapped.
    """
    text = (shared_dir() / "rfcs" / DRAFT).read_text()
    start = text.index("{#" + anchor + "}")
    block_start = text.index("~~~", start) + 3
    body = text[block_start:text.index("~~~", block_start)]
    vectors = []
    for chunk in re.split(r"^// Test vector \d+:\s*$", body, flags=re.M)[1:]:
        v: dict = {}
        key = None
        for line in chunk.splitlines():
            stripped = line.strip()
            if not stripped:
                continue
            m = re.fullmatch(r"(\w+):\s*([0-9a-f]*)", stripped)
            item = re.fullmatch(r"-\s*([0-9a-f]+)", stripped)
            if m:
                key = m.group(1)
                v[key] = m.group(2) or None
            elif item:
                v[key] = (v[key] or []) + [item.group(1)]
            elif re.fullmatch(r"[0-9a-f]+", stripped):
                if isinstance(v[key], list):
                    v[key][-1] += stripped
                else:
                    v[key] = (v[key] or "") + stripped
            else:
                raise AssertionError(f"unparsed vector line {line!r}")
        vectors.append(v)
    assert vectors, f"no vectors under {anchor}"
    return vectors


def _params(anchor: str):
    return [pytest.param(v, id=f"{DRAFT}-{anchor}-{i}") for i, v in enumerate(_draft_vectors(anchor))]


@pytest.mark.parametrize("v", _params("test-vectors-voprf"))
def test_draft_single_issuance_vector(v):
    """Nr = 1 with the RFC 9578 framing of the request and response."""
    key = pp.IssuerKey.from_private(h(v["skS"]))
    assert key.public_key == h(v["pkS"])
    challenge = decode(pp.TokenChallenge, h(v["token_challenge"]))
    assert encode(challenge) == h(v["token_challenge"])

    state, request = pp.begin_issuance(key.public_key, challenge, 1, nonces=[h(v["nonce"])], blinds=[h(v["blind"])])
    # RFC 9578 §5.1 TokenRequest: token_type, truncated key id, one blinded_msg.
    single_request = request.token_type.to_bytes(2, "big") + bytes([request.truncated_token_key_id]) + request.blinded_msgs[0]
    assert single_request == h(v["token_request"])

    # RFC 9578 §5.2 TokenResponse: evaluate_msg[Ne] || evaluate_proof[Ns+Ns].
    raw = h(v["token_response"])
    response = pp.AmortizedBatchTokenResponse([raw[:32]], raw[32:])
    assert pp.issue(request, key).evaluated_msgs == response.evaluated_msgs

    (token,) = pp.finalize(state, response)
    assert encode(token) == h(v["token"])
    assert pp.decode_token(h(v["token"])) == token

    keys = pp.IssuerKeys(key)
    spent = pp.MemorySpentTokenStore()
    pp.redeem(h(v["token"]), keys, spent, challenge=challenge, now_ms=0)
    with pytest.raises(pp.TokenSpent):
        pp.redeem(token, keys, spent, challenge=challenge, now_ms=0)


@pytest.mark.parametrize("v", _params("test-vectors-batched-voprf"))
def test_draft_batched_issuance_vector(v):
    key = pp.IssuerKey.from_private(h(v["skS"]))
    assert key.public_key == h(v["pkS"])
    challenge = decode(pp.TokenChallenge, h(v["token_challenge"]))
    nonces, blinds, tokens = ([h(x) for x in v[k]] for k in ("nonces", "blinds", "tokens"))
    n = len(nonces)
    assert len(blinds) == len(tokens) == n

    state, request = pp.begin_issuance(key.public_key, challenge, n, nonces=nonces, blinds=blinds)
    assert encode(request) == h(v["token_request"])
    assert pp.decode_token_request(h(v["token_request"])) == request

    response = pp.decode_token_response(h(v["token_response"]))
    assert encode(response) == h(v["token_response"])
    ours = pp.issue(request, key)
    assert ours.evaluated_msgs == response.evaluated_msgs  # the proof's randomness differs

    assert [encode(t) for t in pp.finalize(state, response)] == tokens
    assert [encode(t) for t in pp.finalize(state, ours)] == tokens  # our proof verifies too

    keys = pp.IssuerKeys(key)
    spent = pp.MemorySpentTokenStore()
    for t in tokens:
        pp.redeem(t, keys, spent, challenge=challenge, now_ms=0)
    for t in tokens:
        with pytest.raises(pp.TokenSpent):
            pp.redeem(t, keys, spent, challenge=challenge, now_ms=0)


# --- round trips and the homeserver challenge ----------------------------------------------

def _issue(keys: pp.IssuerKeys, n: int = 3, challenge: pp.TokenChallenge = CHALLENGE) -> list[pp.Token]:
    state, request = pp.begin_issuance(keys.current.public_key, challenge, n)
    response = pp.issue(pp.decode_token_request(encode(request)), keys)
    return pp.finalize(state, pp.decode_token_response(encode(response)))


def test_homeserver_challenge():
    c = pp.homeserver_challenge(DOMAIN)
    assert (c.token_type, c.issuer_name, c.redemption_context, c.origin_info) == (
        0x0005, b"as.a.example", b"", b"as.a.example,ds.a.example,qs.a.example")
    assert decode(pp.TokenChallenge, encode(c)) == c
    assert c.digest() != pp.homeserver_challenge("b.example").digest()


def test_token_challenge_rejects_bad_redemption_context():
    good = encode(pp.TokenChallenge(5, b"i", bytes(32), b""))
    bad = good[:5] + b"\x05" + bytes(5) + b"\x00\x00"
    with pytest.raises(Exception) as e:
        decode(pp.TokenChallenge, bad)
    assert "length 5" in str(e.value)


@spec("spec/authentication_service.md#token-issuance", "informative")
def test_issue_and_redeem_round_trip():
    keys = pp.IssuerKeys.generate(0)
    tokens = _issue(keys, 5)
    assert len({t.nonce for t in tokens}) == 5
    spent = pp.MemorySpentTokenStore()
    for t in tokens:
        pp.redeem(pp.parse_authorization(pp.authorization_header(t)), keys, spent, challenge=CHALLENGE, now_ms=1)
    assert len(spent.spent) == 5


# --- the Authorization header ------------------------------------------------------------------

def _token() -> pp.Token:
    return pp.Token(5, b"\x01" * 32, b"\x02" * 32, b"\x03" * 32, b"\x04" * 64)


def test_header_forms_accepted():
    t = _token()
    # A 162-byte token is 54 whole base64 groups: never any padding.
    unpadded = base64.urlsafe_b64encode(encode(t)).decode()
    assert "=" not in unpadded and len(unpadded) == 216
    for value in (pp.authorization_header(t), f'PrivateToken token="{unpadded}"', f"privatetoken token={unpadded}",
                  f'PrivateToken  token = "{unpadded}" , extra="x"', f"PrivateToken other=1, token={unpadded}",
                  pp.authorization_header(t).encode()):
        assert pp.parse_authorization(value) == t


@pytest.mark.parametrize("value,error", [
    (None, pp.MissingToken), ("", pp.MissingToken), ("Bearer abc", pp.MissingToken),
    ("PrivateToken", pp.InvalidToken), ("PrivateToken foo=bar", pp.InvalidToken),
    ("PrivateToken token=", pp.InvalidToken), ("PrivateToken token=a+b/", pp.InvalidToken),
    ('PrivateToken token="abc', pp.InvalidToken), ("PrivateToken token=AAU, token=AAU", pp.InvalidToken),
    ("PrivateToken token=AAUB", pp.InvalidToken), ("PrivateToken token=AAV", pp.InvalidToken),
    ("PrivateToken token=A", pp.InvalidToken), ("PrivateToken token=AA=", pp.InvalidToken),
    ("PrivateToken token=AAU x", pp.InvalidToken), (b"PrivateToken token=\xff", pp.InvalidToken),
    ("PrivateToken token=" + "A" * 5000, pp.InvalidToken),
], ids=lambda x: repr(x)[:30] if not isinstance(x, type) else x.__name__)
def test_header_errors(value, error):
    with pytest.raises(error) as e:
        pp.parse_authorization(value)
    assert e.value.status == 401


def test_header_base64_checks():
    # 2 bytes -> 3 characters whose last one carries 2 unused bits; setting
    # them gives a second spelling of the same bytes, which is refused.
    b64 = base64.urlsafe_b64encode(b"\x00\x05").decode()
    assert b64 == "AAU="
    with pytest.raises(pp.InvalidToken) as e:
        pp.parse_authorization("PrivateToken token=AAV")
    assert "canonical" in str(e.value)
    # Padded and unpadded spellings reach the token decoder (here: too short).
    for v in ('PrivateToken token="AAU="', "PrivateToken token=AAU"):
        with pytest.raises(pp.InvalidToken) as e:
            pp.parse_authorization(v)
        assert "malformed token" in str(e.value)


def test_www_authenticate_header():
    keys = pp.IssuerKeys.generate(0)
    value = pp.www_authenticate_header(CHALLENGE, keys.current.public_key)
    assert value.startswith('PrivateToken challenge="') and 'token-key="' in value


# --- redemption refusals ----------------------------------------------------------------------------

def test_error_codes_and_statuses():
    assert (pp.InvalidToken.status, pp.InvalidToken.code) == (401, "invalid_token")
    assert (pp.TokenSpent.status, pp.TokenSpent.code) == (401, "token_spent")
    assert (pp.UnknownTokenKey.status, pp.UnknownTokenKey.code) == (401, "unknown_token_key")
    assert (pp.InvalidTokenRequest.status, pp.InvalidTokenRequest.code) == (422, "invalid_token_request")
    for cls in (pp.InvalidToken, pp.TokenSpent, pp.UnknownTokenKey, pp.MissingToken,
                pp.InvalidTokenRequest, pp.InvalidTokenResponse):
        assert issubclass(cls, ProtocolError)


def test_redeem_refusals():
    keys = pp.IssuerKeys.generate(0)
    (t,) = _issue(keys, 1)
    spent = pp.MemorySpentTokenStore()

    def redeem(token, challenge=CHALLENGE):
        pp.redeem(token, keys, spent, challenge=challenge, now_ms=1)

    with pytest.raises(pp.InvalidToken):
        redeem(dataclasses.replace(t, token_type=1))
    with pytest.raises(pp.InvalidToken):
        redeem(t, challenge=pp.homeserver_challenge("b.example"))
    with pytest.raises(pp.UnknownTokenKey):
        redeem(dataclasses.replace(t, token_key_id=bytes(32)))
    with pytest.raises(pp.InvalidToken):
        redeem(dataclasses.replace(t, authenticator=bytes([t.authenticator[0] ^ 1]) + t.authenticator[1:]))
    with pytest.raises(pp.InvalidToken):
        redeem(dataclasses.replace(t, nonce=bytes(32)))
    with pytest.raises(pp.InvalidToken):
        redeem(encode(t)[:-1])
    assert spent.spent == {}  # nothing unverified reached the spent store
    redeem(t)
    with pytest.raises(pp.TokenSpent):
        redeem(t)


def test_token_of_another_issuer_is_unknown_key():
    mine, theirs = pp.IssuerKeys.generate(0), pp.IssuerKeys.generate(0)
    (t,) = _issue(theirs, 1)
    with pytest.raises(pp.UnknownTokenKey):
        pp.redeem(t, mine, pp.MemorySpentTokenStore(), challenge=CHALLENGE, now_ms=0)


# --- issuance refusals ----------------------------------------------------------------------------------

def _request(keys, n=2):
    return pp.begin_issuance(keys.current.public_key, CHALLENGE, n)


def test_issue_refusals():
    keys = pp.IssuerKeys.generate(0)
    state, req = _request(keys)
    for bad in (dataclasses.replace(req, token_type=1),
                dataclasses.replace(req, truncated_token_key_id=(req.truncated_token_key_id + 1) % 256),
                dataclasses.replace(req, blinded_msgs=[]),
                dataclasses.replace(req, blinded_msgs=[bytes(32)]),
                dataclasses.replace(req, blinded_msgs=[b"\xff" * 32])):
        with pytest.raises(pp.InvalidTokenRequest) as e:
            pp.issue(bad, keys)
        assert e.value.status == 422
    with pytest.raises(pp.InvalidTokenRequest):
        pp.issue(req, keys, max_batch=1)
    with pytest.raises(pp.InvalidTokenRequest):
        pp.decode_token_request(encode(_request(keys, 5)[1]), max_batch=4)
    with pytest.raises(pp.InvalidTokenRequest):
        pp.decode_token_request(encode(req) + b"\x00")


def test_finalize_refusals():
    keys = pp.IssuerKeys.generate(0)
    state, req = _request(keys, 3)
    resp = pp.issue(req, keys)
    other = pp.issue(req, pp.IssuerKey(keys.current.private_key, keys.current.public_key, 0, None))
    assert pp.finalize(state, other)  # same key, fresh proof randomness: fine
    evil = pp.IssuerKeys.generate(0)
    evil_req = dataclasses.replace(req, truncated_token_key_id=evil.current.truncated_key_id)
    for bad in (dataclasses.replace(resp, evaluated_msgs=resp.evaluated_msgs[:2]),
                dataclasses.replace(resp, evaluated_msgs=[bytes(32)] * 3),
                dataclasses.replace(resp, evaluated_proof=bytes(64)),
                dataclasses.replace(resp, evaluated_msgs=list(reversed(resp.evaluated_msgs))),
                pp.issue(evil_req, evil)):
        with pytest.raises(pp.InvalidTokenResponse):
            pp.finalize(state, bad)
    with pytest.raises(pp.InvalidTokenResponse):
        pp.decode_token_response(b"\x01")
    with pytest.raises(pp.InvalidTokenResponse):
        pp.begin_issuance(bytes(32), CHALLENGE, 1)


# --- issuer keys --------------------------------------------------------------------------------------------

HOUR = 3600 * 1000


def test_rotation_overlap_window():
    keys = pp.IssuerKeys.generate(0)
    old_tokens = _issue(keys, 2)
    old_state, old_request = _request(keys)
    keys.rotate(now_ms=10 * HOUR, overlap_ms=2 * HOUR)
    assert keys.current.truncated_key_id != keys.previous[0].truncated_key_id
    spent = pp.MemorySpentTokenStore()
    # Within the overlap, tokens of the previous key still redeem ...
    pp.redeem(old_tokens[0], keys, spent, challenge=CHALLENGE, now_ms=11 * HOUR)
    # ... and new tokens come from the new key.
    (new,) = _issue(keys, 1)
    assert new.token_key_id == keys.current.key_id
    pp.redeem(new, keys, spent, challenge=CHALLENGE, now_ms=11 * HOUR)
    # Only the current key issues.
    with pytest.raises(pp.InvalidTokenRequest):
        pp.issue(old_request, keys)
    # After the window, the old key is gone.
    with pytest.raises(pp.UnknownTokenKey):
        pp.redeem(old_tokens[1], keys, spent, challenge=CHALLENGE, now_ms=12 * HOUR)
    assert keys.prune(12 * HOUR) == [old_tokens[1].token_key_id]
    assert keys.previous == []
    assert spent.forget_key(old_tokens[0].token_key_id) == 1


def test_rotation_keeps_truncated_ids_distinct():
    keys = pp.IssuerKeys.generate(0)
    for i in range(60):
        keys.rotate(now_ms=i, overlap_ms=10**9)
    ids = [k.truncated_key_id for k in keys.all()]
    assert len(ids) == 61 == len(set(ids))
    clash = pp.IssuerKey.generate(0)
    while clash.truncated_key_id != keys.current.truncated_key_id:
        clash = pp.IssuerKey.generate(0)
    with pytest.raises(ValueError):
        keys.rotate(now_ms=100, overlap_ms=1, new_key=clash)


def test_maybe_rotate_and_serialisation():
    keys = pp.IssuerKeys(pp.IssuerKey.derive(b"\x07" * 32, b"phoenix test", 0))
    assert keys.maybe_rotate(5 * HOUR, rotation_period_ms=24 * HOUR, overlap_ms=HOUR) is None
    assert keys.maybe_rotate(24 * HOUR, rotation_period_ms=24 * HOUR, overlap_ms=HOUR) is keys.current
    assert keys.previous[0].redeem_until_ms == 25 * HOUR
    assert pp.IssuerKeys.from_bytes(keys.to_bytes()) == keys
    assert keys.current.key_id == pp.token_key_id(keys.current.public_key)


# --- issuance rate limits --------------------------------------------------------------------------------------

LIMITS = pp.IssuanceLimits(time_frame_ms=24 * HOUR, client_allowance=100, domain_allowance=150, max_batch=100)
SECRET = b"\x42" * 32


@spec("spec/authentication_service.md#rate-limiting", "SHOULD")
@pytest.mark.parametrize("store_kind", ["memory", "sqlite"])
def test_per_client_allowance(store_kind, tmp_path):
    store = pp.MemoryCounterStore() if store_kind == "memory" else PrivacyPassStore(tmp_path / "pp.sqlite")
    policy = pp.IssuancePolicy(LIMITS, store, DOMAIN, SECRET)
    me = dict(client_id="alice@a.example/1", client_domain=DOMAIN)
    policy.consume(**me, n=60, now_ms=0)
    policy.consume(**me, n=40, now_ms=HOUR)
    assert policy.remaining(**me, now_ms=HOUR) == 0
    with pytest.raises(RateLimited) as e:
        policy.consume(**me, n=1, now_ms=HOUR)
    assert e.value.retry_after == 23 * 3600 and e.value.status == 429
    # Another client is not affected.
    policy.consume(client_id="bob@a.example/1", client_domain=DOMAIN, n=100, now_ms=HOUR)
    # A new time frame restores the allowance.
    policy.consume(**me, n=100, now_ms=24 * HOUR)
    with pytest.raises(pp.InvalidTokenRequest):
        policy.consume(**me, n=101, now_ms=100 * HOUR)


@spec("spec/authentication_service.md#rate-limiting", "SHOULD")
@pytest.mark.parametrize("store_kind", ["memory", "sqlite"])
def test_per_domain_allowance_for_federated_clients(store_kind, tmp_path):
    store = pp.MemoryCounterStore() if store_kind == "memory" else PrivacyPassStore(tmp_path / "pp.sqlite")
    policy = pp.IssuancePolicy(LIMITS, store, DOMAIN, SECRET)
    a = dict(client_id="x@b.example/1", client_domain="b.example")
    b = dict(client_id="y@b.example/1", client_domain="b.example")
    policy.consume(**a, n=100, now_ms=0)
    policy.consume(**b, n=50, now_ms=HOUR)
    assert policy.remaining(**b, now_ms=HOUR) == 0  # own allowance 50 left, domain's 0
    with pytest.raises(RateLimited) as e:
        policy.consume(**b, n=1, now_ms=2 * HOUR)
    assert e.value.retry_after == 22 * 3600
    # The refused request charged nothing to the client's own counter.
    assert store.load(policy.counter_key("client", "y@b.example/1")).issued == 50
    # Other domains and local clients are unaffected.
    policy.consume(client_id="z@c.example/1", client_domain="c.example", n=100, now_ms=2 * HOUR)
    policy.consume(client_id="l@a.example/1", client_domain=DOMAIN, n=100, now_ms=2 * HOUR)
    with pytest.raises(pp.InvalidTokenRequest):
        pp.IssuancePolicy(pp.IssuanceLimits(client_allowance=100, domain_allowance=10), store, DOMAIN, SECRET).consume(
            **a, n=11, now_ms=0)


@spec("threat_model/stride/security_requirements.md#metadata-minimalism", "MUST")
def test_issuance_counters_keep_no_client_id_and_go_when_their_window_ends(tmp_path):
    path = tmp_path / "pp.sqlite"
    store = PrivacyPassStore(path)
    policy = pp.IssuancePolicy(LIMITS, store, DOMAIN, SECRET)
    remote = dict(client_id="mallory@b.example/7", client_domain="b.example")
    start = 1_767_225_600_000 + 17 * 60_000 + 4321          # a time that is not on a granule
    policy.consume(**remote, n=3, now_ms=start)
    policy.consume(client_id="alice@a.example/1", client_domain=DOMAIN, n=2, now_ms=start + 60_000)
    with sqlite3.connect(path) as raw:
        rows = raw.execute("SELECT counter_key, end_ms, issued FROM issuance_windows").fetchall()
        spent_columns = [r[1] for r in raw.execute("PRAGMA table_info(spent_tokens)")]
    assert spent_columns == ["spend_id", "token_key_id"]           # no redemption times
    assert len(rows) == 3                                          # two clients, one remote domain
    for key, end, _ in rows:
        # a keyed hash, not a name: nothing of the ids or domains is in the file
        assert isinstance(key, bytes) and len(key) == 32
        # the window's end is rounded up to the hour: the first request's minute is not kept
        assert end % HOUR == 0 and start + 24 * HOUR <= end < start + 25 * HOUR
    raw_file = path.read_bytes() + (tmp_path / "pp.sqlite-wal").read_bytes()
    for name in (b"mallory", b"alice", b"b.example"):
        assert name not in raw_file
    # another secret names the same subjects differently
    assert pp.IssuancePolicy(LIMITS, store, DOMAIN, b"\x43" * 32).counter_key("client", "alice@a.example/1") \
        != policy.counter_key("client", "alice@a.example/1")
    # a deleted client's window goes at once, its domain's stays (other clients share it)
    policy.forget("mallory@b.example/7")
    assert store.load(policy.counter_key("client", "mallory@b.example/7")) is None
    assert store.load(policy.counter_key("domain", "b.example")).issued == 3
    # windows that ended are purged, by the periodic purge or by the next issuance
    end = rows[0][1]
    assert policy.purge(end - 1) == 0
    assert policy.purge(end) == 2 and store.window_count() == 0
    policy.consume(client_id="bob@a.example/2", client_domain=DOMAIN, n=1, now_ms=end)
    policy.consume(client_id="bob@a.example/2", client_domain=DOMAIN, n=1, now_ms=end + 25 * HOUR)
    assert store.window_count() == 1
    store.close()


# --- persistence ----------------------------------------------------------------------------------------------

def test_store_survives_reopening(tmp_path):
    path = tmp_path / "privacy_pass.sqlite"
    keys = pp.IssuerKeys.generate(0)
    keys.rotate(now_ms=HOUR, overlap_ms=HOUR)
    with PrivacyPassStore(path) as store:
        assert store.load_issuer_keys() is None
        store.save_issuer_keys(keys)
        tokens = _issue(keys, 2)
        pp.redeem(tokens[0], keys, store, challenge=CHALLENGE, now_ms=HOUR)
        pp.IssuancePolicy(LIMITS, store, DOMAIN, SECRET).consume(client_id="c", client_domain=DOMAIN, n=30, now_ms=HOUR)
    with PrivacyPassStore(path) as store:
        loaded = store.load_issuer_keys()
        assert loaded == keys
        with pytest.raises(pp.TokenSpent):
            pp.redeem(tokens[0], loaded, store, challenge=CHALLENGE, now_ms=HOUR)
        pp.redeem(tokens[1], loaded, store, challenge=CHALLENGE, now_ms=HOUR)
        key = pp.IssuancePolicy(LIMITS, store, DOMAIN, SECRET).counter_key("client", "c")
        assert store.load(key) == pp.AllowanceWindow(25 * HOUR, 30)
        assert store.spent_count() == 2
        assert store.forget_key(keys.current.key_id) == 2


def test_store_double_spend_is_atomic(tmp_path):
    store = PrivacyPassStore(tmp_path / "pp.sqlite")
    results = []
    barrier = threading.Barrier(8)

    def worker():
        barrier.wait()
        results.append(store.mark_spent(b"\x09" * 32, b"\x01" * 32))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    store.close()


def test_store_update_rolls_back_on_error():
    store = PrivacyPassStore(":memory:")
    store.update([b"k"], lambda ws: [pp.AllowanceWindow(0, 5)])

    def boom(ws):
        raise RateLimited("no", retry_after=3)

    with pytest.raises(RateLimited):
        store.update([b"k", b"other"], boom)
    assert store.load(b"k") == pp.AllowanceWindow(0, 5)
    assert store.load(b"other") is None


# --- garbage never escapes as anything but a typed error -----------------------------------------------

_FUZZ_KEYS = pp.IssuerKeys(pp.IssuerKey.derive(b"\x05" * 32, b"fuzz", 0))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_token_request(data):
    try:
        req = pp.decode_token_request(data, max_batch=4)
        pp.issue(req, _FUZZ_KEYS, max_batch=4)
    except ProtocolError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.just(pp.TOKEN_TYPE), st.integers(0, 0xFFFF)),
       st.lists(st.binary(min_size=32, max_size=32), min_size=0, max_size=4))
def test_structured_garbage_token_request(token_type, elements):
    """Random 32-byte strings: some are valid elements, most are not."""
    req = pp.AmortizedBatchTokenRequest(token_type, _FUZZ_KEYS.current.truncated_key_id, elements)
    try:
        resp = pp.issue(pp.decode_token_request(encode(req)), _FUZZ_KEYS)
    except pp.InvalidTokenRequest:
        return
    assert token_type == pp.TOKEN_TYPE and len(resp.evaluated_msgs) == len(elements) >= 1


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.binary(min_size=162, max_size=162),
                 st.binary(min_size=160, max_size=160).map(lambda b: b"\x00\x05" + b)))
def test_garbage_token(data):
    with pytest.raises(ProtocolError):
        pp.redeem(data, _FUZZ_KEYS, pp.MemorySpentTokenStore(), challenge=CHALLENGE, now_ms=0)


def _b64_header(raw: bytes) -> str:
    return "PrivateToken token=" + base64.urlsafe_b64encode(raw).decode()


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300),
                 st.text(alphabet="PrivateTokn =\",-_AZaz09+/", max_size=300),
                 st.binary(max_size=200).map(_b64_header)))
def test_garbage_header(value):
    try:
        token = pp.parse_authorization(value)
    except ProtocolError:
        return
    assert isinstance(token, pp.Token)


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=162, max_size=162))
def test_any_162_bytes_parse_as_a_token_header(raw):
    assert encode(pp.parse_authorization(_b64_header(raw))) == raw


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_token_response(data):
    state, _ = pp.begin_issuance(_FUZZ_KEYS.current.public_key, CHALLENGE, 2)
    with pytest.raises(pp.InvalidTokenResponse):
        pp.finalize(state, pp.decode_token_response(data))
