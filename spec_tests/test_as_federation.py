"""The AS across homeservers: remote discovery, connection establishment and
token issuance to federated clients.

* ``spec/federation/use_cases.md#user-discovery-and-connection-management``
  and ``spec/authentication_service/connection_establishment.md#connection-group-creation``:
  a client of b.example finds a user of a.example by user id or alias at
  as.a.example, checks the package against a.example's AS credentials
  (fetched over TLS), and sends a sealed ConnectionEstablishmentPackage into
  the user's queue there; the user checks the sender against b.example's AS
  credentials.
* ``spec/federation/federation_protocol.md#client-to-remote-as-communication``
  and ``spec/authentication_service.md#token-issuance``: as.a.example issues
  tokens to a client of b.example after verifying its credential with
  b.example's AS credentials (fetched and cached), rate-limits per client and
  per domain, and follows b.example's revocations.

Every scenario runs in-process and on real sockets with TLS.
"""

import dataclasses
import os
import uuid

import pytest

from phoenix_ref.client.as_client import AsClient, AsIdentity, Registration
from phoenix_ref.client.session import ClientSession
from phoenix_ref.codec import decode, encode
from phoenix_ref.config import Limits
from phoenix_ref.credentials import ClientCredential
from phoenix_ref.errors import ErrorResponse, ProtocolError
from phoenix_ref.http import MEDIA_TYPE
from phoenix_ref.authentication import messages as m
from phoenix_ref.ids import Fqdn, GroupId
from phoenix_ref.spec_plugin import spec
from phoenix_ref.testing import Deployment

#: aliases carry this run's mark: a target keeps what earlier runs registered
RUN = uuid.uuid4().hex[:8]

A, B = Fqdn("a.example"), Fqdn("b.example")
CONNECT = "spec/authentication_service/connection_establishment.md#connection-group-creation"
DISCOVERY = "spec/federation/use_cases.md#user-discovery-and-connection-management"
REMOTE_AS = "spec/federation/federation_protocol.md#client-to-remote-as-communication"
TOKENS = "spec/authentication_service.md#token-issuance"
RATE = "spec/authentication_service.md#rate-limiting"


async def refused(awaitable, status: int, code: str | None = None) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        await awaitable
    assert info.value.status == status, (info.value.status, info.value.code, str(info.value))
    if code is not None:
        assert info.value.code == code, (info.value.code, str(info.value))
    return info.value


def as_fetches(d, me: str, domain: Fqdn) -> int:
    """How often homeserver ``me`` fetched ``domain``'s AS credentials."""
    return d[me].hs.federation.keys.fetches[("as_credentials", str(domain))]


@spec(DISCOVERY, "MUST")
@spec(CONNECT, "MUST")
@pytest.mark.needs_control("the remote key cache's fetch counters of the homeservers")
async def test_connection_establishment_by_user_id_across_homeservers(deployment):
    d = deployment
    async with d.client() as http:
        alice = await ClientSession.register(http, A, clock=d.clock)        # user of a.example
        bob = await ClientSession.register(http, B, clock=d.clock)          # user of b.example
        # Bob discovers Alice at her AS; the package's credential chains to a.example's AS
        # credentials, which Bob fetched from as.a.example over TLS
        trust_a = await bob.trust(A)
        package = await bob.connection_package(alice.user_id, trust_a)
        assert package.client_credential == alice.credential
        # Bob's tokens for as.a.example came from as.a.example itself
        assert bob.wallet.count(A) > 0 and as_fetches(d, "hs1", B) == 1
        gid = GroupId(B, uuid.uuid4())
        ear, cred_key = os.urandom(32), os.urandom(32)
        await bob.send_connection_establishment(package, gid, ear, cred_key)
        # Alice opens it and checks Bob's chain against b.example's AS credentials
        [cep] = await alice.dequeue_connection_messages(trust=await alice.trust(B))
        assert cep.sender_client_credential == bob.credential
        assert cep.sender_client_credential.client_id.user_id == bob.user_id   # she decides on the name
        assert (cep.connection_group_id, cep.connection_group_ear_key, cep.connection_group_credential_key) == (
            gid, ear, cred_key)
        # a package of Alice does not pass as someone else's
        with pytest.raises(ProtocolError) as info:
            from phoenix_ref.client.as_client import check_connection_package
            check_connection_package(package, bob.user_id, trust_a, d.clock.now_ms())
        assert info.value.code == "connection_package_wrong_user"


@spec(DISCOVERY, "MUST")
@spec(CONNECT, "MUST")
@spec("spec/authentication_service/connection_establishment.md#discovery-and-connection-establishment", "MUST")
@pytest.mark.needs_control("the remote key cache's fetch counters of the homeservers")
async def test_connection_establishment_by_alias_across_homeservers(deployment):
    d = deployment
    async with d.client() as http:
        alice = await ClientSession.register(http, A, clock=d.clock)
        await alice.register_alias("alice.example." + RUN, packages=1)
        bob = await ClientSession.register(http, B, clock=d.clock)
        payload = await bob.alias_connection_package(A, "alice.example." + RUN)
        gid = GroupId(B, uuid.uuid4())
        await bob.send_alias_connection_establishment(A, "alice.example." + RUN, payload, gid, b"e" * 32, b"k" * 32)
        # the alias queue knows nothing of Alice's user id; the package names Bob
        [cep] = await alice.dequeue_alias_messages("alice.example." + RUN)
        assert cep.sender_client_credential == bob.credential and cep.connection_group_id == gid


@spec(REMOTE_AS, "informative")
@spec(TOKENS, "informative")
@pytest.mark.needs_control("the remote key cache's fetch counters of the homeservers")
async def test_remote_client_gets_tokens_authenticated_by_its_own_as_credentials(deployment):
    d = deployment
    async with d.client() as http:
        bob = await ClientSession.register(http, B, clock=d.clock)
        first = await bob.fetch_tokens(A, 3)
        second = await bob.fetch_tokens(A, 2)
        assert len(first) == 3 and len(second) == 2
        assert as_fetches(d, "hs1", B) == 1                     # b.example's AS credentials came from the cache
        # the tokens redeem at a.example (once) and not at b.example
        token = first[0]
        profile = m.UserProfileParams(bob.user_id)
        await refused(bob.as_client.call(B, "user_profile", profile, privacy_pass=token), 401, "invalid_token")
        alice = await ClientSession.register(http, A, clock=d.clock)
        await bob.as_client.call(A, "user_profile", m.UserProfileParams(alice.user_id), privacy_pass=token)
        await refused(bob.as_client.call(A, "user_profile", m.UserProfileParams(alice.user_id), privacy_pass=token),
                      401, "token_spent")


@spec(RATE, "SHOULD")
@spec(REMOTE_AS, "informative")
@spec("spec/general_concepts/federation.md#federated-access-control-and-rate-limiting", "informative")
@pytest.mark.needs_control("the homeservers' clock (to the end of the rate-limit window)")
async def test_remote_token_issuance_is_rate_limited_per_client_and_per_domain(deployment_mode):
    limits = Limits(token_allowance=4, token_domain_allowance=6, token_time_frame_s=600)
    async with Deployment(deployment_mode, ["hs1", "hs2"], limits=limits) as d:
        async with d.client() as http:
            bob = await ClientSession.register(http, B, clock=d.clock, token_batch=1)
            carol = await ClientSession.register(http, B, clock=d.clock, token_batch=1)
            await bob.fetch_tokens(A, 4)
            err = await refused(bob.fetch_tokens(A, 1), 429, "rate_limited")          # per client
            assert 0 < err.retry_after <= 600 + 600 // 24       # window ends are rounded up to 1/24 of it
            await carol.fetch_tokens(A, 2)                                           # b.example: 6 of 6
            await refused(carol.fetch_tokens(A, 1), 429, "rate_limited")           # per domain
            # the refusal carries Retry-After on the wire
            key = await carol.issuer_key(A)
            _, req = carol.identity.request_tokens(key, A, 1, d.clock.now_ms())
            resp = await http.post(d["hs1"].url("as", "/phoenix/v1/request_tokens"), content=encode(req),
                                   headers={"content-type": MEDIA_TYPE})
            assert resp.status_code == 429 and int(resp.headers["Retry-After"]) > 0
            assert decode(ErrorResponse, resp.content).code == "rate_limited"
            # clients of a.example itself are not charged to any domain allowance
            alice = await ClientSession.register(http, A, clock=d.clock, token_batch=1)
            assert len(await alice.fetch_tokens(A, 3)) == 3
            d.clock.advance((600 + 600 // 24) * 1000)
            assert len(await carol.fetch_tokens(A, 2)) == 2


@spec(REMOTE_AS, "informative")
@spec("spec/authentication_service.md#get-as-credentials", "informative")
@pytest.mark.needs_control("the operator's revocation of an intermediate and the homeservers' clock")
async def test_a_credential_under_a_revoked_intermediate_is_refused_after_refetch(deployment):
    d = deployment
    async with d.client() as http:
        bob = await ClientSession.register(http, B, clock=d.clock)
        await bob.fetch_tokens(A, 1)
        assert as_fetches(d, "hs1", B) == 1
        revoked = await d["hs2"].hs.operator.revoke_intermediate()
        assert revoked == bob.credential.signer_fingerprint
        # b.example refuses Bob at once; a.example does once its cached answer expires
        await refused(bob.fetch_tokens(B, 1), 401, "credential_revoked")
        d.clock.advance((d["hs1"].config.limits.key_cache_ttl_s + 1) * 1000)
        await refused(bob.fetch_tokens(A, 1), 401, "credential_revoked")
        assert as_fetches(d, "hs1", B) == 2
        # a client certified by b.example's new intermediate is accepted (an unknown
        # signer triggers one refetch)
        dave = await ClientSession.register(http, B, clock=d.clock)
        assert dave.credential.signer_fingerprint != revoked
        assert len(await dave.fetch_tokens(A, 1)) == 1


@spec(REMOTE_AS, "informative")
@pytest.mark.needs_control("stopping and starting a homeserver")
async def test_tokens_for_a_client_whose_as_cannot_be_reached(deployment):
    d = deployment
    async with d.client() as http:
        bob = await ClientSession.register(http, B, clock=d.clock)
        await bob.issuer_key(A)
        await d.set_down("hs2")
        # a.example cannot fetch b.example's AS credentials: the upstream failure is a 502
        await refused(bob.fetch_tokens(A, 1), 502, "remote_as_unavailable")
        await d.set_up("hs2")
        assert len(await bob.fetch_tokens(A, 1)) == 1


@spec("threat_model/qualitative/federation.md#mitigating-sybil-attacks", "informative")
@spec("threat_model/qualitative/federation.md#dos-attacks", "informative")
@spec("threat_model/stride/security_requirements/users.md#initiate-user-registration", "SHOULD")
async def test_abandoned_registrations_and_one_abusive_client_cannot_starve_their_domain(deployment_mode):
    """Measured before the fix: 100 abandoned registration starts at a.example
    drew a.example's whole daily allowance at b.example, and its registered
    users got 429 there. Now a start holds nothing that authenticates (the
    credential is released at finish), and one registered client draws only
    its own allowance from its domain's budget."""
    limits = Limits(token_allowance=5, token_domain_allowance=12, token_time_frame_s=3600)
    async with Deployment(deployment_mode, ["hs1", "hs2"], limits=limits) as d:
        async with d.client() as http:
            c, now = AsClient(http), d.clock.now_ms()
            inter = (await c.as_credentials(A)).signing_intermediate(now)
            for _ in range(20):
                reg, init = Registration.start(A, b"pw", inter.fingerprint(), now,
                                               validity_ms=inter.expiration_data.not_after - now)
                resp = await c.call(A, "init_user_registration", init)
                assert [f.name for f in dataclasses.fields(resp)] == ["opaque_registration_response"]
                # what the starter holds (its CSR and key), shown as a credential, draws nothing
                posing = ClientSession(c, AsIdentity(A, reg.client_id, reg.signing_key,
                                                     ClientCredential(init.client_csr, init.client_csr.self_signature),
                                                     b"pw", reg.queue), clock=d.clock)
                for issuer in (B, A):
                    await refused(posing.fetch_tokens(issuer, 5), 401)
            # one abusive registered client of a.example draws its own allowance at b.example, no more
            mallory = await ClientSession.register(http, A, clock=d.clock, token_batch=1)
            assert len(await mallory.fetch_tokens(B, 5)) == 5
            await refused(mallory.fetch_tokens(B, 1), 429, "rate_limited")
            # an honest user of a.example is still served at b.example
            alice = await ClientSession.register(http, A, clock=d.clock, token_batch=1)
            assert len(await alice.fetch_tokens(B, 5)) == 5
