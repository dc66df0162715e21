"""Unit tests of phoenix_ref/privacy_pass_gate.py: the homeserver's Privacy Pass check."""

import pytest
import trio

from phoenix_ref import privacy_pass as pp
from phoenix_ref.codec import decode, encode
from phoenix_ref.privacy_pass_gate import DAY_MS, IssuerKeysResponse, PrivacyPassGate

DOMAIN = "a.example"
NOW = 1_767_225_600_000


def tokens(gate: PrivacyPassGate, n: int, domain: str = DOMAIN) -> list[pp.Token]:
    """Issue ``n`` tokens under the gate's current key, as the AS does."""
    state, request = pp.begin_issuance(gate.keys.current.public_key, pp.homeserver_challenge(domain), n)
    return pp.finalize(state, pp.issue(request, gate.keys))


@pytest.fixture
def gate(tmp_path):
    g = PrivacyPassGate.open_sync(tmp_path / "pp.sqlite3", DOMAIN, NOW)
    yield g
    g.close()


async def test_first_open_generates_and_persists_the_issuer_key(tmp_path):
    g = await PrivacyPassGate.open(tmp_path / "pp.sqlite3", DOMAIN, NOW)
    key = g.keys.current
    g.close()
    again = await PrivacyPassGate.open(tmp_path / "pp.sqlite3", DOMAIN, NOW + 1000)
    try:
        assert again.keys.current == key
        assert again.challenge == pp.homeserver_challenge(DOMAIN)
    finally:
        again.close()


async def test_a_token_redeems_once(gate):
    [t] = tokens(gate, 1)
    await gate.redeem_header(pp.authorization_header(t), NOW)
    with pytest.raises(pp.TokenSpent) as info:
        await gate.redeem_header(pp.authorization_header(t), NOW)
    assert (info.value.status, info.value.code) == (401, "token_spent")


@pytest.mark.parametrize("header, error", [
    (None, pp.MissingToken), ("", pp.MissingToken), ("Basic dXNlcjpwdw==", pp.MissingToken),
    ("PrivateToken", pp.InvalidToken), ("PrivateToken token=!!!", pp.InvalidToken),
    ("PrivateToken token=AAAA", pp.InvalidToken),
])
async def test_missing_or_malformed_headers_are_refused(gate, header, error):
    with pytest.raises(error) as info:
        await gate.redeem_header(header, NOW)
    assert info.value.status == 401
    assert info.value.code == ("token_required" if error is pp.MissingToken else "invalid_token")


async def test_tokens_of_another_issuer_or_with_a_bad_authenticator_are_refused(gate, tmp_path):
    other = PrivacyPassGate.open_sync(tmp_path / "other.sqlite3", "b.example", NOW)
    try:
        [foreign] = tokens(other, 1, "b.example")
        with pytest.raises(pp.InvalidToken):               # answers b.example's challenge
            await gate.redeem_header(pp.authorization_header(foreign), NOW)
        [same_challenge] = tokens(other, 1, DOMAIN)       # right challenge, key unknown here
        with pytest.raises(pp.UnknownTokenKey):
            await gate.redeem_header(pp.authorization_header(same_challenge), NOW)
    finally:
        other.close()
    [t] = tokens(gate, 1)
    forged = pp.Token(t.token_type, t.nonce, t.challenge_digest, t.token_key_id, bytes(pp.NK))
    with pytest.raises(pp.InvalidToken):
        await gate.redeem_header(pp.authorization_header(forged), NOW)
    # the refusals spent nothing
    await gate.redeem_header(pp.authorization_header(t), NOW)


async def test_the_spent_store_survives_a_reopen(tmp_path):
    g = PrivacyPassGate.open_sync(tmp_path / "pp.sqlite3", DOMAIN, NOW)
    [a, b] = tokens(g, 2)
    await g.redeem_header(pp.authorization_header(a), NOW)
    g.close()
    g = PrivacyPassGate.open_sync(tmp_path / "pp.sqlite3", DOMAIN, NOW)
    try:
        with pytest.raises(pp.TokenSpent):
            await g.redeem_header(pp.authorization_header(a), NOW)
        await g.redeem_header(pp.authorization_header(b), NOW)
    finally:
        g.close()


async def test_concurrent_redemptions_of_one_token_succeed_once(gate):
    [t] = tokens(gate, 1)
    header = pp.authorization_header(t)
    outcomes = []

    async def spend():
        try:
            await gate.redeem_header(header, NOW)
            outcomes.append("ok")
        except pp.TokenSpent:
            outcomes.append("spent")

    async with trio.open_nursery() as n:
        for _ in range(8):
            n.start_soon(spend)
    assert sorted(outcomes) == ["ok"] + ["spent"] * 7


async def test_call_interface_reads_the_authorization_header(gate):
    class Call:
        def __init__(self, headers):
            self.headers, self.now_ms = headers, NOW
    [t] = tokens(gate, 1)
    await gate(None, Call({"Authorization": pp.authorization_header(t)}))
    with pytest.raises(pp.MissingToken):
        await gate(None, Call({}))


async def test_rotation_keeps_old_tokens_redeemable_for_the_overlap(tmp_path):
    g = PrivacyPassGate.open_sync(tmp_path / "pp.sqlite3", DOMAIN, NOW, rotation_ms=10 * DAY_MS,
                                  overlap_ms=2 * DAY_MS)
    try:
        old = g.keys.current
        [t_old, t_late] = tokens(g, 2)
        assert not await g.maybe_rotate(NOW + DAY_MS)            # too young to rotate
        assert await g.maybe_rotate(NOW + 10 * DAY_MS)
        assert g.keys.current != old
        directory = decode(IssuerKeysResponse, encode(g.directory(NOW + 10 * DAY_MS)))
        assert [k.token_key for k in directory.token_keys] == [g.keys.current.public_key, old.public_key]
        # the old key still redeems within the overlap, the new one issues
        await g.redeem_header(pp.authorization_header(t_old), NOW + 11 * DAY_MS)
        [t_new] = tokens(g, 1)
        await g.redeem_header(pp.authorization_header(t_new), NOW + 11 * DAY_MS)
        # rotation is persistent
        g.close()
        g = PrivacyPassGate.open_sync(tmp_path / "pp.sqlite3", DOMAIN, NOW)
        assert [k.public_key for k in g.keys.all()] == [k.token_key for k in directory.token_keys]
        # after the overlap the old key and its spent rows are gone
        assert await g.maybe_rotate(NOW + 13 * DAY_MS)
        assert old.key_id not in {k.key_id for k in g.keys.all()}
        with pytest.raises(pp.UnknownTokenKey):
            await g.redeem_header(pp.authorization_header(t_late), NOW + 13 * DAY_MS)
        assert [k.token_key for k in g.directory(NOW + 13 * DAY_MS).token_keys] == [g.keys.current.public_key]
    finally:
        g.close()


async def test_operator_rotation(gate):
    before = gate.keys.current
    new = await gate.rotate(NOW + 1)
    assert new == gate.keys.current != before
    with pytest.raises(pp.InvalidTokenRequest):     # the old key no longer issues
        pp.issue(pp.begin_issuance(before.public_key, pp.homeserver_challenge(DOMAIN), 1)[1], gate.keys)
