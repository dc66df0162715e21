"""Authentication modes and Privacy Pass of the AS, checked against the spec text.

``spec/authentication_service.md#authentication``: "If not explicitly
mentioned, all endpoints additionally require the client to provide a valid
privacy pass token as part of the request." The first test reads every
endpoint's *Authentication* bullets from the spec chapter itself and compares
them with the endpoint table; the others send one well-formed request to
every AS endpoint with no token, a malformed one, a token of another
homeserver and a spent one — all refused with 401 before the endpoint runs —
and check that the endpoints the spec exempts work without one.
"""

import re

import pytest

from phoenix_ref import privacy_pass as pp
from phoenix_ref.authentication import messages as m
from phoenix_ref.authentication.core import OPERATIONS
from phoenix_ref.client.as_client import AliasIdentity
from phoenix_ref.client.session import ClientSession
from phoenix_ref.codec import decode, encode
from phoenix_ref.endpoints import ENDPOINTS, Auth, Service
from phoenix_ref.errors import ErrorResponse
from phoenix_ref.http import MEDIA_TYPE
from phoenix_ref.ids import Alias, Fqdn
from phoenix_ref.shared import spec_dir
from phoenix_ref.spec_plugin import spec
from phoenix_ref.spec_sections import slugify

AS = "spec/authentication_service.md#"
A, B = Fqdn("a.example"), Fqdn("b.example")
AS_ROWS = [ep for ep in ENDPOINTS if ep.service == Service.AS]

_BULLET_MODES = {"none": Auth.NONE, "client credential": Auth.CLIENT_CREDENTIAL,
                 "client password": Auth.CLIENT_PASSWORD, "client 2fa": Auth.CLIENT_2FA,
                 "alias auth key": Auth.ALIAS_AUTH_KEY}

#: Chapter headings before the endpoints: the general "Authentication" section
#: after them defines the modes and is no endpoint's.
_NOT_ENDPOINTS = {"authentication-service-as", "configuration", "as-state"}


def spec_authentication() -> dict[str, tuple[Auth, bool]]:
    """Endpoint heading slug → (mode, Privacy Pass required) as the spec chapter states it.

    Every endpoint heading is followed by an "Authentication" heading (one
    level down, once at the same level) whose bullets name the mode and,
    where the token is not needed, say so.
    """
    text = (spec_dir() / "spec" / "authentication_service.md").read_text(encoding="utf-8")
    out: dict[str, tuple[Auth, bool]] = {}
    endpoint = None
    in_auth = False
    for line in text.splitlines():
        h = re.match(r"^(#{2,3}) (.*)$", line)
        if h:
            title = h.group(2).strip()
            in_auth = title == "Authentication" and endpoint is not None
            if not in_auth and h.group(1) == "##":
                endpoint = None if slugify(title) in _NOT_ENDPOINTS else slugify(title)
            continue
        bullet = re.match(r"^\* (.*)$", line.strip())
        if in_auth and bullet:
            item = bullet.group(1).lower()
            mode, pp_required = out.get(endpoint, (None, True))
            if item.startswith("no privacy pass token required"):
                pp_required = False
            else:
                mode = next(v for k, v in _BULLET_MODES.items() if item.startswith(k))
            out[endpoint] = (mode, pp_required)
    return out


@spec(AS + "authentication", "informative")
def test_endpoint_table_has_the_spec_authentication_mode_of_every_as_endpoint():
    stated = spec_authentication()
    rows = {ep.section.split("#")[1]: ep for ep in AS_ROWS if ep.name in {op.name for op in OPERATIONS}}
    rows["get-as-credentials"] = next(ep for ep in AS_ROWS if ep.name == "as_credentials")
    assert set(stated) == set(rows), set(stated) ^ set(rows)
    # One reading (docs/decisions.md): *Get AS credentials* is key distribution,
    # fetched by remote homeservers, which hold no client credential to get
    # tokens with (spec/federation/use_cases.md#authentication-key-distribution).
    assert stated["get-as-credentials"] == (Auth.NONE, True)
    stated["get-as-credentials"] = (Auth.NONE, False)
    # Two more (docs/decisions.md): *finish user registration*, because the client
    # receives its credential only in its answer and so cannot obtain a token
    # before ("Client credentials are released at finish"), and the dequeue from
    # one's own direct queue, which a client must always be able to do
    # ("Dequeuing one's own direct queue needs no token").
    for slug in ("finish-user-registration", "dequeue-messages"):
        assert stated[slug][1] is True
        stated[slug] = (stated[slug][0], False)
    for slug, (mode, pp_required) in stated.items():
        ep = rows[slug]
        assert (ep.auth, ep.privacy_pass) == (mode, pp_required), slug
    # "For this endpoint, the AS also accepts authentication by federated clients."
    assert next(ep for ep in AS_ROWS if ep.name == "request_tokens").federated


async def _sample_requests(http, d) -> tuple[ClientSession, dict[str, object]]:
    """One well-formed request body per Privacy Pass row of the AS."""
    alice = await ClientSession.register(http, A, clock=d.clock)
    now = d.clock.now_ms()
    alias, _ = AliasIdentity.new(A, "sample.alias")
    register_alias = AliasIdentity.new(A, "another.alias")[1]
    _, initiate = alice.identity.initiate_2fa(now)
    bodies = {
        "initiate_2fa": initiate,
        "update_user_profile": alice.identity.update_profile(b"p", now),
        "user_profile": m.UserProfileParams(alice.user_id),
        "upload_connection_packages": alice.identity.upload_packages(1, now),
        "user_connection_package": m.UserClientsParams(alice.user_id),
        "delete_user": m.DeleteUserRequest(alice.identity.auth("delete_user", m.DeleteUserParams(bytes(64)), now),
                                           m.DeleteUserParams(bytes(64))),
        "as_enqueue_message": m.EnqueueMessageParams(alice.client_id, b"ctxt"),
        "register_alias": register_alias,
        "delete_alias": alias.delete(now),
        "dequeue_alias_messages": alias.dequeue(now),
        "enqueue_alias_message": m.EnqueueAliasMessageParams(Alias("sample.alias"), b"ctxt"),
        "upload_alias_packages": alias.upload_packages(1, now),
        "alias_connection_package": m.AliasClientsParams(Alias("sample.alias")),
    }
    return alice, bodies


async def _post(http, d, name: str, body, authorization: str | None):
    headers = {"content-type": MEDIA_TYPE}
    if authorization is not None:
        headers["authorization"] = authorization
    return await http.post(d["hs1"].url("as", f"/phoenix/v1/{name}"), content=encode(body), headers=headers)


def _code(resp) -> str:
    return decode(ErrorResponse, resp.content).code


@spec(AS + "authentication", "informative")
async def test_every_as_endpoint_that_needs_a_token_refuses_a_missing_bad_foreign_or_spent_one(deployment):
    d = deployment
    async with d.client() as http:
        alice, bodies = await _sample_requests(http, d)
        marked = {ep.name for ep in AS_ROWS if ep.privacy_pass}
        assert set(bodies) == marked
        spent = await alice.token(A)
        await alice.as_client.call(A, "user_profile", m.UserProfileParams(alice.user_id), privacy_pass=spent)
        bob = await ClientSession.register(http, B, clock=d.clock)
        foreign = await bob.token(B)                   # issued by b.example's AS
        genuine = await alice.token(A)
        forged = pp.Token(genuine.token_type, genuine.nonce, genuine.challenge_digest, genuine.token_key_id,
                          bytes(64))                   # right key id, wrong authenticator
        cases = [(None, "token_required"), ("Bearer abc", "token_required"),
                 ("PrivateToken token=AAAA", "invalid_token"),
                 (pp.authorization_header(forged), "invalid_token"),
                 (pp.authorization_header(foreign), "invalid_token"),   # answers b.example's challenge
                 (pp.authorization_header(spent), "token_spent")]
        for name in sorted(marked):
            for header, code in cases:
                resp = await _post(http, d, name, bodies[name], header)
                assert (resp.status_code, _code(resp)) == (401, code), (name, header)
        # the refused requests spent nothing: the genuine token still redeems once
        ok = await alice.as_client.call(A, "user_profile", m.UserProfileParams(alice.user_id), privacy_pass=genuine)
        assert ok.user_profile == b""


@spec(AS + "initialize-user-registration", "informative")
@spec(AS + "token-issuance", "informative")
# the Authentication subsections say "No Privacy Pass token required": that
# releases the client (a MAY); that the server honours it is described behaviour
@spec("spec/authentication_service.md#authentication-2", "informative")
@spec("spec/authentication_service.md#authentication-18", "informative")
async def test_endpoints_exempt_from_privacy_pass_work_without_a_token(deployment):
    """Registration start and token issuance are the spec's exemptions (and key
    distribution); finishing a registration and dequeuing one's own direct queue
    are phoenix_ref's (docs/decisions.md). A whole registration needs no token."""
    async with deployment.client() as http:
        free = {ep.name for ep in AS_ROWS if not ep.privacy_pass}
        assert free == {"as_credentials", "privacy_pass_issuer_keys", "init_user_registration",
                        "finish_user_registration", "request_tokens", "as_dequeue_messages"}
        # ClientSession.register sends init and finish without a token; uploading
        # its first connection package takes the first token of its first batch
        s = await ClientSession.register(http, A, clock=deployment.clock, token_batch=2)
        assert s.wallet.count(A) == 1
        for path in ("as_credentials", "privacy_pass_issuer_keys"):
            assert (await http.get(deployment["hs1"].url("as", f"/phoenix/v1/{path}"))).status_code == 200


@spec(AS + "authentication", "informative")
@spec("spec/general_concepts/federation.md#federated-access-control-and-rate-limiting", "MUST")
async def test_a_token_of_one_homeserver_is_not_accepted_by_another(deployment):
    async with deployment.client() as http:
        alice = await ClientSession.register(http, A, clock=deployment.clock)
        bob = await ClientSession.register(http, B, clock=deployment.clock)
        token = await alice.token(A)
        with pytest.raises(Exception) as info:
            await bob.as_client.call(B, "user_profile", m.UserProfileParams(bob.user_id), privacy_pass=token)
        assert (info.value.status, info.value.code) == (401, "invalid_token")
        # ... while b.example's own token works there, and a.example's at a.example
        assert (await bob.call(B, "user_profile", m.UserProfileParams(bob.user_id))).user_profile == b""
        await alice.as_client.call(A, "user_profile", m.UserProfileParams(alice.user_id), privacy_pass=token)
