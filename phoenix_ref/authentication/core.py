"""The Authentication Service core, sans-IO (``spec/authentication_service.md``).

One method per endpoint of the spec. Each takes the decoded request body and
``now_ms`` and returns the response struct (``None`` where the spec names no
response), or raises a :class:`~phoenix_ref.errors.ProtocolError`. The
method enforces the endpoint's authentication mode itself
(``#authentication``); :data:`OPERATIONS` lists every endpoint with its
mode, its Privacy Pass requirement and its spec section, and the HTTP layer
(``routes.py``) redeems the Privacy Pass token before calling the core.

Authentication modes (``#authentication``) and how they are checked here:

* **None** — nothing.
* **Client Credential** — :class:`~phoenix_ref.auth_tokens.ClientCredentialAuth`
  verified against this AS's own credentials (chain, freshness, signature
  bound to this request), and the credential must be the one stored in the
  caller's client entry, so that a deleted account's credential no longer
  works.
* **Client 2FA** — Client Credential, plus an OPAQUE flow: for *finish user
  registration* the registration record completes the registration begun by
  *init user registration*, and the Client Credential part is a
  :class:`~phoenix_ref.auth_tokens.RegistrationAuth` by the key of the
  credential waiting in the ephemeral DB, which the client receives only in
  the answer (docs/decisions.md, "Client credentials are released at
  finish"); for *user account deletion* ``opaque_ke3`` completes the login
  begun by *initiate 2FA* (``ServerFinish``).
* **Client Password** — an OPAQUE login flow; no endpoint of the spec's
  chapter uses it alone (client addition is not specified), so the core has
  no such method.
* **Alias auth key** — :class:`~phoenix_ref.auth_tokens.AliasAuth` verified
  with the alias entry's auth key.

The ephemeral OPAQUE DB (``#as-state``) is kept in memory by
:class:`phoenix_ref.opaque.EphemeralOpaqueDb`; entries expire. Everything else goes through the
:class:`~phoenix_ref.authentication.accounts.AccountStore` and the direct
queues (:class:`~phoenix_ref.queues.Queues`), kept in one database: a
registration or deletion writes entries and queues in one
``accounts.transaction()``, so a failure leaves neither half. Token issuance charges
allowances through :class:`~phoenix_ref.privacy_pass.IssuancePolicy`.

Federated token issuance (``spec/federation/federation_protocol.md#client-to-remote-as-communication``)
needs the credentials of the caller's AS. The core does no IO: when it lacks
them it raises :class:`~phoenix_ref.credentials.UnknownSigner` naming the
domain; the caller fetches that domain's AS credentials over TLS (the remote
key cache) and calls again with them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from .. import opaque
from .. import privacy_pass as pp
from ..auth_tokens import DEFAULT_MAX_AGE_MS, AliasAuth, ClientCredentialAuth, RequestBinding
from ..codec import DecodeError, decode, encode
from ..credentials import (
    AsCredentialsResponse, AsIntermediateCredential, ClientCredential, CredentialChain, TrustStore,
    UnknownSigner, sign_csr,
)
from ..crypto import CryptoError, SigningKey, check_hpke_public_key
from ..errors import Conflict, Malformed, NotFound, Unauthorized
from ..ids import Alias, ClientId, Fqdn, UserId
from ..paths import endpoint_path
from ..queue_crypto import check_queue_encryption_key, check_ratchet_key
from ..queues import DequeueMessagesResponse, Queues
from . import messages as m
from .accounts import AccountStore, AliasEntry, ClientEntry, UserEntry, delete_user_entirely, direct_queue_id

__all__ = [
    "AuthMode", "AsOperation", "OPERATIONS", "operation", "request_binding", "AsConfig", "AsSecrets",
    "AuthenticationCore", "NoConnectionPackage", "UnknownClient",
]

ED25519_PUBLIC_KEY_LEN = 32


class AuthMode(str, enum.Enum):
    """``spec/authentication_service.md#authentication``."""
    NONE = "none"
    CLIENT_CREDENTIAL = "client credential"
    CLIENT_PASSWORD = "client password (OPAQUE)"
    CLIENT_2FA = "client 2FA"
    ALIAS_AUTH_KEY = "alias auth key"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class AsOperation:
    """One AS endpoint: its request body and answer, the spec's
    authentication mode, whether a Privacy Pass token is required, its section."""
    name: str
    request: type
    response: type | None
    auth: AuthMode
    privacy_pass: bool
    section: str

    @property
    def path(self) -> str:
        return endpoint_path(self.name)

    @property
    def method(self) -> str:
        """The :class:`AuthenticationCore` method: the name without the
        ``as_`` that keeps two endpoint names apart from the QS's."""
        return self.name.removeprefix("as_")


_S = "spec/authentication_service.md#"
_A = AuthMode

#: Every AS endpoint except *Get AS credentials* (key distribution,
#: ``routes.py``/``store.py``). "If not explicitly mentioned, all endpoints
#: additionally require the client to provide a valid privacy pass token"
#: (``#authentication``): the spec exempts registration start and token
#: issuance; phoenix_ref also exempts *finish user registration* (the client
#: holds no credential to obtain a token with before it) and the dequeue from
#: one's own direct queue (clients must always be able to dequeue) —
#: docs/decisions.md, "Client credentials are released at finish" and
#: "Dequeuing one's own direct queue needs no token".
OPERATIONS: tuple[AsOperation, ...] = (
    AsOperation("initiate_2fa", m.Initiate2FaRequest, m.Initiate2FaAuthenticationResponse,
                _A.CLIENT_CREDENTIAL, True, _S + "initiate-2fa-operation"),
    AsOperation("init_user_registration", m.InitUserRegistrationParams, m.InitUserRegistrationResponse,
                _A.NONE, False, _S + "initialize-user-registration"),
    AsOperation("finish_user_registration", m.FinishUserRegistrationRequest, m.FinishUserRegistrationResponse,
                _A.CLIENT_2FA, False, _S + "finish-user-registration"),
    AsOperation("update_user_profile", m.UpdateUserProfileRequest, None,
                _A.CLIENT_CREDENTIAL, True, _S + "update-user-profile"),
    AsOperation("user_profile", m.UserProfileParams, m.UserProfileResponse,
                _A.NONE, True, _S + "fetch-user-profile"),
    AsOperation("upload_connection_packages", m.UploadUserIdPackagesRequest, None,
                _A.CLIENT_CREDENTIAL, True, _S + "upload-user-id-connection-packages"),
    AsOperation("user_connection_package", m.UserClientsParams, m.UserClientsResponse,
                _A.NONE, True, _S + "get-user-id-connection-package"),
    AsOperation("delete_user", m.DeleteUserRequest, None,
                _A.CLIENT_2FA, True, _S + "user-account-deletion"),
    AsOperation("as_dequeue_messages", m.DequeueMessagesRequest, DequeueMessagesResponse,
                _A.CLIENT_CREDENTIAL, False, _S + "dequeue-messages"),
    AsOperation("as_enqueue_message", m.EnqueueMessageParams, None,
                _A.NONE, True, _S + "enqueue-message"),
    AsOperation("register_alias", m.RegisterAlias, None,
                _A.NONE, True, _S + "register-alias"),
    AsOperation("delete_alias", m.DeleteAliasRequest, None,
                _A.ALIAS_AUTH_KEY, True, _S + "delete-alias"),
    AsOperation("dequeue_alias_messages", m.DequeueAliasMessagesRequest, DequeueMessagesResponse,
                _A.ALIAS_AUTH_KEY, True, _S + "dequeue-alias-messages"),
    AsOperation("enqueue_alias_message", m.EnqueueAliasMessageParams, None,
                _A.NONE, True, _S + "enqueue-alias-messages"),
    AsOperation("upload_alias_packages", m.UploadAliasPackagesRequest, None,
                _A.ALIAS_AUTH_KEY, True, _S + "upload-alias-connection-package-payloads"),
    AsOperation("alias_connection_package", m.AliasClientsParams, m.AliasClientsResponse,
                _A.NONE, True, _S + "get-alias-connection-package"),
    AsOperation("request_tokens", m.RequestTokenRequest, m.TokenResponse,
                _A.CLIENT_CREDENTIAL, False, _S + "token-issuance"),
)

_BY_NAME = {op.name: op for op in OPERATIONS}


def operation(name: str) -> AsOperation:
    return _BY_NAME[name]


def request_binding(domain: Fqdn, name: str, params: Any) -> RequestBinding:
    """What an authenticated request to operation ``name`` of ``domain``'s AS
    signs besides the spec's fields (:mod:`phoenix_ref.auth_tokens`): the
    domain, the endpoint path and the encoded params. Client and AS build
    it alike."""
    return RequestBinding(domain, operation(name).path, encode(params))


# --- errors ---------------------------------------------------------------------------

class NoConnectionPackage(NotFound):
    """The user or alias exists but has no connection package left."""
    code = "no_connection_package"


class UnknownClient(Unauthorized):
    """Client Credential authentication by a client without a client entry."""
    code = "unknown_client"


# --- configuration and key material ---------------------------------------------------

@dataclass(frozen=True)
class AsConfig:
    """``spec/authentication_service.md#configuration`` and the AS's own limits.

    ``max_client_age_ms`` is the spec's "Maximal QS client record age": a
    client entry whose direct queue nobody fetched from for longer is deleted
    by :meth:`AuthenticationCore.prune_inactive`; ``max_alias_age_ms`` does
    the same for alias entries (:meth:`AuthenticationCore.prune_inactive_aliases`).
    ``max_messages`` (the spec's "maximal number of requested messages") is
    configured on the :class:`~phoenix_ref.queues.Queues` the core is given;
    the anonymous token time-frame and default token allowance live in the
    :class:`~phoenix_ref.privacy_pass.IssuancePolicy`.
    """
    domain: Fqdn
    auth_max_age_ms: int = DEFAULT_MAX_AGE_MS
    ephemeral_ttl_ms: int = opaque.EPHEMERAL_TTL_MS  # lifetime of ephemeral OPAQUE DB entries
    max_pending_registrations_per_source: int = 32   # live registration starts one source may hold
    max_client_credential_validity_ms: int = 2 * 365 * 24 * 3600 * 1000
    max_connection_packages_per_upload: int = 100
    max_client_age_ms: int = 90 * 86_400_000   # "Maximal QS client record age" (#configuration)
    max_alias_age_ms: int = 90 * 86_400_000    # alias entries whose queue nobody fetched from (docs/decisions.md)


@dataclass
class AsSecrets:
    """``#as-state``: AS credential key material (what *Get AS credentials*
    publishes and the intermediate key that signs CSRs), the AS OPAQUE key
    material (opaque-ke ``ServerSetup``: OPRF seed and server key pair) and
    the Privacy Pass issuer keys: ``token_keys`` issue to the AS's own
    clients, ``federated_token_keys`` to clients of other homeservers
    (docs/decisions.md, A21)."""
    credentials: AsCredentialsResponse
    intermediate: AsIntermediateCredential
    intermediate_key: SigningKey
    opaque_server_setup: opaque.OpaqueServerSetup
    token_keys: pp.IssuerKeys
    federated_token_keys: pp.IssuerKeys


def _ephemeral_key(ident: UserId | ClientId) -> bytes:
    """Index of the ephemeral OPAQUE DB: a user id (registration in
    progress) or a client id (2FA in progress), kept apart by a prefix."""
    return (b"u" if isinstance(ident, UserId) else b"c") + encode(ident)


# --- the core ---------------------------------------------------------------------------------

class AuthenticationCore:
    """The AS of one domain. Synchronous; the HTTP layer runs its methods in
    a worker thread (GUIDE §4). It owns none of the stores it is given."""

    def __init__(self, config: AsConfig, secrets: AsSecrets, accounts: AccountStore, queues: Queues,
                 issuance: pp.IssuancePolicy):
        self.config = config
        self.domain = config.domain
        self.accounts = accounts
        self.queues = queues
        self.issuance = issuance
        self.ephemeral = opaque.EphemeralOpaqueDb(ttl_ms=config.ephemeral_ttl_ms,
                                                  max_per_source=config.max_pending_registrations_per_source)
        self.set_secrets(secrets)

    def set_secrets(self, secrets: AsSecrets) -> None:
        """Install (rotated) key material."""
        self.secrets = secrets
        self.trust = TrustStore.of({self.domain: secrets.credentials})

    # --- authentication helpers ---------------------------------------------------------

    def _binding(self, name: str, params: Any) -> RequestBinding:
        return request_binding(self.domain, name, params)

    def _verify_credential_auth(self, name: str, auth: ClientCredentialAuth, params: Any,
                                now_ms: int, trust: TrustStore | None = None) -> CredentialChain:
        return auth.verify(trust if trust is not None else self.trust, now_ms, self._binding(name, params),
                           max_age_ms=self.config.auth_max_age_ms)

    def _client_auth(self, name: str, auth: ClientCredentialAuth, params: Any, now_ms: int) -> ClientId:
        """Mode **Client Credential** for a registered local client."""
        client_id = auth.client_credential.client_id
        if client_id.as_domain != self.domain:
            raise Unauthorized(f"{client_id} is not a client of {self.domain}", code="foreign_client")
        self._verify_credential_auth(name, auth, params, now_ms)
        entry = self.accounts.get_client(client_id)
        if entry is None or entry.client_credential != encode(auth.client_credential):
            raise UnknownClient(f"{client_id} has no client entry with this credential")
        return client_id

    def _alias_auth(self, name: str, auth: AliasAuth, params: Any, alias: Alias, now_ms: int) -> None:
        """Mode **Alias auth key** for the alias the params name."""
        auth.check_alias(alias)
        entry = self.accounts.get_alias(alias)
        if entry is None:
            raise NotFound(f"no alias {alias}", code="unknown_alias")
        auth.verify(entry.alias_auth_key, now_ms, self._binding(name, params),
                    max_age_ms=self.config.auth_max_age_ms)

    # --- #initialize-user-registration ----------------------------------------------------

    def init_user_registration(self, req: m.InitUserRegistrationParams, now_ms: int,
                               source: str | None = None) -> m.InitUserRegistrationResponse:
        """Check the user id is free, validate and sign the CSR, run the first
        server step of OPAQUE registration and remember the credential in
        the ephemeral DB, counted against the network ``source`` of the
        request (at most ``max_pending_registrations_per_source`` live
        starts each). Authentication: None; no Privacy Pass.

        The credential is not returned: it leaves the AS only when the
        registration finishes, so an abandoned start holds nothing that
        authenticates anywhere, and a user id never has a second credential
        (``threat_model/qualitative/authentication_service.md#baseline-security-under-an-honest-as``).
        A user id with a registration in progress is reserved: another start
        for it gets 409 ``registration_pending``, except a retry by the same
        client (same client id and key), which replaces its own entry."""
        client_id = req.client_csr.payload.client_id
        user_id = client_id.user_id
        if user_id.as_domain != self.domain:
            raise Malformed(f"user {user_id} does not belong to {self.domain}", code="foreign_user")
        if self.accounts.user_exists(user_id):
            raise Conflict(f"user {user_id} already exists", code="user_exists")
        credential = sign_csr(req.client_csr, self.secrets.intermediate, self.secrets.intermediate_key, now_ms,
                              as_domain=self.domain,
                              max_validity_ms=self.config.max_client_credential_validity_ms)
        response = opaque.server_registration_start(self.secrets.opaque_server_setup,
                                                    req.opaque_registration_request, encode(user_id))

        def same_client(entry: opaque.EphemeralEntry) -> bool:
            held = entry.client_credential
            return held.client_id == credential.client_id and held.public_key == credential.public_key

        self.ephemeral.put(_ephemeral_key(user_id), credential, now_ms, source=source, may_replace=same_client)
        return m.InitUserRegistrationResponse(response)

    # --- #finish-user-registration -------------------------------------------------------

    def finish_user_registration(self, req: m.FinishUserRegistrationRequest,
                                 now_ms: int) -> m.FinishUserRegistrationResponse:
        """Authenticate with the key of the pending registration's credential,
        check the user id is still free, create the user entry (with the
        OPAQUE record) and the initial client entry with its direct queue,
        drop the ephemeral entry and hand out the credential. Mode: Client
        2FA (:class:`~phoenix_ref.auth_tokens.RegistrationAuth`); no Privacy
        Pass. Connection packages carry the credential, so the client
        uploads them afterwards."""
        p = req.params
        client_id = req.auth.client_id
        user_id = client_id.user_id
        pending = self.ephemeral.get(_ephemeral_key(user_id), now_ms)  # 401 if none
        credential = pending.client_credential
        if credential.client_id != client_id:
            raise Unauthorized(f"the registration in progress for {user_id} is not {client_id}'s",
                               code="credential_mismatch")
        req.auth.verify(credential.public_key, now_ms, self._binding("finish_user_registration", p),
                        max_age_ms=self.config.auth_max_age_ms)
        queue_key = check_queue_encryption_key(p.queue_encryption_key)
        ratchet_key = check_ratchet_key(p.initial_queue_ratchet_key)
        record = opaque.server_registration_finish(p.opaque_registration_record)
        with self.accounts.transaction():   # the entries and the queue, or nothing
            self.accounts.create_user(UserEntry(user_id, record, b""),
                                      ClientEntry(client_id, encode(credential), credential.expiration_data.not_after),
                                      [])
            self._create_queue(direct_queue_id(client_id), queue_key, ratchet_key, now_ms)
        self.ephemeral.delete(_ephemeral_key(user_id))
        return m.FinishUserRegistrationResponse(credential)

    def _create_queue(self, queue_id: bytes, queue_key: bytes, ratchet_key: bytes, now_ms: int) -> None:
        """Create a direct queue; a queue left over under this id (an owner
        deleted while the store was interrupted) is replaced."""
        try:
            self.queues.create(queue_id, queue_key, now_ms, initial_ratchet_key=ratchet_key)
        except Conflict:
            self.queues.delete(queue_id)
            self.queues.create(queue_id, queue_key, now_ms, initial_ratchet_key=ratchet_key)

    def _check_package_count(self, n: int) -> None:
        if n > self.config.max_connection_packages_per_upload:
            raise Malformed(f"{n} connection packages, at most {self.config.max_connection_packages_per_upload}",
                            code="too_many_connection_packages")

    @staticmethod
    def _check_payload(payload: m.ConnectionPackagePayload, now_ms: int) -> int:
        """A publishable payload: an X25519 key one can seal to and a lifetime
        that has not ended."""
        try:
            check_hpke_public_key(payload.encryption_key)
        except CryptoError:
            raise Malformed("connection encryption key must be a 32-byte X25519 public key of full order",
                            code="bad_connection_package") from None
        life = payload.lifetime
        if life.not_before > life.not_after or life.not_after < now_ms:
            raise Malformed("connection package lifetime is empty or over", code="bad_connection_package")
        return life.not_after

    def _check_connection_package(self, cp: m.ConnectionPackage, credential: ClientCredential,
                                  now_ms: int) -> tuple[bytes, int]:
        """A package the caller may publish: it carries the caller's own
        credential and that credential's signature."""
        if cp.client_credential != credential:
            raise Malformed("a connection package carries another client's credential",
                            code="bad_connection_package")
        cp.verify_signature()
        return encode(cp), self._check_payload(cp.payload, now_ms)

    # --- #initiate-2fa-operation ---------------------------------------------------------

    def initiate_2fa(self, req: m.Initiate2FaRequest, now_ms: int) -> m.Initiate2FaAuthenticationResponse:
        """First server step of the OPAQUE online AKE against the caller's
        user record; the server state waits in the ephemeral DB under the
        client id. Mode: Client Credential."""
        client_id = self._client_auth("initiate_2fa", req.auth, req.params, now_ms)
        user = self.accounts.get_user(client_id.user_id)
        if user is None:
            raise UnknownClient(f"{client_id} has no user entry")
        start = opaque.server_login_start(self.secrets.opaque_server_setup, user.opaque_record,
                                          req.params.opaque_ke1, encode(client_id.user_id))
        self.ephemeral.put(_ephemeral_key(client_id), req.auth.client_credential, now_ms, start.state)
        return m.Initiate2FaAuthenticationResponse(start.ke2)

    # --- #user-account-deletion ---------------------------------------------------------

    def delete_user(self, req: m.DeleteUserRequest, now_ms: int) -> None:
        """Finish the OPAQUE login begun by *initiate 2FA* (``ServerFinish``),
        then delete the user entry, its clients' queues and the ephemeral
        entry. Mode: Client 2FA."""
        client_id = self._client_auth("delete_user", req.auth, req.params, now_ms)
        pending = self.ephemeral.take(_ephemeral_key(client_id), now_ms)  # one attempt per KE1
        if pending.opaque_state is None or pending.client_credential != req.auth.client_credential:
            raise Unauthorized(f"no 2FA login of {client_id} with this credential is in progress",
                               code="no_pending_opaque")
        opaque.server_login_finish(pending.opaque_state, req.params.opaque_ke3)  # 401 on failure
        gone = delete_user_entirely(self.accounts, self.queues, client_id.user_id)
        for cid in gone:                    # metadata minimalism: the issuance counters go too
            self.issuance.forget(cid)

    def _delete_queue(self, queue_id: bytes) -> None:
        try:
            self.queues.delete(queue_id)
        except NotFound:
            pass

    # --- state expiration (spec/general_concepts/state_expiration.md; run by the sweeper) -----

    def _delete_clients(self, client_ids: list[ClientId]) -> list[ClientId]:
        """Delete these client entries as account deletion deletes a client:
        each with its connection packages and direct queue in one
        transaction, the user entry with its last client, the client's
        token issuance window; then purge the files. Returns those that existed."""
        gone = []
        for client_id in client_ids:
            with self.accounts.transaction():   # the entry and its queue, or neither
                try:
                    self.accounts.delete_client(client_id)
                    existed = True
                except NotFound:
                    existed = False        # a queue whose entry is gone already
                self._delete_queue(direct_queue_id(client_id))
            self.issuance.forget(client_id)
            if existed:
                gone.append(client_id)
        if client_ids:
            self.accounts.purge_deleted()
        return gone

    def prune_inactive(self, now_ms: int) -> list[ClientId]:
        """``#configuration``, "Maximal QS client record age": delete the
        client entries whose direct queue was last fetched from longer ago
        than ``max_client_age_ms`` (activity is kept to the month,
        ``#as-state``) like :meth:`_delete_clients`. Also drops the token
        issuance windows that ended (metadata minimalism). Returns the
        deleted clients."""
        self.issuance.purge(now_ms)
        idle = [decode(ClientId, queue_id[1:])
                for queue_id in self.queues.inactive(now_ms - self.config.max_client_age_ms)
                if queue_id.startswith(b"c")]   # a client's queue (accounts.direct_queue_id)
        return self._delete_clients(idle)

    def expire_credentials(self, now_ms: int) -> list[ClientId]:
        """``state_expiration.md#expiration-of-clients``: "The AS enforces
        this by removing expired client credentials" — every client entry
        whose credential's ``not_after`` lies before ``now_ms`` goes like
        :meth:`_delete_clients`. Returns the deleted clients."""
        return self._delete_clients(self.accounts.expired_clients(now_ms))

    def prune_inactive_aliases(self, now_ms: int) -> list[Alias]:
        """Delete the alias entries whose direct queue was last fetched from
        longer ago than ``max_alias_age_ms``, each with its package payloads
        and queue (as *delete alias* does). Returns the deleted aliases."""
        gone = []
        for queue_id in self.queues.inactive(now_ms - self.config.max_alias_age_ms):
            if not queue_id.startswith(b"a"):   # an alias's queue (accounts.direct_queue_id)
                continue
            alias = decode(Alias, queue_id[1:])
            with self.accounts.transaction():
                try:
                    self.accounts.delete_alias(alias)
                    gone.append(alias)
                except NotFound:
                    pass
                self._delete_queue(queue_id)
        if gone:
            self.accounts.purge_deleted()
        return gone

    def expire_connection_packages(self, now_ms: int) -> int:
        """Delete connection packages and alias package payloads whose
        lifetime ended (fetching skips them already); returns how many."""
        n = self.accounts.expire_packages(now_ms)
        if n:
            self.accounts.purge_deleted()
        return n

    def expire_pending(self, now_ms: int) -> int:
        """Drop the ephemeral OPAQUE DB entries (pending registrations and
        2FA logins) whose time ran out; they are refused already, this frees
        what they hold. Returns how many."""
        return self.ephemeral.purge(now_ms)

    # --- profiles -----------------------------------------------------------------------------

    def update_user_profile(self, req: m.UpdateUserProfileRequest, now_ms: int) -> None:
        """Overwrite the encrypted profile of the caller's user. Mode: Client Credential."""
        client_id = self._client_auth("update_user_profile", req.auth, req.params, now_ms)
        self.accounts.set_user_profile(client_id.user_id, req.params.new_user_profile)

    def user_profile(self, req: m.UserProfileParams, now_ms: int) -> m.UserProfileResponse:
        """The encrypted profile of ``user_id``. Mode: None."""
        user = self.accounts.get_user(req.user_id)
        if user is None:
            raise NotFound(f"no user {req.user_id}", code="unknown_user")
        return m.UserProfileResponse(user.encrypted_user_profile)

    # --- user id connection packages ---------------------------------------------------

    def upload_connection_packages(self, req: m.UploadUserIdPackagesRequest, now_ms: int) -> None:
        """Store connection packages of the caller (each an encoded
        ConnectionPackage signed with the caller's credential). Mode: Client Credential."""
        client_id = self._client_auth("upload_connection_packages", req.auth, req.params, now_ms)
        self._check_package_count(len(req.params.connection_package_ctxt))
        packages = []
        for raw in req.params.connection_package_ctxt:
            try:
                cp = decode(m.ConnectionPackage, raw)
            except DecodeError as e:
                raise Malformed(f"connection package: {e}", code="bad_connection_package") from None
            packages.append(self._check_connection_package(cp, req.auth.client_credential, now_ms))
        self.accounts.add_connection_packages(client_id, packages)

    def user_connection_package(self, req: m.UserClientsParams, now_ms: int) -> m.UserClientsResponse:
        """One connection package of one of the user's clients. Mode: None."""
        if not self.accounts.user_exists(req.user_id):
            raise NotFound(f"no user {req.user_id}", code="unknown_user")
        raw = self.accounts.take_connection_package(req.user_id, now_ms)
        if raw is None:
            raise NoConnectionPackage(f"user {req.user_id} has no connection package")
        return m.UserClientsResponse(decode(m.ConnectionPackage, raw))

    # --- direct user queues ---------------------------------------------------------------

    def dequeue_messages(self, req: m.DequeueMessagesRequest, now_ms: int) -> DequeueMessagesResponse:
        """``#dequeue-messages`` on the caller's own queue. Mode: Client Credential."""
        client_id = self._client_auth("as_dequeue_messages", req.auth, req.params, now_ms)
        p = req.params
        result = self.queues.dequeue(direct_queue_id(client_id), p.sequence_number_start,
                                     p.max_message_number, now_ms)
        return DequeueMessagesResponse(result.messages, result.remaining)

    def enqueue_message(self, req: m.EnqueueMessageParams, now_ms: int) -> None:
        """Encrypt and enqueue a connection establishment ciphertext for a
        local client. Mode: None."""
        if req.client_id.as_domain != self.domain or self.accounts.get_client(req.client_id) is None:
            raise NotFound(f"no client {req.client_id} on {self.domain}", code="unknown_client")
        self.queues.enqueue(direct_queue_id(req.client_id), req.connection_establishment_ctxt, now_ms)

    # --- aliases ---------------------------------------------------------------------------------

    def register_alias(self, req: m.RegisterAlias, now_ms: int) -> None:
        """Create the alias entry with its auth key and its direct queue;
        409 if the alias is taken. Mode: None."""
        if len(req.alias_auth_key) != ED25519_PUBLIC_KEY_LEN:
            raise Malformed("alias auth key must be a 32-byte Ed25519 public key", code="bad_alias_auth_key")
        queue_key = check_queue_encryption_key(req.queue_encryption_key)
        ratchet_key = check_ratchet_key(req.initial_queue_ratchet_key)
        with self.accounts.transaction():
            self.accounts.create_alias(AliasEntry(req.alias, req.alias_auth_key))
            self._create_queue(direct_queue_id(req.alias), queue_key, ratchet_key, now_ms)

    def delete_alias(self, req: m.DeleteAliasRequest, now_ms: int) -> None:
        """Delete the alias entry, its queue and its package payloads. Mode: Alias auth key."""
        self._alias_auth("delete_alias", req.auth, req.params, req.params.alias, now_ms)
        with self.accounts.transaction():
            self.accounts.delete_alias(req.params.alias)
            self._delete_queue(direct_queue_id(req.params.alias))
        self.accounts.purge_deleted()

    def dequeue_alias_messages(self, req: m.DequeueAliasMessagesRequest, now_ms: int) -> DequeueMessagesResponse:
        """``#dequeue-alias-messages``. Mode: Alias auth key."""
        p = req.params
        self._alias_auth("dequeue_alias_messages", req.auth, p, p.alias, now_ms)
        result = self.queues.dequeue(direct_queue_id(p.alias), p.sequence_number_start,
                                     p.max_message_number, now_ms)
        return DequeueMessagesResponse(result.messages, result.remaining)

    def enqueue_alias_message(self, req: m.EnqueueAliasMessageParams, now_ms: int) -> None:
        """``#enqueue-alias-messages``. Mode: None."""
        if self.accounts.get_alias(req.alias) is None:
            raise NotFound(f"no alias {req.alias}", code="unknown_alias")
        self.queues.enqueue(direct_queue_id(req.alias), req.connection_establishment_ctxt, now_ms)

    def upload_alias_packages(self, req: m.UploadAliasPackagesRequest, now_ms: int) -> None:
        """Store connection package payloads under the alias. Mode: Alias auth key."""
        p = req.params
        self._alias_auth("upload_alias_packages", req.auth, p, p.alias, now_ms)
        self._check_package_count(len(p.connection_package_ctxt))
        payloads = [(encode(pl), self._check_payload(pl, now_ms)) for pl in p.connection_package_ctxt]
        self.accounts.add_alias_packages(p.alias, payloads)

    def alias_connection_package(self, req: m.AliasClientsParams, now_ms: int) -> m.AliasClientsResponse:
        """One connection package payload of the alias. Mode: None."""
        if self.accounts.get_alias(req.alias) is None:
            raise NotFound(f"no alias {req.alias}", code="unknown_alias")
        raw = self.accounts.take_alias_package(req.alias, now_ms)
        if raw is None:
            raise NoConnectionPackage(f"alias {req.alias} has no connection package")
        return m.AliasClientsResponse(decode(m.ConnectionPackagePayload, raw))

    # --- #token-issuance ---------------------------------------------------------------------

    def request_tokens(self, req: m.RequestTokenRequest, now_ms: int, *,
                       remote_trust: TrustStore | None = None) -> m.TokenResponse:
        """Issue Privacy Pass tokens (``#token-issuance``). Mode: Client
        Credential, also for clients of other homeservers; no Privacy Pass.

        A local client must have a client entry with this credential (a
        registration in progress holds no credential). A client of domain D is verified against D's AS
        credentials in ``remote_trust``; without them this raises
        :class:`UnknownSigner` with ``domain = D`` for the caller to fetch
        them and retry. The allowance is charged per client and, for
        federated clients, per domain (``#rate-limiting``): 429 with
        ``retry_after`` when exhausted.

        A local client gets tokens under the local issuer key, a client of
        another homeserver under the federated one; a request naming the
        other set's key is refused with 422 like any key that does not issue
        (docs/decisions.md, A21: only local tokens create groups).
        """
        credential = req.auth.client_credential
        client_id = credential.client_id
        domain = client_id.as_domain
        if domain == self.domain:
            self._client_auth("request_tokens", req.auth, req.params, now_ms)
            keys = self.secrets.token_keys
        else:
            if remote_trust is None or not remote_trust.knows(domain):
                raise UnknownSigner(f"the AS credentials of {domain} are needed", domain=domain)
            self._verify_credential_auth("request_tokens", req.auth, req.params, now_ms, remote_trust)
            keys = self.secrets.federated_token_keys
        key, elements = pp.check_token_request(req.params.token_request, keys,
                                               max_batch=self.issuance.limits.max_batch)
        self.issuance.consume(client_id=client_id, client_domain=domain, n=len(elements), now_ms=now_ms)
        return m.TokenResponse(pp.evaluate(key, elements))
