"""Welcome messages and GroupInfo signatures (RFC 9420 §12.4.3, §12.4.3.1).

A Welcome carries one GroupInfo, encrypted once with a key derived from the
new epoch's ``welcome_secret``, and for each new member a GroupSecrets
(``joiner_secret``, optional path secret, PSK ids) encrypted to the init key
of that member's KeyPackage::

    encrypted_group_secrets = EncryptWithLabel(init_key, "Welcome",
                                               encrypted_group_info, group_secrets)
    welcome_key   = ExpandWithLabel(welcome_secret, "key", "", AEAD.Nk)
    welcome_nonce = ExpandWithLabel(welcome_secret, "nonce", "", AEAD.Nn)

:func:`create_welcome` builds one; :func:`open_welcome` runs the steps of
§12.4.3.1 that need no ratchet tree — find the entry for our KeyPackage,
decrypt GroupSecrets, resolve and check PSKs, decrypt GroupInfo, verify its
signature, derive the epoch, verify the confirmation tag — and returns the
pieces from which the group state (:mod:`phoenix_ref.mls.group`) validates
the tree and builds the member's view. The GroupInfo's AEAD has an empty
AAD: §12.4.3.1 names only the key and the nonce.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence, Union

from ..codec import DecodeError, decode, encode
from ..crypto import (
    CryptoError,
    SigningKey,
    aead_open,
    aead_seal,
    decrypt_with_label,
    encrypt_with_label,
    sign_with_label,
    verify_with_label,
)
from . import MlsError
from .extensions import ExtensionError, check_unique
from .framing import BadSignature, DecryptionFailed, MalformedMessage
from .key_schedule import EpochSecrets, welcome_key_nonce, welcome_secret
from .messages import (
    EncryptedGroupSecrets,
    Extension,
    GroupContext,
    GroupInfo,
    GroupSecrets,
    KeyPackage,
    PathSecret,
    PreSharedKeyID,
    PSKType,
    ResumptionPSKUsage,
    Welcome,
    make_key_package_ref,
)
from .psk import psk_secret, resolve_psks, validate_psk_ids
from .transcript import TranscriptHashes, verify_confirmation_tag

__all__ = [
    "GROUP_INFO_TBS_LABEL", "WELCOME_LABEL", "WelcomeError", "NotForThisKeyPackage",
    "CipherSuiteMismatch", "InvalidGroupInfo", "InvalidWelcome", "OpenedWelcome", "sign_group_info",
    "verify_group_info", "encrypt_group_info", "decrypt_group_info", "create_welcome",
    "decrypt_group_secrets", "open_welcome",
]

GROUP_INFO_TBS_LABEL = "GroupInfoTBS"
WELCOME_LABEL = "Welcome"

PskLookup = Callable[[PreSharedKeyID], "bytes | None"]
GroupInfoSigner = Union[bytes, Callable[[GroupInfo], bytes]]


class WelcomeError(MlsError):
    """A Welcome cannot be used to join."""


class NotForThisKeyPackage(WelcomeError):
    """No entry of ``Welcome.secrets`` names our KeyPackage (§12.4.3.1)."""


class CipherSuiteMismatch(WelcomeError):
    """Welcome, KeyPackage and GroupInfo disagree on the cipher suite (§12.4.3.1)."""


class InvalidGroupInfo(WelcomeError):
    """The GroupInfo's extension list, or its GroupContext's, names one type
    twice (§13: "Any field containing a list of extensions MUST NOT have more
    than one extension of any given type")."""


class InvalidWelcome(WelcomeError):
    """The Welcome breaks another rule of §12.4.3.1 (e.g. a branch or reinit
    PSK joining an epoch other than 1)."""


# --- GroupInfo (§12.4.3) ------------------------------------------------------------

def sign_group_info(signing_key: SigningKey | bytes, group_context: GroupContext,
                    extensions: list[Extension], confirmation_tag: bytes, signer: int) -> GroupInfo:
    """A GroupInfo signed with SignWithLabel(., "GroupInfoTBS", GroupInfoTBS)."""
    unsigned = GroupInfo(group_context, extensions, confirmation_tag, signer, b"")
    return GroupInfo(group_context, extensions, confirmation_tag, signer,
                     sign_with_label(signing_key, GROUP_INFO_TBS_LABEL, unsigned.tbs()))


def verify_group_info(group_info: GroupInfo, signer_key: bytes) -> None:
    """Verify a received GroupInfo (§12.4.3.1): its signature with the
    signer's leaf key (:class:`BadSignature`), then that its two extension
    lists name each type once (:class:`InvalidGroupInfo`, §13)."""
    try:
        verify_with_label(signer_key, GROUP_INFO_TBS_LABEL, group_info.tbs(), group_info.signature)
    except CryptoError:
        raise BadSignature("GroupInfo signature does not verify") from None
    try:
        check_unique(group_info.extensions)
        check_unique(group_info.group_context.extensions)
    except ExtensionError as e:
        raise InvalidGroupInfo(str(e)) from None


def encrypt_group_info(group_info: GroupInfo, joiner_secret: bytes, psk_secret_: bytes | None) -> bytes:
    """encrypted_group_info under welcome_key / welcome_nonce (§12.4.3.1)."""
    key, nonce = welcome_key_nonce(welcome_secret(joiner_secret, psk_secret_))
    return aead_seal(key, nonce, b"", encode(group_info))


def _decode_plaintext(cls: type, plain: bytes):
    """A decrypted struct; bytes that do not decode are a :class:`MalformedMessage`."""
    try:
        return decode(cls, plain)
    except DecodeError as e:
        raise MalformedMessage(f"{cls.__name__}: {e}") from None


def decrypt_group_info(encrypted_group_info: bytes, joiner_secret: bytes, psk_secret_: bytes | None) -> GroupInfo:
    """Inverse of :func:`encrypt_group_info`; :class:`DecryptionFailed` or
    :class:`MalformedMessage`."""
    key, nonce = welcome_key_nonce(welcome_secret(joiner_secret, psk_secret_))
    try:
        plain = aead_open(key, nonce, b"", encrypted_group_info)
    except CryptoError:
        raise DecryptionFailed("encrypted_group_info does not decrypt") from None
    return _decode_plaintext(GroupInfo, plain)


# --- creating a Welcome ------------------------------------------------------------

def create_welcome(group_info: GroupInfo, joiner_secret: bytes, psks: Sequence[tuple[PreSharedKeyID, bytes]],
                   new_members: Sequence[tuple[KeyPackage, bytes | None]]) -> Welcome:
    """A Welcome for ``new_members`` — pairs of (KeyPackage, path secret for
    the lowest common ancestor with the committer, or None) — into the epoch
    described by the signed ``group_info`` (§12.4.3.1).

    ``psks`` are the PSKs of the Commit, in order, with their values (the
    same list that produced the epoch's psk_secret, §8.4).
    """
    ids = [pid for pid, _ in psks]
    encrypted_group_info = encrypt_group_info(group_info, joiner_secret, psk_secret(list(psks)))
    secrets = []
    for kp, path_secret in new_members:
        gs = GroupSecrets(joiner_secret, PathSecret(path_secret) if path_secret is not None else None, ids)
        ct = encrypt_with_label(kp.init_key, WELCOME_LABEL, encrypted_group_info, encode(gs))
        secrets.append(EncryptedGroupSecrets(make_key_package_ref(kp), ct))
    return Welcome(group_info.group_context.cipher_suite, secrets, encrypted_group_info)


# --- opening a Welcome ------------------------------------------------------------------

def decrypt_group_secrets(welcome: Welcome, key_package: KeyPackage, init_priv: bytes) -> GroupSecrets:
    """Find the entry for ``key_package`` and decrypt its GroupSecrets with
    the init private key (§12.4.3.1, first two steps)."""
    if welcome.cipher_suite != key_package.cipher_suite:
        raise CipherSuiteMismatch("the Welcome's cipher suite is not the KeyPackage's")
    ref = make_key_package_ref(key_package)
    entry = next((e for e in welcome.secrets if e.new_member == ref), None)
    if entry is None:
        raise NotForThisKeyPackage("no EncryptedGroupSecrets for this KeyPackage")
    try:
        plain = decrypt_with_label(init_priv, WELCOME_LABEL, welcome.encrypted_group_info,
                                   entry.encrypted_group_secrets.kem_output,
                                   entry.encrypted_group_secrets.ciphertext)
    except CryptoError:
        raise DecryptionFailed("GroupSecrets do not decrypt with this init key") from None
    return _decode_plaintext(GroupSecrets, plain)


@dataclass(frozen=True)
class OpenedWelcome:
    """What a Welcome yields before the ratchet tree is checked.

    ``epoch_secrets`` is the key schedule of the epoch joined;
    ``transcript`` the confirmed and interim transcript hashes (§12.4.3.1,
    last steps); ``psks`` the resolved PSKs in order.
    """
    group_secrets: GroupSecrets
    group_info: GroupInfo
    psks: list[tuple[PreSharedKeyID, bytes]]
    epoch_secrets: EpochSecrets
    transcript: TranscriptHashes


def open_welcome(welcome: Welcome, key_package: KeyPackage, init_priv: bytes,
                 signer: GroupInfoSigner, psk_lookup: PskLookup | None = None) -> OpenedWelcome:
    """Decrypt and check a Welcome for one of our KeyPackages (§12.4.3.1).

    ``signer`` is the signature key of the GroupInfo's signer, or a function
    from the decrypted GroupInfo to it (it usually comes from the ratchet
    tree, which may travel inside GroupInfo); it should raise an MlsError if
    that leaf is blank. ``psk_lookup`` resolves the PSKs named in
    GroupSecrets (none may be missing).

    Raises :class:`CipherSuiteMismatch`, :class:`NotForThisKeyPackage`,
    :class:`DecryptionFailed`, :class:`MalformedMessage`,
    :class:`~phoenix_ref.mls.psk.PskError`, :class:`BadSignature`,
    :class:`InvalidGroupInfo`, :class:`InvalidWelcome`,
    :class:`~phoenix_ref.mls.transcript.BadConfirmationTag`.
    """
    secrets = decrypt_group_secrets(welcome, key_package, init_priv)
    # "if a PreSharedKeyID has type resumption with usage reinit or branch,
    # verify that it is the only such PSK"
    validate_psk_ids(secrets.psks, allow_reinit=True, allow_branch=True)
    psks = resolve_psks(secrets.psks, psk_lookup or (lambda _pid: None))
    psk_secret_ = psk_secret(psks)

    group_info = decrypt_group_info(welcome.encrypted_group_info, secrets.joiner_secret, psk_secret_)
    signer_key = signer if isinstance(signer, (bytes, bytearray)) else signer(group_info)
    verify_group_info(group_info, signer_key)
    ctx = group_info.group_context
    if ctx.cipher_suite != key_package.cipher_suite:
        raise CipherSuiteMismatch("the GroupInfo's cipher suite is not the KeyPackage's")
    if ctx.epoch != 1 and any(p.psktype == PSKType.resumption and
                              p.usage in (ResumptionPSKUsage.reinit, ResumptionPSKUsage.branch)
                              for p in secrets.psks):
        raise InvalidWelcome("a reinit or branch Welcome must start epoch 1")

    epoch = EpochSecrets.from_joiner(secrets.joiner_secret, psk_secret_, ctx)
    verify_confirmation_tag(epoch.confirmation_key, ctx.confirmed_transcript_hash, group_info.confirmation_tag)
    transcript = TranscriptHashes.from_group_info(ctx.confirmed_transcript_hash, group_info.confirmation_tag)
    return OpenedWelcome(secrets, group_info, psks, epoch, transcript)
