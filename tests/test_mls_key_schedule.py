"""The key schedule (RFC 9420 §8, §8.3, §8.5, §11, §12.4.3.1)."""

import pytest

from tests.conftest import vector_params
from phoenix_ref.codec import encode
from phoenix_ref.crypto import NH, CryptoError, HpkeKeyPair
from phoenix_ref.mls.key_schedule import (
    EPOCH_SECRET_LABELS,
    EpochSecrets,
    external_init_receiver,
    external_init_sender,
    joiner_secret,
    welcome_key_nonce,
    welcome_secret,
)
from phoenix_ref.mls.messages import GroupContext, ProtocolVersion

SECRET_FIELDS = ["joiner_secret", "welcome_secret", *EPOCH_SECRET_LABELS]


@pytest.mark.parametrize("v", vector_params("key-schedule.json"))
def test_key_schedule_vector(v):
    init_secret = bytes.fromhex(v["initial_init_secret"])
    for n, e in enumerate(v["epochs"]):
        ctx = GroupContext(ProtocolVersion.mls10, v["cipher_suite"], bytes.fromhex(v["group_id"]), n,
                           bytes.fromhex(e["tree_hash"]), bytes.fromhex(e["confirmed_transcript_hash"]), [])
        assert encode(ctx).hex() == e["group_context"], f"epoch {n}"
        s = EpochSecrets.from_epoch(init_secret, bytes.fromhex(e["commit_secret"]),
                                    bytes.fromhex(e["psk_secret"]), ctx)
        for field in SECRET_FIELDS:
            assert getattr(s, field).hex() == e[field], f"epoch {n}: {field}"
        assert s.external_pub.hex() == e["external_pub"]
        x = e["exporter"]
        # The vectors' exporter label is a text label used as is.
        assert s.exporter(x["label"], bytes.fromhex(x["context"]), x["length"]).hex() == x["secret"]
        # A joiner holding only joiner_secret reaches the same epoch.
        joined = EpochSecrets.from_joiner(s.joiner_secret, bytes.fromhex(e["psk_secret"]), encode(ctx))
        assert joined == s
        init_secret = s.init_secret


def test_absent_commit_and_psk_secrets_are_zero_vectors():
    ctx = b"some group context"
    init = b"\x11" * NH
    assert EpochSecrets.from_epoch(init, None, None, ctx) == \
        EpochSecrets.from_epoch(init, bytes(NH), bytes(NH), ctx)
    assert EpochSecrets.from_epoch(init, None, b"\x01" * NH, ctx) != \
        EpochSecrets.from_epoch(init, None, None, ctx)


def test_welcome_secret_and_key_nonce():
    js = joiner_secret(b"\x01" * NH, b"\x02" * NH, b"ctx")
    s = EpochSecrets.from_joiner(js, None, b"ctx")
    assert s.welcome_secret == welcome_secret(js, None)
    key, nonce = welcome_key_nonce(s.welcome_secret)
    assert (len(key), len(nonce)) == (16, 12)


def test_new_group_epoch_has_no_joiner_secret_and_is_random():
    a, b = EpochSecrets.for_new_group(), EpochSecrets.for_new_group()
    assert a.joiner_secret is None and a.welcome_secret is None
    assert a.epoch_secret != b.epoch_secret
    assert EpochSecrets.from_epoch_secret(a.epoch_secret) == a


def test_secrets_are_distinct():
    s = EpochSecrets.from_epoch(b"\x01" * NH, b"\x02" * NH, None, b"ctx")
    values = [getattr(s, f) for f in SECRET_FIELDS] + [s.epoch_secret]
    assert len(set(values)) == len(values)


def test_external_init_roundtrip():
    s = EpochSecrets.from_epoch(b"\x01" * NH, b"\x02" * NH, None, b"ctx")
    kp = s.external_key_pair()
    assert kp == HpkeKeyPair.derive(s.external_secret)
    kem_output, init_secret = external_init_sender(kp.public)
    assert len(init_secret) == NH
    assert external_init_receiver(kp.private, kem_output) == init_secret
    other = HpkeKeyPair.generate()
    assert external_init_receiver(other.private, kem_output) != init_secret
    with pytest.raises(CryptoError):
        external_init_receiver(kp.private, b"\x00" * 5)
