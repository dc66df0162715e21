"""Message framing: PublicMessage and PrivateMessage protection (RFC 9420 §6)."""

import dataclasses

import pytest

from tests.conftest import vector_params
from phoenix_ref.codec import decode, encode
from phoenix_ref.crypto import SigningKey
from phoenix_ref.mls import MlsError
from phoenix_ref.mls.framing import (
    BadMembershipTag,
    BadSignature,
    ContentNotAllowed,
    DecryptionFailed,
    InvalidSender,
    MalformedMessage,
    WrongEpoch,
    WrongGroup,
    authenticate,
    build_content,
    content_body,
    decode_mls_message,
    protect_private,
    protect_public,
    unprotect_private,
    unprotect_public,
    with_confirmation_tag,
)
from phoenix_ref.mls.messages import (
    Commit,
    ContentType,
    GroupContext,
    MLSMessage,
    Proposal,
    ProtocolVersion,
    Remove,
    Sender,
    WireFormat,
    decode_proposal,
)
from phoenix_ref.mls.secret_tree import GenerationUnavailable, SecretTree

SENDER = 1  # FORMAT.md: the member with LeafIndex 1 sends


def _ctx(v):
    return GroupContext(ProtocolVersion.mls10, v["cipher_suite"], bytes.fromhex(v["group_id"]), v["epoch"],
                        bytes.fromhex(v["tree_hash"]), bytes.fromhex(v["confirmed_transcript_hash"]), [])


def _tree(v):
    return SecretTree(bytes.fromhex(v["encryption_secret"]), 2)


def _raw(kind, v):
    data = bytes.fromhex(v[kind])
    return {"proposal": lambda: decode_proposal(data), "commit": lambda: decode(Commit, data),
            "application": lambda: data}[kind]()


def _protect(kind, v, wire_format, tag=b"\x5a" * 32):
    ctx = _ctx(v)
    content = build_content(ctx.group_id, ctx.epoch, Sender.member(SENDER), _raw(kind, v))
    return authenticate(bytes.fromhex(v["signature_priv"]), wire_format, content, ctx,
                        tag if kind == "commit" else None)


@pytest.mark.parametrize("v", vector_params("message-protection.json"))
@pytest.mark.parametrize("kind", ["proposal", "commit"])
def test_public_message_vector(v, kind):
    ctx, membership_key, pub = _ctx(v), bytes.fromhex(v["membership_key"]), bytes.fromhex(v["signature_pub"])
    msg = decode_mls_message(bytes.fromhex(v[f"{kind}_pub"]))
    assert msg.wire_format == WireFormat.mls_public_message
    content = unprotect_public(msg.public_message, ctx, membership_key, pub)
    body = content_body(content.content)
    assert (encode(body, Proposal) if kind == "proposal" else encode(body)).hex() == v[kind]
    assert content.content.sender == Sender.member(SENDER)

    # protect the raw value, then unprotect it again
    ours = protect_public(_protect(kind, v, WireFormat.mls_public_message), ctx, membership_key)
    wire = encode(MLSMessage.wrap(ours))
    again = unprotect_public(decode_mls_message(wire).public_message, ctx, membership_key, pub)
    assert content_body(again.content) == _raw(kind, v)


@pytest.mark.parametrize("v", vector_params("message-protection.json"))
def test_application_cannot_be_a_public_message(v):
    ctx, key = _ctx(v), bytes.fromhex(v["membership_key"])
    ac = _protect("application", v, WireFormat.mls_public_message)
    with pytest.raises(ContentNotAllowed):
        protect_public(ac, ctx, key)
    # nor is one accepted: build it by hand, with a valid signature and tag
    from phoenix_ref.mls.framing import content_tbs
    from phoenix_ref.mls.messages import PublicMessage
    from phoenix_ref.mls.transcript import membership_tag
    tag = membership_tag(key, content_tbs(ac.wire_format, ac.content, ctx), ac.auth)
    with pytest.raises(ContentNotAllowed):
        unprotect_public(PublicMessage(ac.content, ac.auth, tag), ctx, key, bytes.fromhex(v["signature_pub"]))


@pytest.mark.parametrize("v", vector_params("message-protection.json"))
@pytest.mark.parametrize("kind", ["proposal", "commit", "application"])
def test_private_message_vector(v, kind):
    ctx, sds, pub = _ctx(v), bytes.fromhex(v["sender_data_secret"]), bytes.fromhex(v["signature_pub"])
    msg = decode_mls_message(bytes.fromhex(v[f"{kind}_priv"]))
    assert msg.wire_format == WireFormat.mls_private_message
    content = unprotect_private(msg.private_message, ctx, _tree(v), sds, pub)
    assert content_body(content.content) == _raw(kind, v)
    assert content.content.sender == Sender.member(SENDER)
    assert content.wire_format == WireFormat.mls_private_message

    # protect the raw value with one tree, unprotect it with a fresh one
    ours = protect_private(_protect(kind, v, WireFormat.mls_private_message), _tree(v), sds, padding=17)
    wire = encode(MLSMessage.wrap(ours))
    again = unprotect_private(decode_mls_message(wire).private_message, ctx, _tree(v), sds, pub)
    assert content_body(again.content) == _raw(kind, v)


# --- negative cases ------------------------------------------------------------------

@pytest.fixture
def v():
    return vector_params("message-protection.json")[0].values[0]


def test_public_message_checks(v):
    ctx, key, pub = _ctx(v), bytes.fromhex(v["membership_key"]), bytes.fromhex(v["signature_pub"])
    msg = decode_mls_message(bytes.fromhex(v["proposal_pub"])).public_message
    with pytest.raises(BadMembershipTag):
        unprotect_public(msg, ctx, b"\x00" * 32, pub)
    with pytest.raises(BadMembershipTag):
        unprotect_public(dataclasses.replace(msg, membership_tag=b""), ctx, key, pub)
    with pytest.raises(BadSignature):
        unprotect_public(msg, ctx, key, SigningKey.generate().public)
    with pytest.raises(WrongEpoch):
        unprotect_public(msg, dataclasses.replace(ctx, epoch=ctx.epoch + 1), key, pub)
    with pytest.raises(WrongGroup):
        unprotect_public(msg, dataclasses.replace(ctx, group_id=b"other"), key, pub)
    # the signature covers the GroupContext: a different context breaks it even
    # when the membership tag is recomputed for that context
    other = dataclasses.replace(ctx, tree_hash=b"\x00" * 32)
    ac = _protect("proposal", v, WireFormat.mls_public_message)
    with pytest.raises(BadSignature):
        unprotect_public(protect_public(ac, other, key), other, key, pub)
    # the signer lookup receives the sender
    seen = []
    unprotect_public(msg, ctx, key, lambda s: seen.append(s) or pub)
    assert seen == [Sender.member(SENDER)]


def test_external_sender_public_message_has_no_membership_tag(v):
    ctx = _ctx(v)
    sk = SigningKey.generate()
    content = build_content(ctx.group_id, ctx.epoch, Sender.external(0), Remove(0))
    ac = authenticate(sk, WireFormat.mls_public_message, content, None)
    msg = protect_public(ac, ctx, None)
    assert msg.membership_tag is None
    assert unprotect_public(msg, ctx, None, sk.public) == ac


def test_private_message_checks(v):
    ctx, sds, pub = _ctx(v), bytes.fromhex(v["sender_data_secret"]), bytes.fromhex(v["signature_pub"])
    msg = decode_mls_message(bytes.fromhex(v["application_priv"])).private_message
    with pytest.raises(DecryptionFailed):
        unprotect_private(msg, ctx, _tree(v), b"\x00" * 32, pub)
    with pytest.raises(DecryptionFailed):
        unprotect_private(dataclasses.replace(msg, authenticated_data=b"x"), ctx, _tree(v), sds, pub)
    with pytest.raises(BadSignature):
        unprotect_private(msg, ctx, _tree(v), sds, SigningKey.generate().public)
    with pytest.raises(WrongEpoch):
        unprotect_private(msg, dataclasses.replace(ctx, epoch=ctx.epoch + 1), _tree(v), sds, pub)
    # a replay is refused: the generation's key was consumed
    tree = _tree(v)
    unprotect_private(msg, ctx, tree, sds, pub)
    with pytest.raises(GenerationUnavailable):
        unprotect_private(msg, ctx, tree, sds, pub)
    # the sender-data key depends on the ciphertext sample
    forged = dataclasses.replace(msg, ciphertext=bytes(len(msg.ciphertext)))
    with pytest.raises(DecryptionFailed):
        unprotect_private(forged, ctx, _tree(v), sds, pub)


def test_content_with_tampered_ciphertext_keeps_key(v):
    ctx, sds, pub = _ctx(v), bytes.fromhex(v["sender_data_secret"]), bytes.fromhex(v["signature_pub"])
    ac = _protect("application", v, WireFormat.mls_private_message)
    good = protect_private(ac, _tree(v), sds)
    # flip the last byte (the AEAD tag): the sample, hence the sender data, still
    # decrypts, the content does not — and the generation's key must survive
    assert len(good.ciphertext) > 32
    bad = dataclasses.replace(good, ciphertext=good.ciphertext[:-1] + bytes([good.ciphertext[-1] ^ 1]))
    receiver = _tree(v)
    with pytest.raises(DecryptionFailed):
        unprotect_private(bad, ctx, receiver, sds, pub)
    assert content_body(unprotect_private(good, ctx, receiver, sds, pub).content) == _raw("application", v)


def test_nonzero_padding_is_malformed(v, monkeypatch):
    import phoenix_ref.mls.framing as framing
    ctx, sds, pub = _ctx(v), bytes.fromhex(v["sender_data_secret"]), bytes.fromhex(v["signature_pub"])
    real = framing.encode_private_message_content
    monkeypatch.setattr(framing, "encode_private_message_content", lambda pmc: real(pmc) + b"\x00\x01")
    msg = protect_private(_protect("application", v, WireFormat.mls_private_message), _tree(v), sds)
    monkeypatch.undo()
    with pytest.raises(MalformedMessage):
        unprotect_private(msg, ctx, _tree(v), sds, pub)


def test_private_message_only_from_members(v):
    ctx = _ctx(v)
    sk = SigningKey.generate()
    content = build_content(ctx.group_id, ctx.epoch, Sender.external(0), Remove(0))
    ac = authenticate(sk, WireFormat.mls_private_message, content, None)
    with pytest.raises(InvalidSender):
        protect_private(ac, _tree(v), b"\x00" * 32)


def test_commit_confirmation_tag_added_after_signing(v):
    ctx = _ctx(v)
    commit = _raw("commit", v)
    content = build_content(ctx.group_id, ctx.epoch, Sender.member(SENDER), commit)
    ac = authenticate(bytes.fromhex(v["signature_priv"]), WireFormat.mls_public_message, content, ctx)
    assert ac.auth.confirmation_tag is None
    with pytest.raises(ValueError):
        protect_public(ac, ctx, bytes.fromhex(v["membership_key"]))
    tagged = with_confirmation_tag(ac, b"\x07" * 32)
    msg = protect_public(tagged, ctx, bytes.fromhex(v["membership_key"]))
    assert msg.auth.confirmation_tag == b"\x07" * 32
    assert tagged.content.content_type == ContentType.commit


def test_decode_mls_message_errors_are_typed():
    with pytest.raises(MalformedMessage):
        decode_mls_message(b"\x00\x01\x00")
    with pytest.raises(MlsError):
        decode_mls_message(b"")


def test_reuse_guard_is_xored_into_the_nonce_and_fresh_by_default(v):
    from phoenix_ref.mls.framing import _guarded
    assert _guarded(bytes(12), b"\x01\x02\x03\x04") == b"\x01\x02\x03\x04" + bytes(8)
    assert _guarded(b"\xff" * 12, b"\xff\x00\xff\x00") == b"\x00\xff\x00\xff" + b"\xff" * 8
    sds = bytes.fromhex(v["sender_data_secret"])
    ac = _protect("application", v, WireFormat.mls_private_message)
    a = protect_private(ac, _tree(v), sds)
    b = protect_private(ac, _tree(v), sds)  # same generation 0 from a fresh tree
    assert a.ciphertext != b.ciphertext
