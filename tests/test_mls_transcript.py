"""Transcript hashes and confirmation / membership tags (RFC 9420 §6.1, §6.2, §8.2)."""

import dataclasses

import pytest

from tests.conftest import vector_params
from phoenix_ref.codec import decode
from phoenix_ref.mls import MlsError
from phoenix_ref.mls.messages import AuthenticatedContent, ContentType
from phoenix_ref.mls.transcript import (
    BadConfirmationTag,
    TranscriptHashes,
    confirmation_tag,
    confirmed_transcript_hash,
    interim_transcript_hash,
    verify_confirmation_tag,
)


@pytest.mark.parametrize("v", vector_params("transcript-hashes.json"))
def test_transcript_hashes_vector(v):
    content = decode(AuthenticatedContent, bytes.fromhex(v["authenticated_content"]))
    assert content.content.content_type == ContentType.commit
    confirmed_after = bytes.fromhex(v["confirmed_transcript_hash_after"])
    key = bytes.fromhex(v["confirmation_key"])
    verify_confirmation_tag(key, confirmed_after, content.auth.confirmation_tag)
    assert confirmation_tag(key, confirmed_after) == content.auth.confirmation_tag

    before = bytes.fromhex(v["interim_transcript_hash_before"])
    assert confirmed_transcript_hash(before, content) == confirmed_after
    assert interim_transcript_hash(confirmed_after, content.auth.confirmation_tag).hex() == \
        v["interim_transcript_hash_after"]
    after = TranscriptHashes(b"", before).update(content)
    assert after.confirmed.hex() == v["confirmed_transcript_hash_after"]
    assert after.interim.hex() == v["interim_transcript_hash_after"]


@pytest.mark.parametrize("v", vector_params("transcript-hashes.json"))
def test_tampered_confirmation_tag_is_rejected(v):
    content = decode(AuthenticatedContent, bytes.fromhex(v["authenticated_content"]))
    tag = bytearray(content.auth.confirmation_tag)
    tag[0] ^= 1
    with pytest.raises(BadConfirmationTag) as e:
        verify_confirmation_tag(bytes.fromhex(v["confirmation_key"]),
                                bytes.fromhex(v["confirmed_transcript_hash_after"]), bytes(tag))
    assert isinstance(e.value, MlsError)
    # The confirmed hash covers the signature, the interim hash does not change it.
    other_sig = dataclasses.replace(content, auth=dataclasses.replace(content.auth, signature=b"x"))
    before = bytes.fromhex(v["interim_transcript_hash_before"])
    assert confirmed_transcript_hash(before, other_sig) != confirmed_transcript_hash(before, content)


def test_new_group_hashes():
    key = b"\x01" * 32
    h = TranscriptHashes.for_new_group(key)
    assert h.confirmed == b""
    assert h.interim == interim_transcript_hash(b"", confirmation_tag(key, b""))
