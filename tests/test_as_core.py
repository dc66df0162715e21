"""Unit tests of the AS core (phoenix_ref/authentication/core.py), endpoint by endpoint."""

from __future__ import annotations

import dataclasses

import pytest

from phoenix_ref import auth_tokens
from phoenix_ref import privacy_pass as pp
from phoenix_ref.authentication import messages as m
from phoenix_ref.authentication.core import (
    OPERATIONS, AuthenticationCore, AuthMode, NoConnectionPackage, UnknownClient, operation, request_binding,
)
from phoenix_ref.client.as_client import (
    AliasIdentity, AsIdentity, Registration, check_connection_package, new_connection_payload, trust_for,
)
from phoenix_ref.codec import encode
from phoenix_ref.credentials import ClientCredentialCsr, InvalidCsr, UnknownSigner, sign_csr
from phoenix_ref.crypto import SigningKey
from phoenix_ref.errors import Conflict, Malformed, NotFound, ProtocolError, RateLimited, Unauthorized
from phoenix_ref.ids import Alias, ClientId, Fqdn, GroupId, UserId
from phoenix_ref.spec_plugin import spec

from tests.as_fixtures import NOW, build

DOMAIN = Fqdn("a.example")


@pytest.fixture
def asu(tmp_path):
    a = build(DOMAIN, tmp_path / "as.db")
    yield a
    a.close()


def start_registration(asu, password=b"pw", **kw):
    return Registration.start(asu.domain, password, asu.secrets.intermediate.fingerprint(), NOW, **kw)


# --- the operation table ---------------------------------------------------------------

def test_operation_table_matches_spec_authentication_modes():
    modes = {op.name: (op.auth, op.privacy_pass) for op in OPERATIONS}
    assert modes["init_user_registration"] == (AuthMode.NONE, False)
    assert modes["finish_user_registration"] == (AuthMode.CLIENT_2FA, False)   # docs/decisions.md
    assert modes["delete_user"] == (AuthMode.CLIENT_2FA, True)
    assert modes["initiate_2fa"] == (AuthMode.CLIENT_CREDENTIAL, True)
    assert modes["request_tokens"] == (AuthMode.CLIENT_CREDENTIAL, False)
    assert operation("as_dequeue_messages").method == "dequeue_messages"
    assert modes["as_dequeue_messages"] == (AuthMode.CLIENT_CREDENTIAL, False)          # docs/decisions.md
    for name in ("delete_alias", "dequeue_alias_messages", "upload_alias_packages"):
        assert modes[name] == (AuthMode.ALIAS_AUTH_KEY, True)
    for name in ("user_profile", "user_connection_package", "as_enqueue_message", "register_alias",
                 "enqueue_alias_message", "alias_connection_package"):
        assert modes[name] == (AuthMode.NONE, True)
    # one core method per operation, and every section id is the endpoint's own heading
    for op in OPERATIONS:
        assert callable(getattr(AuthenticationCore, op.method))
        assert op.section.startswith("spec/authentication_service.md#")
        assert op.path == f"/phoenix/v1/{op.name}"


def test_operation_sections_exist():
    from phoenix_ref.spec_sections import check_section
    for op in OPERATIONS:
        assert check_section(op.section) is None, op.section


# --- registration -------------------------------------------------------------------------

def test_register_then_fetch_and_update_profile(asu):
    ident = asu.register()
    assert asu.core.user_profile(m.UserProfileParams(ident.user_id), NOW).user_profile == b""
    asu.core.update_user_profile(ident.update_profile(b"encrypted profile", NOW), NOW)
    assert asu.core.user_profile(m.UserProfileParams(ident.user_id), NOW).user_profile == b"encrypted profile"
    # the AS signed the CSR with its intermediate credential: the chain verifies
    asu.core.trust.verify_client_credential(ident.credential, NOW)
    assert ident.credential.signer_fingerprint == asu.secrets.intermediate.fingerprint()
    assert len(asu.core.ephemeral) == 0


def test_init_registration_refuses_existing_user(asu):
    ident = asu.register()
    _, init = start_registration(asu, user_id=ident.user_id)
    with pytest.raises(Conflict):
        asu.core.init_user_registration(init, NOW)


def test_init_registration_refuses_foreign_domain_and_bad_csr(asu):
    _, init = Registration.start("b.example", b"pw", asu.secrets.intermediate.fingerprint(), NOW)
    with pytest.raises(Malformed):
        asu.core.init_user_registration(init, NOW)
    _, init = start_registration(asu)
    bad = dataclasses.replace(init.client_csr, self_signature=bytes(64))
    with pytest.raises(InvalidCsr):
        asu.core.init_user_registration(dataclasses.replace(init, client_csr=bad), NOW)
    # a CSR naming another intermediate
    csr = ClientCredentialCsr.create(init.client_csr.payload.client_id, SigningKey.generate(), b"\x00" * 32,
                                     NOW, NOW + 1000)
    with pytest.raises(InvalidCsr):
        asu.core.init_user_registration(dataclasses.replace(init, client_csr=csr), NOW)


def test_init_registration_refuses_bad_opaque_request(asu):
    _, init = start_registration(asu)
    with pytest.raises(Malformed):
        asu.core.init_user_registration(dataclasses.replace(init, opaque_registration_request=b"junk"), NOW)
    assert len(asu.core.ephemeral) == 0


def _finish_signed(reg, params, key=None, client_id=None, now=NOW):
    """A finish request with ``params``, signed by ``key`` (default: the CSR's) for ``client_id``."""
    auth = auth_tokens.RegistrationAuth.create(key or reg.signing_key, client_id or reg.client_id, now,
                                               request_binding(DOMAIN, "finish_user_registration", params))
    return m.FinishUserRegistrationRequest(auth, params)


def test_finish_registration_needs_the_pending_entry_and_its_key(asu):
    reg, init = start_registration(asu)
    finish = reg.finish(asu.core.init_user_registration(init, NOW), NOW)
    # expired ephemeral entry: entries live 5 minutes (docs/decisions.md, "Ephemeral OPAQUE DB")
    with pytest.raises(Unauthorized):
        asu.core.finish_user_registration(finish, NOW + 5 * 60 * 1000)
    # a fresh start of the same user id
    reg, init = start_registration(asu, user_id=reg.client_id.user_id)
    finish = reg.finish(asu.core.init_user_registration(init, NOW), NOW)
    with pytest.raises(auth_tokens.TokenBadSignature):      # another key than the CSR's
        asu.core.finish_user_registration(_finish_signed(reg, finish.params, key=SigningKey.generate()), NOW)
    other_client = ClientId.random(reg.client_id.user_id)   # another client of the same user id
    with pytest.raises(Unauthorized) as e:
        asu.core.finish_user_registration(_finish_signed(reg, finish.params, client_id=other_client), NOW)
    assert e.value.code == "credential_mismatch"
    tampered = dataclasses.replace(finish, params=dataclasses.replace(finish.params, opaque_registration_record=b"x"))
    with pytest.raises(auth_tokens.TokenBadSignature):      # signed for another body
        asu.core.finish_user_registration(tampered, NOW)
    assert not asu.core.accounts.user_exists(reg.client_id.user_id)
    ident = reg.identity(asu.core.finish_user_registration(finish, NOW))
    # the released credential is the CSR signed by the intermediate, and it is registered
    asu.core.trust.verify_client_credential(ident.credential, NOW)
    assert ident.credential.public_key == reg.signing_key.public
    asu.core.update_user_profile(ident.update_profile(b"p", NOW), NOW)
    with pytest.raises(Unauthorized):                       # finishing twice: the ephemeral entry is gone
        asu.core.finish_user_registration(finish, NOW)


def test_finish_registration_checks_keys(asu):
    reg, init = start_registration(asu)
    finish = reg.finish(asu.core.init_user_registration(init, NOW), NOW)

    def with_params(**changes):
        return _finish_signed(reg, dataclasses.replace(finish.params, **changes))

    with pytest.raises(Malformed):
        asu.core.finish_user_registration(with_params(queue_encryption_key=b"short"), NOW)
    with pytest.raises(Malformed):
        asu.core.finish_user_registration(with_params(initial_queue_ratchet_key=b"x" * 5), NOW)
    with pytest.raises(Malformed):
        asu.core.finish_user_registration(with_params(opaque_registration_record=b"x" * 10), NOW)
    assert not asu.core.accounts.user_exists(reg.client_id.user_id)
    asu.core.finish_user_registration(finish, NOW)
    assert asu.core.accounts.user_exists(reg.client_id.user_id)


@spec("threat_model/qualitative/authentication_service.md#baseline-security-under-an-honest-as", "informative")
def test_a_user_id_gets_one_credential(asu):
    reg1, init1 = start_registration(asu)
    uid = reg1.client_id.user_id
    reg2, init2 = start_registration(asu, user_id=uid)
    resp1 = asu.core.init_user_registration(init1, NOW)
    # the start hands out no credential, only the OPAQUE answer
    assert [f.name for f in dataclasses.fields(resp1)] == ["opaque_registration_response"]
    # the id is reserved while its registration is in progress: no second credential is signed
    with pytest.raises(Conflict) as e:
        asu.core.init_user_registration(init2, NOW + 1000)
    assert e.value.code == "registration_pending"
    assert asu.core.ephemeral.get(b"u" + encode(uid), NOW).client_credential.public_key == reg1.signing_key.public
    # the same client may repeat its start (a lost answer); it replaces its own entry
    resp1 = asu.core.init_user_registration(init1, NOW + 2000)
    ident = reg1.identity(asu.core.finish_user_registration(reg1.finish(resp1, NOW + 3000), NOW + 3000))
    with pytest.raises(Conflict) as e:
        asu.core.init_user_registration(init2, NOW + 4000)
    assert e.value.code == "user_exists"
    assert asu.core.accounts.get_client(ident.client_id).client_credential == encode(ident.credential)
    # an abandoned start reserves its id only until its entry expires
    reg3, init3 = start_registration(asu)
    reg4, init4 = start_registration(asu, user_id=reg3.client_id.user_id)
    asu.core.init_user_registration(init3, NOW)
    ttl = asu.core.config.ephemeral_ttl_ms
    with pytest.raises(Conflict):
        asu.core.init_user_registration(init4, NOW + ttl - 1)
    resp4 = asu.core.init_user_registration(init4, NOW + ttl)
    reg4.identity(asu.core.finish_user_registration(reg4.finish(resp4, NOW + ttl), NOW + ttl))


# --- Client Credential authentication ---------------------------------------------------

def test_client_credential_auth_is_enforced(asu):
    ident = asu.register()
    req = ident.update_profile(b"p", NOW)
    with pytest.raises(auth_tokens.TokenExpired):
        asu.core.update_user_profile(req, NOW + asu.core.config.auth_max_age_ms + 1)
    with pytest.raises(auth_tokens.TokenBadSignature):  # signed for another endpoint
        p = m.UpdateUserProfileParams(b"p")
        asu.core.update_user_profile(m.UpdateUserProfileRequest(ident.auth("initiate_2fa", p, NOW), p), NOW)
    with pytest.raises(auth_tokens.TokenBadSignature):  # another body
        asu.core.update_user_profile(dataclasses.replace(req, params=m.UpdateUserProfileParams(b"q")), NOW)
    # an otherwise valid credential of this AS without client entry
    reg, init = start_registration(asu)
    unregistered = sign_csr(init.client_csr, asu.secrets.intermediate, asu.secrets.intermediate_key, NOW)
    pending = AsIdentity(DOMAIN, reg.client_id, reg.signing_key, unregistered, b"pw", reg.queue)
    with pytest.raises(UnknownClient):
        asu.core.update_user_profile(pending.update_profile(b"p", NOW), NOW)
    asu.core.update_user_profile(req, NOW)


# --- 2FA, restart and account deletion ----------------------------------------------------

def test_register_reopen_store_then_log_in_and_delete(asu):
    ident = asu.register(password=b"secret")
    asu.core.update_user_profile(ident.update_profile(b"profile", NOW), NOW)
    asu2 = asu.reopen()
    try:
        core = asu2.core
        assert core.user_profile(m.UserProfileParams(ident.user_id), NOW).user_profile == b"profile"
        state, req = ident.initiate_2fa(NOW)
        resp = core.initiate_2fa(req, NOW)
        delete = ident.delete_user(state, resp, NOW)  # the client's OPAQUE login succeeds
        core.delete_user(delete, NOW)
        with pytest.raises(NotFound):
            core.user_profile(m.UserProfileParams(ident.user_id), NOW)
        with pytest.raises(UnknownClient):  # the credential no longer authenticates
            core.update_user_profile(ident.update_profile(b"x", NOW), NOW)
        with pytest.raises(NotFound):  # the direct queue is gone
            core.enqueue_message(m.EnqueueMessageParams(ident.client_id, b"x"), NOW)
    finally:
        asu2.close()


def test_restart_forgets_pending_2fa(asu):
    ident = asu.register(password=b"secret")
    state, req = ident.initiate_2fa(NOW)
    resp = asu.core.initiate_2fa(req, NOW)
    delete = ident.delete_user(state, resp, NOW)
    asu2 = asu.reopen()
    try:
        with pytest.raises(Unauthorized):
            asu2.core.delete_user(delete, NOW)
        assert asu2.core.accounts.user_exists(ident.user_id)
    finally:
        asu2.close()


def test_delete_user_with_wrong_password_fails(asu):
    ident = asu.register(password=b"secret")
    wrong = dataclasses.replace(ident, password=b"guess")
    state, req = wrong.initiate_2fa(NOW)
    resp = asu.core.initiate_2fa(req, NOW)
    with pytest.raises(Unauthorized):  # the client notices: KE2 does not authenticate
        wrong.delete_user(state, resp, NOW)
    # a KE3 made without the password fails at the server, once
    p = m.DeleteUserParams(bytes(64))
    with pytest.raises(Unauthorized):
        asu.core.delete_user(m.DeleteUserRequest(ident.auth("delete_user", p, NOW), p), NOW)
    with pytest.raises(Unauthorized):  # no pending 2FA any more
        asu.core.delete_user(m.DeleteUserRequest(ident.auth("delete_user", p, NOW), p), NOW)
    assert asu.core.accounts.user_exists(ident.user_id)


def test_delete_user_needs_initiate_2fa(asu):
    ident = asu.register()
    p = m.DeleteUserParams(bytes(64))
    with pytest.raises(Unauthorized):
        asu.core.delete_user(m.DeleteUserRequest(ident.auth("delete_user", p, NOW), p), NOW)


def test_initiate_2fa_refuses_bad_ke1(asu):
    ident = asu.register()
    p = m.Initiate2FaAuthenticationParams(b"short")
    with pytest.raises(Malformed):
        asu.core.initiate_2fa(m.Initiate2FaRequest(ident.auth("initiate_2fa", p, NOW), p), NOW)


# --- connection packages -------------------------------------------------------------------

def test_user_connection_packages_upload_and_fetch(asu):
    ident = asu.register(packages=1)
    asu.core.upload_connection_packages(ident.upload_packages(2, NOW), NOW)
    seen = set()
    for _ in range(4):  # three stored; the last one stays as a last resort
        cp = asu.core.user_connection_package(m.UserClientsParams(ident.user_id), NOW).connection_package
        check_connection_package(cp, ident.user_id, asu.core.trust, NOW)
        seen.add(cp.payload.encryption_key)
    assert len(seen) == 3
    with pytest.raises(NotFound):
        asu.core.user_connection_package(m.UserClientsParams(UserId.random(DOMAIN)), NOW)


def test_expired_connection_packages_are_not_handed_out(asu):
    ident = asu.register(packages=0)
    with pytest.raises(NoConnectionPackage):
        asu.core.user_connection_package(m.UserClientsParams(ident.user_id), NOW)
    asu.core.upload_connection_packages(ident.upload_packages(1, NOW), NOW)
    later = NOW + 31 * 24 * 3600 * 1000
    with pytest.raises(NoConnectionPackage):
        asu.core.user_connection_package(m.UserClientsParams(ident.user_id), later)


def test_connection_packages_with_the_largest_u64_lifetime_are_stored(asu):
    """A lifetime ending at 2^64-1 (u64 on the wire, beyond SQLite's signed
    64-bit INTEGER) is a valid, never-expiring package, not a crash."""
    end = 2**64 - 1
    ident = asu.register(packages=0)
    payload, keys = new_connection_payload(NOW)
    payload = dataclasses.replace(payload, lifetime=m.ExpirationData(NOW, end))
    cp = m.ConnectionPackage.create(ident.signing_key, ident.credential, payload)
    p = m.UploadUserIdPackages([encode(cp)])
    asu.core.upload_connection_packages(
        m.UploadUserIdPackagesRequest(ident.auth("upload_connection_packages", p, NOW), p), NOW)
    got = asu.core.user_connection_package(m.UserClientsParams(ident.user_id), NOW + 100 * 365 * 86_400_000)
    assert got.connection_package == cp
    holder, register = AliasIdentity.new(DOMAIN, "forever")
    asu.core.register_alias(register, NOW)
    p = m.UploadAliasPackages(holder.alias, [payload])
    asu.core.upload_alias_packages(m.UploadAliasPackagesRequest(holder.auth("upload_alias_packages", p, NOW), p),
                                   NOW)
    assert asu.core.alias_connection_package(m.AliasClientsParams(holder.alias), NOW).connection_package == payload


def test_upload_refuses_foreign_or_bad_packages(asu):
    ident = asu.register()
    other = asu.register()
    # a package carrying another client's credential
    cp = other.connection_package(NOW)
    p = m.UploadUserIdPackages([encode(cp)])
    with pytest.raises(Malformed):
        asu.core.upload_connection_packages(
            m.UploadUserIdPackagesRequest(ident.auth("upload_connection_packages", p, NOW), p), NOW)
    p = m.UploadUserIdPackages([b"\x01garbage"])
    with pytest.raises(Malformed):
        asu.core.upload_connection_packages(
            m.UploadUserIdPackagesRequest(ident.auth("upload_connection_packages", p, NOW), p), NOW)
    expired = ident.connection_package(NOW - 10_000, lifetime_ms=1_000)
    p = m.UploadUserIdPackages([encode(expired)])
    with pytest.raises(Malformed):
        asu.core.upload_connection_packages(
            m.UploadUserIdPackagesRequest(ident.auth("upload_connection_packages", p, NOW), p), NOW)


# --- direct queues and connection establishment ---------------------------------------------

def test_connection_establishment_through_direct_queue(asu):
    alice, bob = asu.register(), asu.register()
    cp = asu.core.user_connection_package(m.UserClientsParams(bob.user_id), NOW).connection_package
    check_connection_package(cp, bob.user_id, asu.core.trust, NOW)
    gid = GroupId.random("a.example")
    ctxt = alice.make_connection_establishment(cp.payload.encryption_key, gid, b"e" * 32, b"c" * 32)
    asu.core.enqueue_message(m.EnqueueMessageParams(bob.client_id, ctxt), NOW)
    asu.core.enqueue_message(m.EnqueueMessageParams(bob.client_id, b"second"), NOW)
    resp = asu.core.dequeue_messages(bob.dequeue(NOW, max_messages=1), NOW)
    assert resp.remaining_messages_number == 1
    [plain] = bob.queue.read(resp.messages)
    cep = bob.open_connection_establishment(plain, asu.core.trust, NOW)
    assert cep.sender_client_credential.client_id == alice.client_id
    assert cep.connection_group_id == gid
    resp = asu.core.dequeue_messages(bob.dequeue(NOW), NOW)
    assert bob.queue.read(resp.messages) == [b"second"]
    # dequeuing from the next sequence number deletes what was read
    resp = asu.core.dequeue_messages(bob.dequeue(NOW), NOW)
    assert resp.messages == [] and resp.remaining_messages_number == 0
    # the queue is the caller's own: alice's dequeue sees nothing of bob's
    assert asu.core.dequeue_messages(alice.dequeue(NOW), NOW).messages == []


def test_tampered_connection_establishment_is_refused(asu):
    alice, bob = asu.register(), asu.register()
    cp = asu.core.user_connection_package(m.UserClientsParams(bob.user_id), NOW).connection_package
    cep = m.ConnectionEstablishmentPackage.create(alice.signing_key, alice.credential, GroupId.random("a.example"),
                                                  b"e", b"c")
    forged = dataclasses.replace(cep, connection_group_ear_key=b"attacker")
    with pytest.raises(m.BadConnectionSignature):
        bob.open_connection_establishment(forged.seal(cp.payload.encryption_key), asu.core.trust, NOW)
    with pytest.raises(m.BadConnectionEstablishmentPackage):
        bob.open_connection_establishment(b"\x00junk", asu.core.trust, NOW)


def test_enqueue_to_unknown_or_foreign_client(asu):
    with pytest.raises(NotFound):
        asu.core.enqueue_message(m.EnqueueMessageParams(ClientId.random(UserId.random(DOMAIN)), b"x"), NOW)
    with pytest.raises(NotFound):
        asu.core.enqueue_message(m.EnqueueMessageParams(ClientId.random(UserId.random("b.example")), b"x"), NOW)


def test_dequeue_respects_configured_maximum(tmp_path):
    a = build(DOMAIN, tmp_path / "as.db", max_messages=2)
    try:
        bob = a.register()
        for i in range(5):
            a.core.enqueue_message(m.EnqueueMessageParams(bob.client_id, bytes([i])), NOW)
        resp = a.core.dequeue_messages(bob.dequeue(NOW, max_messages=100), NOW)
        assert len(resp.messages) == 2 and resp.remaining_messages_number == 3
        assert bob.queue.read(resp.messages) == [b"\x00", b"\x01"]
    finally:
        a.close()


# --- aliases -------------------------------------------------------------------------------------

def test_alias_lifecycle(asu):
    alice = asu.register()
    holder, register = AliasIdentity.new(DOMAIN, "Bob.W")
    asu.core.register_alias(register, NOW)
    with pytest.raises(Conflict):
        asu.core.register_alias(AliasIdentity.new(DOMAIN, "bob.w")[1], NOW)
    asu.core.upload_alias_packages(holder.upload_packages(2, NOW), NOW)
    payload = asu.core.alias_connection_package(m.AliasClientsParams(Alias("bob.w")), NOW).connection_package
    assert payload.encryption_key in holder.connection_keys
    gid = GroupId.random("a.example")
    ctxt = alice.make_connection_establishment(payload.encryption_key, gid, b"e", b"c")
    asu.core.enqueue_alias_message(m.EnqueueAliasMessageParams(holder.alias, ctxt), NOW)
    resp = asu.core.dequeue_alias_messages(holder.dequeue(NOW), NOW)
    [plain] = holder.queue.read(resp.messages)
    cep = holder.open_connection_establishment(plain, asu.core.trust, NOW)
    assert cep.sender_client_credential.client_id == alice.client_id
    asu.core.delete_alias(holder.delete(NOW), NOW)
    for call in (lambda: asu.core.alias_connection_package(m.AliasClientsParams(holder.alias), NOW),
                 lambda: asu.core.enqueue_alias_message(m.EnqueueAliasMessageParams(holder.alias, b"x"), NOW),
                 lambda: asu.core.dequeue_alias_messages(holder.dequeue(NOW), NOW)):
        with pytest.raises(NotFound):
            call()
    # the alias is free again
    asu.core.register_alias(AliasIdentity.new(DOMAIN, "bob.w")[1], NOW)


def test_alias_auth_key_is_enforced(asu):
    holder, register = AliasIdentity.new(DOMAIN, "carol")
    asu.core.register_alias(register, NOW)
    impostor = dataclasses.replace(holder, auth_key=SigningKey.generate())
    with pytest.raises(auth_tokens.TokenBadSignature):
        asu.core.delete_alias(impostor.delete(NOW), NOW)
    other, reg2 = AliasIdentity.new(DOMAIN, "dave")
    asu.core.register_alias(reg2, NOW)
    # a valid auth for "dave" used on a request about "carol"
    p = m.DeleteAlias(holder.alias)
    with pytest.raises(auth_tokens.ScopeMismatch):
        asu.core.delete_alias(m.DeleteAliasRequest(other.auth("delete_alias", p, NOW), p), NOW)
    with pytest.raises(auth_tokens.TokenExpired):
        asu.core.delete_alias(holder.delete(NOW - asu.core.config.auth_max_age_ms - 1), NOW)
    assert asu.core.accounts.get_alias(holder.alias) is not None


#: X25519 points of low order: HPKE to them fails (RFC 7748 §6.1)
LOW_ORDER = [bytes(32), b"\x01" + bytes(31), bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f")]


def test_register_alias_refuses_bad_keys(asu):
    _, reg = AliasIdentity.new(DOMAIN, "erin")
    changes = [{"alias_auth_key": b"k"}, {"queue_encryption_key": b"k"}, {"initial_queue_ratchet_key": b"k"}]
    # a queue key the AS could not seal its key updates to would fail every later enqueue
    changes += [{"queue_encryption_key": k} for k in LOW_ORDER]
    for change in changes:
        with pytest.raises(Malformed):
            asu.core.register_alias(dataclasses.replace(reg, **change), NOW)
    assert asu.core.accounts.get_alias(Alias("erin")) is None


def test_alias_packages_checked(asu):
    holder, register = AliasIdentity.new(DOMAIN, "frank")
    asu.core.register_alias(register, NOW)
    with pytest.raises(NoConnectionPackage):
        asu.core.alias_connection_package(m.AliasClientsParams(holder.alias), NOW)
    for key in [b"short", *LOW_ORDER]:     # a sender could not seal to a low-order key
        bad = m.ConnectionPackagePayload(key, m.ExpirationData(NOW, NOW + 1000))
        p = m.UploadAliasPackages(holder.alias, [bad])
        with pytest.raises(Malformed):
            asu.core.upload_alias_packages(
                m.UploadAliasPackagesRequest(holder.auth("upload_alias_packages", p, NOW), p), NOW)


# --- token issuance ---------------------------------------------------------------------------------

def _issuer_public(asu) -> bytes:
    return asu.secrets.token_keys.current.public_key


def _federated_public(asu) -> bytes:
    return asu.secrets.federated_token_keys.current.public_key


def test_local_token_issuance_and_allowance(asu):
    ident = asu.register()
    state, req = ident.request_tokens(_issuer_public(asu), DOMAIN, 6, NOW)
    tokens = pp.finalize(state, asu.core.request_tokens(req, NOW).tokens)
    assert len(tokens) == 6
    spent = pp.MemorySpentTokenStore()
    pp.redeem(tokens[0], asu.secrets.token_keys, spent, challenge=pp.homeserver_challenge(DOMAIN), now_ms=NOW)
    _, req = ident.request_tokens(_issuer_public(asu), DOMAIN, 5, NOW)
    with pytest.raises(RateLimited) as e:  # allowance 10 per time frame
        asu.core.request_tokens(req, NOW)
    assert e.value.retry_after >= 1
    later = NOW + asu.core.issuance.limits.time_frame_ms
    _, req = ident.request_tokens(_issuer_public(asu), DOMAIN, 5, later)
    assert len(asu.core.request_tokens(req, later).tokens.evaluated_msgs) == 5


@spec("threat_model/stride/security_requirements/users.md#initiate-user-registration", "informative")
def test_only_registered_clients_get_tokens(asu):
    reg, init = start_registration(asu)
    asu.core.init_user_registration(init, NOW)
    # the credential waiting in the ephemeral DB, had it leaked, draws nothing
    held = asu.core.ephemeral.get(b"u" + encode(reg.client_id.user_id), NOW).client_credential
    pending = AsIdentity(DOMAIN, reg.client_id, reg.signing_key, held, b"pw", reg.queue)
    _, req = pending.request_tokens(_issuer_public(asu), DOMAIN, 1, NOW)
    with pytest.raises(UnknownClient):
        asu.core.request_tokens(req, NOW)
    # once registered, the client draws its whole allowance (10 here)
    ident = reg.identity(asu.core.finish_user_registration(reg.finish(
        asu.core.init_user_registration(init, NOW), NOW), NOW))
    _, req = ident.request_tokens(_issuer_public(asu), DOMAIN, 10, NOW)
    asu.core.request_tokens(req, NOW)
    _, req = ident.request_tokens(_issuer_public(asu), DOMAIN, 1, NOW)
    with pytest.raises(RateLimited):
        asu.core.request_tokens(req, NOW)
    # a deleted account draws nothing, and its issuance window is gone with it
    assert asu.core.issuance.counter_key("client", ident.client_id) in asu.counters.windows
    state, r = ident.initiate_2fa(NOW)
    asu.core.delete_user(ident.delete_user(state, asu.core.initiate_2fa(r, NOW), NOW), NOW)
    assert asu.core.issuance.counter_key("client", ident.client_id) not in asu.counters.windows
    _, req = ident.request_tokens(_issuer_public(asu), DOMAIN, 1, NOW)
    with pytest.raises(UnknownClient):
        asu.core.request_tokens(req, NOW)


@spec("spec/federation/federation_protocol.md#client-to-remote-as-communication", "informative")
def test_federated_token_issuance(tmp_path):
    a = build("a.example", tmp_path / "a.db")
    b = build("b.example", tmp_path / "b.db")
    try:
        users = [b.register() for _ in range(3)]
        _, req = users[0].request_tokens(_federated_public(a), a.domain, 2, NOW)
        with pytest.raises(UnknownSigner) as e:  # the core asks for b.example's AS credentials
            a.core.request_tokens(req, NOW)
        assert e.value.domain == Fqdn("b.example")
        remote = trust_for({b.domain: b.secrets.credentials})
        state, req = users[0].request_tokens(_federated_public(a), a.domain, 8, NOW)
        tokens = pp.finalize(state, a.core.request_tokens(req, NOW, remote_trust=remote).tokens)
        pp.redeem(tokens[0], a.secrets.federated_token_keys, pp.MemorySpentTokenStore(),
                  challenge=pp.homeserver_challenge(a.domain), now_ms=NOW)
        with pytest.raises(pp.UnknownTokenKey):          # not a token of the local key
            pp.redeem(tokens[1], a.secrets.token_keys, pp.MemorySpentTokenStore(),
                      challenge=pp.homeserver_challenge(a.domain), now_ms=NOW)
        # a client of b.example gets nothing under a.example's local key (422, not charged)
        _, req = users[1].request_tokens(_issuer_public(a), a.domain, 1, NOW)
        with pytest.raises(pp.InvalidTokenRequest):
            a.core.request_tokens(req, NOW, remote_trust=remote)
        _, req = users[1].request_tokens(_federated_public(a), a.domain, 7, NOW)
        a.core.request_tokens(req, NOW, remote_trust=remote)
        # the per-domain allowance (15) is exhausted although users[2] has its own left
        _, req = users[2].request_tokens(_federated_public(a), a.domain, 1, NOW)
        with pytest.raises(RateLimited):
            a.core.request_tokens(req, NOW, remote_trust=remote)
        # a token request signed for b.example's AS does not work at a.example's
        _, req = users[2].request_tokens(_federated_public(a), b.domain, 1, NOW)
        with pytest.raises(auth_tokens.TokenBadSignature):
            a.core.request_tokens(req, NOW, remote_trust=remote)
        # a client claiming b.example but certified by another AS
        mallory_as = build("b.example", tmp_path / "m.db")
        try:
            mallory = mallory_as.register()
            _, req = mallory.request_tokens(_federated_public(a), a.domain, 1, NOW)
            with pytest.raises(Unauthorized):
                a.core.request_tokens(req, NOW, remote_trust=remote)
        finally:
            mallory_as.close()
    finally:
        a.close()
        b.close()


@spec("spec/federation/use_cases.md#message-distribution", "informative")
def test_local_clients_get_no_tokens_under_the_federated_key(asu):
    """Docs/decisions.md A21: local and federated tokens come from separate keys."""
    ident = asu.register()
    _, req = ident.request_tokens(_federated_public(asu), DOMAIN, 1, NOW)
    with pytest.raises(pp.InvalidTokenRequest):
        asu.core.request_tokens(req, NOW)
    assert asu.core.issuance.remaining(client_id=ident.client_id, client_domain=DOMAIN, now_ms=NOW) == 10


def test_bad_token_request_is_refused_without_charge(asu):
    ident = asu.register()
    _, req = ident.request_tokens(_issuer_public(asu), DOMAIN, 1, NOW)
    bad_tr = dataclasses.replace(req.params.token_request, token_type=1)
    p = m.RequestToken(bad_tr)
    with pytest.raises(pp.InvalidTokenRequest):
        asu.core.request_tokens(m.RequestTokenRequest(ident.auth("request_tokens", p, NOW), p), NOW)
    assert asu.core.issuance.remaining(client_id=ident.client_id, client_domain=DOMAIN, now_ms=NOW) == 10


# --- typed errors --------------------------------------------------------------------------------------

def test_every_request_struct_rejects_garbage():
    from phoenix_ref.codec import DecodeError, decode
    for op in OPERATIONS:
        for junk in (b"", b"\xff", b"\x00" * 3, b"\x40\x01" + b"\x00" * 10):
            with pytest.raises(DecodeError):
                decode(op.request, junk)


def test_error_from_response_rebuilds_typed_errors():
    from phoenix_ref.client.as_client import error_from_response
    from phoenix_ref.errors import ErrorResponse
    e = error_from_response(429, encode(ErrorResponse("rate_limited", "slow down")), "7")
    assert isinstance(e, RateLimited) and e.retry_after == 7 and e.code == "rate_limited"
    e = error_from_response(404, encode(ErrorResponse("unknown_user", "no")))
    assert isinstance(e, NotFound) and e.code == "unknown_user"
    e = error_from_response(418, b"\xff")
    assert isinstance(e, ProtocolError) and e.status == 418 and e.code == "unknown"


# --- #configuration: "Maximal QS client record age" ---------------------------------------------

DAY = 86_400_000


def test_prune_inactive_deletes_idle_clients_and_keeps_active_ones_and_aliases(asu):
    """The pruning policy is the core's: a client whose direct queue nobody
    fetched from for longer than the maximal age loses its entry, its queue
    and (as its user's last client) the user entry; a client that dequeued
    within the age and an alias queue stay."""
    idle, active = asu.register(), asu.register()
    holder, register = AliasIdentity.new(DOMAIN, "quiet")
    asu.core.register_alias(register, NOW)
    assert asu.core.config.max_client_age_ms == 90 * DAY        # the spec's default
    assert asu.core.prune_inactive(NOW + 80 * DAY) == []
    asu.core.dequeue_messages(active.dequeue(NOW + 60 * DAY), NOW + 60 * DAY)
    assert asu.core.prune_inactive(NOW + 120 * DAY) == [idle.client_id]
    assert asu.core.prune_inactive(NOW + 120 * DAY) == []       # nothing left over to prune twice
    with pytest.raises(NotFound):
        asu.core.user_profile(m.UserProfileParams(idle.user_id), NOW + 120 * DAY)
    with pytest.raises(UnknownClient):
        asu.core.dequeue_messages(idle.dequeue(NOW + 120 * DAY), NOW + 120 * DAY)
    asu.core.user_profile(m.UserProfileParams(active.user_id), NOW + 120 * DAY)
    asu.core.dequeue_alias_messages(holder.dequeue(NOW + 120 * DAY), NOW + 120 * DAY)
