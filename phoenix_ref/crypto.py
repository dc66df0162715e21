"""Ciphersuite 1: MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519.

The labelled operations of RFC 9420 §5.1–§5.2 and §8 (SignWithLabel,
EncryptWithLabel, ExpandWithLabel, DeriveSecret, DeriveTreeSecret, RefHash),
the AEAD, HKDF and HPKE (RFC 9180, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
AES-128-GCM) they rest on, and the homeserver's own signature labels.

Homeserver signatures (credentials, QsToQsMessage, auth tokens) use the same
SignContent construction as MLS with the prefix
``"Phoenix Homeserver Protocol 1.0 "`` instead of ``"MLS 1.0 "`` so that a
signature made for one protocol can never verify in the other
(docs/decisions.md, "Signature labels").
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pyhpke import AEADId, CipherSuite, KDFId, KEMId

from .codec import U16, VarBytes, encode, struct

CIPHER_SUITE = 1
MLS_PREFIX = b"MLS 1.0 "
HOMESERVER_PREFIX = b"Phoenix Homeserver Protocol 1.0 "

NH = 32  # hash output length (SHA-256)
NK = 16  # AEAD key length (AES-128-GCM)
NN = 12  # AEAD nonce length
NPK = 32  # X25519 public key length
NSK = 32  # X25519 private key length


class CryptoError(Exception):
    """A cryptographic check failed (bad signature, failed decryption, bad key)."""


# --- hash and KDF -------------------------------------------------------------

def hash_(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def hmac_(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def kdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract (RFC 5869 §2.2) with SHA-256; an empty salt is Nh zeros."""
    return hmac_(salt or bytes(NH), ikm)


def kdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    """HKDF-Expand (RFC 5869 §2.3) with SHA-256."""
    if length > 255 * NH:
        raise ValueError("HKDF-Expand output too long")
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac_(prk, block + info + bytes([counter]))
        out += block
        counter += 1
    return out[:length]


@struct
class KDFLabel:
    """RFC 9420 §8: the info of ExpandWithLabel."""
    length: U16
    label: VarBytes
    context: VarBytes


def expand_with_label(secret: bytes, label: str | bytes, context: bytes, length: int) -> bytes:
    """ExpandWithLabel(Secret, Label, Context, Length) — RFC 9420 §8."""
    lbl = label.encode() if isinstance(label, str) else label
    info = encode(KDFLabel(length, MLS_PREFIX + lbl, context))
    return kdf_expand(secret, info, length)


def derive_secret(secret: bytes, label: str | bytes) -> bytes:
    """DeriveSecret(Secret, Label) = ExpandWithLabel(Secret, Label, "", Nh)."""
    return expand_with_label(secret, label, b"", NH)


def derive_tree_secret(secret: bytes, label: str | bytes, generation: int, length: int) -> bytes:
    """DeriveTreeSecret — RFC 9420 §9.1: the context is the uint32 generation."""
    return expand_with_label(secret, label, generation.to_bytes(4, "big"), length)


@struct
class RefHashInput:
    """RFC 9420 §5.2."""
    label: VarBytes
    value: VarBytes


def ref_hash(label: str | bytes, value: bytes) -> bytes:
    """RefHash(label, value) — RFC 9420 §5.2 (labels are used verbatim)."""
    lbl = label.encode() if isinstance(label, str) else label
    return hash_(encode(RefHashInput(lbl, value)))


# --- signatures ----------------------------------------------------------------

@struct
class SignContent:
    """RFC 9420 §5.1.2."""
    label: VarBytes
    content: VarBytes


@dataclass(frozen=True)
class SigningKey:
    """An Ed25519 key pair; ``public`` is the 32-byte SignaturePublicKey."""
    private: bytes
    public: bytes

    @classmethod
    def generate(cls) -> "SigningKey":
        return cls.from_private(os.urandom(32))

    @classmethod
    def from_private(cls, private: bytes) -> "SigningKey":
        sk = Ed25519PrivateKey.from_private_bytes(private)
        from cryptography.hazmat.primitives import serialization as s
        pub = sk.public_key().public_bytes(s.Encoding.Raw, s.PublicFormat.Raw)
        return cls(private, pub)

    def sign(self, data: bytes) -> bytes:
        return _ed25519_private(self.private).sign(data)


@functools.lru_cache(maxsize=1024)
def _ed25519_private(private: bytes) -> Ed25519PrivateKey:
    """The key object of a private key. Loading one derives the public key
    (a scalar multiplication, as costly as a signature), so the objects of
    keys in use are kept."""
    return Ed25519PrivateKey.from_private_bytes(private)


def verify(public: bytes, data: bytes, signature: bytes) -> None:
    """Raise CryptoError unless ``signature`` is a valid Ed25519 signature."""
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, data)
    except (InvalidSignature, ValueError) as e:
        raise CryptoError("invalid signature") from e


def _sign_content(prefix: bytes, label: str | bytes, content: bytes) -> bytes:
    lbl = label.encode() if isinstance(label, str) else label
    return encode(SignContent(prefix + lbl, content))


def sign_with_label(key: SigningKey | bytes, label: str | bytes, content: bytes) -> bytes:
    """SignWithLabel(SignatureKey, Label, Content) — RFC 9420 §5.1.2."""
    sk = key if isinstance(key, SigningKey) else SigningKey.from_private(key)
    return sk.sign(_sign_content(MLS_PREFIX, label, content))


def verify_with_label(public: bytes, label: str | bytes, content: bytes, signature: bytes) -> None:
    """VerifyWithLabel; raises CryptoError on failure."""
    verify(public, _sign_content(MLS_PREFIX, label, content), signature)


def hs_sign(key: SigningKey, label: str, content: bytes) -> bytes:
    """Homeserver signature: SignWithLabel with the Phoenix prefix."""
    return key.sign(_sign_content(HOMESERVER_PREFIX, label, content))


def hs_verify(public: bytes, label: str, content: bytes, signature: bytes) -> None:
    """Verify a homeserver signature; raises CryptoError on failure."""
    verify(public, _sign_content(HOMESERVER_PREFIX, label, content), signature)


def hs_sign_struct(key: SigningKey, tbs: object) -> bytes:
    """Homeserver signature over an encoded ``@struct``, labelled with the
    struct's class name (one label per signed struct, docs/wire.md)."""
    return hs_sign(key, type(tbs).__name__, encode(tbs))


def hs_verify_struct(public: bytes, tbs: object, signature: bytes) -> None:
    """Verify :func:`hs_sign_struct`; raises CryptoError on failure."""
    hs_verify(public, type(tbs).__name__, encode(tbs), signature)


# --- AEAD ------------------------------------------------------------------------

def aead_seal(key: bytes, nonce: bytes, aad: bytes, plaintext: bytes) -> bytes:
    return AESGCM(key).encrypt(nonce, plaintext, aad)


def aead_open(key: bytes, nonce: bytes, aad: bytes, ciphertext: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, aad)
    except (InvalidTag, ValueError) as e:
        raise CryptoError("AEAD decryption failed") from e


# --- HPKE (RFC 9180) --------------------------------------------------------------

_SUITE = CipherSuite.new(KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, AEADId.AES128_GCM)


@dataclass(frozen=True)
class HpkeKeyPair:
    private: bytes
    public: bytes

    @classmethod
    def generate(cls) -> "HpkeKeyPair":
        return cls.derive(os.urandom(32))

    @classmethod
    def derive(cls, ikm: bytes) -> "HpkeKeyPair":
        """DeriveKeyPair(ikm) — RFC 9180 §7.1.3, as MLS uses it for node keys."""
        kp = _SUITE.kem.derive_key_pair(ikm)
        return cls(kp.private_key.to_private_bytes(), kp.public_key.to_public_bytes())


def _pub(public: bytes):
    try:
        return _SUITE.kem.deserialize_public_key(public)
    except Exception as e:  # pyhpke raises several types for bad keys
        raise CryptoError("invalid HPKE public key") from e


def _priv(private: bytes):
    try:
        return _SUITE.kem.deserialize_private_key(private)
    except Exception as e:
        raise CryptoError("invalid HPKE private key") from e


_DH_PROBE = X25519PrivateKey.generate()


def check_hpke_public_key(public: bytes) -> bytes:
    """A key HPKE can seal to: an X25519 public key that is not a low-order
    point, whose Diffie-Hellman output is all zero (RFC 7748 §6.1; RFC 9180
    §7.1.4 makes DH fail on it). Raises CryptoError; returns the key."""
    if not isinstance(public, (bytes, bytearray)) or len(public) != NPK:
        raise CryptoError(f"an HPKE public key is {NPK} bytes")
    try:
        _DH_PROBE.exchange(X25519PublicKey.from_public_bytes(bytes(public)))
    except ValueError:
        raise CryptoError("the HPKE public key is a low-order X25519 point") from None
    return bytes(public)


def hpke_seal(public: bytes, info: bytes, aad: bytes, plaintext: bytes,
              sender: HpkeKeyPair | None = None) -> tuple[bytes, bytes]:
    """SealBase (or SealAuth when ``sender`` is given); returns (enc, ct).
    Raises CryptoError for a key :func:`check_hpke_public_key` refuses."""
    pk = _pub(check_hpke_public_key(public))
    if sender is None:
        enc, ctx = _SUITE.create_sender_context(pk, info=info)
    else:
        enc, ctx = _SUITE.create_sender_context(pk, info=info, sks=_priv(sender.private))
    return enc, ctx.seal(plaintext, aad=aad)


def hpke_open(private: bytes, enc: bytes, info: bytes, aad: bytes, ciphertext: bytes,
              sender_public: bytes | None = None) -> bytes:
    """OpenBase (or OpenAuth when ``sender_public`` is given)."""
    try:
        if sender_public is None:
            ctx = _SUITE.create_recipient_context(enc, _priv(private), info=info)
        else:
            ctx = _SUITE.create_recipient_context(enc, _priv(private), info=info, pks=_pub(sender_public))
        return ctx.open(ciphertext, aad=aad)
    except CryptoError:
        raise
    except Exception as e:
        raise CryptoError("HPKE decryption failed") from e


def hpke_export_sender(public: bytes, info: bytes, exporter_context: bytes,
                       length: int) -> tuple[bytes, bytes]:
    """SetupBaseS(pkR, info) then Export(exporter_context, L) — RFC 9180 §5.3.

    Returns ``(enc, exported_secret)``; RFC 9420 §8.3 uses it for external init.
    """
    enc, ctx = _SUITE.create_sender_context(_pub(public), info=info)
    return enc, ctx.export(exporter_context, length)


def hpke_export_receiver(private: bytes, enc: bytes, info: bytes, exporter_context: bytes,
                         length: int) -> bytes:
    """SetupBaseR(enc, skR, info) then Export(exporter_context, L); raises CryptoError."""
    try:
        ctx = _SUITE.create_recipient_context(enc, _priv(private), info=info)
        return ctx.export(exporter_context, length)
    except CryptoError:
        raise
    except Exception as e:
        raise CryptoError("HPKE setup failed") from e


@struct
class EncryptContext:
    """RFC 9420 §5.1.3."""
    label: VarBytes
    context: VarBytes


@struct
class HPKECiphertext:
    """RFC 9420 §7.6."""
    kem_output: VarBytes
    ciphertext: VarBytes


def encrypt_with_label(public: bytes, label: str | bytes, context: bytes, plaintext: bytes) -> HPKECiphertext:
    """EncryptWithLabel — RFC 9420 §5.1.3."""
    lbl = label.encode() if isinstance(label, str) else label
    info = encode(EncryptContext(MLS_PREFIX + lbl, context))
    enc, ct = hpke_seal(public, info, b"", plaintext)
    return HPKECiphertext(enc, ct)


def decrypt_with_label(private: bytes, label: str | bytes, context: bytes,
                       kem_output: bytes, ciphertext: bytes) -> bytes:
    """DecryptWithLabel — RFC 9420 §5.1.3; raises CryptoError."""
    lbl = label.encode() if isinstance(label, str) else label
    info = encode(EncryptContext(MLS_PREFIX + lbl, context))
    return hpke_open(private, kem_output, info, b"", ciphertext)


def random_bytes(n: int) -> bytes:
    return os.urandom(n)


__all__ = [
    "CIPHER_SUITE", "NH", "NK", "NN", "CryptoError", "hash_", "hmac_", "kdf_extract",
    "kdf_expand", "expand_with_label", "derive_secret", "derive_tree_secret", "ref_hash",
    "SigningKey", "verify", "sign_with_label", "verify_with_label", "hs_sign", "hs_verify",
    "aead_seal", "aead_open", "HpkeKeyPair", "check_hpke_public_key", "hpke_seal", "hpke_open", "HPKECiphertext",
    "hpke_export_sender", "hpke_export_receiver",
    "encrypt_with_label", "decrypt_with_label", "random_bytes",
]
