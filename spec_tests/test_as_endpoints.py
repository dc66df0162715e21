"""The AS endpoints over HTTPS, one scenario per endpoint of
``spec/authentication_service.md``: the steps the spec lists, and the
authentication mode it names (None, Client Credential, Client 2FA, Alias auth
key) enforced. Every test runs in-process and on real sockets
(``deployment`` fixture); clients are :class:`phoenix_ref.client.session.ClientSession`.
"""

import uuid
import dataclasses
import os

import pytest

from phoenix_ref import privacy_pass as pp
from phoenix_ref.auth_tokens import AliasAuth, ClientCredentialAuth, RegistrationAuth
from phoenix_ref.authentication import messages as m
from phoenix_ref.authentication.core import request_binding
from phoenix_ref.client.as_client import (
    AliasIdentity, AsClient, Registration, check_connection_package,
)
from phoenix_ref.client.session import ClientSession
from phoenix_ref.codec import decode, encode
from phoenix_ref.config import Limits
from phoenix_ref.credentials import ClientCredentialCsr, TrustStore
from phoenix_ref.crypto import SigningKey
from phoenix_ref.errors import ErrorResponse, ProtocolError
from phoenix_ref.http import MEDIA_TYPE
from phoenix_ref.ids import Alias, ClientId, Fqdn, GroupId, UserId
from phoenix_ref.opaque import KE3_LEN
from phoenix_ref.queues import DequeueMessagesResponse
from phoenix_ref.spec_plugin import spec
from phoenix_ref.testing import Deployment

#: aliases carry this run's mark: a target keeps what earlier runs registered
RUN = uuid.uuid4().hex[:8]

AS = "spec/authentication_service.md#"
A = Fqdn("a.example")
B = Fqdn("b.example")


async def refused(awaitable, status: int, code: str | None = None) -> ProtocolError:
    """Await a client call that the AS must refuse with ``status`` (and ``code``)."""
    with pytest.raises(ProtocolError) as info:
        await awaitable
    err = info.value
    assert err.status == status, (err.status, err.code, str(err))
    if code is not None:
        assert err.code == code, (err.code, str(err))
    return err


async def register(http, d, domain=A, **kw) -> ClientSession:
    return await ClientSession.register(http, domain, clock=d.clock, **kw)


def within(intermediate, now: int) -> int:
    """A CSR validity that ends before the intermediate does (credentials.md): on
    a real clock, a year from now outlasts an intermediate made a moment ago."""
    return min(365 * 24 * 3600 * 1000, intermediate.expiration_data.not_after - now)


def group_id() -> GroupId:
    return GroupId(A, __import__("uuid").uuid4())


# --- #initialize-user-registration ---------------------------------------------------------

@spec(AS + "initialize-user-registration", "informative")
async def test_init_user_registration_needs_no_token_and_hands_out_no_credential(deployment):
    async with deployment.client() as http:
        c, now = AsClient(http), deployment.clock.now_ms()
        inter = (await c.as_credentials(A)).signing_intermediate(now)
        reg, init = Registration.start(A, b"pw", inter.fingerprint(), now, validity_ms=within(inter, now))
        resp = await c.call(A, "init_user_registration", init)          # no Privacy Pass token
        assert len(resp.opaque_registration_response) > 0
        # the signed credential waits at the AS until the registration finishes
        # (docs/decisions.md, "Client credentials are released at finish")
        assert [f.name for f in dataclasses.fields(resp)] == ["opaque_registration_response"]

        # "validate the client_csr": a broken self-signature is refused
        payload = init.client_csr.payload
        forged = ClientCredentialCsr(payload, SigningKey.generate().sign(b"not the payload"))
        await refused(c.call(A, "init_user_registration", dataclasses.replace(init, client_csr=forged)), 400)
        # a user id of another domain is not this AS's to certify
        _, foreign = Registration.start("b.example", b"pw", inter.fingerprint(), now, validity_ms=within(inter, now))
        await refused(c.call(A, "init_user_registration", foreign), 400, "foreign_user")


@spec("threat_model/stride/security_requirements/users.md#initiate-user-registration", "MUST")
async def test_init_user_registration_refuses_an_existing_user_id(deployment):
    async with deployment.client() as http:
        s = await register(http, deployment)
        now = deployment.clock.now_ms()
        inter = (await s.as_client.as_credentials(A)).signing_intermediate(now)
        _, init = Registration.start(A, b"other", inter.fingerprint(), now, validity_ms=within(inter, now), user_id=s.user_id)
        await refused(s.as_client.call(A, "init_user_registration", init), 409, "user_exists")


@spec("threat_model/qualitative/authentication_service.md#baseline-security-under-an-honest-as", "informative")
@spec(AS + "initialize-user-registration", "informative")
async def test_a_user_id_in_registration_gets_no_second_credential(deployment):
    async with deployment.client() as http:
        c, now = AsClient(http), deployment.clock.now_ms()
        creds = await c.as_credentials(A)
        inter = creds.signing_intermediate(now)
        first, init1 = Registration.start(A, b"pw", inter.fingerprint(), now, validity_ms=within(inter, now))
        uid = first.client_id.user_id
        _, init2 = Registration.start(A, b"pw2", inter.fingerprint(), now, validity_ms=within(inter, now), user_id=uid)
        await c.call(A, "init_user_registration", init1)
        # a second client for the same user id while the first registration is pending
        await refused(c.call(A, "init_user_registration", init2), 409, "registration_pending")
        # the first client may repeat its start (its answer was lost) and finish
        resp = await c.call(A, "init_user_registration", init1)
        done = await c.call(A, "finish_user_registration", first.finish(resp, now))
        credential = first.identity(done).credential
        TrustStore.of({A: creds}).verify_client_credential(credential, now)
        await refused(c.call(A, "init_user_registration", init2), 409, "user_exists")
        # the one credential of the user id is the first client's, and it is the one others see
        assert credential.client_id == first.client_id and credential.public_key == first.signing_key.public
        session = ClientSession(c, first.identity(done), clock=deployment.clock)
        await session.upload_connection_packages(1)
        stranger = await register(http, deployment)
        assert (await stranger.connection_package(uid)).client_credential == credential


# --- #finish-user-registration ---------------------------------------------------------------

@spec(AS + "finish-user-registration", "MUST")
@spec("spec/authentication_service.md#authentication-3", "MUST")   # its Authentication: Client 2FA
async def test_finish_user_registration_is_client_2fa_and_creates_the_entries(deployment):
    async with deployment.client() as http:
        c, now = AsClient(http), deployment.clock.now_ms()
        creds = await c.as_credentials(A)
        inter = creds.signing_intermediate(now)
        reg, init = Registration.start(A, b"pw", inter.fingerprint(), now, validity_ms=within(inter, now))
        finish = reg.finish(await c.call(A, "init_user_registration", init), now)
        binding = request_binding(A, "finish_user_registration", finish.params)

        # "look up the initial client's ClientCredential in the ephemeral DB based on the user_id":
        # another client id of the same user is not the one the AS waits for
        other = RegistrationAuth.create(reg.signing_key, ClientId.random(reg.client_id.user_id), now, binding)
        await refused(c.call(A, "finish_user_registration", dataclasses.replace(finish, auth=other)),
                      401, "credential_mismatch")
        # "authenticate the request using the signature key in the ClientCredential"
        tampered = dataclasses.replace(finish, params=dataclasses.replace(finish.params,
                                                                          opaque_registration_record=b"x"))
        await refused(c.call(A, "finish_user_registration", tampered), 401)
        wrong_key = RegistrationAuth.create(SigningKey.generate(), reg.client_id, now, binding)
        await refused(c.call(A, "finish_user_registration", dataclasses.replace(finish, auth=wrong_key)), 401)

        # no Privacy Pass token: the client has no credential to obtain one with yet
        done = await c.call(A, "finish_user_registration", finish)
        ident = reg.identity(done)
        chain = TrustStore.of({A: creds}).verify_client_credential(ident.credential, now)
        assert chain.intermediate == inter
        session = ClientSession(c, ident, clock=deployment.clock)
        # the user entry exists (empty profile), the initial client entry has its queue
        assert await session.profile(ident.user_id) == b""
        assert await session.dequeue_connection_messages() == []
        # connection packages carry the credential: uploaded after the finish
        await refused(session.connection_package(ident.user_id), 404, "no_connection_package")
        await session.upload_connection_packages(1)
        assert (await session.connection_package(ident.user_id)).client_credential == ident.credential
        # the ephemeral entry is gone: a replay finds no pending registration
        await refused(c.call(A, "finish_user_registration", finish), 401, "no_pending_opaque")


# --- profiles ----------------------------------------------------------------------------------

@spec(AS + "update-user-profile", "informative")
async def test_update_user_profile_is_client_credential_authenticated(deployment):
    async with deployment.client() as http:
        alice, bob = await register(http, deployment), await register(http, deployment)
        await alice.update_profile(b"alice's encrypted profile")
        await bob.update_profile(b"bob's")
        # "the target user's ID is derived from the client's ClientCredential"
        assert await bob.profile(alice.user_id) == b"alice's encrypted profile"
        assert await alice.profile(bob.user_id) == b"bob's"
        now = deployment.clock.now_ms()
        p = m.UpdateUserProfileParams(b"defaced")
        forged = m.UpdateUserProfileRequest(       # Alice's credential, Bob's key
            ClientCredentialAuth.create(bob.identity.signing_key, alice.credential, now,
                                        request_binding(A, "update_user_profile", p)), p)
        await refused(bob.call(A, "update_user_profile", forged), 401)
        stale = alice.identity.update_profile(b"old", now - 2 * 3600 * 1000)   # older than 1 h
        await refused(alice.call(A, "update_user_profile", stale), 401)
        assert await bob.profile(alice.user_id) == b"alice's encrypted profile"


@spec(AS + "fetch-user-profile", "informative")
async def test_fetch_user_profile_needs_no_authentication(deployment):
    async with deployment.client() as http:
        alice = await register(http, deployment)
        await alice.update_profile(b"ciphertext")
        stranger = await register(http, deployment)
        assert await stranger.profile(alice.user_id) == b"ciphertext"
        await refused(stranger.profile(UserId.random(A)), 404, "unknown_user")


# --- user id connection packages --------------------------------------------------------------

@spec(AS + "upload-user-id-connection-packages", "informative")
@spec(AS + "get-user-id-connection-package", "informative")
async def test_connection_packages_by_user_id(deployment):
    async with deployment.client() as http:
        alice = await register(http, deployment, connection_packages=1)
        await alice.upload_connection_packages(2)
        bob = await register(http, deployment)
        trust = await bob.trust(A)
        got = [await bob.connection_package(alice.user_id, trust) for _ in range(4)]
        # three distinct packages, each signed by Alice's client; the last one is kept as a last resort
        assert len({encode(p) for p in got[:3]}) == 3
        assert got[3] == got[2]
        for p in got:
            check_connection_package(p, alice.user_id, trust, deployment.clock.now_ms())
            assert p.payload.encryption_key in alice.identity.connection_keys
        # a package carrying someone else's credential is not the caller's to publish
        now = deployment.clock.now_ms()
        params = m.UploadUserIdPackages([encode(bob.identity.connection_package(now))])
        req = m.UploadUserIdPackagesRequest(alice.identity.auth("upload_connection_packages", params, now), params)
        await refused(alice.call(A, "upload_connection_packages", req), 400, "bad_connection_package")
        await refused(bob.connection_package(UserId.random(A)), 404, "unknown_user")


# --- #user-account-deletion --------------------------------------------------------------------

@spec(AS + "user-account-deletion", "informative")
@spec(AS + "initiate-2fa-operation", "MUST")
async def test_user_account_deletion_is_client_2fa(deployment):
    async with deployment.client() as http:
        alice = await register(http, deployment)
        now = deployment.clock.now_ms()
        # without a 2FA login in progress there is nothing to finish
        p = m.DeleteUserParams(bytes(KE3_LEN))
        await refused(alice.call(A, "delete_user", m.DeleteUserRequest(alice.identity.auth("delete_user", p, now), p)),
                      401, "no_pending_opaque")
        # a KE3 that does not finish the OPAQUE login is refused, and the login is used up
        _, start = alice.identity.initiate_2fa(now)
        await alice.call(A, "initiate_2fa", start)
        p = m.DeleteUserParams(os.urandom(KE3_LEN))
        bad = m.DeleteUserRequest(alice.identity.auth("delete_user", p, now), p)
        await refused(alice.call(A, "delete_user", bad), 401)
        await refused(alice.call(A, "delete_user", bad), 401, "no_pending_opaque")
        assert await alice.profile(alice.user_id) == b""          # still there

        await alice.delete_account()
        await refused(alice.profile(alice.user_id), 404, "unknown_user")
        # the client entry went with the user: its credential no longer authenticates
        await refused(alice.update_profile(b"x"), 401, "unknown_client")
        await refused(alice.fetch_tokens(A, 1), 401, "unknown_client")


# --- direct user queues -------------------------------------------------------------------------

@spec(AS + "enqueue-message", "informative")
@spec(AS + "dequeue-messages", "informative")
async def test_direct_queue_enqueue_and_dequeue(deployment):
    async with deployment.client() as http:
        alice = await register(http, deployment)
        await alice.upload_connection_packages(3)
        bob = await register(http, deployment)
        gids = [group_id() for _ in range(3)]
        for gid in gids:
            pkg = await bob.connection_package(alice.user_id)
            await bob.send_connection_establishment(pkg, gid, os.urandom(32), os.urandom(32))
        now = deployment.clock.now_ms()
        first = await alice.call(A, "as_dequeue_messages", alice.identity.dequeue(now, max_messages=2))
        assert isinstance(first, DequeueMessagesResponse)
        assert len(first.messages) == 2 and first.remaining_messages_number == 1
        assert [msg.sequence_number for msg in first.messages] == sorted(msg.sequence_number for msg in first.messages)
        trust = await alice.trust(A)
        opened = [alice.identity.open_connection_establishment(c, trust, now)
                  for c in alice.identity.queue.read(first.messages)]
        rest = await alice.dequeue_connection_messages()
        opened += rest
        assert [c.connection_group_id for c in opened] == gids
        assert all(c.sender_client_credential == bob.credential for c in opened)
        assert await alice.dequeue_connection_messages() == []     # older messages were deleted

        # only the owner dequeues: Bob's key over Alice's credential is refused
        p = m.DequeueMessagesParams(0, 10)
        forged = m.DequeueMessagesRequest(ClientCredentialAuth.create(
            bob.identity.signing_key, alice.credential, now, request_binding(A, "as_dequeue_messages", p)), p)
        await refused(bob.call(A, "as_dequeue_messages", forged), 401)
        # enqueueing needs no authentication, but the client must exist here
        unknown = ClientId.random(UserId.random(A))
        await refused(bob.call(A, "as_enqueue_message", m.EnqueueMessageParams(unknown, b"x")), 404,
                      "unknown_client")


@spec(AS + "dequeue-messages", "informative")
async def test_dequeue_returns_at_most_the_configured_maximum(deployment_mode):
    async with Deployment(deployment_mode, ["hs1"], limits=Limits(as_max_messages=2)) as d:
        async with d.client() as http:
            alice = await register(http, d)
            bob = await register(http, d)
            pkg = await bob.connection_package(alice.user_id)
            for _ in range(5):
                await bob.send_connection_establishment(pkg, group_id(), os.urandom(32), os.urandom(32))
            now = d.clock.now_ms()
            resp = await alice.call(A, "as_dequeue_messages", alice.identity.dequeue(now, max_messages=100))
            assert len(resp.messages) == 2 and resp.remaining_messages_number == 3
            resp = await alice.call(A, "as_dequeue_messages", alice.identity.dequeue(now, max_messages=1))
            assert len(resp.messages) == 1


# --- aliases ------------------------------------------------------------------------------------

@spec(AS + "register-alias", "informative")
@spec(AS + "upload-alias-connection-package-payloads", "informative")
@spec(AS + "get-alias-connection-package", "informative")
async def test_register_alias_and_its_connection_package_payloads(deployment):
    async with deployment.client() as http:
        alice = await register(http, deployment)
        ident = await alice.register_alias("alice.smith." + RUN, packages=2)
        # "check that the alias is not already registered"
        _, again = AliasIdentity.new(A, "alice.smith." + RUN)
        await refused(alice.call(A, "register_alias", again), 409, "alias_exists")
        bob = await register(http, deployment)
        payloads = [await bob.alias_connection_package(A, "alice.smith." + RUN) for _ in range(3)]
        # payloads only: no credential, no signature; the last one is kept as a last resort
        assert all(isinstance(p, m.ConnectionPackagePayload) for p in payloads)
        assert payloads[0] != payloads[1] and payloads[2] == payloads[1]
        assert all(p.encryption_key in ident.connection_keys for p in payloads)
        # uploading needs the alias auth key
        now = deployment.clock.now_ms()
        p = m.UploadAliasPackages(ident.alias, [])
        forged = m.UploadAliasPackagesRequest(AliasAuth.create(SigningKey.generate(), ident.alias, now,
                                                               request_binding(A, "upload_alias_packages", p)), p)
        await refused(alice.call(A, "upload_alias_packages", forged), 401)
        await refused(bob.alias_connection_package(A, "nobody.here"), 404, "unknown_alias")


@spec(AS + "enqueue-alias-messages", "informative")
@spec(AS + "dequeue-alias-messages", "informative")
async def test_alias_queue_enqueue_and_dequeue(deployment):
    async with deployment.client() as http:
        alice = await register(http, deployment)
        ident = await alice.register_alias("alice." + RUN, packages=1)
        bob = await register(http, deployment)
        payload = await bob.alias_connection_package(A, "alice." + RUN)
        gid = group_id()
        await bob.send_alias_connection_establishment(A, "alice." + RUN, payload, gid, b"e" * 32, b"c" * 32)
        got = await alice.dequeue_alias_messages("alice." + RUN)
        assert [c.connection_group_id for c in got] == [gid]
        assert got[0].sender_client_credential == bob.credential     # signature and chain verified
        assert await alice.dequeue_alias_messages("alice." + RUN) == []
        # dequeueing needs the alias auth key
        now = deployment.clock.now_ms()
        p = m.DequeueAliasMessagesParams(ident.alias, 0, 10)
        forged = m.DequeueAliasMessagesRequest(AliasAuth.create(SigningKey.generate(), ident.alias, now,
                                                                request_binding(A, "dequeue_alias_messages", p)), p)
        await refused(bob.call(A, "dequeue_alias_messages", forged), 401)
        await refused(bob.call(A, "enqueue_alias_message", m.EnqueueAliasMessageParams(Alias("nobody"), b"x")),
                      404, "unknown_alias")


@spec(AS + "delete-alias", "informative")
async def test_delete_alias_needs_the_alias_auth_key_and_removes_everything(deployment):
    async with deployment.client() as http:
        alice = await register(http, deployment)
        ident = await alice.register_alias("temp.alias." + RUN, packages=1)
        now = deployment.clock.now_ms()
        p = m.DeleteAlias(ident.alias)
        other_key = m.DeleteAliasRequest(AliasAuth.create(SigningKey.generate(), ident.alias, now,
                                                          request_binding(A, "delete_alias", p)), p)
        await refused(alice.call(A, "delete_alias", other_key), 401)
        # a valid signature for another alias does not delete this one
        other = await alice.register_alias("other.alias." + RUN, packages=0)
        wrong_alias = m.DeleteAliasRequest(other.auth("delete_alias", p, now), p)
        await refused(alice.call(A, "delete_alias", wrong_alias), 403)

        await alice.call(A, "delete_alias", ident.delete(now))
        await refused(alice.alias_connection_package(A, "temp.alias." + RUN), 404, "unknown_alias")
        await refused(alice.call(A, "enqueue_alias_message", m.EnqueueAliasMessageParams(ident.alias, b"x")),
                      404, "unknown_alias")
        await refused(alice.call(A, "dequeue_alias_messages", ident.dequeue(now)), 404, "unknown_alias")
        # the alias is free again
        await alice.register_alias("temp.alias." + RUN, packages=0)


# --- #get-as-credentials and the issuer keys -----------------------------------------------------------

@spec(AS + "get-as-credentials", "informative")
@spec("spec/authentication_service/credentials.md#as-intermediate-credentials", "SHOULD")
@pytest.mark.needs_control("the AS's keystore (the answer is compared with the homeserver's own credentials)")
async def test_get_as_credentials_needs_no_authentication(deployment):
    async with deployment.client() as http:
        node = deployment["hs1"]
        resp = await http.get(node.url("as", "/phoenix/v1/as_credentials"))
        assert resp.status_code == 200 and resp.headers["content-type"] == MEDIA_TYPE
        answer = decode(type(await AsClient(http).as_credentials(A)), resp.content)
        ks = node.hs.keystore
        assert answer.as_credentials == [c for c, _ in ks.as_credentials]
        assert answer.as_intermediate_credentials == [c for c, _ in ks.as_intermediates]


@spec(AS + "get-as-credentials", "informative")
@spec(AS + "initialize-user-registration", "informative")
@pytest.mark.needs_control("the homeservers' clock (300 days on)")
async def test_the_as_issues_a_new_intermediate_before_the_current_one_ends(deployment):
    """A client credential must end before the intermediate that signs it, so
    an AS that kept its first intermediate would, after a year, register
    nobody (docs/decisions.md)."""
    d = deployment
    async with d.client() as http:
        early = await register(http, d)
        first = (await AsClient(http).as_credentials(A)).as_intermediate_credentials
        d.clock.advance(300 * 24 * 3600 * 1000)     # the first intermediate has 65 days left
        answer = await AsClient(http).as_credentials(A)
        assert len(answer.as_intermediate_credentials) == 2 and answer.as_intermediate_credentials[1:] == first
        late = await register(http, d)
        assert late.credential.signer_fingerprint == answer.as_intermediate_credentials[0].fingerprint()
        assert late.credential.expiration_data.not_after - d.clock.now_ms() > 300 * 24 * 3600 * 1000
        # clients certified by the older intermediate keep working
        assert await early.profile(late.user_id) == b""


@spec(AS + "token-issuance", "informative")
@pytest.mark.needs_control("the Privacy Pass gate's keys (the directory is compared with the homeserver's own)")
async def test_issuer_keys_endpoint_names_the_key_tokens_are_issued_under(deployment):
    async with deployment.client() as http:
        node = deployment["hs1"]
        resp = await http.get(node.url("as", "/phoenix/v1/privacy_pass_issuer_keys"))
        assert resp.status_code == 200
        from phoenix_ref.privacy_pass_gate import IssuerKeysResponse
        directory = decode(IssuerKeysResponse, resp.content)
        gate = node.hs.privacy_pass_gate
        assert [(k.token_type, k.token_key) for k in directory.token_keys] == \
            [(pp.TOKEN_TYPE, gate.keys.current.public_key)]
        assert [(k.token_type, k.token_key) for k in directory.federated_token_keys] == \
            [(pp.TOKEN_TYPE, gate.federated_keys.current.public_key)]
        # a client requests under the list that matches it, and gets tokens
        alice = await register(http, deployment)
        bob = await ClientSession.register(http, B, clock=deployment.clock)
        assert await alice.issuer_key(A) == directory.token_keys[0].token_key
        assert await bob.issuer_key(A) == directory.federated_token_keys[0].token_key
        assert len(await alice.fetch_tokens(A, 1)) == len(await bob.fetch_tokens(A, 1)) == 1


# --- #token-issuance ---------------------------------------------------------------------------

@spec(AS + "token-issuance", "informative")
async def test_token_issuance_gives_tokens_every_service_of_the_domain_redeems(deployment):
    async with deployment.client() as http:
        alice = await register(http, deployment, token_batch=3)
        tokens = await alice.fetch_tokens(A, 4)
        assert len(tokens) == 4 and len({t.nonce for t in tokens}) == 4
        node = deployment["hs1"]
        # the QS of the same domain redeems a token of its AS (a Privacy Pass row of the QS)
        qs_url = node.url("qs", "/phoenix/v1/queue_config_encryption_key")
        ok = await http.get(qs_url, headers={"Authorization": pp.authorization_header(tokens[0])})
        assert ok.status_code == 200
        # ... once: the spent store is shared by the AS, DS and QS
        again = await http.get(qs_url, headers={"Authorization": pp.authorization_header(tokens[0])})
        assert again.status_code == 401 and decode(ErrorResponse, again.content).code == "token_spent"
        await refused(alice.as_client.call(A, "user_profile", m.UserProfileParams(alice.user_id),
                                           privacy_pass=tokens[0]), 401, "token_spent")
        assert (await alice.as_client.call(A, "user_profile", m.UserProfileParams(alice.user_id),
                                           privacy_pass=tokens[1])).user_profile == b""


def foreign_issuer_key(real_key: bytes, now: int) -> bytes:
    """A fresh issuer public key that a request cannot mistake for ``real_key``.

    A token request names its key by one byte (the truncated key id), so a
    random key matches the real one 1 time in 256; such a key is drawn again.
    """
    taken = pp.token_key_id(real_key)[-1]
    while (other := pp.IssuerKey.generate(now)).truncated_key_id == taken:
        pass
    return other.public_key


@spec(AS + "token-issuance", "informative")
async def test_token_issuance_refuses_bad_requests_and_bad_authentication(deployment):
    async with deployment.client() as http:
        alice = await register(http, deployment)
        key = await alice.issuer_key(A)
        now = deployment.clock.now_ms()
        # a request under a key the AS does not issue with (draft: 422)
        _, req = alice.identity.request_tokens(foreign_issuer_key(key, now), A, 2, now)
        await refused(alice.as_client.call(A, "request_tokens", req), 422, "invalid_token_request")
        # more than one batch allows
        _, big = alice.identity.request_tokens(key, A, 101, now)
        await refused(alice.as_client.call(A, "request_tokens", big), 422, "invalid_token_request")
        # Client Credential authentication: someone else's key over Alice's credential
        _, good = alice.identity.request_tokens(key, A, 2, now)
        forged = dataclasses.replace(good, auth=ClientCredentialAuth.create(
            SigningKey.generate(), alice.credential, now, request_binding(A, "request_tokens", good.params)))
        await refused(alice.as_client.call(A, "request_tokens", forged), 401)
        # a signature addressed to another AS is not valid here
        misaddressed = dataclasses.replace(good, auth=alice.identity.auth("request_tokens", good.params, now,
                                                                          audience=Fqdn("b.example")))
        await refused(alice.as_client.call(A, "request_tokens", misaddressed), 401)
        resp = await alice.as_client.call(A, "request_tokens", good)
        assert len(resp.tokens.evaluated_msgs) == 2


@spec(AS + "rate-limiting", "SHOULD")
@pytest.mark.needs_control("the homeservers' clock (to the end of the rate-limit window)")
async def test_token_issuance_is_rate_limited_per_client(deployment_mode):
    limits = Limits(token_allowance=6, token_time_frame_s=3600)
    async with Deployment(deployment_mode, ["hs1"], limits=limits) as d:
        async with d.client() as http:
            alice = await register(http, d, token_batch=1)    # 1 token spent on its first connection package
            bob = await register(http, d, token_batch=1)
            await alice.fetch_tokens(A, 5)                     # 6 of 6
            key = await alice.issuer_key(A)
            _, req = alice.identity.request_tokens(key, A, 1, d.clock.now_ms())
            resp = await http.post(d["hs1"].url("as", "/phoenix/v1/request_tokens"), content=encode(req),
                                   headers={"content-type": MEDIA_TYPE})
            assert resp.status_code == 429
            assert decode(ErrorResponse, resp.content).code == "rate_limited"
            # the window lasts the time frame, its end rounded up to 1/24 of it
            # (docs/storage.md, "Privacy Pass store": the store keeps no finer time)
            retry_after = int(resp.headers["Retry-After"])
            assert 0 < retry_after <= 3600 + 3600 // 24
            await bob.fetch_tokens(A, 5)                       # another client has its own allowance
            d.clock.advance(retry_after * 1000)                # the window is over
            assert len(await alice.fetch_tokens(A, 6)) == 6


@spec("threat_model/stride/security_requirements/users.md#dequeue-messages", "MUST")
@spec(AS + "dequeue-messages", "informative")
async def test_a_client_whose_allowance_is_spent_still_dequeues_its_direct_queue(deployment_mode):
    """"Clients must always be able to dequeue messages from their own queue":
    the dequeue needs the client's signature, no token (docs/decisions.md,
    "Dequeuing one's own direct queue needs no token")."""
    limits = Limits(token_allowance=3, token_time_frame_s=3600)
    async with Deployment(deployment_mode, ["hs1"], limits=limits) as d:
        async with d.client() as http:
            alice = await register(http, d, token_batch=1)    # 1 token for its first connection package
            bob = await register(http, d, token_batch=1)
            await alice.fetch_tokens(A, 2)
            await refused(alice.fetch_tokens(A, 1), 429, "rate_limited")   # the allowance is spent
            await bob.call(A, "as_enqueue_message", m.EnqueueMessageParams(alice.client_id, b"hello"))
            # no Authorization header at all
            resp = await http.post(d["hs1"].url("as", "/phoenix/v1/as_dequeue_messages"),
                                   content=encode(alice.identity.dequeue(d.clock.now_ms())),
                                   headers={"content-type": MEDIA_TYPE})
            assert resp.status_code == 200, resp.content
            assert alice.identity.queue.read(decode(DequeueMessagesResponse, resp.content).messages) == [b"hello"]
            # the signature is still required: another client cannot read the queue
            forged = dataclasses.replace(alice.identity.dequeue(d.clock.now_ms()),
                                         auth=bob.identity.auth("as_dequeue_messages",
                                                                alice.identity.dequeue(d.clock.now_ms()).params,
                                                                d.clock.now_ms()))
            resp = await http.post(d["hs1"].url("as", "/phoenix/v1/as_dequeue_messages"), content=encode(forged),
                                   headers={"content-type": MEDIA_TYPE})
            # bob's signature reads bob's own (empty) queue, never alice's, where "hello" still waits
            assert resp.status_code == 200
            assert decode(DequeueMessagesResponse, resp.content).messages == []
