"""Transcript hashes, confirmation tag and membership tag (RFC 9420 §8.2,
§6.1, §6.2, §11).

Each Commit advances two running hashes::

    confirmed_transcript_hash_[n] = Hash(interim_transcript_hash_[n-1] ||
                                         ConfirmedTranscriptHashInput_[n])
    interim_transcript_hash_[n]   = Hash(confirmed_transcript_hash_[n] ||
                                         InterimTranscriptHashInput_[n])

where ConfirmedTranscriptHashInput is (wire_format, FramedContent, signature)
of the Commit's AuthenticatedContent and InterimTranscriptHashInput is its
confirmation tag. Both hashes start as the empty string for epoch 0.

``MAC`` is HMAC with the ciphersuite's hash (§5.1, SHA-256 for suite 1).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from ..codec import encode
from ..crypto import hash_, hmac_
from . import MlsError
from .messages import (
    AuthenticatedContent,
    AuthenticatedContentTBM,
    ConfirmedTranscriptHashInput,
    ContentType,
    FramedContentAuthData,
    FramedContentTBS,
    InterimTranscriptHashInput,
)

__all__ = [
    "BadConfirmationTag", "TranscriptHashes", "confirmed_transcript_hash",
    "interim_transcript_hash", "confirmation_tag", "verify_confirmation_tag", "membership_tag",
]


class BadConfirmationTag(MlsError):
    """A confirmation tag does not match MAC(confirmation_key, confirmed_transcript_hash)."""


def confirmed_transcript_hash(interim_before: bytes, content: AuthenticatedContent) -> bytes:
    """confirmed_transcript_hash_[n] from interim_transcript_hash_[n-1] and the
    AuthenticatedContent of the Commit that starts epoch n (§8.2)."""
    if content.content.content_type != ContentType.commit:
        raise ValueError("only a Commit updates the transcript hash")
    data = encode(ConfirmedTranscriptHashInput(content.wire_format, content.content, content.auth.signature))
    return hash_(interim_before + data)


def interim_transcript_hash(confirmed: bytes, tag: bytes) -> bytes:
    """interim_transcript_hash_[n] from confirmed_transcript_hash_[n] and the
    Commit's confirmation tag (§8.2); a new member uses GroupInfo's tag."""
    return hash_(confirmed + encode(InterimTranscriptHashInput(tag)))


def confirmation_tag(confirmation_key: bytes, confirmed: bytes) -> bytes:
    """MAC(confirmation_key, GroupContext.confirmed_transcript_hash) — §6.1."""
    return hmac_(confirmation_key, confirmed)


def verify_confirmation_tag(confirmation_key: bytes, confirmed: bytes, tag: bytes) -> None:
    """Compare in constant time; raises :class:`BadConfirmationTag`."""
    if not hmac.compare_digest(confirmation_tag(confirmation_key, confirmed), tag):
        raise BadConfirmationTag("confirmation tag does not match")


def membership_tag(membership_key: bytes, content_tbs: FramedContentTBS, auth: FramedContentAuthData) -> bytes:
    """membership_tag = MAC(membership_key, AuthenticatedContentTBM) — §6.2."""
    return hmac_(membership_key, encode(AuthenticatedContentTBM(content_tbs, auth)))


@dataclass(frozen=True)
class TranscriptHashes:
    """The pair of transcript hashes a group state carries (§8.2)."""

    confirmed: bytes = b""
    interim: bytes = b""

    @classmethod
    def for_new_group(cls, confirmation_key: bytes) -> "TranscriptHashes":
        """Epoch 0 (§11): an empty confirmed hash, and the interim hash over
        the confirmation tag computed on it."""
        return cls.from_group_info(b"", confirmation_tag(confirmation_key, b""))

    @classmethod
    def from_group_info(cls, confirmed: bytes, tag: bytes) -> "TranscriptHashes":
        """A new member's hashes from GroupInfo's confirmed hash and tag (§12.4.3.1)."""
        return cls(confirmed, interim_transcript_hash(confirmed, tag))

    def confirm(self, commit: AuthenticatedContent) -> bytes:
        """The confirmed transcript hash of the next epoch (needed before the
        confirmation tag exists: the tag is computed over it)."""
        return confirmed_transcript_hash(self.interim, commit)

    def update(self, commit: AuthenticatedContent) -> "TranscriptHashes":
        """Both hashes after ``commit``, whose auth carries the confirmation tag."""
        if commit.auth.confirmation_tag is None:
            raise ValueError("a Commit's auth carries a confirmation tag")
        confirmed = self.confirm(commit)
        return TranscriptHashes(confirmed, interim_transcript_hash(confirmed, commit.auth.confirmation_tag))
