"""Ciphersuite 1 against RFC 9420 crypto-basics vectors (RFC 9420 §5, §8)."""

import pytest

from phoenix_ref import crypto
from tests.conftest import vector_params

h = bytes.fromhex


@pytest.mark.parametrize("v", vector_params("crypto-basics.json"))
def test_crypto_basics(v):
    assert v["cipher_suite"] == 1
    r = v["ref_hash"]
    assert crypto.ref_hash(r["label"], h(r["value"])) == h(r["out"])
    e = v["expand_with_label"]
    assert crypto.expand_with_label(h(e["secret"]), e["label"], h(e["context"]), e["length"]) == h(e["out"])
    d = v["derive_secret"]
    assert crypto.derive_secret(h(d["secret"]), d["label"]) == h(d["out"])
    t = v["derive_tree_secret"]
    assert crypto.derive_tree_secret(h(t["secret"]), t["label"], t["generation"], t["length"]) == h(t["out"])
    s = v["sign_with_label"]
    crypto.verify_with_label(h(s["pub"]), s["label"], h(s["content"]), h(s["signature"]))
    mine = crypto.sign_with_label(h(s["priv"]), s["label"], h(s["content"]))
    crypto.verify_with_label(h(s["pub"]), s["label"], h(s["content"]), mine)
    with pytest.raises(crypto.CryptoError):
        crypto.verify_with_label(h(s["pub"]), s["label"] + "x", h(s["content"]), mine)
    x = v["encrypt_with_label"]
    pt = crypto.decrypt_with_label(h(x["priv"]), x["label"], h(x["context"]), h(x["kem_output"]), h(x["ciphertext"]))
    assert pt == h(x["plaintext"])
    ct = crypto.encrypt_with_label(h(x["pub"]), x["label"], h(x["context"]), h(x["plaintext"]))
    assert crypto.decrypt_with_label(h(x["priv"]), x["label"], h(x["context"]), ct.kem_output, ct.ciphertext) == h(x["plaintext"])


def test_homeserver_label_is_distinct_from_mls():
    key = crypto.SigningKey.generate()
    sig = crypto.hs_sign(key, "QsToQsMessage", b"payload")
    crypto.hs_verify(key.public, "QsToQsMessage", b"payload", sig)
    with pytest.raises(crypto.CryptoError):
        crypto.verify_with_label(key.public, "QsToQsMessage", b"payload", sig)
    with pytest.raises(crypto.CryptoError):
        crypto.hs_verify(key.public, "Other", b"payload", sig)


def test_hpke_auth_mode_binds_sender():
    recipient, sender, other = (crypto.HpkeKeyPair.generate() for _ in range(3))
    enc, ct = crypto.hpke_seal(recipient.public, b"info", b"aad", b"hello", sender=sender)
    assert crypto.hpke_open(recipient.private, enc, b"info", b"aad", ct, sender_public=sender.public) == b"hello"
    with pytest.raises(crypto.CryptoError):
        crypto.hpke_open(recipient.private, enc, b"info", b"aad", ct, sender_public=other.public)
    with pytest.raises(crypto.CryptoError):
        crypto.hpke_open(recipient.private, enc, b"info", b"aad", ct)
