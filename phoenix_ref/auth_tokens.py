"""Client authentication structs of the three services.

=========================  =====================================================  ============================
Struct                     Spec                                                   Verified with
=========================  =====================================================  ============================
``QsAuthToken``            ``spec/queuing_service.md#authentication``             QS user / client record
                                                                                  auth key (by ``sender_id``)
``DsAuthToken``            ``spec/delivery_service.md#authentication``            the leaf's or KeyPackage's
                                                                                  signature key
``ClientCredentialAuth``   ``spec/authentication_service.md#authentication``      the client credential's key,
                           (mode **Client Credential**)                           credential checked against
                                                                                  a :class:`TrustStore`
``AliasAuth``              ``spec/authentication_service.md#authentication``      the alias auth key
                           (mode **Alias auth key**)
``RegistrationAuth``       ``spec/authentication_service.md#finish-user-          the key of the pending
                           registration`` (the Client Credential part of          registration's CSR
                           **Client 2FA** before the credential is released)
=========================  =====================================================  ============================

Each token travels in the request body (the ``…Request`` structs put it
before the params) and carries a homeserver signature (``crypto.hs_sign``)
whose label is the name of its to-be-signed struct: ``"QsAuthTokenTbs"``,
``"DsAuthTokenTbs"``, ``"ClientCredentialAuthTbs"``, ``"AliasAuthTbs"``,
``"RegistrationAuthTbs"``.

**Binding to the request** (docs/decisions.md). The spec signs only the
sender and a timestamp. Such a token, seen once (in a log, by a
TLS-terminating proxy, or by the federated AS a client authenticates to
for Privacy Pass tokens), could be replayed for the rest of its lifetime
against *any* endpoint with the same sender — e.g. a "get own QS user
record" token turned into "delete QS user record", whose params
(``{qs_uid}``) even encode identically. So every TBS here is the spec's TBS
followed by a :class:`RequestBinding`:

* ``audience`` — the domain of the homeserver the request is addressed to,
* ``operation`` — the endpoint (by convention its path in
  :mod:`phoenix_ref.endpoints`, e.g. ``"/phoenix/v1/qs/dequeue_messages"``),
* ``request_hash`` — SHA-256 of the encoded params (the body without the
  token).

The binding is not transmitted: the server rebuilds it from the request it
received, so the wire structs stay exactly as the spec defines them.

**Freshness.** A token is accepted if ``now - max_age <= timestamp <= now +
MAX_FUTURE_SKEW_MS``. ``max_age`` defaults to one hour, the spec's default
"Maximal DSAuthToken age" (``spec/delivery_service.md#ds-configuration-options``),
also used for the QS and AS, whose chapters give none. The future skew is
five minutes, the usual tolerance for unsynchronised client clocks
(Kerberos uses the same).

Failures raise :class:`AuthTokenError` subclasses (401); a valid token
for another sender or group than the request names raises
:class:`ScopeMismatch` (403).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import crypto
from .codec import U8, U32, U64, String, VarBytes, struct, variant
from .credentials import ClientCredential, CredentialChain, TrustStore
from .errors import Forbidden, Unauthorized
from .ids import Alias, ClientId, Fqdn, GroupId, QsCid, QsUid

__all__ = [
    "MAX_FUTURE_SKEW_MS", "DEFAULT_MAX_AGE_MS", "RequestBinding", "check_fresh",
    "QsSenderId", "QsAuthTokenTbs", "QsAuthToken", "verify_qs_auth_token",
    "DsLeafIndex", "DsKeyPackageRef", "DsSenderId", "DsAuthTokenTbs", "DsAuthToken",
    "ClientCredentialAuthTbs", "ClientCredentialAuth", "AliasAuthTbs", "AliasAuth",
    "RegistrationAuthTbs", "RegistrationAuth",
    "AuthTokenError", "TokenExpired", "TokenFromFuture", "TokenBadSignature", "ScopeMismatch",
]

MAX_FUTURE_SKEW_MS = 5 * 60 * 1000
DEFAULT_MAX_AGE_MS = 60 * 60 * 1000


# --- errors ---------------------------------------------------------------------------

class AuthTokenError(Unauthorized):
    """An authentication token is not acceptable (401)."""
    code = "auth_token_invalid"


class TokenExpired(AuthTokenError):
    code = "auth_token_expired"


class TokenFromFuture(AuthTokenError):
    code = "auth_token_from_future"


class TokenBadSignature(AuthTokenError):
    """The signature does not verify — wrong key, tampered token, or a token
    made for another audience, operation or request body."""
    code = "auth_token_bad_signature"


class ScopeMismatch(Forbidden):
    """A valid token whose sender or group is not the one the request acts on (403)."""
    code = "auth_scope_mismatch"


# --- shared pieces ----------------------------------------------------------------------

@dataclass(frozen=True)
class RequestBinding:
    """What a token authorises: one request to one homeserver (see module docstring)."""
    audience: Fqdn
    operation: str
    request: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.audience, Fqdn):
            object.__setattr__(self, "audience", Fqdn(self.audience))
        if not isinstance(self.operation, str) or not isinstance(self.request, (bytes, bytearray)):
            raise TypeError("RequestBinding needs an operation string and request bytes")

    def request_hash(self) -> bytes:
        return crypto.hash_(self.request)


def check_fresh(timestamp: int, now_ms: int, max_age_ms: int = DEFAULT_MAX_AGE_MS,
                what: str = "token", max_skew_ms: int = MAX_FUTURE_SKEW_MS) -> None:
    """Raise TokenFromFuture / TokenExpired unless
    ``now_ms - max_age_ms <= timestamp <= now_ms + max_skew_ms``."""
    if timestamp > now_ms + max_skew_ms:
        raise TokenFromFuture(
            f"{what} timestamp {timestamp} is more than {max_skew_ms} ms ahead of now ({now_ms})")
    if now_ms - timestamp > max_age_ms:
        raise TokenExpired(f"{what} is {now_ms - timestamp} ms old, more than the maximum {max_age_ms} ms")


_sign = crypto.hs_sign_struct


def _verify(public_key: bytes, tbs: object, signature: bytes, what: str) -> None:
    try:
        crypto.hs_verify_struct(public_key, tbs, signature)
    except crypto.CryptoError:
        raise TokenBadSignature(
            f"{what} signature does not verify (wrong key, or made for another request)") from None


# --- QS (spec/queuing_service.md#authentication) -------------------------------------------

QsSenderId = variant(U8, {1: QsUid, 2: QsCid}, "QsSenderId")


@struct
class QsAuthTokenTbs:
    """The spec's TBS (sender_id, timestamp) followed by the request binding."""
    sender_id: QsSenderId
    timestamp: U64
    audience: Fqdn
    operation: String
    request_hash: VarBytes


@struct
class QsAuthToken:
    """``spec/queuing_service.md#authentication``. ``sender_id`` is a
    :class:`QsUid` (verified with the QS user record auth key) or a
    :class:`QsCid` (the QS client record auth key)."""
    sender_id: QsSenderId
    timestamp: U64
    signature: VarBytes

    @staticmethod
    def _tbs(sender_id: QsUid | QsCid, timestamp: int, binding: RequestBinding) -> QsAuthTokenTbs:
        return QsAuthTokenTbs(sender_id, timestamp, binding.audience, binding.operation, binding.request_hash())

    @classmethod
    def create(cls, key: crypto.SigningKey, sender_id: QsUid | QsCid, timestamp: int,
               binding: RequestBinding) -> "QsAuthToken":
        return cls(sender_id, timestamp, _sign(key, cls._tbs(sender_id, timestamp, binding)))

    def verify(self, public_key: bytes, now_ms: int, binding: RequestBinding, *,
               max_age_ms: int = DEFAULT_MAX_AGE_MS,
               max_skew_ms: int = MAX_FUTURE_SKEW_MS) -> None:
        """Check freshness, then the signature under the record's auth key."""
        check_fresh(self.timestamp, now_ms, max_age_ms, "QsAuthToken", max_skew_ms)
        _verify(public_key, self._tbs(self.sender_id, self.timestamp, binding), self.signature, "QsAuthToken")

    def check_sender(self, expected: QsUid | QsCid) -> None:
        """The endpoint's rule for ``sender_id`` (e.g. *Update QS user record*:
        QsSenderId QsUid, the record named in the params)."""
        if self.sender_id != expected:
            raise ScopeMismatch(f"token authenticates {type(self.sender_id).__name__} {self.sender_id}, "
                                f"the request is for {type(expected).__name__} {expected}")


def verify_qs_auth_token(token: QsAuthToken, public_key: bytes, now_ms: int, max_age_ms: int,
                         binding: RequestBinding, *, max_skew_ms: int = MAX_FUTURE_SKEW_MS) -> None:
    """Function form of :meth:`QsAuthToken.verify` for cores that look the key up first."""
    token.verify(public_key, now_ms, binding, max_age_ms=max_age_ms, max_skew_ms=max_skew_ms)


# --- DS (spec/delivery_service.md#authentication) --------------------------------------------

@struct
class DsLeafIndex:
    """``DsSenderId::LeafIndex``: the sender's leaf in the group's tree."""
    leaf_index: U32


@struct
class DsKeyPackageRef:
    """``DsSenderId::KeyPackageRef``: a KeyPackage added to the group (RFC 9420 §5.2)."""
    key_package_ref: VarBytes


DsSenderId = variant(U8, {1: DsLeafIndex, 2: DsKeyPackageRef}, "DsSenderId")


@struct
class DsAuthTokenTbs:
    """The spec's TBS (group_id, timestamp, sender_id) followed by the request binding."""
    group_id: GroupId
    timestamp: U64
    sender_id: DsSenderId
    audience: Fqdn
    operation: String
    request_hash: VarBytes


@struct
class DsAuthToken:
    """``spec/delivery_service.md#authentication``."""
    group_id: GroupId
    timestamp: U64
    sender_id: DsSenderId
    signature: VarBytes

    @staticmethod
    def _tbs(group_id: GroupId, timestamp: int, sender_id: DsLeafIndex | DsKeyPackageRef,
             binding: RequestBinding) -> DsAuthTokenTbs:
        return DsAuthTokenTbs(group_id, timestamp, sender_id, binding.audience, binding.operation,
                              binding.request_hash())

    @classmethod
    def create(cls, key: crypto.SigningKey, group_id: GroupId, timestamp: int,
               sender_id: DsLeafIndex | DsKeyPackageRef, binding: RequestBinding) -> "DsAuthToken":
        tbs = cls._tbs(group_id, timestamp, sender_id, binding)
        return cls(group_id, timestamp, sender_id, _sign(key, tbs))

    def verify(self, public_key: bytes, now_ms: int, binding: RequestBinding, *,
               max_age_ms: int = DEFAULT_MAX_AGE_MS,
               max_skew_ms: int = MAX_FUTURE_SKEW_MS) -> None:
        """Check freshness, then the signature under the key the DS found for
        ``sender_id`` (the leaf's, or the referenced KeyPackage's)."""
        check_fresh(self.timestamp, now_ms, max_age_ms, "DsAuthToken", max_skew_ms)
        tbs = self._tbs(self.group_id, self.timestamp, self.sender_id, binding)
        _verify(public_key, tbs, self.signature, "DsAuthToken")

    def check_group(self, group_id: GroupId) -> None:
        if self.group_id != group_id:
            raise ScopeMismatch(f"token is for group {self.group_id}, the request is for {group_id}")

    def check_sender_kind(self, kind: type) -> None:
        """The endpoint's rule for the sender kind (LeafIndex or KeyPackageRef)."""
        if not isinstance(self.sender_id, kind):
            raise ScopeMismatch(f"this endpoint needs a {kind.__name__} sender, "
                                f"the token has {type(self.sender_id).__name__}")


# --- AS (spec/authentication_service.md#authentication) -------------------------------------

@struct
class ClientCredentialAuthTbs:
    """The signed timestamp of mode **Client Credential**, naming the
    credential by fingerprint, followed by the request binding."""
    credential_fingerprint: VarBytes
    timestamp: U64
    audience: Fqdn
    operation: String
    request_hash: VarBytes


@struct
class ClientCredentialAuth:
    """Mode **Client Credential**: "a signature over a time stamp using the
    signature key in the calling client's ClientCredential", with the credential."""
    client_credential: ClientCredential
    timestamp: U64
    signature: VarBytes

    @staticmethod
    def _tbs(cred: ClientCredential, timestamp: int, binding: RequestBinding) -> ClientCredentialAuthTbs:
        return ClientCredentialAuthTbs(cred.fingerprint(), timestamp, binding.audience, binding.operation,
                                       binding.request_hash())

    @classmethod
    def create(cls, key: crypto.SigningKey, credential: ClientCredential, timestamp: int,
               binding: RequestBinding) -> "ClientCredentialAuth":
        return cls(credential, timestamp, _sign(key, cls._tbs(credential, timestamp, binding)))

    def verify(self, trust: TrustStore, now_ms: int, binding: RequestBinding, *,
               max_age_ms: int = DEFAULT_MAX_AGE_MS,
               max_skew_ms: int = MAX_FUTURE_SKEW_MS) -> CredentialChain:
        """Check freshness, the credential chain (raises a CredentialError,
        also 401; UnknownSigner tells a federated AS whose credentials to
        fetch), then the signature. Returns the verified chain; the caller
        reads the client id from ``chain.client.client_id``."""
        check_fresh(self.timestamp, now_ms, max_age_ms, "client credential authentication", max_skew_ms)
        chain = trust.verify_client_credential(self.client_credential, now_ms)
        _verify(self.client_credential.public_key, self._tbs(self.client_credential, self.timestamp, binding),
                self.signature, "client credential authentication")
        return chain


@struct
class RegistrationAuthTbs:
    """The signed timestamp of a registration's finish, naming the client."""
    client_id: ClientId
    timestamp: U64
    audience: Fqdn
    operation: String
    request_hash: VarBytes


@struct
class RegistrationAuth:
    """The Client Credential part of **Client 2FA** for *finish user
    registration*: the AS hands the client credential out only when the
    registration finishes (docs/decisions.md, "Client credentials are
    released at finish"), so the client signs with the key of its CSR and
    names its client id; the AS verifies with the key of the credential
    waiting in the ephemeral OPAQUE DB."""
    client_id: ClientId
    timestamp: U64
    signature: VarBytes

    @staticmethod
    def _tbs(client_id: ClientId, timestamp: int, binding: RequestBinding) -> RegistrationAuthTbs:
        return RegistrationAuthTbs(client_id, timestamp, binding.audience, binding.operation,
                                   binding.request_hash())

    @classmethod
    def create(cls, key: crypto.SigningKey, client_id: ClientId, timestamp: int,
               binding: RequestBinding) -> "RegistrationAuth":
        return cls(client_id, timestamp, _sign(key, cls._tbs(client_id, timestamp, binding)))

    def verify(self, public_key: bytes, now_ms: int, binding: RequestBinding, *,
               max_age_ms: int = DEFAULT_MAX_AGE_MS, max_skew_ms: int = MAX_FUTURE_SKEW_MS) -> None:
        """Check freshness, then the signature under the pending credential's key."""
        check_fresh(self.timestamp, now_ms, max_age_ms, "registration authentication", max_skew_ms)
        _verify(public_key, self._tbs(self.client_id, self.timestamp, binding), self.signature,
                "registration authentication")


@struct
class AliasAuthTbs:
    alias: Alias
    timestamp: U64
    audience: Fqdn
    operation: String
    request_hash: VarBytes


@struct
class AliasAuth:
    """Mode **Alias auth key**: "a signature over a time stamp using the alias
    auth key", with the alias."""
    alias: Alias
    timestamp: U64
    signature: VarBytes

    @staticmethod
    def _tbs(alias: Alias, timestamp: int, binding: RequestBinding) -> AliasAuthTbs:
        return AliasAuthTbs(alias, timestamp, binding.audience, binding.operation, binding.request_hash())

    @classmethod
    def create(cls, key: crypto.SigningKey, alias: Alias, timestamp: int,
               binding: RequestBinding) -> "AliasAuth":
        return cls(alias, timestamp, _sign(key, cls._tbs(alias, timestamp, binding)))

    def verify(self, alias_auth_key: bytes, now_ms: int, binding: RequestBinding, *,
               max_age_ms: int = DEFAULT_MAX_AGE_MS,
               max_skew_ms: int = MAX_FUTURE_SKEW_MS) -> None:
        """Check freshness, then the signature under the alias entry's auth key."""
        check_fresh(self.timestamp, now_ms, max_age_ms, "alias authentication", max_skew_ms)
        _verify(alias_auth_key, self._tbs(self.alias, self.timestamp, binding), self.signature,
                "alias authentication")

    def check_alias(self, alias: Alias) -> None:
        if self.alias != alias:
            raise ScopeMismatch(f"token authenticates alias {self.alias}, the request is for {alias}")
