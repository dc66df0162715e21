"""Message framing: authenticating content and protecting it as a
PublicMessage or PrivateMessage (RFC 9420 §6, §6.1, §6.2, §6.3, §6.3.1,
§6.3.2).

The flow of §6 ("Relationships among MLS Objects")::

    Proposal | Commit | application data
        -> FramedContent                       (build_content)
        -> AuthenticatedContent                (authenticate / sign_content)
        -> PublicMessage  | PrivateMessage     (protect_public / protect_private)

and back with :func:`unprotect_public` / :func:`unprotect_private`, which
check everything this layer can check: group id and epoch, the membership
tag (member senders of a PublicMessage), AEAD decryption of sender data and
content, zero padding, and the signature over FramedContentTBS.

What is left to the caller (the group state), because it needs the next
epoch: a Commit's ``confirmation_tag`` (§6.1 calls auth data "valid" only
when both are valid) — see :mod:`phoenix_ref.mls.transcript`; and the rules
of §6.1 about which ``sender_type`` may send which content.

Signature keys are supplied by the caller as a :data:`SignerLookup`: either
the key itself, or a function from the :class:`Sender` to its signature key
(for a PrivateMessage the sender is known only after decryption). A lookup
should raise an :class:`~phoenix_ref.mls.MlsError` (e.g. :class:`InvalidSender`)
when the sender's leaf is blank (§6.3.2 "MUST verify that the leaf index ...
identifies a non-blank node").
"""

from __future__ import annotations

import dataclasses
import hmac as _hmac
from typing import Any, Callable, Union

from ..codec import DecodeError, decode, encode
from ..crypto import CryptoError, SigningKey, aead_open, aead_seal, random_bytes, sign_with_label, verify_with_label
from . import MlsError
from .messages import (
    PROPOSAL_CASES,
    AuthenticatedContent,
    Commit,
    ContentType,
    FramedContent,
    FramedContentAuthData,
    FramedContentTBS,
    GroupContext,
    MLSMessage,
    PrivateContentAAD,
    PrivateMessage,
    PrivateMessageContent,
    ProtocolVersion,
    PublicMessage,
    Sender,
    SenderData,
    SenderDataAAD,
    SenderType,
    WireFormat,
    decode_private_message_content,
    encode_private_message_content,
)
from .secret_tree import RatchetKind, SecretTree, sender_data_key_nonce
from .transcript import membership_tag


__all__ = [
    "FramingError", "MalformedMessage", "WrongGroup", "WrongEpoch", "InvalidSender", "ContentNotAllowed",
    "BadSignature", "BadMembershipTag", "DecryptionFailed", "SignerLookup",
    "build_content", "content_body", "content_tbs", "sign_content", "verify_content",
    "authenticate", "with_confirmation_tag", "protect_public", "public_content", "unprotect_public",
    "protect_private", "unprotect_private", "decode_mls_message",
]

FRAMED_CONTENT_TBS_LABEL = "FramedContentTBS"


# --- errors --------------------------------------------------------------------

class FramingError(MlsError):
    """A message failed a check of RFC 9420 §6."""


class MalformedMessage(FramingError):
    """The bytes do not parse (including non-zero padding, §6.3.1)."""


class WrongGroup(FramingError):
    """The message names another group."""


class WrongEpoch(FramingError):
    """The message belongs to another epoch than the state used to read it."""


class InvalidSender(FramingError):
    """The sender type cannot be used here (e.g. a non-member in a
    PrivateMessage, §6.3.2) or names no member."""


class ContentNotAllowed(FramingError):
    """The content type cannot travel in this wire format: application data
    "MUST" use PrivateMessage (§6)."""


class BadSignature(FramingError):
    """The signature over FramedContentTBS does not verify (§6.1)."""


class BadMembershipTag(FramingError):
    """The membership tag is missing or wrong (§6.2)."""


class DecryptionFailed(FramingError):
    """AEAD decryption of the sender data or of the content failed (§6.3)."""


SignerLookup = Union[bytes, Callable[[Sender], bytes]]


# --- FramedContent and its authentication (§6, §6.1) ---------------------------

def build_content(group_id: bytes, epoch: int, sender: Sender, body: Any,
                  authenticated_data: bytes = b"") -> FramedContent:
    """A FramedContent carrying ``body``: ``bytes`` are application data, a
    :class:`Commit` a commit, an Add/Update/Remove/... instance a proposal."""
    if isinstance(body, (bytes, bytearray)):
        return FramedContent(group_id, epoch, sender, authenticated_data, ContentType.application,
                             application_data=bytes(body))
    if isinstance(body, Commit):
        return FramedContent(group_id, epoch, sender, authenticated_data, ContentType.commit, commit=body)
    if type(body) in PROPOSAL_CASES.values():
        return FramedContent(group_id, epoch, sender, authenticated_data, ContentType.proposal, proposal=body)
    raise TypeError(f"{type(body).__name__} is neither application data, a Proposal nor a Commit")


def content_body(content: FramedContent) -> Any:
    """The application data, Proposal or Commit that ``content`` carries."""
    return {ContentType.application: content.application_data,
            ContentType.proposal: content.proposal,
            ContentType.commit: content.commit}[content.content_type]


def content_tbs(wire_format: WireFormat, content: FramedContent,
                group_context: GroupContext | None) -> FramedContentTBS:
    """FramedContentTBS (§6.1): the GroupContext is included exactly for
    ``member`` and ``new_member_commit`` senders."""
    needs_context = content.sender.sender_type in (SenderType.member, SenderType.new_member_commit)
    if needs_context and group_context is None:
        raise ValueError("a member or new_member_commit signature covers the GroupContext")
    return FramedContentTBS(ProtocolVersion.mls10, wire_format, content,
                            group_context if needs_context else None)


def sign_content(signing_key: SigningKey | bytes, wire_format: WireFormat, content: FramedContent,
                 group_context: GroupContext | None) -> bytes:
    """SignWithLabel(., "FramedContentTBS", FramedContentTBS) — §6.1."""
    tbs = content_tbs(wire_format, content, group_context)
    return sign_with_label(signing_key, FRAMED_CONTENT_TBS_LABEL, encode(tbs))


def verify_content(content: AuthenticatedContent, signature_key: bytes,
                   group_context: GroupContext | None) -> None:
    """VerifyWithLabel over FramedContentTBS; raises :class:`BadSignature`."""
    tbs = content_tbs(content.wire_format, content.content, group_context)
    try:
        verify_with_label(signature_key, FRAMED_CONTENT_TBS_LABEL, encode(tbs), content.auth.signature)
    except CryptoError:
        raise BadSignature("FramedContentTBS signature does not verify") from None


def authenticate(signing_key: SigningKey | bytes, wire_format: WireFormat, content: FramedContent,
                 group_context: GroupContext | None,
                 confirmation_tag: bytes | None = None) -> AuthenticatedContent:
    """Sign ``content`` for ``wire_format`` (§6.1).

    A Commit's confirmation tag depends on the confirmed transcript hash,
    which covers this signature (§8.2): pass ``confirmation_tag=None`` first,
    compute the next epoch, then add the tag with :func:`with_confirmation_tag`.
    """
    signature = sign_content(signing_key, wire_format, content, group_context)
    if content.content_type != ContentType.commit and confirmation_tag is not None:
        raise ValueError("only a Commit carries a confirmation tag")
    return AuthenticatedContent(wire_format, content, FramedContentAuthData(signature, confirmation_tag))


def with_confirmation_tag(content: AuthenticatedContent, tag: bytes) -> AuthenticatedContent:
    """The same AuthenticatedContent with its Commit's confirmation tag set."""
    if content.content.content_type != ContentType.commit:
        raise ValueError("only a Commit carries a confirmation tag")
    return dataclasses.replace(content, auth=dataclasses.replace(content.auth, confirmation_tag=tag))


def _signer_key(lookup: SignerLookup, sender: Sender) -> bytes:
    return lookup if isinstance(lookup, (bytes, bytearray)) else lookup(sender)


def _check_group_epoch(group_id: bytes, epoch: int, group_context: GroupContext) -> None:
    if group_id != group_context.group_id:
        raise WrongGroup("message is for another group")
    if epoch != group_context.epoch:
        raise WrongEpoch(f"message is for epoch {epoch}, the state is at epoch {group_context.epoch}")


def _check_auth_shape(content_type: ContentType, auth: FramedContentAuthData) -> None:
    if (content_type == ContentType.commit) != (auth.confirmation_tag is not None):
        raise ValueError("a confirmation tag is present exactly for a Commit")


# --- PublicMessage (§6.2) --------------------------------------------------------

def protect_public(content: AuthenticatedContent, group_context: GroupContext,
                   membership_key: bytes | None) -> PublicMessage:
    """Encode an AuthenticatedContent as a PublicMessage (§6.2).

    Member senders get ``membership_tag = MAC(membership_key,
    AuthenticatedContentTBM)``. Application data is refused: it "MUST" travel
    in a PrivateMessage (§6).
    """
    fc = content.content
    if content.wire_format != WireFormat.mls_public_message:
        raise ValueError("content was signed for another wire format")
    if fc.content_type == ContentType.application:
        raise ContentNotAllowed("application messages must be sent as PrivateMessage (RFC 9420 §6)")
    _check_auth_shape(fc.content_type, content.auth)
    tag = None
    if fc.sender.sender_type == SenderType.member:
        if membership_key is None:
            raise ValueError("a member's PublicMessage needs the membership key")
        tag = membership_tag(membership_key, content_tbs(content.wire_format, fc, group_context), content.auth)
    return PublicMessage(fc, content.auth, tag)


def public_content(message: PublicMessage, group_context: GroupContext) -> AuthenticatedContent:
    """The AuthenticatedContent of a PublicMessage after the checks that need
    no key: group id and epoch, and no application data (§6, §6.2).

    Raises :class:`WrongGroup`, :class:`WrongEpoch`, :class:`ContentNotAllowed`.
    """
    fc = message.content
    _check_group_epoch(fc.group_id, fc.epoch, group_context)
    if fc.content_type == ContentType.application:
        raise ContentNotAllowed("application data in a PublicMessage (RFC 9420 §6)")
    return AuthenticatedContent(WireFormat.mls_public_message, fc, message.auth)


def unprotect_public(message: PublicMessage, group_context: GroupContext, membership_key: bytes | None,
                     signer: SignerLookup) -> AuthenticatedContent:
    """Check a PublicMessage and return its AuthenticatedContent (§6.2).

    Raises :class:`WrongGroup`, :class:`WrongEpoch`, :class:`ContentNotAllowed`
    (application data in a PublicMessage), :class:`BadMembershipTag`,
    :class:`BadSignature`, or whatever ``signer`` raises. A Commit's
    confirmation tag is left to the caller.
    """
    content = public_content(message, group_context)
    fc = content.content
    if fc.sender.sender_type == SenderType.member:
        if membership_key is None:
            raise ValueError("a member's PublicMessage is checked with the membership key")
        tbs = content_tbs(content.wire_format, fc, group_context)
        expected = membership_tag(membership_key, tbs, message.auth)
        if message.membership_tag is None or not _hmac.compare_digest(expected, message.membership_tag):
            raise BadMembershipTag("membership tag does not match")
    verify_content(content, _signer_key(signer, fc.sender), group_context)
    return content


# --- PrivateMessage (§6.3) ---------------------------------------------------------

def _ratchet_kind(content_type: ContentType) -> RatchetKind:
    """Application data uses the application ratchet; proposals and commits
    the handshake ratchet (§9)."""
    return "application" if content_type == ContentType.application else "handshake"


def _guarded(nonce: bytes, reuse_guard: bytes) -> bytes:
    """XOR the 4-byte reuse guard into the first four nonce bytes (§6.3.1)."""
    return bytes(a ^ b for a, b in zip(nonce[:4], reuse_guard)) + nonce[4:]


def protect_private(content: AuthenticatedContent, secret_tree: SecretTree, sender_data_secret: bytes, *,
                    padding: int = 0, reuse_guard: bytes | None = None) -> PrivateMessage:
    """Encrypt an AuthenticatedContent as a PrivateMessage (§6.3).

    Takes the next key of the sender's handshake or application ratchet,
    XORs a fresh 4-byte reuse guard into its nonce, encrypts
    PrivateMessageContent (with ``padding`` zero bytes) under
    PrivateContentAAD, then encrypts SenderData with the key and nonce
    derived from ``sender_data_secret`` and the ciphertext sample.
    ``reuse_guard`` is for tests only; by default it is random.
    """
    fc = content.content
    if content.wire_format != WireFormat.mls_private_message:
        raise ValueError("content was signed for another wire format")
    if fc.sender.sender_type != SenderType.member:
        raise InvalidSender("only members send PrivateMessages (RFC 9420 §6.3.2)")
    _check_auth_shape(fc.content_type, content.auth)
    if padding < 0:
        raise ValueError("padding is a number of zero bytes")
    guard = reuse_guard if reuse_guard is not None else random_bytes(4)
    if len(guard) != 4:
        raise ValueError("the reuse guard has four bytes")

    rk = secret_tree.next_key(fc.sender.leaf_index, _ratchet_kind(fc.content_type))
    plaintext = encode_private_message_content(PrivateMessageContent(
        fc.application_data, fc.proposal, fc.commit, content.auth, padding))
    aad = encode(PrivateContentAAD(fc.group_id, fc.epoch, fc.content_type, fc.authenticated_data))
    ciphertext = aead_seal(rk.key, _guarded(rk.nonce, guard), aad, plaintext)

    sd_key, sd_nonce = sender_data_key_nonce(sender_data_secret, ciphertext)
    sd_aad = encode(SenderDataAAD(fc.group_id, fc.epoch, fc.content_type))
    encrypted_sender_data = aead_seal(sd_key, sd_nonce, sd_aad,
                                      encode(SenderData(fc.sender.leaf_index, rk.generation, guard)))
    return PrivateMessage(fc.group_id, fc.epoch, fc.content_type, fc.authenticated_data,
                          encrypted_sender_data, ciphertext)


def unprotect_private(message: PrivateMessage, group_context: GroupContext, secret_tree: SecretTree,
                      sender_data_secret: bytes, signer: SignerLookup) -> AuthenticatedContent:
    """Decrypt and check a PrivateMessage; return its AuthenticatedContent (§6.3).

    Raises :class:`WrongGroup`, :class:`WrongEpoch`, :class:`DecryptionFailed`
    (sender data or content), :class:`MalformedMessage` (undecodable
    plaintext, non-zero padding), :class:`BadSignature`,
    :class:`~phoenix_ref.mls.secret_tree.SecretTreeError` (leaf outside the
    tree; generation reused, dropped or too far ahead), or whatever
    ``signer`` raises (blank leaf). The content key is consumed only when
    decryption succeeds.
    """
    _check_group_epoch(message.group_id, message.epoch, group_context)
    sd_key, sd_nonce = sender_data_key_nonce(sender_data_secret, message.ciphertext)
    sd_aad = encode(SenderDataAAD(message.group_id, message.epoch, message.content_type))
    try:
        sd_plain = aead_open(sd_key, sd_nonce, sd_aad, message.encrypted_sender_data)
    except CryptoError:
        raise DecryptionFailed("sender data does not decrypt") from None
    try:
        sender_data = decode(SenderData, sd_plain)
    except DecodeError as e:
        raise MalformedMessage(f"sender data: {e}") from None

    ratchet = secret_tree.ratchet(sender_data.leaf_index, _ratchet_kind(message.content_type))
    rk = ratchet.get(sender_data.generation)
    aad = encode(PrivateContentAAD(message.group_id, message.epoch, message.content_type,
                                   message.authenticated_data))
    try:
        plaintext = aead_open(rk.key, _guarded(rk.nonce, sender_data.reuse_guard), aad, message.ciphertext)
    except CryptoError:
        ratchet.put_back(rk)
        raise DecryptionFailed("content does not decrypt") from None
    try:
        pmc = decode_private_message_content(plaintext, message.content_type)
    except DecodeError as e:
        raise MalformedMessage(f"private message content: {e}") from None

    sender = Sender.member(sender_data.leaf_index)
    fc = FramedContent(message.group_id, message.epoch, sender, message.authenticated_data,
                       message.content_type, pmc.application_data, pmc.proposal, pmc.commit)
    content = AuthenticatedContent(WireFormat.mls_private_message, fc, pmc.auth)
    verify_content(content, _signer_key(signer, sender), group_context)
    return content


# --- MLSMessage ------------------------------------------------------------------------

def decode_mls_message(data: bytes, *, max_len: int | None = None) -> MLSMessage:
    """Parse an MLSMessage; :class:`MalformedMessage` for bad bytes or a
    version other than mls10."""
    try:
        msg = decode(MLSMessage, data, max_len=max_len)
    except DecodeError as e:
        raise MalformedMessage(str(e)) from None
    if msg.version != ProtocolVersion.mls10:  # the enum admits only mls10 today
        raise MalformedMessage("unsupported protocol version")
    return msg
