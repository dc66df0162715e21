"""Welcome creation and processing (RFC 9420 §12.4.3, §12.4.3.1)."""

import dataclasses

import pytest

from tests.conftest import vector_params
from phoenix_ref.crypto import HpkeKeyPair, SigningKey
from phoenix_ref.mls import MlsError
from phoenix_ref.mls.framing import BadSignature, DecryptionFailed, decode_mls_message
from phoenix_ref.mls.key_schedule import EpochSecrets
from phoenix_ref.mls.messages import Extension, GroupContext, ProtocolVersion, ResumptionPSKUsage
from phoenix_ref.mls.psk import MissingPsk, external_psk_id, psk_secret, resumption_psk_id
from phoenix_ref.mls.transcript import BadConfirmationTag, confirmation_tag, interim_transcript_hash
from phoenix_ref.mls.welcome import (
    CipherSuiteMismatch,
    InvalidGroupInfo,
    InvalidWelcome,
    NotForThisKeyPackage,
    create_welcome,
    decrypt_group_secrets,
    open_welcome,
    sign_group_info,
    verify_group_info,
)


@pytest.mark.parametrize("v", vector_params("welcome.json"))
def test_welcome_vector(v):
    kp = decode_mls_message(bytes.fromhex(v["key_package"])).key_package
    welcome = decode_mls_message(bytes.fromhex(v["welcome"])).welcome
    signer_pub = bytes.fromhex(v["signer_pub"])
    opened = open_welcome(welcome, kp, bytes.fromhex(v["init_priv"]), signer_pub)
    # signature and confirmation tag were checked inside; check them again explicitly
    gi = opened.group_info
    verify_group_info(gi, signer_pub)
    epoch = EpochSecrets.from_joiner(opened.group_secrets.joiner_secret, None, gi.group_context)
    assert confirmation_tag(epoch.confirmation_key, gi.group_context.confirmed_transcript_hash) == \
        gi.confirmation_tag
    assert opened.epoch_secrets == epoch
    assert opened.transcript.interim == interim_transcript_hash(
        gi.group_context.confirmed_transcript_hash, gi.confirmation_tag)
    with pytest.raises(BadSignature):
        open_welcome(welcome, kp, bytes.fromhex(v["init_priv"]), SigningKey.generate().public)


# --- a group of our own ---------------------------------------------------------------

def _vector():
    return vector_params("welcome.json")[0].values[0]


def _member(kp):
    """A KeyPackage with a fresh init key (its signature does not matter here)."""
    init = HpkeKeyPair.generate()
    return dataclasses.replace(kp, init_key=init.public), init.private


def _setup(epoch=7, psks=()):
    v = _vector()
    base = decode_mls_message(bytes.fromhex(v["key_package"])).key_package
    committer = SigningKey.generate()
    ctx = GroupContext(ProtocolVersion.mls10, 1, b"group", epoch, b"\x01" * 32, b"\x02" * 32, [])
    joiner = b"\x03" * 32
    epoch_secrets = EpochSecrets.from_joiner(joiner, psk_secret(list(psks)), ctx)
    gi = sign_group_info(committer, ctx, [],
                         confirmation_tag(epoch_secrets.confirmation_key, ctx.confirmed_transcript_hash), 0)
    return base, committer, gi, joiner, epoch_secrets


def test_create_then_open_for_several_members_with_psks():
    psks = [(external_psk_id(b"ext"), b"\x0a" * 32),
            (resumption_psk_id(ResumptionPSKUsage.application, b"group", 3), b"\x0b" * 32)]
    base, committer, gi, joiner, epoch_secrets = _setup(psks=psks)
    alice, alice_priv = _member(base)
    bob, bob_priv = _member(base)
    welcome = create_welcome(gi, joiner, psks, [(alice, b"\x05" * 32), (bob, None)])
    store = {b"ext": b"\x0a" * 32}

    def lookup(pid):
        return store.get(pid.psk_id) if pid.psk_id is not None else b"\x0b" * 32

    a = open_welcome(welcome, alice, alice_priv, committer.public, lookup)
    b = open_welcome(welcome, bob, bob_priv, lambda info: committer.public if info.signer == 0 else b"", lookup)
    assert a.epoch_secrets == b.epoch_secrets == epoch_secrets
    assert a.group_secrets.path_secret.path_secret == b"\x05" * 32
    assert b.group_secrets.path_secret is None
    assert [pid for pid, _ in a.psks] == [pid for pid, _ in psks]
    assert a.group_info == gi

    with pytest.raises(MissingPsk):
        open_welcome(welcome, alice, alice_priv, committer.public)
    with pytest.raises(DecryptionFailed):
        open_welcome(welcome, alice, bob_priv, committer.public, lookup)


def test_welcome_not_for_us_or_other_suite():
    base, committer, gi, joiner, _ = _setup()
    alice, alice_priv = _member(base)
    carol, carol_priv = _member(base)
    welcome = create_welcome(gi, joiner, [], [(alice, None)])
    with pytest.raises(NotForThisKeyPackage):
        open_welcome(welcome, carol, carol_priv, committer.public)
    with pytest.raises(CipherSuiteMismatch):
        decrypt_group_secrets(dataclasses.replace(welcome, cipher_suite=2), alice, alice_priv)


def test_bad_confirmation_tag_and_tampered_group_info():
    base, committer, gi, joiner, _ = _setup()
    alice, alice_priv = _member(base)
    bad_gi = sign_group_info(committer, gi.group_context, [], b"\x00" * 32, 0)
    with pytest.raises(BadConfirmationTag):
        open_welcome(create_welcome(bad_gi, joiner, [], [(alice, None)]), alice, alice_priv, committer.public)
    welcome = create_welcome(gi, joiner, [], [(alice, None)])
    # the group secrets are bound to encrypted_group_info (it is their HPKE context)
    tampered = dataclasses.replace(welcome, encrypted_group_info=welcome.encrypted_group_info[:-1] + b"\x00")
    with pytest.raises(MlsError):
        open_welcome(tampered, alice, alice_priv, committer.public)


def test_reinit_psk_must_join_epoch_one():
    reinit = [(resumption_psk_id(ResumptionPSKUsage.reinit, b"old", 9), b"\x0c" * 32)]
    for epoch, ok in ((1, True), (2, False)):
        base, committer, gi, joiner, _ = _setup(epoch=epoch, psks=reinit)
        alice, alice_priv = _member(base)
        welcome = create_welcome(gi, joiner, reinit, [(alice, None)])
        if ok:
            open_welcome(welcome, alice, alice_priv, committer.public, lambda pid: b"\x0c" * 32)
        else:
            with pytest.raises(InvalidWelcome):
                open_welcome(welcome, alice, alice_priv, committer.public, lambda pid: b"\x0c" * 32)


def test_group_info_extension_lists_name_each_type_once():
    """RFC 9420 §13: neither GroupInfo.extensions nor the GroupContext's may
    hold two extensions of one type; a joiner refuses such a GroupInfo."""
    base, committer, gi, joiner, _ = _setup()
    alice, alice_priv = _member(base)
    twice = [Extension(0xF0AA, b""), Extension(0xF0AA, b"x")]
    for ctx, exts in ((gi.group_context, twice),
                      (dataclasses.replace(gi.group_context, extensions=twice), [])):
        bad = sign_group_info(committer, ctx, exts, gi.confirmation_tag, 0)
        with pytest.raises(InvalidGroupInfo):
            verify_group_info(bad, committer.public)
        with pytest.raises(InvalidGroupInfo):
            open_welcome(create_welcome(bad, joiner, [], [(alice, None)]), alice, alice_priv, committer.public)
