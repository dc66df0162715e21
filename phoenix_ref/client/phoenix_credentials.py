"""The client's Phoenix credential layer, sans IO.

* **Leaf credentials** (``spec/authentication_service/credentials.md#leaf-credentials``):
  a fresh pseudonym and signature key per group leaf; the client
  credential signs it and that signature travels encrypted under a
  *signature encryption key* (``spec/glossary.md#signature-encryption-key``),
  so the DS cannot link a client's leaves across groups. In MLS it is a
  basic credential holding the encoded LeafCredential (docs/decisions.md, A42).
* **AddPackages** (``spec/glossary.md#addpackage``,
  ``spec/queuing_service/keypackage_publication.md``): a KeyPackage with a
  leaf credential and the client's queue config, plus the client
  credential and the signature encryption key encrypted under the owner's
  friendship encryption key.
* **Credential information**: what a group stores per member — the client
  credential and the signature encryption key, encrypted under the group's
  credential encryption key (decision A12, A35). Any member decrypts it and
  checks the leaf credential's signature against the client credential.
* **WelcomeAttributionInfo** (``spec/glossary.md#welcome-attribution-info``):
  who invited a joiner, signed with the inviter's client credential and
  encrypted under the joiner's friendship encryption key.

Symmetric encryption is AES-128-GCM (the ciphersuite's AEAD) with a random
nonce prefixed; each use has its own additional data.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..codec import DecodeError, VarBytes, decode, encode, struct
from ..credentials import (
    ClientCredential, CredentialCiphersuite, ExpirationData, LeafCredential, TrustStore, verify_client_credential,
)
from ..crypto import NK, NN, CryptoError, SigningKey, aead_open, aead_seal, hs_sign_struct, hs_verify_struct, \
    random_bytes
from ..ids import ClientId, GroupId
from ..mls.extensions import ClientQueueConfig as ExtClientQueueConfig
from ..mls.extensions import LastResortExtension, QueueConfigExtension, to_extension
from ..mls.keypackage import KeyPackageBundle, create_key_package
from ..mls.messages import Credential, CredentialType, LeafNode
from ..queuing.messages import AddPackage

__all__ = ["CredentialError", "LeafIdentity", "new_leaf_identity", "leaf_credential_of", "CredentialInformation",
           "seal_credential_information", "open_credential_information", "verify_leaf",
           "make_add_package", "open_add_package", "WelcomeAttributionInfo", "WelcomeAttributionInfoPayload",
           "seal_attribution", "open_attribution", "new_symmetric_key"]

DAY_MS = 24 * 3600 * 1000
LEAF_VALIDITY_MS = 90 * DAY_MS


class CredentialError(Exception):
    """A credential, AddPackage or attribution does not open or verify."""


def new_symmetric_key() -> bytes:
    return random_bytes(NK)


def _seal(key: bytes, aad: bytes, plaintext: bytes) -> bytes:
    nonce = random_bytes(NN)
    return nonce + aead_seal(key, nonce, aad, plaintext)


def _open(key: bytes, aad: bytes, sealed: bytes, what: str) -> bytes:
    try:
        return aead_open(key, sealed[:NN], aad, sealed[NN:])
    except CryptoError:
        raise CredentialError(f"{what} does not open with this key") from None


# --- leaf credentials -----------------------------------------------------------------------------

@struct
class LeafCredentialTbs:
    """What the client credential signs of a LeafCredential (all but the signature)."""
    identity: VarBytes
    expiration_data: ExpirationData
    credential_ciphersuite: CredentialCiphersuite
    public_key: VarBytes
    signer_fingerprint: VarBytes


@dataclass
class LeafIdentity:
    """One leaf's keys: the MLS signature key, its LeafCredential and the
    key that encrypts the client credential's signature on it."""
    signing_key: SigningKey
    credential: LeafCredential
    signature_encryption_key: bytes

    @property
    def mls_credential(self) -> Credential:
        return Credential.basic(encode(self.credential))


def new_leaf_identity(client_key: SigningKey, client_credential: ClientCredential, now_ms: int) -> LeafIdentity:
    """A fresh pseudonymous leaf credential signed by the client credential."""
    key = SigningKey.generate()
    tbs = LeafCredentialTbs(random_bytes(16), ExpirationData.starting(now_ms - 3600_000, LEAF_VALIDITY_MS),
                            client_credential.credential_ciphersuite, key.public, client_credential.fingerprint())
    sig_key = new_symmetric_key()
    signature = hs_sign_struct(client_key, tbs)
    encrypted = _seal(sig_key, encode(tbs), signature)
    cred = LeafCredential(tbs.identity, tbs.expiration_data, tbs.credential_ciphersuite, tbs.public_key,
                          tbs.signer_fingerprint, encrypted)
    return LeafIdentity(key, cred, sig_key)


def leaf_credential_of(leaf: LeafNode) -> LeafCredential:
    cred = leaf.credential
    if cred.credential_type != CredentialType.basic:
        raise CredentialError("the leaf has no LeafCredential")
    try:
        return decode(LeafCredential, bytes(cred.identity))
    except DecodeError as e:
        raise CredentialError(f"the leaf's credential is not a LeafCredential: {e}") from None


def verify_leaf(leaf: LeafNode, client_credential: ClientCredential, signature_encryption_key: bytes,
                trust: TrustStore | None, now_ms: int) -> None:
    """The leaf's LeafCredential is for its key and signed by
    ``client_credential`` (whose chain ``trust`` checks, if given)."""
    lc = leaf_credential_of(leaf)
    if bytes(lc.public_key) != bytes(leaf.signature_key):
        raise CredentialError("the LeafCredential names another key than the leaf's")
    if bytes(lc.signer_fingerprint) != client_credential.fingerprint():
        raise CredentialError("the LeafCredential was not signed by this client credential")
    tbs = LeafCredentialTbs(lc.identity, lc.expiration_data, lc.credential_ciphersuite, lc.public_key,
                            lc.signer_fingerprint)
    signature = _open(signature_encryption_key, encode(tbs), bytes(lc.encrypted_signature), "the leaf signature")
    try:
        hs_verify_struct(client_credential.public_key, tbs, signature)
    except CryptoError:
        raise CredentialError("the client credential's signature on the leaf does not verify") from None
    if trust is not None:
        verify_client_credential(client_credential, trust, now_ms)


# --- credential information (decisions A12, A35) ------------------------------------------------------

@struct
class CredentialInformation:
    client_credential: ClientCredential
    signature_encryption_key: VarBytes


def seal_credential_information(credential_key: bytes, info: CredentialInformation) -> bytes:
    return _seal(credential_key, b"phoenix credential information", encode(info))


def open_credential_information(credential_key: bytes, sealed: bytes) -> CredentialInformation:
    plain = _open(credential_key, b"phoenix credential information", sealed, "credential information")
    try:
        return decode(CredentialInformation, plain)
    except DecodeError as e:
        raise CredentialError(f"bad credential information: {e}") from None


# --- AddPackages -------------------------------------------------------------------------------------

def make_add_package(leaf: LeafIdentity, client_credential: ClientCredential, friendship_key: bytes,
                     queue_config: ExtClientQueueConfig, now_ms: int, *, last_resort: bool = False,
                     lifetime_seconds: int | None = None) -> tuple[AddPackage, KeyPackageBundle]:
    """An AddPackage for the QS and the KeyPackage's private keys; the
    KeyPackage lives ``lifetime_seconds`` (default: the MLS module's)."""
    exts = [to_extension(QueueConfigExtension(queue_config))]
    if last_resort:
        exts.append(to_extension(LastResortExtension()))
    lifetime = {} if lifetime_seconds is None else {"lifetime_seconds": lifetime_seconds}
    bundle = create_key_package(leaf.signing_key, leaf.mls_credential, now=now_ms // 1000, extensions=exts,
                                **lifetime)
    package = AddPackage(bundle.key_package,
                         _seal(friendship_key, b"phoenix AddPackage credential", encode(client_credential)),
                         _seal(friendship_key, b"phoenix AddPackage signature key", leaf.signature_encryption_key))
    return package, bundle


def open_add_package(package: AddPackage, friendship_key: bytes, trust: TrustStore | None, now_ms: int
                     ) -> CredentialInformation:
    """Decrypt and check an AddPackage fetched from a QS
    (``spec/queuing_service/keypackage_publication.md#friendship-keys-and-credential-encryption``)."""
    try:
        cred = decode(ClientCredential, _open(friendship_key, b"phoenix AddPackage credential",
                                              bytes(package.encrypted_client_credential), "the AddPackage"))
    except DecodeError as e:
        raise CredentialError(f"bad client credential in an AddPackage: {e}") from None
    sig_key = _open(friendship_key, b"phoenix AddPackage signature key",
                    bytes(package.encrypted_signature_encryption_key), "the AddPackage")
    verify_leaf(package.key_package.leaf_node, cred, sig_key, trust, now_ms)
    return CredentialInformation(cred, sig_key)


# --- WelcomeAttributionInfo (spec/glossary.md#welcome-attribution-info) ---------------------------------

@struct
class WelcomeAttributionInfoPayload:
    sender_client_id: ClientId
    group_credential_encryption_key: VarBytes


@struct
class WelcomeAttributionInfoTbs:
    payload: WelcomeAttributionInfoPayload
    group_id: GroupId
    welcome: VarBytes


@struct
class WelcomeAttributionInfo:
    payload: WelcomeAttributionInfoPayload
    signature: VarBytes


def seal_attribution(sender_key: SigningKey, payload: WelcomeAttributionInfoPayload, group_id: GroupId,
                     welcome: bytes, friendship_key: bytes) -> bytes:
    signature = hs_sign_struct(sender_key, WelcomeAttributionInfoTbs(payload, group_id, welcome))
    return _seal(friendship_key, encode(group_id), encode(WelcomeAttributionInfo(payload, signature)))


def open_attribution(sealed: bytes, friendship_key: bytes, group_id: GroupId, welcome: bytes,
                     sender_credential_of) -> tuple[WelcomeAttributionInfoPayload, ClientCredential]:
    """Decrypt a WAI and verify it with the sender's client credential,
    which ``sender_credential_of(client_id)`` gives (None: an unknown sender)."""
    try:
        wai = decode(WelcomeAttributionInfo, _open(friendship_key, encode(group_id), sealed,
                                                   "the WelcomeAttributionInfo"))
    except DecodeError as e:
        raise CredentialError(f"bad WelcomeAttributionInfo: {e}") from None
    cred = sender_credential_of(wai.payload.sender_client_id)
    if cred is None:
        raise CredentialError(f"a Welcome from {wai.payload.sender_client_id}, who is not a contact")
    try:
        hs_verify_struct(cred.public_key, WelcomeAttributionInfoTbs(wai.payload, group_id, welcome), wai.signature)
    except CryptoError:
        raise CredentialError("the WelcomeAttributionInfo signature does not verify") from None
    return wai.payload, cred
