"""A registered client of one homeserver, over HTTPS: the reference client's
high-level side of the Authentication Service (``spec/authentication_service.md``).

:class:`ClientSession` wraps the sans-IO builders of :mod:`.as_client` and an
:class:`~.as_client.AsClient`:

* :meth:`ClientSession.register` — the whole registration: fetch the AS
  credentials, *init user registration* (no token needed), fetch one Privacy
  Pass token with the fresh credential (the AS issues that one to a client
  whose registration is pending), *finish user registration* with it;
* a **token wallet** per issuing domain: :meth:`ClientSession.token` hands
  out an unspent token of ``domain``'s AS, fetching a batch (*token
  issuance*, also at other homeservers' ASs,
  ``spec/federation/federation_protocol.md#client-to-remote-as-communication``,
  under their federated issuer key) when the wallet is empty; :meth:`ClientSession.authorization` gives the
  header (``Authorization: PrivateToken token=…``) for any request to the AS,
  DS or QS of that domain;
* :meth:`ClientSession.call` — any AS endpoint, with a token attached when
  the endpoint requires one;
* the connection-establishment steps of
  ``spec/authentication_service/connection_establishment.md`` (fetch a
  package by user id or alias, verify it against the AS credentials of its
  domain, send a sealed ConnectionEstablishmentPackage, read the direct queue).

Secrets (signing key, password, tokens, queue keys) live in memory: this is
a client for tests, the demo and the CLI. ``clock`` is any object with
``now_ms()`` (a deployment's shared FixedClock in tests).
"""

from __future__ import annotations

from typing import Any

from .. import privacy_pass as pp
from ..authentication import messages as m
from ..authentication.core import operation
from ..clock import Clock
from ..codec import decode
from ..credentials import ClientCredential, TrustStore
from ..errors import ProtocolError
from ..ids import Alias, ClientId, Fqdn, GroupId, UserId
from ..privacy_pass_gate import IssuerKeysResponse
from .as_client import (
    AliasIdentity, AsClient, AsIdentity, Registration, check_connection_package, error_from_response,
    open_sealed_establishment, verify_connection_establishment,
)

__all__ = ["ClientSession", "TokenWallet", "DEFAULT_TOKEN_BATCH"]

#: Tokens fetched per issuance request when the wallet runs dry.
DEFAULT_TOKEN_BATCH = 10
#: How long a client credential asks to be valid (at most as long as its intermediate).
CREDENTIAL_VALIDITY_MS = 365 * 24 * 3600 * 1000


def _fqdn(domain: Fqdn | str) -> Fqdn:
    return domain if isinstance(domain, Fqdn) else Fqdn(domain)


class TokenWallet:
    """Unspent Privacy Pass tokens per issuing domain, and the issuer keys seen."""

    def __init__(self) -> None:
        self.tokens: dict[Fqdn, list[pp.Token]] = {}
        self.issuer_keys: dict[Fqdn, bytes] = {}

    def count(self, domain: Fqdn | str) -> int:
        return len(self.tokens.get(_fqdn(domain), []))

    def add(self, domain: Fqdn, tokens: list[pp.Token]) -> None:
        self.tokens.setdefault(domain, []).extend(tokens)

    def take(self, domain: Fqdn) -> pp.Token | None:
        left = self.tokens.get(domain)
        return left.pop(0) if left else None


class ClientSession:
    """One registered client (see module docstring).

    ``as_client`` carries the caller's ``httpx.AsyncClient`` (the caller
    owns and closes it). ``identity`` is the client's AS identity.
    """

    def __init__(self, as_client: AsClient, identity: AsIdentity, *, clock: Any = None,
                 token_batch: int = DEFAULT_TOKEN_BATCH):
        self.as_client = as_client
        self.identity = identity
        self.clock = clock or Clock()
        self.token_batch = token_batch
        self.wallet = TokenWallet()
        self.aliases: dict[Alias, AliasIdentity] = {}

    # --- who -------------------------------------------------------------------------------

    @property
    def domain(self) -> Fqdn:
        return self.identity.domain

    @property
    def user_id(self) -> UserId:
        return self.identity.user_id

    @property
    def client_id(self) -> ClientId:
        return self.identity.client_id

    @property
    def credential(self) -> ClientCredential:
        return self.identity.credential

    def now(self) -> int:
        return self.clock.now_ms()

    # --- registration ---------------------------------------------------------------------

    @classmethod
    async def register(cls, http: Any, domain: Fqdn | str, password: bytes = b"correct horse battery staple",
                       *, clock: Any = None, user_id: UserId | None = None, base_url: Any = None,
                       connection_packages: int = 1, token_batch: int = DEFAULT_TOKEN_BATCH,
                       credential_validity_ms: int = CREDENTIAL_VALIDITY_MS) -> "ClientSession":
        """Register a new user (random user id unless given) with its first
        client at ``domain``'s AS (``#initialize-user-registration``,
        ``#finish-user-registration``); its credential asks to be valid for
        ``credential_validity_ms`` (at most as long as the signing
        intermediate). Raises the AS's refusal as a ProtocolError (e.g. 409
        ``user_exists``)."""
        domain = _fqdn(domain)
        clock = clock or Clock()
        as_client = AsClient(http, base_url)
        creds = await as_client.as_credentials(domain)
        intermediate = creds.signing_intermediate(clock.now_ms())
        if intermediate is None:
            raise ProtocolError(f"{domain} publishes no usable intermediate credential", code="no_intermediate")
        now = clock.now_ms()
        # the credential must end before the intermediate that signs it (credentials.md)
        validity = min(credential_validity_ms, intermediate.expiration_data.not_after - now)
        reg, init = Registration.start(domain, password, intermediate.fingerprint(), now, user_id=user_id,
                                       validity_ms=validity)
        response = await as_client.call(domain, "init_user_registration", init)
        done = await as_client.call(domain, "finish_user_registration", reg.finish(response, clock.now_ms()))
        session = cls(as_client, reg.identity(done), clock=clock, token_batch=token_batch)
        if connection_packages:   # they carry the credential, which came with the finish answer
            await session.call(domain, "upload_connection_packages",
                               session.identity.upload_packages(connection_packages, clock.now_ms()))
        return session

    # --- Privacy Pass ------------------------------------------------------------------------

    async def issuer_key(self, domain: Fqdn | str, *, refresh: bool = False) -> bytes:
        """The key ``domain``'s AS issues tokens to this client under (*Get
        Privacy Pass issuer keys*): the first of its ``token_keys`` at the
        home AS, of its ``federated_token_keys`` at any other (docs/decisions.md, A21)."""
        domain = _fqdn(domain)
        if refresh or domain not in self.wallet.issuer_keys:
            path = "/phoenix/v1/privacy_pass_issuer_keys"
            resp = await self.as_client.http.get(f"{self.as_client.base_url(domain)}{path}")
            if resp.status_code != 200:
                raise error_from_response(resp.status_code, resp.content, resp.headers.get("Retry-After"))
            directory = decode(IssuerKeysResponse, resp.content)
            keys = directory.token_keys if domain == self.domain else directory.federated_token_keys
            usable = [k.token_key for k in keys if k.token_type == pp.TOKEN_TYPE]
            if not usable:
                raise ProtocolError(f"{domain} offers no issuer key of type {pp.TOKEN_TYPE:#06x}",
                                    code="no_issuer_key")
            self.wallet.issuer_keys[domain] = usable[0]
        return self.wallet.issuer_keys[domain]

    async def fetch_tokens(self, domain: Fqdn | str | None = None, n: int | None = None) -> list[pp.Token]:
        """Request ``n`` tokens from ``domain``'s AS (default: the home AS) and
        put them in the wallet (``#token-issuance``). If the AS rotated its
        key meanwhile (422), the key is fetched again and the request repeated once."""
        domain = _fqdn(domain or self.domain)
        n = n or self.token_batch
        for attempt in (0, 1):
            key = await self.issuer_key(domain, refresh=attempt == 1)
            state, request = self.identity.request_tokens(key, domain, n, self.now())
            try:
                response = await self.as_client.call(domain, "request_tokens", request)
                break
            except ProtocolError as e:
                if e.status != 422 or attempt == 1:
                    raise
        tokens = pp.finalize(state, response.tokens)
        self.wallet.add(domain, tokens)
        return tokens

    async def token(self, domain: Fqdn | str | None = None) -> pp.Token:
        """An unspent token for the services of ``domain`` (fetched if the wallet is empty)."""
        domain = _fqdn(domain or self.domain)
        token = self.wallet.take(domain)
        if token is None:
            await self.fetch_tokens(domain)
            token = self.wallet.take(domain)
        return token

    async def authorization(self, domain: Fqdn | str | None = None) -> dict[str, str]:
        """``{"Authorization": "PrivateToken token=…"}`` with a fresh token of ``domain``."""
        return {"Authorization": pp.authorization_header(await self.token(domain))}

    # --- AS endpoints ------------------------------------------------------------------------

    async def call(self, domain: Fqdn | str, name: str, request: Any) -> Any:
        """AS endpoint ``name`` of ``domain``, with a token if the endpoint needs one."""
        domain = _fqdn(domain)
        token = await self.token(domain) if operation(name).privacy_pass else None
        return await self.as_client.call(domain, name, request, privacy_pass=token)

    async def trust(self, *domains: Fqdn | str) -> TrustStore:
        """The AS credentials of ``domains`` (default: home), fetched over TLS now."""
        return await self.as_client.trust(*(domains or (self.domain,)))

    async def upload_connection_packages(self, n: int, lifetime_ms: int | None = None) -> None:
        """``n`` fresh connection packages, valid ``lifetime_ms`` (default 30 days)."""
        await self.call(self.domain, "upload_connection_packages",
                        self.identity.upload_packages(n, self.now(), lifetime_ms))

    async def update_profile(self, profile_ctxt: bytes) -> None:
        await self.call(self.domain, "update_user_profile", self.identity.update_profile(profile_ctxt, self.now()))

    async def profile(self, user_id: UserId) -> bytes:
        resp = await self.call(user_id.as_domain, "user_profile", m.UserProfileParams(user_id))
        return resp.user_profile

    async def login(self) -> bytes:
        """An OPAQUE login with the password (*Initiate 2FA operation*); the
        AS's answer proves it holds this user's record. Returns the OPAQUE
        session key; raises Unauthorized if the password does not match."""
        from .. import opaque
        state, request = self.identity.initiate_2fa(self.now())
        response = await self.call(self.domain, "initiate_2fa", request)
        return opaque.client_login_finish(self.identity.password, state, response.opaque_ke2).session_key

    async def delete_account(self) -> None:
        """*User account deletion* (Client 2FA: OPAQUE login, then KE3 with the request)."""
        state, request = self.identity.initiate_2fa(self.now())
        response = await self.call(self.domain, "initiate_2fa", request)
        await self.call(self.domain, "delete_user", self.identity.delete_user(state, response, self.now()))

    async def dequeue_connection_messages(self, trust: TrustStore | None = None,
                                          max_messages: int = 100) -> list[m.ConnectionEstablishmentPackage]:
        """Read the client's direct queue (``#dequeue-messages``) and open every
        ConnectionEstablishmentPackage: signature and the sender's credential
        chain checked against ``trust`` (fetched for the senders' domains if None)."""
        resp = await self.call(self.domain, "as_dequeue_messages", self.identity.dequeue(self.now(), max_messages))
        plaintexts = self.identity.queue.read(resp.messages)
        return [await self._open(ctxt, trust, self.identity) for ctxt in plaintexts]

    async def _open(self, ctxt: bytes, trust: TrustStore | None, holder: Any) -> m.ConnectionEstablishmentPackage:
        """Open a message of a direct queue and verify it; the sender's domain
        is inside the sealed package, so its AS credentials are fetched after
        opening when ``trust`` is None."""
        cep = open_sealed_establishment(holder.connection_keys.values(), ctxt)
        if trust is None:
            trust = await self.trust(cep.sender_client_credential.client_id.as_domain)
        verify_connection_establishment(cep, trust, self.now())
        return cep

    # --- connection establishment (connection_establishment.md#connection-group-creation) -----

    async def connection_package(self, user_id: UserId, trust: TrustStore | None = None) -> m.ConnectionPackage:
        """Fetch a connection package of ``user_id`` from its AS and verify it
        against that AS's credentials (fetched over TLS if ``trust`` is None)."""
        resp = await self.call(user_id.as_domain, "user_connection_package", m.UserClientsParams(user_id))
        trust = trust or await self.trust(user_id.as_domain)
        check_connection_package(resp.connection_package, user_id, trust, self.now())
        return resp.connection_package

    async def alias_connection_package(self, domain: Fqdn | str, alias: Alias | str) -> m.ConnectionPackagePayload:
        alias = alias if isinstance(alias, Alias) else Alias(alias)
        resp = await self.call(domain, "alias_connection_package", m.AliasClientsParams(alias))
        return resp.connection_package

    def connection_establishment(self, package_key: bytes, group_id: GroupId, ear_key: bytes,
                                 credential_key: bytes) -> bytes:
        """A signed ConnectionEstablishmentPackage sealed to ``package_key``."""
        return self.identity.make_connection_establishment(package_key, group_id, ear_key, credential_key)

    async def send_connection_establishment(self, package: m.ConnectionPackage, group_id: GroupId,
                                            ear_key: bytes, credential_key: bytes) -> None:
        """*Enqueue message* into the direct queue of the package's client, at its AS."""
        ctxt = self.connection_establishment(package.payload.encryption_key, group_id, ear_key, credential_key)
        cid = package.client_credential.client_id
        await self.call(cid.as_domain, "as_enqueue_message", m.EnqueueMessageParams(cid, ctxt))

    async def send_alias_connection_establishment(self, domain: Fqdn | str, alias: Alias | str,
                                                  payload: m.ConnectionPackagePayload, group_id: GroupId,
                                                  ear_key: bytes, credential_key: bytes) -> None:
        """*Enqueue alias messages* at ``domain``'s AS."""
        alias = alias if isinstance(alias, Alias) else Alias(alias)
        ctxt = self.connection_establishment(payload.encryption_key, group_id, ear_key, credential_key)
        await self.call(domain, "enqueue_alias_message", m.EnqueueAliasMessageParams(alias, ctxt))

    # --- aliases -------------------------------------------------------------------------------

    async def register_alias(self, alias: Alias | str, packages: int = 1) -> AliasIdentity:
        """*Register alias* at the home AS and upload ``packages`` payloads."""
        ident, request = AliasIdentity.new(self.domain, alias)
        await self.call(self.domain, "register_alias", request)
        self.aliases[ident.alias] = ident
        if packages:
            await self.call(self.domain, "upload_alias_packages", ident.upload_packages(packages, self.now()))
        return ident

    async def dequeue_alias_messages(self, alias: Alias | str, trust: TrustStore | None = None,
                                     max_messages: int = 100) -> list[m.ConnectionEstablishmentPackage]:
        ident = self.aliases[alias if isinstance(alias, Alias) else Alias(alias)]
        resp = await self.call(self.domain, "dequeue_alias_messages", ident.dequeue(self.now(), max_messages))
        return [await self._open(ctxt, trust, ident) for ctxt in ident.queue.read(resp.messages)]
