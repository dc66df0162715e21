"""RFC 9420 wire structs against the interop vectors (messages.json)."""

import pytest

from phoenix_ref.codec import DecodeError, EncodeError, decode, encode
from phoenix_ref.mls import messages as m
from tests.conftest import vector_params

# messages.json field -> (wire type, expected MLSMessage wire format or None)
FIELDS = {
    "mls_welcome": (m.MLSMessage, m.WireFormat.mls_welcome),
    "mls_group_info": (m.MLSMessage, m.WireFormat.mls_group_info),
    "mls_key_package": (m.MLSMessage, m.WireFormat.mls_key_package),
    "ratchet_tree": (m.RatchetTree, None),
    "group_secrets": (m.GroupSecrets, None),
    "add_proposal": (m.Add, None),
    "update_proposal": (m.Update, None),
    "remove_proposal": (m.Remove, None),
    "pre_shared_key_proposal": (m.PreSharedKey, None),
    "re_init_proposal": (m.ReInit, None),
    "external_init_proposal": (m.ExternalInit, None),
    "group_context_extensions_proposal": (m.GroupContextExtensions, None),
    "commit": (m.Commit, None),
    "public_message_application": (m.MLSMessage, m.WireFormat.mls_public_message),
    "public_message_proposal": (m.MLSMessage, m.WireFormat.mls_public_message),
    "public_message_commit": (m.MLSMessage, m.WireFormat.mls_public_message),
    "private_message": (m.MLSMessage, m.WireFormat.mls_private_message),
}

CONTENT_TYPE = {
    "public_message_application": m.ContentType.application,
    "public_message_proposal": m.ContentType.proposal,
    "public_message_commit": m.ContentType.commit,
}


@pytest.mark.parametrize("vector", vector_params("messages.json"))
def test_messages_vector(vector):
    assert set(vector) == set(FIELDS)
    for name, (wire, wire_format) in FIELDS.items():
        data = bytes.fromhex(vector[name])
        value = decode(wire, data)
        assert encode(value, wire) == data, name
        if wire_format is not None:
            assert value.wire_format == wire_format, name
            assert value.body is not None
        if name in CONTENT_TYPE:
            assert value.public_message.content.content_type == CONTENT_TYPE[name]
            if CONTENT_TYPE[name] == m.ContentType.commit:
                assert value.public_message.auth.confirmation_tag is not None
            else:
                assert value.public_message.auth.confirmation_tag is None


def _sample_leaf(source=m.LeafNodeSource.update):
    return m.LeafNode(
        b"\x01" * 32, b"\x02" * 32, m.Credential.basic(b"alice"),
        m.Capabilities([1], [1], [], [], [1]), source,
        m.Lifetime(0, 10) if source == m.LeafNodeSource.key_package else None,
        b"ph" if source == m.LeafNodeSource.commit else None, [], b"sig")


def test_credential_unknown_type_is_refused():
    good = encode(m.Credential.basic(b"alice"))
    assert decode(m.Credential, good) == m.Credential.basic(b"alice")
    bad = b"\x00\x07" + good[2:]
    with pytest.raises(DecodeError, match="CredentialType"):
        decode(m.Credential, bad)


def test_select_field_must_match_selector():
    with pytest.raises(EncodeError):
        encode(m.Credential(m.CredentialType.basic, identity=b"a", certificates=[]))


def test_leaf_node_tbs_includes_group_only_for_update_and_commit():
    kp_leaf = _sample_leaf(m.LeafNodeSource.key_package)
    assert m.leaf_node_tbs(kp_leaf, b"group", 3) == m.leaf_node_tbs(kp_leaf, None, None)
    upd = _sample_leaf(m.LeafNodeSource.update)
    tbs = m.leaf_node_tbs(upd, b"group", 3)
    assert tbs.endswith(b"\x05group\x00\x00\x00\x03")
    with pytest.raises(ValueError):
        m.leaf_node_tbs(upd, None, None)


def test_public_message_confirmation_tag_and_membership_tag():
    commit = m.Commit([m.ProposalOrRef.by_value(m.Remove(2))], None)
    content = m.FramedContent(b"g", 1, m.Sender.member(0), b"", m.ContentType.commit, commit=commit)
    pm = m.PublicMessage(content, m.FramedContentAuthData(b"s", b"tag"), b"mac")
    msg = m.MLSMessage.wrap(pm)
    assert decode(m.MLSMessage, encode(msg)) == msg
    # a commit without its confirmation tag cannot be encoded
    with pytest.raises(EncodeError):
        encode(m.PublicMessage(content, m.FramedContentAuthData(b"s"), b"mac"))
    # an external sender carries no membership tag
    ext = m.FramedContent(b"g", 1, m.Sender.external(0), b"", m.ContentType.proposal,
                          proposal=m.Remove(1))
    pm2 = m.PublicMessage(ext, m.FramedContentAuthData(b"s"))
    assert decode(m.PublicMessage, encode(pm2)) == pm2


def test_private_message_content_padding():
    pmc = m.PrivateMessageContent(b"hello", None, None, m.FramedContentAuthData(b"sig"), 5)
    data = m.encode_private_message_content(pmc)
    assert data.endswith(bytes(5))
    assert m.decode_private_message_content(data, m.ContentType.application) == pmc
    with pytest.raises(DecodeError, match="padding"):
        m.decode_private_message_content(data + b"\x01", m.ContentType.application)
    commit = m.PrivateMessageContent(None, None, m.Commit([], None),
                                     m.FramedContentAuthData(b"sig", b"tag"))
    data = m.encode_private_message_content(commit)
    assert m.decode_private_message_content(data, m.ContentType.commit) == commit


def test_refs_are_ref_hashes():
    from phoenix_ref import crypto
    kp = m.KeyPackage(m.ProtocolVersion.mls10, 1, b"i" * 32,
                      _sample_leaf(m.LeafNodeSource.key_package), [], b"sig")
    assert m.make_key_package_ref(kp) == crypto.ref_hash(
        b"MLS 1.0 KeyPackage Reference", encode(kp))
    assert len(m.make_key_package_ref(kp)) == 32


# --- fuzz: any input decodes or raises DecodeError, never anything else --------------

from hypothesis import given, settings, strategies as st  # noqa: E402

from phoenix_ref.shared import mls_vectors  # noqa: E402

_SAMPLE = mls_vectors("messages.json")[0]


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(sorted(FIELDS)), pos=st.integers(min_value=0), byte=st.integers(0, 255),
       cut=st.booleans())
def test_mutated_vectors_decode_strictly(field, pos, byte, cut):
    wire, _ = FIELDS[field]
    data = bytearray.fromhex(_SAMPLE[field])
    pos %= len(data)
    if cut:
        del data[pos:]
    else:
        data[pos] = byte
    try:
        value = decode(wire, bytes(data))
    except DecodeError:
        return
    assert encode(value, wire) == bytes(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_as_mls_message(data):
    try:
        value = decode(m.MLSMessage, data)
    except DecodeError:
        return
    assert encode(value) == data
