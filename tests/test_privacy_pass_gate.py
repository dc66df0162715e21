"""Unit tests of phoenix_ref/privacy_pass_gate.py: the homeserver's Privacy Pass check."""

import sqlite3

import pytest
import trio

from phoenix_ref import endpoints
from phoenix_ref import privacy_pass as pp
from phoenix_ref.codec import decode, encode
from phoenix_ref.privacy_pass_gate import DAY_MS, IssuerKeysResponse, PrivacyPassGate
from phoenix_ref.privacy_pass_store import FEDERATED, LOCAL, PrivacyPassStore
from phoenix_ref.spec_plugin import spec

DOMAIN = "a.example"
NOW = 1_767_225_600_000


def tokens(gate: PrivacyPassGate, n: int, domain: str = DOMAIN, *, federated: bool = False) -> list[pp.Token]:
    """Issue ``n`` tokens under the gate's current local (or federated) key, as the AS does."""
    keys = gate.issuing_keys(local=not federated)
    state, request = pp.begin_issuance(keys.current.public_key, pp.homeserver_challenge(domain), n)
    return pp.finalize(state, pp.issue(request, keys))


@pytest.fixture
def gate(tmp_path):
    g = PrivacyPassGate.open_sync(tmp_path / "pp.sqlite3", DOMAIN, NOW)
    yield g
    g.close()


async def test_first_open_generates_and_persists_both_issuer_keys(tmp_path):
    g = await PrivacyPassGate.open(tmp_path / "pp.sqlite3", DOMAIN, NOW)
    key, federated = g.keys.current, g.federated_keys.current
    assert key.key_id != federated.key_id
    assert key.truncated_key_id != federated.truncated_key_id
    g.close()
    again = await PrivacyPassGate.open(tmp_path / "pp.sqlite3", DOMAIN, NOW + 1000)
    try:
        assert again.keys.current == key
        assert again.federated_keys.current == federated
        assert again.challenge == pp.homeserver_challenge(DOMAIN)
    finally:
        again.close()


def test_a_store_from_before_the_two_key_sets_keeps_its_key_as_the_local_one(tmp_path):
    path = tmp_path / "pp.sqlite3"
    old = pp.IssuerKey.generate(NOW)
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE issuer_keys (key_id BLOB PRIMARY KEY, private_key BLOB NOT NULL, "
               "public_key BLOB NOT NULL, created_ms INTEGER NOT NULL, redeem_until_ms INTEGER)")
    db.execute("INSERT INTO issuer_keys VALUES (?, ?, ?, ?, NULL)",
               (old.key_id, old.private_key, old.public_key, old.created_ms))
    db.commit()
    db.close()
    g = PrivacyPassGate.open_sync(path, DOMAIN, NOW + 1000)
    try:
        assert g.keys.all() == [old]
        assert g.federated_keys.current.key_id != old.key_id
    finally:
        g.close()
    with PrivacyPassStore(path) as store:
        assert store.load_issuer_keys(LOCAL).all() == [old]
        assert store.load_issuer_keys(FEDERATED) is not None


# --- local-only rows (docs/decisions.md, A21) ---------------------------------------------------------

class Call:
    def __init__(self, headers):
        self.headers, self.now_ms = headers, NOW


def header(t: pp.Token) -> dict[str, str]:
    return {"Authorization": pp.authorization_header(t)}


def test_the_endpoint_table_marks_request_group_id_and_create_group_local_only():
    local_only = {(ep.service, ep.name) for ep in endpoints.ENDPOINTS if ep.local_only}
    assert local_only == {("ds", "ds_request_group_id"), ("ds", "ds_create_group")}
    assert all(ep.privacy_pass and not ep.federated for ep in endpoints.ENDPOINTS if ep.local_only)


@spec("spec/federation/use_cases.md#message-distribution", "informative")
@spec("threat_model/stride/security_requirements/clients.md#group-creation", "MUST")
async def test_local_only_rows_refuse_federated_tokens_and_leave_them_unspent(gate):
    create = endpoints.by_name("ds", "ds_create_group")
    send = endpoints.by_name("ds", "ds_send_message")
    [remote] = tokens(gate, 1, federated=True)
    with pytest.raises(pp.LocalClientsOnly) as info:
        await gate(create, Call(header(remote)))
    assert (info.value.status, info.value.code) == (403, "local_clients_only")
    with pytest.raises(pp.LocalClientsOnly):                     # refused again: not spent
        await gate(endpoints.by_name("ds", "ds_request_group_id"), Call(header(remote)))
    await gate(send, Call(header(remote)))                       # other rows take it, once
    with pytest.raises(pp.TokenSpent):
        await gate(send, Call(header(remote)))
    # a local token passes both kinds of row, and is spent at either
    [local, local2] = tokens(gate, 2)
    await gate(create, Call(header(local)))
    with pytest.raises(pp.TokenSpent):
        await gate(create, Call(header(local)))
    with pytest.raises(pp.TokenSpent):
        await gate(send, Call(header(local)))
    assert await gate.redeem_header(pp.authorization_header(local2), NOW, local_only=True) == "local"


async def test_an_invalid_token_of_the_federated_key_is_401_at_a_local_only_row(gate):
    [remote] = tokens(gate, 1, federated=True)
    forged = pp.Token(remote.token_type, remote.nonce, remote.challenge_digest, remote.token_key_id,
                      bytes(pp.NK))
    with pytest.raises(pp.InvalidToken):
        await gate.redeem_header(pp.authorization_header(forged), NOW, local_only=True)
    assert await gate.redeem_header(pp.authorization_header(remote), NOW) == "federated"


def test_each_key_set_issues_only_under_its_own_key(gate):
    local_key, federated_key = gate.keys.current.public_key, gate.federated_keys.current.public_key
    challenge = pp.homeserver_challenge(DOMAIN)
    with pytest.raises(pp.InvalidTokenRequest):
        pp.issue(pp.begin_issuance(federated_key, challenge, 1)[1], gate.issuing_keys(local=True))
    with pytest.raises(pp.InvalidTokenRequest):
        pp.issue(pp.begin_issuance(local_key, challenge, 1)[1], gate.issuing_keys(local=False))


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
    [t] = tokens(gate, 1)
    await gate(None, Call({"Authorization": pp.authorization_header(t)}))
    with pytest.raises(pp.MissingToken):
        await gate(None, Call({}))


async def test_rotation_keeps_old_tokens_redeemable_for_the_overlap(tmp_path):
    g = PrivacyPassGate.open_sync(tmp_path / "pp.sqlite3", DOMAIN, NOW, rotation_ms=10 * DAY_MS,
                                  overlap_ms=2 * DAY_MS)
    try:
        old, old_fed = g.keys.current, g.federated_keys.current
        [t_old, t_late] = tokens(g, 2)
        [f_old, f_late] = tokens(g, 2, federated=True)
        assert not await g.maybe_rotate(NOW + DAY_MS)            # too young to rotate
        assert await g.maybe_rotate(NOW + 10 * DAY_MS)
        assert g.keys.current != old and g.federated_keys.current != old_fed
        directory = decode(IssuerKeysResponse, encode(g.directory(NOW + 10 * DAY_MS)))
        assert [k.token_key for k in directory.token_keys] == [g.keys.current.public_key, old.public_key]
        assert [k.token_key for k in directory.federated_token_keys] == \
            [g.federated_keys.current.public_key, old_fed.public_key]
        # the old keys still redeem within the overlap, the new ones issue
        await g.redeem_header(pp.authorization_header(t_old), NOW + 11 * DAY_MS)
        await g.redeem_header(pp.authorization_header(f_old), NOW + 11 * DAY_MS)
        [t_new] = tokens(g, 1)
        [f_new] = tokens(g, 1, federated=True)
        await g.redeem_header(pp.authorization_header(t_new), NOW + 11 * DAY_MS)
        # an old federated key stays federated: refused at a local-only row
        with pytest.raises(pp.LocalClientsOnly):
            await g.redeem_header(pp.authorization_header(f_late), NOW + 11 * DAY_MS, local_only=True)
        # rotation is persistent, each key in its own set
        g.close()
        g = PrivacyPassGate.open_sync(tmp_path / "pp.sqlite3", DOMAIN, NOW)
        assert [k.public_key for k in g.keys.all()] == [k.token_key for k in directory.token_keys]
        assert [k.public_key for k in g.federated_keys.all()] == \
            [k.token_key for k in directory.federated_token_keys]
        await g.redeem_header(pp.authorization_header(f_new), NOW + 11 * DAY_MS, local_only=False)
        # after the overlap the old keys and their spent rows are gone
        assert await g.maybe_rotate(NOW + 13 * DAY_MS)
        live = {k.key_id for k in g.keys.all() + g.federated_keys.all()}
        assert old.key_id not in live and old_fed.key_id not in live
        assert g.store.spent_count() == 2                          # t_new and f_new
        for late in (t_late, f_late):
            with pytest.raises(pp.UnknownTokenKey):
                await g.redeem_header(pp.authorization_header(late), NOW + 13 * DAY_MS)
        now = g.directory(NOW + 13 * DAY_MS)
        assert [k.token_key for k in now.token_keys] == [g.keys.current.public_key]
        assert [k.token_key for k in now.federated_token_keys] == [g.federated_keys.current.public_key]
    finally:
        g.close()


async def test_operator_rotation(gate):
    before, before_fed = gate.keys.current, gate.federated_keys.current
    new, new_fed = await gate.rotate(NOW + 1)
    assert new == gate.keys.current != before
    assert new_fed == gate.federated_keys.current != before_fed
    for key, local in ((before, True), (before_fed, False)):     # the old keys no longer issue
        with pytest.raises(pp.InvalidTokenRequest):
            pp.issue(pp.begin_issuance(key.public_key, pp.homeserver_challenge(DOMAIN), 1)[1],
                     gate.issuing_keys(local=local))


async def test_live_keys_of_both_sets_never_share_a_truncated_key_id(gate):
    """A request names its key by one byte; were a local and a federated key to
    share it, a request under the wrong set's key would be answered under the
    other key instead of refused."""
    for i in range(40):
        await gate.rotate(NOW + i)
        ids = [k.truncated_key_id for k in gate.keys.all() + gate.federated_keys.all()]
        assert len(ids) == len(set(ids))
