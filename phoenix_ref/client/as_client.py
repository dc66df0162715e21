"""The client side of the Authentication Service (``spec/authentication_service.md``).

Two layers, like the services:

* sans-IO builders — :class:`Registration` (OPAQUE registration plus CSR,
  ``#initialize-user-registration`` / ``#finish-user-registration``; the
  credential arrives with the finish answer),
  :class:`AsIdentity` (a registered client: signs its requests with mode
  **Client Credential**, makes connection packages, decrypts its direct
  queue), :class:`AliasIdentity` (mode **Alias auth key**) and the
  connection-establishment helpers (:func:`check_connection_package`,
  :func:`open_connection_establishment`);
* :class:`AsClient` — the same requests over HTTPS to ``as.<domain>`` (any
  domain: connection establishment and token issuance cross homeservers,
  ``spec/authentication_service/connection_establishment.md``).

Tests, the demo and the CLI use this module; it is a reference client, not a
product: secrets live in memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from .. import crypto, opaque
from .. import privacy_pass as pp
from ..auth_tokens import AliasAuth, ClientCredentialAuth, RegistrationAuth
from ..codec import encode
from ..errors import Unauthorized
from ..credentials import (
    AsCredentialsResponse, ClientCredential, ClientCredentialCsr, CredentialChain, ExpirationData, TrustStore,
)
from ..ids import Alias, ClientId, Fqdn, GroupId, UserId
from ..paths import endpoint_path
from ..queue_crypto import RATCHET_KEY_LEN, QueueMessage, QueueRatchetState, read_queue_messages
from ..authentication import messages as m
from ..authentication.core import operation, request_binding
from ..endpoints import by_name
from ..federation.client import retry_extensions

__all__ = [
    "Registration", "AsIdentity", "AliasIdentity", "DirectQueueReader", "new_connection_payload",
    "check_connection_package", "open_sealed_establishment", "verify_connection_establishment",
    "open_connection_establishment", "make_connection_establishment",
    "AsClient", "error_from_response", "trust_for",
]

DAY_MS = 24 * 3600 * 1000


@dataclass
class DirectQueueReader:
    """The owner's side of a direct queue: the HPKE key pair and the ratchet
    state mirrored from the AS (``spec/queuing_service/queue_encryption.md``)."""
    keys: crypto.HpkeKeyPair
    state: QueueRatchetState

    @classmethod
    def new(cls) -> "DirectQueueReader":
        return cls(crypto.HpkeKeyPair.generate(), QueueRatchetState(os.urandom(RATCHET_KEY_LEN), 0))

    def read(self, messages: list[QueueMessage]) -> list[bytes]:
        """Decrypt dequeued messages in order; returns the application
        payloads (ratchet updates carry none). Messages already processed
        (a repeated dequeue) are skipped."""
        out, self.state = read_queue_messages(self.keys.private, self.state, messages)
        return out

    @property
    def next_sequence_number(self) -> int:
        return self.state.generation


def new_connection_payload(now_ms: int, lifetime_ms: int = 30 * DAY_MS) -> tuple[m.ConnectionPackagePayload, crypto.HpkeKeyPair]:
    """A fresh ConnectionPackagePayload and the key pair to open what it receives."""
    keys = crypto.HpkeKeyPair.generate()
    return m.ConnectionPackagePayload(keys.public, ExpirationData(now_ms, now_ms + lifetime_ms)), keys


@dataclass
class AsIdentity:
    """A registered client of ``domain``'s AS."""
    domain: Fqdn
    client_id: ClientId
    signing_key: crypto.SigningKey
    credential: ClientCredential
    password: bytes
    queue: DirectQueueReader
    connection_keys: dict[bytes, crypto.HpkeKeyPair] = field(default_factory=dict)

    @property
    def user_id(self) -> UserId:
        return self.client_id.user_id

    def auth(self, name: str, params: Any, now_ms: int, *, audience: Fqdn | None = None) -> ClientCredentialAuth:
        """Mode **Client Credential** for endpoint ``name`` of the AS of
        ``audience`` (default: the client's own AS)."""
        return ClientCredentialAuth.create(self.signing_key, self.credential, now_ms,
                                           request_binding(audience or self.domain, name, params))

    def connection_package(self, now_ms: int, lifetime_ms: int = 30 * DAY_MS) -> m.ConnectionPackage:
        """A signed connection package; its decryption key is kept."""
        payload, keys = new_connection_payload(now_ms, lifetime_ms)
        self.connection_keys[keys.public] = keys
        return m.ConnectionPackage.create(self.signing_key, self.credential, payload)

    # request builders ---------------------------------------------------------------

    def update_profile(self, profile_ctxt: bytes, now_ms: int) -> m.UpdateUserProfileRequest:
        p = m.UpdateUserProfileParams(profile_ctxt)
        return m.UpdateUserProfileRequest(self.auth("update_user_profile", p, now_ms), p)

    def upload_packages(self, n: int, now_ms: int, lifetime_ms: int | None = None) -> m.UploadUserIdPackagesRequest:
        lifetime = {} if lifetime_ms is None else {"lifetime_ms": lifetime_ms}
        p = m.UploadUserIdPackages([encode(self.connection_package(now_ms, **lifetime)) for _ in range(n)])
        return m.UploadUserIdPackagesRequest(self.auth("upload_connection_packages", p, now_ms), p)

    def dequeue(self, now_ms: int, max_messages: int = 100) -> m.DequeueMessagesRequest:
        p = m.DequeueMessagesParams(self.queue.next_sequence_number, max_messages)
        return m.DequeueMessagesRequest(self.auth("as_dequeue_messages", p, now_ms), p)

    def initiate_2fa(self, now_ms: int) -> tuple[bytes, m.Initiate2FaRequest]:
        """Start the OPAQUE login; returns the client state and the request."""
        start = opaque.client_login_start(self.password)
        p = m.Initiate2FaAuthenticationParams(start.message)
        return start.state, m.Initiate2FaRequest(self.auth("initiate_2fa", p, now_ms), p)

    def delete_user(self, login_state: bytes, response: m.Initiate2FaAuthenticationResponse,
                    now_ms: int) -> m.DeleteUserRequest:
        """Finish the OPAQUE login (KE3) and ask for account deletion."""
        fin = opaque.client_login_finish(self.password, login_state, response.opaque_ke2)
        p = m.DeleteUserParams(fin.ke3)
        return m.DeleteUserRequest(self.auth("delete_user", p, now_ms), p)

    def request_tokens(self, issuer_public_key: bytes, issuer_domain: Fqdn, n: int,
                       now_ms: int) -> tuple[pp.IssuanceState, m.RequestTokenRequest]:
        """A token request to the AS of ``issuer_domain`` (own or federated)."""
        state, token_request = pp.begin_issuance(issuer_public_key, pp.homeserver_challenge(issuer_domain), n)
        p = m.RequestToken(token_request)
        return state, m.RequestTokenRequest(self.auth("request_tokens", p, now_ms, audience=issuer_domain), p)

    def make_connection_establishment(self, package_key: bytes, group_id: GroupId, ear_key: bytes,
                                      credential_key: bytes) -> bytes:
        """Sign and seal a ConnectionEstablishmentPackage to ``package_key``
        (the responder's connection encryption key)."""
        return make_connection_establishment(self.signing_key, self.credential, package_key, group_id,
                                             ear_key, credential_key)

    def open_connection_establishment(self, ctxt: bytes, trust: TrustStore,
                                      now_ms: int) -> m.ConnectionEstablishmentPackage:
        return open_connection_establishment(self.connection_keys.values(), ctxt, trust, now_ms)


@dataclass
class Registration:
    """A registration in progress (``#initialize-user-registration``). It
    holds no credential: the AS hands that out in the finish answer
    (docs/decisions.md, "Client credentials are released at finish")."""
    domain: Fqdn
    client_id: ClientId
    signing_key: crypto.SigningKey
    password: bytes
    opaque_state: bytes
    queue: DirectQueueReader = field(default_factory=DirectQueueReader.new)

    @classmethod
    def start(cls, domain: Fqdn | str, password: bytes, intermediate_fingerprint: bytes, now_ms: int, *,
              user_id: UserId | None = None, validity_ms: int = 365 * DAY_MS) -> tuple["Registration", m.InitUserRegistrationParams]:
        """Pick a user id (random unless given), self-sign a CSR naming the
        AS intermediate credential ``intermediate_fingerprint`` and start
        OPAQUE registration."""
        domain = domain if isinstance(domain, Fqdn) else Fqdn(domain)
        uid = user_id or UserId.random(domain)
        client_id = ClientId.random(uid)
        key = crypto.SigningKey.generate()
        csr = ClientCredentialCsr.create(client_id, key, intermediate_fingerprint, now_ms, now_ms + validity_ms)
        start = opaque.client_registration_start(password)
        return cls(domain, client_id, key, password, start.state), m.InitUserRegistrationParams(csr, start.message)

    def finish(self, response: m.InitUserRegistrationResponse, now_ms: int) -> m.FinishUserRegistrationRequest:
        """Finish OPAQUE registration and offer the direct queue keys; the
        request is signed with the CSR's key (:class:`RegistrationAuth`)."""
        fin = opaque.client_registration_finish(self.password, self.opaque_state,
                                                response.opaque_registration_response)
        p = m.FinishUserRegistrationParams(self.queue.keys.public, self.queue.state.ratchet_key, fin.record)
        auth = RegistrationAuth.create(self.signing_key, self.client_id, now_ms,
                                       request_binding(self.domain, "finish_user_registration", p))
        return m.FinishUserRegistrationRequest(auth, p)

    def identity(self, response: m.FinishUserRegistrationResponse) -> AsIdentity:
        """The registered client, once the AS released its credential."""
        credential = response.client_credential
        if credential.client_id != self.client_id or credential.public_key != self.signing_key.public:
            raise ValueError("the AS signed a credential for another client or key")
        return AsIdentity(self.domain, self.client_id, self.signing_key, credential, self.password, self.queue)


@dataclass
class AliasIdentity:
    """The holder of an alias (``spec/glossary.md#alias-auth-key``)."""
    domain: Fqdn
    alias: Alias
    auth_key: crypto.SigningKey
    queue: DirectQueueReader
    connection_keys: dict[bytes, crypto.HpkeKeyPair] = field(default_factory=dict)

    @classmethod
    def new(cls, domain: Fqdn | str, alias: Alias | str) -> tuple["AliasIdentity", m.RegisterAlias]:
        domain = domain if isinstance(domain, Fqdn) else Fqdn(domain)
        alias = alias if isinstance(alias, Alias) else Alias(alias)
        ident = cls(domain, alias, crypto.SigningKey.generate(), DirectQueueReader.new())
        req = m.RegisterAlias(alias, ident.auth_key.public, ident.queue.keys.public, ident.queue.state.ratchet_key)
        return ident, req

    def auth(self, name: str, params: Any, now_ms: int) -> AliasAuth:
        return AliasAuth.create(self.auth_key, self.alias, now_ms, request_binding(self.domain, name, params))

    def upload_packages(self, n: int, now_ms: int) -> m.UploadAliasPackagesRequest:
        payloads = []
        for _ in range(n):
            payload, keys = new_connection_payload(now_ms)
            self.connection_keys[keys.public] = keys
            payloads.append(payload)
        p = m.UploadAliasPackages(self.alias, payloads)
        return m.UploadAliasPackagesRequest(self.auth("upload_alias_packages", p, now_ms), p)

    def dequeue(self, now_ms: int, max_messages: int = 100) -> m.DequeueAliasMessagesRequest:
        p = m.DequeueAliasMessagesParams(self.alias, self.queue.next_sequence_number, max_messages)
        return m.DequeueAliasMessagesRequest(self.auth("dequeue_alias_messages", p, now_ms), p)

    def delete(self, now_ms: int) -> m.DeleteAliasRequest:
        p = m.DeleteAlias(self.alias)
        return m.DeleteAliasRequest(self.auth("delete_alias", p, now_ms), p)

    def open_connection_establishment(self, ctxt: bytes, trust: TrustStore,
                                      now_ms: int) -> m.ConnectionEstablishmentPackage:
        return open_connection_establishment(self.connection_keys.values(), ctxt, trust, now_ms)


# --- connection establishment (connection_establishment.md#connection-group-creation) ---------

def check_connection_package(package: m.ConnectionPackage, expected_user: UserId, trust: TrustStore,
                             now_ms: int) -> CredentialChain:
    """The initiator's checks on a fetched ConnectionPackage: it belongs to
    the user asked for, its credential chains to that user's AS credentials
    (``trust`` must hold them, fetched over TLS), it is signed by that
    credential and still valid. Raises a ProtocolError subclass."""
    if package.client_credential.client_id.user_id != expected_user:
        raise Unauthorized(f"connection package of {package.client_credential.client_id}, "
                           f"not of {expected_user}", code="connection_package_wrong_user")
    chain = trust.verify_client_credential(package.client_credential, now_ms)
    package.verify_signature()
    if not package.payload.lifetime.is_valid_at(now_ms):
        raise Unauthorized("connection package is not valid now", code="connection_package_expired")
    return chain


def make_connection_establishment(key: crypto.SigningKey, credential: ClientCredential, package_key: bytes,
                                  group_id: GroupId, ear_key: bytes, credential_key: bytes) -> bytes:
    cep = m.ConnectionEstablishmentPackage.create(key, credential, group_id, ear_key, credential_key)
    return cep.seal(package_key)


def open_sealed_establishment(keys: Any, ctxt: bytes) -> m.ConnectionEstablishmentPackage:
    """Decrypt ``ctxt`` with the first of the connection key pairs ``keys``
    that opens it; nothing verified yet. Raises BadConnectionEstablishmentPackage."""
    last: Exception | None = None
    for kp in keys:
        try:
            return m.ConnectionEstablishmentPackage.open(kp.private, ctxt)
        except m.BadConnectionEstablishmentPackage as e:
            last = e
    raise last or m.BadConnectionEstablishmentPackage("no connection key to open it with")


def verify_connection_establishment(cep: m.ConnectionEstablishmentPackage, trust: TrustStore,
                                    now_ms: int) -> CredentialChain:
    """The signature and the sender's credential chain (``trust`` must hold
    the sender's AS credentials). Raises a ProtocolError subclass."""
    cep.verify_signature()
    return trust.verify_client_credential(cep.sender_client_credential, now_ms)


def open_connection_establishment(keys: Any, ctxt: bytes, trust: TrustStore,
                                  now_ms: int) -> m.ConnectionEstablishmentPackage:
    """The responder's side: :func:`open_sealed_establishment`, then
    :func:`verify_connection_establishment`. Raises a ProtocolError subclass."""
    cep = open_sealed_establishment(keys, ctxt)
    verify_connection_establishment(cep, trust, now_ms)
    return cep


def trust_for(answers: dict[Fqdn, AsCredentialsResponse]) -> TrustStore:
    """A TrustStore over *Get AS credentials* answers fetched over TLS."""
    return TrustStore.of(answers)


# --- over HTTPS ---------------------------------------------------------------------------------

class AsClient:
    """AS requests over HTTPS (GUIDE §2: ``POST https://as.<domain>/phoenix/v1/<name>``,
    body and answer ``application/phoenix``).

    ``http`` is an ``httpx.AsyncClient`` whose TLS verification the caller set
    up (a test deployment's CA, or the system store); ``base_url(domain)``
    gives ``https://as.<domain>[:port]`` (default: the subdomain rule on port
    443). The caller owns ``http``. Refusals come back as the
    :class:`~phoenix_ref.errors.ProtocolError` subclass of their status, with
    the server's code and ``retry_after``.
    """

    def __init__(self, http: Any, base_url: Any = None):
        self.http = http
        self.base_url = base_url or (lambda domain: f"https://as.{domain}")

    async def call(self, domain: Fqdn | str, name: str, request: Any, *,
                   privacy_pass: pp.Token | None = None) -> Any:
        """POST ``request`` to endpoint ``name`` of ``domain``'s AS and decode
        the answer (``None`` for endpoints without response struct)."""
        from ..codec import decode
        op = operation(name)
        headers = {"Content-Type": MEDIA_TYPE}
        if privacy_pass is not None:
            headers["Authorization"] = pp.authorization_header(privacy_pass)
        resp = await self.http.post(f"{self.base_url(domain)}{op.path}", content=encode(request), headers=headers,
                                    extensions=retry_extensions(by_name("as", name)))
        if resp.status_code != 200:
            raise error_from_response(resp.status_code, resp.content, resp.headers.get("Retry-After"))
        return decode(op.response, resp.content) if op.response is not None else None

    async def as_credentials(self, domain: Fqdn | str) -> AsCredentialsResponse:
        """*Get AS credentials* of ``domain`` (key distribution, over TLS)."""
        from ..codec import decode
        resp = await self.http.get(f"{self.base_url(domain)}{endpoint_path('as_credentials')}")
        if resp.status_code != 200:
            raise error_from_response(resp.status_code, resp.content, resp.headers.get("Retry-After"))
        return decode(AsCredentialsResponse, resp.content)

    async def trust(self, *domains: Fqdn | str) -> TrustStore:
        """A TrustStore over the AS credentials of ``domains``, fetched now."""
        return TrustStore.of({Fqdn(str(d)): await self.as_credentials(d) for d in domains})


MEDIA_TYPE = "application/phoenix"


def error_from_response(status: int, body: bytes, retry_after: str | None = None) -> Exception:
    """Rebuild the refusal of a Phoenix endpoint as the matching ProtocolError."""
    from .. import errors
    from ..codec import DecodeError, decode
    try:
        err = decode(errors.ErrorResponse, body)
        code, message = err.code, err.message
    except DecodeError:
        code, message = "unknown", body[:200].decode("utf-8", "replace")
    classes = {400: errors.Malformed, 401: errors.Unauthorized, 403: errors.Forbidden, 404: errors.NotFound,
               409: errors.Conflict, 413: errors.TooLarge, 502: errors.UpstreamError}
    if status == 429:
        return errors.RateLimited(message, code=code, retry_after=int(retry_after or 1))
    cls = classes.get(status)
    if cls is None:
        e = errors.ProtocolError(message, code=code)
        e.status = status
        return e
    return cls(message, code=code)
