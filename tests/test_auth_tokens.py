"""Client authentication tokens of the QS, DS and AS: signing, binding, freshness, typed failures."""

import dataclasses
import uuid

import pytest
from hypothesis import given, settings, strategies as st

from phoenix_ref import crypto
from phoenix_ref.auth_tokens import (
    DEFAULT_MAX_AGE_MS, MAX_FUTURE_SKEW_MS, AliasAuth, AuthTokenError, ClientCredentialAuth,
    DsAuthToken, DsKeyPackageRef, DsLeafIndex, QsAuthToken, RequestBinding, ScopeMismatch,
    TokenBadSignature, TokenExpired, TokenFromFuture, check_fresh,
)
from phoenix_ref.codec import DecodeError, decode, encode
from phoenix_ref.errors import ProtocolError
from phoenix_ref.credentials import (
    AsCredential, AsIntermediateCredential, ClientCredentialCsr, Expired, Revoked, TrustStore,
    UnknownSigner, AsCredentialsResponse, sign_csr,
)
from phoenix_ref.ids import Alias, ClientId, Fqdn, GroupId, QsCid, QsUid, UserId
from phoenix_ref.spec_plugin import spec

T0 = 1_767_225_600_000
DAY = 86_400_000
A = Fqdn("a.example")
KEY = crypto.SigningKey.generate()
OTHER_KEY = crypto.SigningKey.generate()
QS_UID = QsUid(uuid.UUID(int=1))
QS_CID = QsCid(QS_UID, uuid.UUID(int=2))
GROUP = GroupId(Fqdn("ds.example"), uuid.UUID(int=3))
BIND = RequestBinding(A, "/phoenix/v1/qs/dequeue_messages", b"params")


# --- AS fixtures --------------------------------------------------------------------------

def _issuer():
    as_key, inter_key = crypto.SigningKey.generate(), crypto.SigningKey.generate()
    as_cred = AsCredential.create(A, as_key, T0 - DAY, T0 + 365 * DAY)
    inter = AsIntermediateCredential.create(as_cred, as_key, inter_key, T0 - DAY, T0 + 100 * DAY)
    csr = ClientCredentialCsr.create(ClientId(UserId(A, uuid.uuid4()), uuid.uuid4()), KEY,
                                     inter.fingerprint(), T0 - DAY, T0 + 30 * DAY)
    cred = sign_csr(csr, inter, inter_key, T0, as_domain=A)
    return AsCredentialsResponse([as_cred], [inter], []), cred


ANSWER, CRED = _issuer()
TRUST = TrustStore.of({A: ANSWER})


# one builder per token type: make(key, timestamp, binding) and check(token, now, binding)
KINDS = {
    "qs_uid": (lambda k, t, b: QsAuthToken.create(k, QS_UID, t, b),
               lambda tok, now, b, **kw: tok.verify(KEY.public, now, b, **kw)),
    "qs_cid": (lambda k, t, b: QsAuthToken.create(k, QS_CID, t, b),
               lambda tok, now, b, **kw: tok.verify(KEY.public, now, b, **kw)),
    "ds_leaf": (lambda k, t, b: DsAuthToken.create(k, GROUP, t, DsLeafIndex(7), b),
                lambda tok, now, b, **kw: tok.verify(KEY.public, now, b, **kw)),
    "ds_kpref": (lambda k, t, b: DsAuthToken.create(k, GROUP, t, DsKeyPackageRef(b"r" * 32), b),
                 lambda tok, now, b, **kw: tok.verify(KEY.public, now, b, **kw)),
    "client_credential": (lambda k, t, b: ClientCredentialAuth.create(k, CRED, t, b),
                          lambda tok, now, b, **kw: tok.verify(TRUST, now, b, **kw)),
    "alias": (lambda k, t, b: AliasAuth.create(k, Alias("alice"), t, b),
              lambda tok, now, b, **kw: tok.verify(KEY.public, now, b, **kw)),
}
kinds = pytest.mark.parametrize("kind", sorted(KINDS))


@kinds
def test_valid_token_verifies_and_round_trips(kind):
    make, check = KINDS[kind]
    tok = make(KEY, T0, BIND)
    check(tok, T0, BIND)
    assert decode(type(tok), encode(tok)) == tok
    check(decode(type(tok), encode(tok)), T0 + 1000, BIND)


CHANGES = {"audience": Fqdn("b.example"), "operation": "/phoenix/v1/qs/delete_user_record",
           "request": b"other params"}


@kinds
@pytest.mark.parametrize("change", sorted(CHANGES))
def test_token_is_bound_to_the_request(kind, change):
    make, check = KINDS[kind]
    tok = make(KEY, T0, BIND)
    other = dataclasses.replace(BIND, **{change: CHANGES[change]})
    with pytest.raises(TokenBadSignature):
        check(tok, T0, other)


@kinds
def test_wrong_key(kind):
    make, check = KINDS[kind]
    with pytest.raises(TokenBadSignature):
        check(make(OTHER_KEY, T0, BIND), T0, BIND)


@kinds
def test_tampered_timestamp(kind):
    make, check = KINDS[kind]
    tok = dataclasses.replace(make(KEY, T0, BIND), timestamp=T0 + 1)
    with pytest.raises(TokenBadSignature):
        check(tok, T0, BIND)


@kinds
def test_tampered_sender_field(kind):
    make, check = KINDS[kind]
    tok = make(KEY, T0, BIND)
    field, value = {
        "qs_uid": ("sender_id", QsUid(uuid.UUID(int=9))),
        "qs_cid": ("sender_id", QsCid(QS_UID, uuid.UUID(int=9))),
        "ds_leaf": ("sender_id", DsLeafIndex(8)),
        "ds_kpref": ("group_id", GroupId(Fqdn("ds.example"), uuid.UUID(int=9))),
        "client_credential": ("client_credential", _issuer()[1]),
        "alias": ("alias", Alias("mallory")),
    }[kind]
    tok = dataclasses.replace(tok, **{field: value})
    with pytest.raises(AuthTokenError if kind != "client_credential" else (AuthTokenError, UnknownSigner)):
        check(tok, T0, BIND)


@spec("spec/delivery_service.md#ds-configuration-options", "informative")
@kinds
def test_maximum_age(kind):
    make, check = KINDS[kind]
    tok = make(KEY, T0, BIND)
    check(tok, T0 + DEFAULT_MAX_AGE_MS, BIND)
    with pytest.raises(TokenExpired):
        check(tok, T0 + DEFAULT_MAX_AGE_MS + 1, BIND)
    with pytest.raises(TokenExpired):
        check(tok, T0 + 60_001, BIND, max_age_ms=60_000)


@kinds
def test_future_skew(kind):
    make, check = KINDS[kind]
    check(make(KEY, T0 + MAX_FUTURE_SKEW_MS, BIND), T0, BIND)
    with pytest.raises(TokenFromFuture):
        check(make(KEY, T0 + MAX_FUTURE_SKEW_MS + 1, BIND), T0, BIND)


def test_errors_are_401_and_scope_is_403():
    for cls in (TokenExpired, TokenFromFuture, TokenBadSignature):
        assert issubclass(cls, AuthTokenError) and cls("x").status == 401
    assert ScopeMismatch("x").status == 403


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_check_fresh_window(ts, now):
    ok = now - DEFAULT_MAX_AGE_MS <= ts <= now + MAX_FUTURE_SKEW_MS
    if ok:
        check_fresh(ts, now)
    else:
        with pytest.raises((TokenExpired, TokenFromFuture)):
            check_fresh(ts, now)


# --- QS ------------------------------------------------------------------------------------

@spec("spec/queuing_service.md#authentication", "informative")
def test_qs_token_wire_layout_and_label():
    tok = QsAuthToken.create(KEY, QS_CID, T0, BIND)
    assert encode(tok) == b"\x02" + encode(QS_CID) + T0.to_bytes(8, "big") + b"\x40\x40" + tok.signature
    tbs = encode(QS_CID, QsCid)  # the spec's TBS: sender_id, timestamp — then the binding
    content = (b"\x02" + tbs + T0.to_bytes(8, "big") + encode(A) + bytes([len(BIND.operation)])
               + BIND.operation.encode() + b"\x20" + crypto.hash_(b"params"))
    crypto.hs_verify(KEY.public, "QsAuthTokenTbs", content, tok.signature)


@spec("spec/queuing_service.md#authentication", "informative")
def test_qs_uid_token_cannot_act_as_qs_cid_token():
    tok = QsAuthToken.create(KEY, QS_UID, T0, BIND)
    tok.check_sender(QS_UID)
    with pytest.raises(ScopeMismatch):
        tok.check_sender(QS_CID)
    with pytest.raises(ScopeMismatch):
        tok.check_sender(QsUid(uuid.UUID(int=5)))


def test_get_record_token_cannot_delete_record():
    """UserRecordParams and DeleteUserRecordParams are both {qs_uid}: only the operation differs."""
    params = encode(QS_UID)
    get = RequestBinding(A, "/phoenix/v1/qs/get_user_record", params)
    delete = RequestBinding(A, "/phoenix/v1/qs/delete_user_record", params)
    tok = QsAuthToken.create(KEY, QS_UID, T0, get)
    tok.verify(KEY.public, T0, get)
    with pytest.raises(TokenBadSignature):
        tok.verify(KEY.public, T0, delete)


# --- DS ------------------------------------------------------------------------------------

@spec("spec/delivery_service.md#authentication", "informative")
def test_ds_token_wire_layout_and_scope():
    tok = DsAuthToken.create(KEY, GROUP, T0, DsLeafIndex(7), BIND)
    assert encode(tok) == (encode(GROUP) + T0.to_bytes(8, "big") + b"\x01" + (7).to_bytes(4, "big")
                           + b"\x40\x40" + tok.signature)
    tok.check_group(GROUP)
    tok.check_sender_kind(DsLeafIndex)
    with pytest.raises(ScopeMismatch):
        tok.check_group(GroupId(Fqdn("ds.example"), uuid.UUID(int=4)))
    with pytest.raises(ScopeMismatch):
        tok.check_sender_kind(DsKeyPackageRef)


def test_ds_token_signature_is_not_an_mls_signature():
    """The leaf key also signs MLS messages; the Phoenix prefix keeps the two apart."""
    tok = DsAuthToken.create(KEY, GROUP, T0, DsLeafIndex(0), BIND)
    tbs = DsAuthToken._tbs(GROUP, T0, DsLeafIndex(0), BIND)
    with pytest.raises(crypto.CryptoError):
        crypto.verify_with_label(KEY.public, "DsAuthTokenTbs", encode(tbs), tok.signature)


# --- AS ------------------------------------------------------------------------------------

@spec("spec/authentication_service.md#authentication", "informative")
def test_client_credential_auth_returns_chain():
    tok = ClientCredentialAuth.create(KEY, CRED, T0, BIND)
    chain = tok.verify(TRUST, T0, BIND)
    assert chain.client.client_id == CRED.client_id


def test_client_credential_auth_with_untrusted_or_revoked_credential():
    tok = ClientCredentialAuth.create(KEY, CRED, T0, BIND)
    with pytest.raises(UnknownSigner):
        tok.verify(TrustStore(), T0, BIND)
    revoked = TrustStore.of({A: dataclasses.replace(ANSWER, revoked_certs=[CRED.fingerprint()])})
    with pytest.raises(Revoked):
        tok.verify(revoked, T0, BIND)
    late = T0 + 31 * DAY
    with pytest.raises(Expired):
        ClientCredentialAuth.create(KEY, CRED, late, BIND).verify(TRUST, late, BIND)


def test_client_credential_auth_needs_the_credential_key():
    """Holding a copy of someone's (public) credential is not enough."""
    tok = ClientCredentialAuth.create(OTHER_KEY, CRED, T0, BIND)
    with pytest.raises(TokenBadSignature):
        tok.verify(TRUST, T0, BIND)


def test_alias_scope():
    tok = AliasAuth.create(KEY, Alias("Alice"), T0, BIND)
    tok.check_alias(Alias("alice"))
    with pytest.raises(ScopeMismatch):
        tok.check_alias(Alias("bob"))


def test_binding_coerces_and_checks_types():
    assert RequestBinding("A.Example", "op", b"").audience == A
    with pytest.raises(TypeError):
        RequestBinding(A, "op", "not bytes")  # type: ignore[arg-type]


# --- garbage ---------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [QsAuthToken, DsAuthToken, ClientCredentialAuth, AliasAuth])
@settings(max_examples=200)
@given(data=st.binary(max_size=200))
def test_garbage_raises_only_decode_error(cls, data):
    try:
        v = decode(cls, data)
    except DecodeError:
        return
    assert encode(v) == data


@pytest.mark.parametrize("kind", sorted(KINDS))
@settings(max_examples=60, deadline=None)
@given(pos=st.integers(0, 10_000), flip=st.integers(1, 255))
def test_bit_flips_never_verify(kind, pos, flip):
    make, check = KINDS[kind]
    tok = _FLIP_TOKENS[kind]
    raw = bytearray(encode(tok))
    raw[pos % len(raw)] ^= flip
    try:
        mutated = decode(type(tok), bytes(raw))
    except DecodeError:
        return
    with pytest.raises(ProtocolError) as e:  # token or credential errors, all 401
        check(mutated, T0, BIND)
    assert e.value.status == 401, repr(e.value)


_FLIP_TOKENS = {kind: make(KEY, T0, BIND) for kind, (make, _) in KINDS.items()}


def test_configurable_skew_and_function_form():
    from phoenix_ref.auth_tokens import verify_qs_auth_token
    tok = QsAuthToken.create(KEY, QS_CID, T0 + 10_000, BIND)
    verify_qs_auth_token(tok, KEY.public, T0, DEFAULT_MAX_AGE_MS, BIND)
    with pytest.raises(TokenFromFuture):
        verify_qs_auth_token(tok, KEY.public, T0, DEFAULT_MAX_AGE_MS, BIND, max_skew_ms=5_000)
    with pytest.raises(TokenBadSignature):
        verify_qs_auth_token(tok, OTHER_KEY.public, T0, DEFAULT_MAX_AGE_MS, BIND)
