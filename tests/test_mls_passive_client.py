"""The passive-client vectors (RFC 9420 interop, FORMAT.md "Passive Client
Scenarios"), run through the member view :class:`phoenix_ref.mls.group.Group`:
join from the Welcome, check the epoch authenticator, then for each epoch
process its proposals and Commit and check the epoch authenticator again."""

import pytest

from tests.conftest import vector_params
from phoenix_ref.crypto import SigningKey
from phoenix_ref.mls.framing import decode_mls_message
from phoenix_ref.mls.group import Group, ProposalMessage, CommitMessage
from phoenix_ref.mls.keypackage import KeyPackageBundle
from phoenix_ref.mls.treekem import hpke_pair_from_private


def _run(v):
    assert v["cipher_suite"] == 1
    kp = decode_mls_message(bytes.fromhex(v["key_package"])).key_package
    signing = SigningKey.from_private(bytes.fromhex(v["signature_priv"]))
    init_priv = bytes.fromhex(v["init_priv"])
    enc_priv = bytes.fromhex(v["encryption_priv"])
    # the private keys correspond to the KeyPackage's public keys
    assert signing.public == kp.leaf_node.signature_key
    assert hpke_pair_from_private(init_priv).public == kp.init_key
    assert hpke_pair_from_private(enc_priv).public == kp.leaf_node.encryption_key

    bundle = KeyPackageBundle(kp, init_priv, enc_priv, signing)
    welcome = decode_mls_message(bytes.fromhex(v["welcome"])).welcome
    tree = bytes.fromhex(v["ratchet_tree"]) if v["ratchet_tree"] is not None else None
    psks = {bytes.fromhex(p["psk_id"]): bytes.fromhex(p["psk"]) for p in v["external_psks"]}
    group = Group.join_from_welcome(welcome, bundle, ratchet_tree=tree, external_psks=psks)
    assert group.epoch_authenticator.hex() == v["initial_epoch_authenticator"]

    for epoch in v["epochs"]:
        for p in epoch["proposals"]:
            assert isinstance(group.process(bytes.fromhex(p)), ProposalMessage)
        before = group.epoch
        result = group.process(bytes.fromhex(epoch["commit"]))
        assert isinstance(result, CommitMessage) and not result.removed_me
        assert group.epoch == before + 1
        assert group.epoch_authenticator.hex() == epoch["epoch_authenticator"]
    return group


@pytest.mark.parametrize("v", vector_params("passive-client-welcome.json"))
def test_passive_client_welcome(v):
    _run(v)


@pytest.mark.parametrize("v", vector_params("passive-client-handling-commit.json"))
def test_passive_client_handling_commit(v):
    _run(v)


@pytest.mark.parametrize("v", vector_params("passive-client-random.json"))
def test_passive_client_random(v):
    group = _run(v)
    assert group.epoch >= len(v["epochs"])
