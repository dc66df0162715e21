"""Homeserver discovery and authentication key distribution between two homeservers.

``spec/federation/use_cases.md#homeserver-domain-and-discovery`` and
``#authentication-key-distribution``; every scenario runs in-process and on
real sockets with TLS (``deployment_mode``).
"""

import os

import pytest

from phoenix_ref.codec import decode
from phoenix_ref.credentials import ClientCredentialCsr, Revoked, sign_csr
from phoenix_ref.crypto import SigningKey
from phoenix_ref.errors import ErrorResponse
from phoenix_ref.federation.client import BadCertificate, NotTls, Unreachable
from phoenix_ref.federation.keys import key_id
from phoenix_ref.ids import ClientId, UserId
from phoenix_ref.spec_plugin import spec
from phoenix_ref.testing import Deployment

pytestmark = pytest.mark.needs_control("the homeservers' own federation clients and key caches, and homeserver variants (no .well-known, wrong CA, plain HTTP, discovery overrides)")

DISCOVERY = "spec/federation/use_cases.md#homeserver-domain-and-discovery"
KEY_DISTRIBUTION = "spec/federation/use_cases.md#authentication-key-distribution"


@spec(DISCOVERY, "informative")
async def test_each_discovers_the_other_through_well_known(deployment):
    hs1, hs2 = deployment["hs1"], deployment["hs2"]
    for me, other in ((hs1, hs2), (hs2, hs1)):
        urls = await me.hs.federation.discovery.discover(other.domain)
        assert urls.source == "well_known"
        assert {s: urls.base(s) for s in ("as", "ds", "qs")} == other.config.announced_urls()


@spec(DISCOVERY, "informative")
async def test_discovery_falls_back_to_the_subdomain_rule(deployment_mode):
    async with Deployment(deployment_mode, ["hs1", "hs2"], no_well_known=["hs2"]) as d:
        urls = await d["hs1"].hs.federation.discovery.discover("b.example")
        assert urls.source == "subdomain"
        assert (urls.as_url, urls.ds_url, urls.qs_url) == (
            "https://as.b.example", "https://ds.b.example", "https://qs.b.example")
        keys = await d["hs1"].hs.federation.keys.qs_verifying_keys("b.example")
        assert keys == [k.public for k in d["hs2"].hs.keystore.qs_signing_keys]


@spec(DISCOVERY, "informative")
async def test_discovery_override_from_config(deployment_mode):
    async with Deployment(deployment_mode, ["hs1", "hs2"], discovery_overrides=True) as d:
        for me, other in (("hs1", "hs2"), ("hs2", "hs1")):
            urls = await d[me].hs.federation.discovery.discover(d[other].domain)
            assert urls.source == "override"
            assert urls.base("qs") == d[me].config.discovery[d[other].domain]["qs"]
            assert await d[me].hs.federation.keys.ds_verifying_keys(d[other].domain)


@spec(KEY_DISTRIBUTION, "informative")
async def test_fetches_and_caches_the_other_homeservers_keys(deployment):
    for me, other in (("hs1", "hs2"), ("hs2", "hs1")):
        fed, ks = deployment[me].hs.federation, deployment[other].hs.keystore
        domain = deployment[other].domain
        assert await fed.keys.qs_verifying_keys(domain) == [k.public for k in ks.qs_signing_keys]
        assert await fed.keys.ds_verifying_keys(domain) == [k.public for k in ks.ds_signing_keys]
        answer = await fed.keys.as_credentials(domain)
        assert answer.as_credentials == [c for c, _ in ks.as_credentials]
        assert answer.as_intermediate_credentials == [c for c, _ in ks.as_intermediates]
        assert answer.revoked_certs == []
        # the second time everything comes from the cache: no request leaves
        sent = fed.fetcher.requests
        await fed.keys.qs_verifying_keys(domain)
        await fed.keys.ds_verifying_keys(domain)
        await fed.keys.as_credentials(domain)
        assert fed.fetcher.requests == sent
        assert all(fed.keys.fetches[(kind, domain)] == 1 for kind in (
            "qs_verifying_key", "ds_verifying_key", "as_credentials"))


@spec(KEY_DISTRIBUTION, "informative")
async def test_unknown_key_id_triggers_exactly_one_refetch(deployment):
    fed, hs2 = deployment["hs1"].hs.federation, deployment["hs2"].hs
    cooldown = fed.keys.cooldown_ms
    first = await fed.keys.qs_verifying_keys("b.example")
    new_key = await hs2.operator.rotate_qs_signing_key()       # hs2 rotates
    counter = ("qs_verifying_key", "b.example")
    assert fed.keys.fetches[counter] == 1

    # within the cooldown an unknown id is not refetched
    assert await fed.keys.qs_verifying_keys("b.example", want_key_id=key_id(new_key)) == first
    assert fed.keys.fetches[counter] == 1

    deployment.clock.advance(cooldown)
    keys = await fed.keys.qs_verifying_keys("b.example", want_key_id=key_id(new_key))
    assert keys[0] == new_key and first[0] in keys                # old key still published
    assert fed.keys.fetches[counter] == 2

    # an id nobody has: one refetch, then the answer as it is (no loop)
    deployment.clock.advance(cooldown)
    bogus = os.urandom(32)
    keys = await fed.keys.qs_verifying_keys("b.example", want_key_id=bogus)
    assert fed.keys.fetches[counter] == 3
    assert bogus not in [key_id(k) for k in keys]
    await fed.keys.qs_verifying_keys("b.example", want_key_id=bogus)
    assert fed.keys.fetches[counter] == 3


def _issue_client_credential(hs, now_ms):
    """What hs's AS does at registration: sign a client's CSR with its current intermediate."""
    inter, inter_key = hs.keystore.as_intermediates[0]
    client_key = SigningKey.generate()
    client_id = ClientId.random(UserId.random(hs.domain))
    csr = ClientCredentialCsr.create(client_id, client_key, inter.fingerprint(), now_ms - 1000,
                                     inter.expiration_data.not_after)
    return sign_csr(csr, inter, inter_key, now_ms, as_domain=client_id.as_domain)


@spec("spec/authentication_service.md#get-as-credentials", "informative")
async def test_client_credential_under_a_revoked_intermediate_is_rejected(deployment):
    hs1, hs2 = deployment["hs1"].hs, deployment["hs2"].hs
    clock = deployment.clock
    cred = _issue_client_credential(hs2, clock.now_ms())
    chain = await hs1.federation.keys.verify_client_credential(cred, clock.now_ms())
    assert chain.as_credential.as_domain == cred.client_id.as_domain

    revoked = await hs2.operator.revoke_intermediate()          # hs2's operator revokes it
    assert revoked == cred.signer_fingerprint

    clock.advance(hs1.federation.keys.ttl_ms)                   # hs1's cached answer expires
    answer = await hs1.federation.keys.as_credentials("b.example")
    assert answer.revoked_certs == [revoked]
    with pytest.raises(Revoked):
        await hs1.federation.keys.verify_client_credential(cred, clock.now_ms())
    # the AS keeps working with the fresh intermediate it issued
    fresh = _issue_client_credential(hs2, clock.now_ms())
    assert fresh.signer_fingerprint != revoked
    await hs1.federation.keys.verify_client_credential(fresh, clock.now_ms())


@spec(KEY_DISTRIBUTION, "MUST")
async def test_key_material_only_over_verified_tls(deployment_mode):
    """A plain-HTTP peer and a peer whose certificate comes from another CA
    are refused with typed errors; one bad domain does not disturb the others."""
    async with Deployment(deployment_mode, ["hs1", "hs2"], wrong_ca=["evil"], plain_http=["plain"]) as d:
        fed = d["hs1"].hs.federation
        results = await fed.fetch_many(["b.example", "evil.example", "plain.example", "nowhere.example"],
                                       fed.keys.ds_verifying_keys)
        assert results["b.example"] == [k.public for k in d["hs2"].hs.keystore.ds_signing_keys]
        assert isinstance(results["evil.example"], BadCertificate)
        assert isinstance(results["plain.example"], NotTls)
        assert isinstance(results["nowhere.example"], Unreachable)
        with pytest.raises(BadCertificate):
            await fed.keys.as_credentials("evil.example")
        with pytest.raises(NotTls):
            await fed.keys.qs_verifying_keys("plain.example")


@spec("spec/queuing_service.md#fetch-qs-verifying-key", "MUST")
async def test_plain_http_request_to_a_tls_only_endpoint_is_refused(deployment_mode):
    async with Deployment(deployment_mode, ["hs1"], plain_http=["plain"]) as d:
        plain = d["plain"]
        url = plain.url("qs", "/phoenix/v1/qs_verifying_key").replace("https://", "http://")
        # in-process: straight to the app with scheme http; sockets: a real
        # plain-HTTP connection to the server's port
        client = d.asgi_client("plain", scheme="http") if deployment_mode == "in_process" else d.client()
        async with client:
            resp = await client.get(url)
        assert resp.status_code == 403
        assert decode(ErrorResponse, resp.content).code == "tls_required"


@spec("spec/federation/use_cases.md#federation-functionality", "informative")
async def test_unreachable_homeserver_comes_back(deployment):
    fed = deployment["hs1"].hs.federation
    await deployment.set_down("hs2")
    with pytest.raises(Unreachable):
        await fed.keys.ds_verifying_keys("b.example")
    await deployment.set_up("hs2")
    assert await fed.keys.ds_verifying_keys("b.example") == [
        k.public for k in deployment["hs2"].hs.keystore.ds_signing_keys]
