"""Wire structs of the Authentication Service (``spec/authentication_service.md``)
and of connection establishment (``spec/authentication_service/connection_establishment.md``).

Struct and field names are the spec's. Type mapping (docs/decisions.md):

* OPAQUE messages (``OpaqueKe1`` … ``OpaqueRegistrationRecord``) are the
  byte strings ``opaque-ke`` produces, carried as ``opaque<V>``
  (:mod:`phoenix_ref.opaque`).
* ``HpkePublicKey`` and ``ConnectionEncryptionKey`` are X25519 public keys,
  ``RatchetKey`` is Nh = 32 bytes (``phoenix_ref/queue_crypto.py``),
  ``AliasAuthkey`` an Ed25519 public key; all ``opaque<V>``, checked by the
  core. ``GroupStateEarKey`` and ``CredentialEarKey`` are ``opaque<V>``
  symmetric keys.
* ``TokenRequest`` is the batched Privacy Pass request of
  :mod:`phoenix_ref.privacy_pass` (type 0x0005). The spec's
  ``tokens: Vec<Token>`` is, in amortized batch issuance, one
  ``AmortizedBatchTokenResponse`` (one evaluated element per requested
  token and one proof for all); the client finalizes the tokens from it.
* The spec's params structs are the *parameters* of a request; the request
  body of an endpoint whose authentication is not **None** is an
  ``…Request`` struct that puts the authentication first and the params
  second (see :mod:`phoenix_ref.auth_tokens` for the authentication structs).
* Registration (docs/decisions.md, "Client credentials are released at
  finish"): the client credential is handed out by *finish user
  registration* (``FinishUserRegistrationResponse``), not by *init user
  registration*, whose answer is the OPAQUE response alone; the finish is
  authenticated with :class:`~phoenix_ref.auth_tokens.RegistrationAuth`,
  and the first connection packages are uploaded after it, once the client
  holds the credential they carry.
* The spec gives no response struct for several endpoints; they answer with
  an empty body, except the dequeue endpoints, which answer with
  :class:`~phoenix_ref.queues.DequeueMessagesResponse`.

Connection establishment signatures are homeserver signatures
(``crypto.hs_sign``) labelled with the name of the signed struct:
``ConnectionPackageTbs`` and ``ConnectionEstablishmentPackageTbs``. A
``ConnectionEstablishmentPackage`` travels HPKE-sealed to the connection
encryption key of the package it answers (label
``"Phoenix Homeserver Protocol 1.0 ConnectionEstablishmentPackage"``):
``connection_establishment_ctxt`` is the encoded ``HPKECiphertext``.
"""

from __future__ import annotations

from .. import crypto
from ..auth_tokens import AliasAuth, ClientCredentialAuth, RegistrationAuth
from ..codec import U64, DecodeError, VarBytes, decode, encode, struct, vec
from ..credentials import ClientCredential, ClientCsr, ExpirationData, verify_signature
from ..crypto import HOMESERVER_PREFIX, EncryptContext, HPKECiphertext
from ..errors import Malformed, Unauthorized
from ..ids import Alias, ClientId, GroupId, UserId
from ..privacy_pass import AmortizedBatchTokenRequest, AmortizedBatchTokenResponse

__all__ = [
    # connection establishment
    "ConnectionPackagePayload", "ConnectionPackageTbs", "ConnectionPackage",
    "ConnectionEstablishmentPackageTbs", "ConnectionEstablishmentPackage", "CEP_HPKE_INFO",
    "BadConnectionSignature", "BadConnectionEstablishmentPackage",
    # endpoint params and responses
    "Initiate2FaAuthenticationParams", "Initiate2FaAuthenticationResponse",
    "InitUserRegistrationParams", "InitUserRegistrationResponse",
    "FinishUserRegistrationParams", "FinishUserRegistrationResponse", "UpdateUserProfileParams", "UserProfileParams",
    "UserProfileResponse", "UploadUserIdPackages", "UserClientsParams", "UserClientsResponse",
    "DeleteUserParams", "DequeueMessagesParams", "EnqueueMessageParams", "RegisterAlias",
    "DeleteAlias", "DequeueAliasMessagesParams", "EnqueueAliasMessageParams",
    "UploadAliasPackages", "AliasClientsParams", "AliasClientsResponse", "RequestToken",
    "TokenResponse",
    # request bodies of authenticated endpoints
    "Initiate2FaRequest", "FinishUserRegistrationRequest", "UpdateUserProfileRequest",
    "UploadUserIdPackagesRequest", "DeleteUserRequest", "DequeueMessagesRequest",
    "DeleteAliasRequest", "DequeueAliasMessagesRequest", "UploadAliasPackagesRequest",
    "RequestTokenRequest",
]


# --- connection establishment (connection_establishment.md#connection-group-creation) --

@struct
class ConnectionPackagePayload:
    """What a client publishes so that others can reach it; under an alias
    it is published alone, without credential or signature."""
    encryption_key: VarBytes          # ConnectionEncryptionKey (X25519)
    lifetime: ExpirationData


@struct
class ConnectionPackageTbs:
    """The part of a ConnectionPackage its client credential signs."""
    payload: ConnectionPackagePayload
    client_credential: ClientCredential


class BadConnectionSignature(Unauthorized):
    """A connection (establishment) package whose signature does not verify
    under the client credential it carries."""
    code = "connection_package_bad_signature"


class BadConnectionEstablishmentPackage(Malformed):
    """A ``connection_establishment_ctxt`` that does not open or decode."""
    code = "bad_connection_establishment_package"


_sign = crypto.hs_sign_struct


def _verify(public_key: bytes, tbs: object, signature: bytes, what: str) -> None:
    verify_signature(public_key, tbs, signature, f"{what}: the signature under its client credential",
                     BadConnectionSignature)


@struct
class ConnectionPackage:
    payload: ConnectionPackagePayload
    client_credential: ClientCredential
    signature: VarBytes

    def tbs(self) -> ConnectionPackageTbs:
        return ConnectionPackageTbs(self.payload, self.client_credential)

    @classmethod
    def create(cls, key: crypto.SigningKey, credential: ClientCredential,
               payload: ConnectionPackagePayload) -> "ConnectionPackage":
        """Sign ``payload`` with the client credential's key ``key``."""
        return cls(payload, credential, _sign(key, ConnectionPackageTbs(payload, credential)))

    def verify_signature(self) -> None:
        """The signature by the included credential (the credential's own
        chain is checked separately against a TrustStore)."""
        _verify(self.client_credential.public_key, self.tbs(), self.signature, "connection package")


@struct
class ConnectionEstablishmentPackageTbs:
    """The part of a ConnectionEstablishmentPackage the sender signs."""
    sender_client_credential: ClientCredential
    connection_group_id: GroupId
    connection_group_ear_key: VarBytes         # GroupStateEarKey
    connection_group_credential_key: VarBytes  # CredentialEarKey


@struct
class ConnectionEstablishmentPackage:
    sender_client_credential: ClientCredential
    connection_group_id: GroupId
    connection_group_ear_key: VarBytes
    connection_group_credential_key: VarBytes
    signature: VarBytes

    def tbs(self) -> ConnectionEstablishmentPackageTbs:
        return ConnectionEstablishmentPackageTbs(
            self.sender_client_credential, self.connection_group_id,
            self.connection_group_ear_key, self.connection_group_credential_key)

    @classmethod
    def create(cls, key: crypto.SigningKey, credential: ClientCredential, group_id: GroupId,
               ear_key: bytes, credential_key: bytes) -> "ConnectionEstablishmentPackage":
        tbs = ConnectionEstablishmentPackageTbs(credential, group_id, ear_key, credential_key)
        return cls(credential, group_id, ear_key, credential_key, _sign(key, tbs))

    def verify_signature(self) -> None:
        _verify(self.sender_client_credential.public_key, self.tbs(), self.signature,
                "connection establishment package")

    def seal(self, connection_encryption_key: bytes) -> bytes:
        """Encrypt to the responder's ConnectionEncryptionKey; the result is
        the ``connection_establishment_ctxt`` of the enqueue endpoints."""
        enc, ct = crypto.hpke_seal(connection_encryption_key, CEP_HPKE_INFO, b"", encode(self))
        return encode(HPKECiphertext(enc, ct))

    @classmethod
    def open(cls, connection_decryption_key: bytes, ctxt: bytes) -> "ConnectionEstablishmentPackage":
        """Decrypt and decode a ``connection_establishment_ctxt``; raises
        :class:`BadConnectionEstablishmentPackage`. The caller then checks
        the signature and the sender's credential chain."""
        try:
            sealed = decode(HPKECiphertext, ctxt)
            plain = crypto.hpke_open(connection_decryption_key, sealed.kem_output, CEP_HPKE_INFO, b"",
                                     sealed.ciphertext)
            return decode(cls, plain)
        except (DecodeError, crypto.CryptoError) as e:
            raise BadConnectionEstablishmentPackage(f"connection establishment package: {e}") from None


#: HPKE ``info`` for sealing a ConnectionEstablishmentPackage (EncryptWithLabel
#: shape, RFC 9420 §5.1.3, with the homeserver prefix and an empty context).
CEP_HPKE_INFO = encode(EncryptContext(HOMESERVER_PREFIX + b"ConnectionEstablishmentPackage", b""))


# --- #initiate-2fa-operation ------------------------------------------------------

@struct
class Initiate2FaAuthenticationParams:
    opaque_ke1: VarBytes


@struct
class Initiate2FaAuthenticationResponse:
    opaque_ke2: VarBytes


# --- #initialize-user-registration / #finish-user-registration ----------------------

@struct
class InitUserRegistrationParams:
    client_csr: ClientCsr
    opaque_registration_request: VarBytes


@struct
class InitUserRegistrationResponse:
    """The spec's answer without its ``client_credential``: the credential
    waits in the ephemeral OPAQUE DB until the registration finishes."""
    opaque_registration_response: VarBytes


@struct
class FinishUserRegistrationParams:
    """The spec's params without ``connection_packages``: a package carries
    the client credential, which the client receives only in the answer."""
    queue_encryption_key: VarBytes        # HpkePublicKey
    initial_queue_ratchet_key: VarBytes   # RatchetKey
    opaque_registration_record: VarBytes


@struct
class FinishUserRegistrationResponse:
    """The client credential signed at *init user registration*, released now."""
    client_credential: ClientCredential


# --- profiles ---------------------------------------------------------------------

@struct
class UpdateUserProfileParams:
    new_user_profile: VarBytes


@struct
class UserProfileParams:
    user_id: UserId


@struct
class UserProfileResponse:
    user_profile: VarBytes


# --- user id connection packages ------------------------------------------------------

@struct
class UploadUserIdPackages:
    """Each element is an encoded :class:`ConnectionPackage` of the caller."""
    connection_package_ctxt: vec(VarBytes)


@struct
class UserClientsParams:
    user_id: UserId


@struct
class UserClientsResponse:
    connection_package: ConnectionPackage


# --- #user-account-deletion ------------------------------------------------------------

@struct
class DeleteUserParams:
    opaque_ke3: VarBytes


# --- direct user queues ----------------------------------------------------------------

@struct
class DequeueMessagesParams:
    sequence_number_start: U64
    max_message_number: U64


@struct
class EnqueueMessageParams:
    client_id: ClientId
    connection_establishment_ctxt: VarBytes


# --- aliases ---------------------------------------------------------------------------

@struct
class RegisterAlias:
    alias: Alias
    alias_auth_key: VarBytes              # AliasAuthkey (Ed25519 public key)
    queue_encryption_key: VarBytes        # HpkePublicKey
    initial_queue_ratchet_key: VarBytes   # RatchetKey


@struct
class DeleteAlias:
    alias: Alias


@struct
class DequeueAliasMessagesParams:
    alias: Alias
    sequence_number_start: U64
    max_message_number: U64


@struct
class EnqueueAliasMessageParams:
    alias: Alias
    connection_establishment_ctxt: VarBytes


@struct
class UploadAliasPackages:
    alias: Alias
    connection_package_ctxt: vec(ConnectionPackagePayload)


@struct
class AliasClientsParams:
    alias: Alias


@struct
class AliasClientsResponse:
    connection_package: ConnectionPackagePayload


# --- #token-issuance -------------------------------------------------------------------

@struct
class RequestToken:
    token_request: AmortizedBatchTokenRequest


@struct
class TokenResponse:
    tokens: AmortizedBatchTokenResponse


# --- request bodies of authenticated endpoints -------------------------------------------
# Authentication first, then the spec's params; the signature is bound to the
# encoded params (phoenix_ref/auth_tokens.py, "Binding to the request").

@struct
class Initiate2FaRequest:
    auth: ClientCredentialAuth
    params: Initiate2FaAuthenticationParams


@struct
class FinishUserRegistrationRequest:
    auth: RegistrationAuth
    params: FinishUserRegistrationParams


@struct
class UpdateUserProfileRequest:
    auth: ClientCredentialAuth
    params: UpdateUserProfileParams


@struct
class UploadUserIdPackagesRequest:
    auth: ClientCredentialAuth
    params: UploadUserIdPackages


@struct
class DeleteUserRequest:
    auth: ClientCredentialAuth
    params: DeleteUserParams


@struct
class DequeueMessagesRequest:
    auth: ClientCredentialAuth
    params: DequeueMessagesParams


@struct
class RequestTokenRequest:
    auth: ClientCredentialAuth
    params: RequestToken


@struct
class DeleteAliasRequest:
    auth: AliasAuth
    params: DeleteAlias


@struct
class DequeueAliasMessagesRequest:
    auth: AliasAuth
    params: DequeueAliasMessagesParams


@struct
class UploadAliasPackagesRequest:
    auth: AliasAuth
    params: UploadAliasPackages
