"""Secret tree, hash ratchets and sender-data keys (RFC 9420 §6.3.2, §9)."""

import pytest

from tests.conftest import vector_params
from phoenix_ref.mls import MlsError
from phoenix_ref.mls.secret_tree import (
    GenerationUnavailable,
    HashRatchet,
    SecretTree,
    UnknownLeaf,
    sender_data_key_nonce,
)


@pytest.mark.parametrize("v", vector_params("secret-tree.json"))
def test_secret_tree_vector(v):
    sd = v["sender_data"]
    key, nonce = sender_data_key_nonce(bytes.fromhex(sd["sender_data_secret"]), bytes.fromhex(sd["ciphertext"]))
    assert key.hex() == sd["key"]
    assert nonce.hex() == sd["nonce"]

    tree = SecretTree(bytes.fromhex(v["encryption_secret"]), len(v["leaves"]))
    for i, entries in enumerate(v["leaves"]):
        for e in entries:
            hs = tree.handshake_key(i, e["generation"])
            app = tree.application_key(i, e["generation"])
            assert hs.generation == app.generation == e["generation"]
            assert hs.key.hex() == e["handshake_key"]
            assert hs.nonce.hex() == e["handshake_nonce"]
            assert app.key.hex() == e["application_key"]
            assert app.nonce.hex() == e["application_nonce"]


def test_sender_and_receiver_agree_and_keys_are_single_use():
    secret = bytes(range(32))
    sender, receiver = SecretTree(secret, 4), SecretTree(secret, 4)
    sent = [sender.next_application_key(3) for _ in range(5)]
    assert [k.generation for k in sent] == [0, 1, 2, 3, 4]
    # out of order: 4 first, then 1, then 0
    assert receiver.application_key(3, 4) == sent[4]
    assert receiver.application_key(3, 1) == sent[1]
    assert receiver.application_key(3, 0) == sent[0]
    with pytest.raises(GenerationUnavailable):
        receiver.application_key(3, 1)  # replay
    assert receiver.application_key(3, 5) == sender.next_application_key(3)
    # handshake and application ratchets are independent
    assert receiver.handshake_key(3, 0) == sender.next_handshake_key(3)
    assert receiver.handshake_key(3, 0 + 1).key != sent[1].key


def test_leaf_secrets_do_not_depend_on_derivation_order():
    secret = b"\x07" * 32
    a, b = SecretTree(secret, 8), SecretTree(secret, 8)
    forward = [a.application_key(i, 0) for i in range(8)]
    backward = [b.application_key(i, 0) for i in reversed(range(8))][::-1]
    assert forward == backward
    assert len({k.key for k in forward}) == 8


def test_forward_limit_and_skipped_key_eviction():
    tree = SecretTree(b"\x01" * 32, 2, max_forward=10, max_skipped=3)
    with pytest.raises(GenerationUnavailable):
        tree.application_key(0, 11)
    tree.application_key(0, 10)  # 0..9 skipped, only 7, 8, 9 kept
    with pytest.raises(GenerationUnavailable):
        tree.application_key(0, 6)
    tree.application_key(0, 7)
    tree.application_key(0, 9)


def test_unknown_leaf_is_a_typed_mls_error():
    tree = SecretTree(b"\x01" * 32, 3)
    with pytest.raises(UnknownLeaf):
        tree.application_key(3, 0)
    with pytest.raises(MlsError):
        tree.next_handshake_key(-1)
    tree.application_key(2, 0)  # the padded width holds leaf 2


def test_consumed_node_secrets_are_dropped():
    tree = SecretTree(b"\x02" * 32, 4)
    tree.application_key(0, 0)
    # the root and the left subtree root were consumed; leaves 1, 2-3 parent remain
    assert set(tree._nodes) == {2, 5}
    r = HashRatchet(b"\x03" * 32)
    r.next()
    assert r.generation == 1 and not r._skipped


def test_sender_data_sample_is_truncated_to_nh():
    secret = b"\x05" * 32
    long_ct = bytes(range(40))
    assert sender_data_key_nonce(secret, long_ct) == sender_data_key_nonce(secret, long_ct[:32])
    assert sender_data_key_nonce(secret, b"ab") != sender_data_key_nonce(secret, b"abc")
