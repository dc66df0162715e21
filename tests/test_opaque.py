"""Tests for the OPAQUE wrapper and the ephemeral OPAQUE DB (phoenix_ref/opaque.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phoenix_ref import opaque as op
from phoenix_ref.errors import Malformed, ProtocolError, RateLimited, Unauthorized
from phoenix_ref.spec_plugin import spec

T0 = 1_767_225_600_000
SETUP = op.OpaqueServerSetup.generate()
USER = b"alice@a.example"
PASSWORD = b"correct horse battery staple"


def register(setup=SETUP, password=PASSWORD, user=USER):
    start = op.client_registration_start(password)
    response = op.server_registration_start(setup, start.message, user)
    fin = op.client_registration_finish(password, start.state, response)
    return op.server_registration_finish(fin.record), fin.export_key, response


PASSWORD_FILE, EXPORT_KEY, _ = register()


def login(password=PASSWORD, password_file=PASSWORD_FILE, user=USER, setup=SETUP):
    c = op.client_login_start(password)
    s = op.server_login_start(setup, password_file, c.message, user)
    cf = op.client_login_finish(password, c.state, s.ke2)
    return cf, op.server_login_finish(s.state, cf.ke3)


@spec("spec/authentication_service.md#initialize-user-registration", "informative")
@spec("spec/authentication_service.md#finish-user-registration", "MUST")
def test_registration_then_login_agrees_on_session_key():
    assert len(PASSWORD_FILE) == op.REGISTRATION_RECORD_LEN
    client, server_key = login()
    assert client.session_key == server_key and len(server_key) == 64
    assert client.export_key == EXPORT_KEY  # same password, same export key
    # Fresh session keys for every login.
    client2, _ = login()
    assert client2.session_key != client.session_key


def test_str_password_is_utf8():
    pf, _, _ = register(password="pässwörd")
    client, server_key = login(password="pässwörd".encode(), password_file=pf)
    assert client.session_key == server_key


@spec("spec/authentication_service.md#initiate-2fa-operation", "MUST")
def test_wrong_password_fails_with_opaque_failed():
    c = op.client_login_start(b"wrong password")
    s = op.server_login_start(SETUP, PASSWORD_FILE, c.message, USER)
    with pytest.raises(Unauthorized) as e:
        op.client_login_finish(b"wrong password", c.state, s.ke2)
    assert e.value.code == "opaque_failed" and e.value.status == 401


def test_wrong_user_or_wrong_server_fails():
    with pytest.raises(Unauthorized):
        login(user=b"bob@a.example")
    with pytest.raises(Unauthorized):
        login(setup=op.OpaqueServerSetup.generate())


def test_forged_ke3_fails_on_server():
    c = op.client_login_start(PASSWORD)
    s = op.server_login_start(SETUP, PASSWORD_FILE, c.message, USER)
    with pytest.raises(Unauthorized):
        op.server_login_finish(s.state, bytes(op.KE3_LEN))
    # A KE3 from another session does not finish this one.
    other, _ = login()
    with pytest.raises(Unauthorized):
        op.server_login_finish(s.state, other.ke3)


@pytest.mark.parametrize("fn,args,what", [
    (lambda b: op.server_registration_start(SETUP, b, USER), 32, "RegistrationRequest"),
    (lambda b: op.server_registration_finish(b), 192, "RegistrationRecord"),
    (lambda b: op.server_login_start(SETUP, PASSWORD_FILE, b, USER), 96, "KE1"),
    (lambda b: op.server_login_start(SETUP, b, bytes(96), USER), 192, "password file"),
    (lambda b: op.server_login_finish(bytes(128), b), 64, "KE3"),
    (lambda b: op.client_login_finish(PASSWORD, bytes(192), b), 320, "KE2"),
    (lambda b: op.client_registration_finish(PASSWORD, bytes(64), b), 64, "RegistrationResponse"),
])
def test_wrong_lengths_are_malformed(fn, args, what):
    for n in (0, args - 1, args + 1):
        with pytest.raises(Malformed) as e:
            fn(bytes(n))
        assert e.value.code == "opaque_malformed" and what in e.value.message


def test_undecodable_content_is_malformed():
    # 0xff... is not a ristretto255 encoding.
    with pytest.raises(Malformed):
        op.server_registration_start(SETUP, b"\xff" * 32, USER)
    with pytest.raises(Malformed):
        op.server_registration_finish(b"\xff" * 192)
    with pytest.raises(Malformed):
        op.server_login_start(SETUP, PASSWORD_FILE, b"\xff" * 96, USER)


def _flip(data: bytes, pos: int) -> bytes:
    b = bytearray(data)
    b[pos % len(b)] ^= 1 << (pos // len(b) % 8)
    return bytes(b)


@given(pos=st.integers(0, 8 * 320 - 1))
@settings(max_examples=25, deadline=None)
def test_tampered_ke2_never_authenticates(pos):
    c = op.client_login_start(PASSWORD)
    s = op.server_login_start(SETUP, PASSWORD_FILE, c.message, USER)
    with pytest.raises((Unauthorized, Malformed)):
        op.client_login_finish(PASSWORD, c.state, _flip(s.ke2, pos))


@given(pos=st.integers(0, 8 * 64 - 1))
@settings(max_examples=25, deadline=None)
def test_tampered_ke3_never_authenticates(pos):
    c = op.client_login_start(PASSWORD)
    s = op.server_login_start(SETUP, PASSWORD_FILE, c.message, USER)
    cf = op.client_login_finish(PASSWORD, c.state, s.ke2)
    with pytest.raises((Unauthorized, Malformed)):
        op.server_login_finish(s.state, _flip(cf.ke3, pos))


@given(pos=st.integers(0, 8 * 96 - 1))
@settings(max_examples=15, deadline=None)
def test_tampered_ke1_never_yields_a_login(pos):
    c = op.client_login_start(PASSWORD)
    with pytest.raises((Unauthorized, Malformed)):
        s = op.server_login_start(SETUP, PASSWORD_FILE, _flip(c.message, pos), USER)
        op.client_login_finish(PASSWORD, c.state, s.ke2)


@given(pos=st.integers(0, 8 * 64 - 1))
@settings(max_examples=10, deadline=None)
def test_tampered_registration_response_never_yields_a_login(pos):
    start = op.client_registration_start(PASSWORD)
    response = op.server_registration_start(SETUP, start.message, USER)
    with pytest.raises((Unauthorized, Malformed)):
        fin = op.client_registration_finish(PASSWORD, start.state, _flip(response, pos))
        pf = op.server_registration_finish(fin.record)
        login(password_file=pf)


@given(pos=st.integers(0, 8 * 192 - 1))
@settings(max_examples=15, deadline=None)
def test_tampered_record_never_yields_a_login(pos):
    with pytest.raises((Unauthorized, Malformed)):
        pf = op.server_registration_finish(_flip(PASSWORD_FILE, pos))
        login(password_file=pf)


def test_errors_are_protocol_errors_not_crashes():
    for bad in (b"", b"\x00" * 320, b"\xff" * 320):
        with pytest.raises(ProtocolError):
            op.client_login_finish(PASSWORD, b"\x00" * 192, bad)


def test_server_setup_round_trips_and_keeps_working():
    raw = SETUP.to_bytes()
    assert len(raw) == op.SERVER_SETUP_LEN
    again = op.OpaqueServerSetup.from_bytes(raw)
    assert again == SETUP and again.to_bytes() == raw
    client, server_key = login(setup=again)  # a restarted AS still logs users in
    assert client.session_key == server_key
    with pytest.raises(ValueError):
        op.OpaqueServerSetup.from_bytes(raw[:-1])
    with pytest.raises(ValueError):
        op.OpaqueServerSetup.from_bytes(b"\xff" * 128)


def test_public_key_is_the_one_in_registration_responses_and_not_secret():
    _, _, response = register()
    assert SETUP.public_key == response[32:64]
    assert len(SETUP.public_key) == 32
    # The binding's own get_public_key() leaks the whole secret setup; ours must not.
    assert SETUP.public_key not in (SETUP.to_bytes()[:64], SETUP.to_bytes()[64:96])
    assert SETUP.to_bytes()[64:96].hex() not in repr(SETUP)


# --- ephemeral OPAQUE DB ---------------------------------------------------------------

@spec("spec/authentication_service.md#as-state", "informative")
def test_ephemeral_entries_expire():
    db = op.EphemeralOpaqueDb(ttl_ms=1000)
    db.put(b"alice", "credential", T0)
    db.put(b"client-1", "cred-2", T0 + 500, opaque_state=b"state")
    assert db.get(b"alice", T0 + 999).client_credential == "credential"
    with pytest.raises(Unauthorized) as e:
        db.get(b"alice", T0 + 1000)
    assert e.value.code == "no_pending_opaque"
    assert db.get(b"client-1", T0 + 1000).opaque_state == b"state"
    db.purge(T0 + 1500)
    assert len(db) == 0


def test_ephemeral_take_is_single_use_and_put_replaces():
    db = op.EphemeralOpaqueDb(ttl_ms=1000)
    db.put(b"k", "old", T0)
    db.put(b"k", "new", T0 + 800)  # replacing also renews the lifetime
    assert db.get(b"k", T0 + 1500).client_credential == "new"
    assert db.take(b"k", T0 + 1500).client_credential == "new"
    with pytest.raises(Unauthorized):
        db.take(b"k", T0 + 1500)
    db.put(b"x", "c", T0)
    with pytest.raises(Unauthorized):
        db.take(b"x", T0 + 1000)  # expired
    db.put(b"y", "c", T0)
    db.delete(b"y")
    with pytest.raises(Unauthorized):
        db.get(b"y", T0)


def test_ephemeral_db_is_bounded():
    db = op.EphemeralOpaqueDb(ttl_ms=10_000, max_entries=2)
    db.put(b"a", 1, T0)
    db.put(b"b", 2, T0 + 3000)
    db.put(b"a", 3, T0 + 4000)  # replacing an entry is always allowed
    with pytest.raises(RateLimited) as e:
        db.put(b"c", 4, T0 + 5000)
    assert e.value.retry_after == 8  # b expires at T0 + 13000
    db.put(b"c", 4, T0 + 13_000)  # b expired: room again
    assert len(db) == 2


@spec("spec/authentication_service.md#initialize-user-registration", "informative")
def test_one_source_cannot_fill_the_ephemeral_db():
    """A flood of registration starts from one source stops at its own bound;
    other sources (and authenticated starts, no source) still get room."""
    db = op.EphemeralOpaqueDb(ttl_ms=10_000, max_entries=10, max_per_source=3)
    for i in range(3):
        db.put(b"flood-%d" % i, "c", T0 + i * 1000, source="198.51.100.7")
    with pytest.raises(RateLimited) as e:
        db.put(b"flood-3", "c", T0 + 5000, source="198.51.100.7")
    assert e.value.retry_after == 5                        # flood-0 expires at T0 + 10000
    db.put(b"flood-0", "again", T0 + 5000, source="198.51.100.7")   # replacing takes no room
    for i in range(6):
        db.put(b"honest-%d" % i, "c", T0 + 5000, source=f"203.0.113.{i}")
    db.put(b"client-2fa", "c", T0 + 5000)
    assert len(db) == 10
    db.take(b"flood-1", T0 + 5000)                         # a finished handshake frees its room
    db.put(b"flood-4", "c", T0 + 5000, source="198.51.100.7")
    with pytest.raises(RateLimited):                      # the whole table is full now
        db.put(b"honest-9", "c", T0 + 5000, source="203.0.113.9")
    db.put(b"flood-5", "c", T0 + 12_500, source="198.51.100.7")   # flood-2 expired by then
    assert db.get(b"flood-5", T0 + 12_500).source == "198.51.100.7"


def test_full_2fa_flow_through_ephemeral_db():
    """The AS keeps the server state between KE2 and KE3 in the ephemeral DB."""
    db = op.EphemeralOpaqueDb(ttl_ms=60_000)
    c = op.client_login_start(PASSWORD)
    s = op.server_login_start(SETUP, PASSWORD_FILE, c.message, USER)
    db.put(b"client-id", "credential", T0, opaque_state=s.state)
    cf = op.client_login_finish(PASSWORD, c.state, s.ke2)
    entry = db.take(b"client-id", T0 + 10)
    assert op.server_login_finish(entry.opaque_state, cf.ke3) == cf.session_key
