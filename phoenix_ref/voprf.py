"""Verifiable OPRF over ristretto255 with SHA-512 (RFC 9497, VOPRF mode).

This module is the cryptographic core under Privacy Pass token type 0x0005
(``privacy_pass.py``). It implements, for the ciphersuite
``ristretto255-SHA512`` only:

* the prime-order group interface of RFC 9497 §2.1 and §4.1 (elements and
  scalars as their canonical 32-byte encodings), with HashToGroup and
  HashToScalar built on ``expand_message_xmd`` with SHA-512 (RFC 9380 §5.3.1);
* the batched DLEQ proof of RFC 9497 §2.2 (GenerateProof, ComputeComposites,
  ComputeCompositesFast, VerifyProof);
* key generation (RFC 9497 §3.2: GenerateKeyPair, DeriveKeyPair) and the
  online protocol (§3.3.1 Blind, §3.3.2 BlindEvaluate / Finalize, and
  Evaluate for an entity that holds both the key and the input).

Lists are accepted wherever RFC 9497 says a server "may process multiple
client inputs" (§3.3.1) and a proof "can verify proofs on lists of inputs"
(§2.2.2): ``blind_evaluate_batch`` returns one proof for the whole batch and
``finalize_batch`` checks it once, which is exactly what the batched-tokens
draft calls BlindEvaluateBatch / FinalizeBatch.

Every function that draws randomness takes it as an optional argument
(``blind=``, ``r=``) so that RFC 9497 Appendix A's vectors can be replayed.

Group arithmetic is delegated to libsodium through ``rbcl``:
``crypto_core_ristretto255_from_hash`` is the one-way map of RFC 9496 §4.3.4
that ``hash_to_ristretto255`` applies to 64 uniform bytes, and
``crypto_core_ristretto255_is_valid_point`` accepts exactly the canonical
encodings (RFC 9496 §4.3.1 Decode). It also accepts the identity, which
DeserializeElement must refuse (RFC 9497 §4.1), so that is checked here.
"""

from __future__ import annotations

import hashlib
import hmac

import rbcl

__all__ = [
    "MODE_OPRF", "MODE_VOPRF", "MODE_POPRF", "IDENTIFIER", "NE", "NS", "NH",
    "ORDER", "VoprfError", "DeserializeError", "VerifyError",
    "InvalidInputError", "DeriveKeyPairError", "Suite", "VOPRF",
    "expand_message_xmd",
]

MODE_OPRF = 0x00
MODE_VOPRF = 0x01
MODE_POPRF = 0x02
IDENTIFIER = b"ristretto255-SHA512"

NE = 32  # serialized Element
NS = 32  # serialized Scalar
NH = 64  # SHA-512 output

# RFC 9497 §4.1: Order() = 2^252 + 27742317777372353535851937790883648493.
ORDER = 2**252 + 27742317777372353535851937790883648493

# The ristretto255 generator's canonical encoding (RFC 9496 §4.4 / §A.1).
GENERATOR = bytes.fromhex("e2f2ae0a6abc4e71a884a961c500515f58e30b6aa582dd8db6a65945e08d2d76")
IDENTITY = bytes(32)


class VoprfError(ValueError):
    """Base of the RFC 9497 §5.3 errors."""


class DeserializeError(VoprfError):
    """Bytes are not a canonical Element (or are the identity) or Scalar."""


class VerifyError(VoprfError):
    """The server's DLEQ proof does not verify (RFC 9497 §3.3.2 Finalize)."""


class InvalidInputError(VoprfError):
    """An input hashes to the identity element (negligible probability)."""


class DeriveKeyPairError(VoprfError):
    """DeriveKeyPair found no non-zero scalar in 256 attempts."""


# --- RFC 9380 §5.3.1: expand_message_xmd -------------------------------------

_SHA512_BLOCK = 128  # s_in_bytes for SHA-512


def expand_message_xmd(msg: bytes, dst: bytes, len_in_bytes: int) -> bytes:
    """``expand_message_xmd`` with SHA-512 (RFC 9380 §5.3.1).

    Produces ``len_in_bytes`` uniform bytes from ``msg`` under the domain
    separation tag ``dst``. A DST longer than 255 bytes is first hashed
    (RFC 9380 §5.3.3).
    """
    if len(dst) > 255:
        dst = hashlib.sha512(b"H2C-OVERSIZE-DST-" + dst).digest()
    ell = -(-len_in_bytes // NH)
    if ell > 255 or len_in_bytes > 65535:
        raise ValueError("expand_message_xmd: requested length too large")
    dst_prime = dst + bytes([len(dst)])
    z_pad = bytes(_SHA512_BLOCK)
    l_i_b_str = len_in_bytes.to_bytes(2, "big")
    b0 = hashlib.sha512(z_pad + msg + l_i_b_str + b"\x00" + dst_prime).digest()
    b_prev = hashlib.sha512(b0 + b"\x01" + dst_prime).digest()
    out = [b_prev]
    for i in range(2, ell + 1):
        mixed = bytes(x ^ y for x, y in zip(b0, b_prev))
        b_prev = hashlib.sha512(mixed + bytes([i]) + dst_prime).digest()
        out.append(b_prev)
    return b"".join(out)[:len_in_bytes]


def _i2osp2(n: int) -> bytes:
    return n.to_bytes(2, "big")


def _lp(data: bytes) -> bytes:
    """``I2OSP(len(data), 2) || data`` — the length-prefixing of RFC 9497."""
    return _i2osp2(len(data)) + data


# --- the ristretto255 group (RFC 9497 §4.1) -------------------------------------

def scalar_mult(s: bytes, p: bytes) -> bytes:
    """``s * P``. A zero product (only for ``s == 0``) yields the identity."""
    try:
        return rbcl.crypto_scalarmult_ristretto255(s, p)
    except RuntimeError:  # libsodium refuses to output the identity
        return IDENTITY


def scalar_mult_gen(s: bytes) -> bytes:
    """``ScalarMultGen(s)``."""
    try:
        return rbcl.crypto_scalarmult_ristretto255_base(s)
    except RuntimeError:
        return IDENTITY


def add(p: bytes, q: bytes) -> bytes:
    return rbcl.crypto_core_ristretto255_add(p, q)


def serialize_scalar(s: int) -> bytes:
    return (s % ORDER).to_bytes(NS, "little")


def deserialize_scalar(buf: bytes) -> bytes:
    """DeserializeScalar: 32 little-endian bytes below the group order."""
    if not isinstance(buf, (bytes, bytearray)) or len(buf) != NS:
        raise DeserializeError(f"a scalar is {NS} bytes")
    if int.from_bytes(buf, "little") >= ORDER:
        raise DeserializeError("scalar is not reduced modulo the group order")
    return bytes(buf)


def deserialize_element(buf: bytes) -> bytes:
    """DeserializeElement: a canonical ristretto255 encoding, not the identity."""
    if not isinstance(buf, (bytes, bytearray)) or len(buf) != NE:
        raise DeserializeError(f"an element is {NE} bytes")
    buf = bytes(buf)
    if not rbcl.crypto_core_ristretto255_is_valid_point(buf):
        raise DeserializeError("not a canonical ristretto255 encoding")
    # libsodium's validity check accepts the identity (all zeros); RFC 9497
    # §3.3 requires refusing it, so it is checked here explicitly.
    if hmac.compare_digest(buf, IDENTITY):
        raise DeserializeError("the identity element is not a valid input")
    return buf


def random_scalar() -> bytes:
    """RandomScalar(): uniform and non-zero (libsodium rejection-samples)."""
    return rbcl.crypto_core_ristretto255_scalar_random()


# --- the ciphersuite, bound to one mode's context string ---------------------

class Suite:
    """ristretto255-SHA512 under one mode: the context string of RFC 9497 §3.1.

    ``contextString = "OPRFV1-" || I2OSP(mode, 1) || "-" || identifier``; every
    hash in the protocol is domain-separated by it.
    """

    def __init__(self, mode: int):
        self.mode = mode
        self.context_string = b"OPRFV1-" + bytes([mode]) + b"-" + IDENTIFIER

    def hash_to_group(self, msg: bytes) -> bytes:
        """hash_to_ristretto255 (RFC 9380 §6.8.2 / RFC 9496 §4.3.4)."""
        dst = b"HashToGroup-" + self.context_string
        return rbcl.crypto_core_ristretto255_from_hash(expand_message_xmd(msg, dst, 64))

    def hash_to_scalar(self, msg: bytes, dst: bytes | None = None) -> bytes:
        """64 uniform bytes read as a little-endian integer, reduced mod Order()."""
        if dst is None:
            dst = b"HashToScalar-" + self.context_string
        return rbcl.crypto_core_ristretto255_scalar_reduce(expand_message_xmd(msg, dst, 64))

    # -- key generation (RFC 9497 §3.2) ----------------------------------------

    def generate_key_pair(self) -> tuple[bytes, bytes]:
        sk = random_scalar()
        return sk, scalar_mult_gen(sk)

    def derive_key_pair(self, seed: bytes, info: bytes) -> tuple[bytes, bytes]:
        """DeriveKeyPair (RFC 9497 §3.2.1); note its DST has no hyphen."""
        if len(seed) != NS:
            raise ValueError(f"DeriveKeyPair seed must be {NS} bytes")
        derive_input = seed + _lp(info)
        dst = b"DeriveKeyPair" + self.context_string
        for counter in range(256):
            sk = self.hash_to_scalar(derive_input + bytes([counter]), dst)
            if sk != bytes(NS):
                return sk, scalar_mult_gen(sk)
        raise DeriveKeyPairError("no non-zero scalar after 256 counters")

    # -- DLEQ proofs (RFC 9497 §2.2) -------------------------------------------

    def _composite_weights(self, b: bytes, c: list[bytes], d: list[bytes]) -> list[bytes]:
        """The per-pair scalars ``d_i`` shared by both ComputeComposites variants."""
        seed_dst = b"Seed-" + self.context_string
        seed = hashlib.sha512(_lp(b) + _lp(seed_dst)).digest()
        return [
            self.hash_to_scalar(_lp(seed) + _i2osp2(i) + _lp(ci) + _lp(di) + b"Composite")
            for i, (ci, di) in enumerate(zip(c, d))
        ]

    def compute_composites(self, b: bytes, c: list[bytes], d: list[bytes]) -> tuple[bytes, bytes]:
        """ComputeComposites (§2.2.2): ``M = Σ d_i C_i``, ``Z = Σ d_i D_i``."""
        weights = self._composite_weights(b, c, d)
        m = _weighted_sum(weights, c)
        z = _weighted_sum(weights, d)
        return m, z

    def compute_composites_fast(self, k: bytes, b: bytes, c: list[bytes], d: list[bytes]) -> tuple[bytes, bytes]:
        """ComputeCompositesFast (§2.2.1): the server knows ``k``, so ``Z = k M``."""
        m = _weighted_sum(self._composite_weights(b, c, d), c)
        return m, scalar_mult(k, m)

    def _challenge(self, b: bytes, m: bytes, z: bytes, t2: bytes, t3: bytes) -> bytes:
        transcript = _lp(b) + _lp(m) + _lp(z) + _lp(t2) + _lp(t3) + b"Challenge"
        return self.hash_to_scalar(transcript)

    def generate_proof(self, k: bytes, a: bytes, b: bytes, c: list[bytes], d: list[bytes],
                       r: bytes | None = None) -> bytes:
        """GenerateProof (§2.2.1): proves ``k*A == B`` and ``k*C[i] == D[i]``.

        Returns the serialized proof ``SerializeScalar(c) || SerializeScalar(s)``.
        ``r`` is the proof randomness (RandomScalar() when omitted).
        """
        if not c or len(c) != len(d):
            raise ValueError("GenerateProof needs two non-empty lists of equal length")
        m, z = self.compute_composites_fast(k, b, c, d)
        if r is None:
            r = random_scalar()
        t2 = scalar_mult(r, a)
        t3 = scalar_mult(r, m)
        ch = self._challenge(b, m, z, t2, t3)
        s = rbcl.crypto_core_ristretto255_scalar_sub(r, rbcl.crypto_core_ristretto255_scalar_mul(ch, k))
        return ch + s

    def verify_proof(self, a: bytes, b: bytes, c: list[bytes], d: list[bytes], proof: bytes) -> bool:
        """VerifyProof (§2.2.2). A proof whose scalars are not canonical fails."""
        if not c or len(c) != len(d) or len(proof) != 2 * NS:
            return False
        try:
            ch = deserialize_scalar(proof[:NS])
            s = deserialize_scalar(proof[NS:])
        except DeserializeError:
            return False
        m, z = self.compute_composites(b, c, d)
        t2 = add(scalar_mult(s, a), scalar_mult(ch, b))
        t3 = add(scalar_mult(s, m), scalar_mult(ch, z))
        expected = self._challenge(b, m, z, t2, t3)
        return hmac.compare_digest(expected, ch)

    # -- the online protocol (RFC 9497 §3.3) -------------------------------------

    def blind(self, input_: bytes, blind: bytes | None = None) -> tuple[bytes, bytes]:
        """Blind (§3.3.1): returns ``(blind, blindedElement)``."""
        _check_input(input_)
        if blind is None:
            blind = random_scalar()
        input_element = self.hash_to_group(input_)
        if input_element == IDENTITY:
            raise InvalidInputError("input maps to the identity element")
        return blind, scalar_mult(blind, input_element)

    def _output(self, input_: bytes, element: bytes) -> bytes:
        return hashlib.sha512(_lp(input_) + _lp(element) + b"Finalize").digest()

    def unblind_and_hash(self, input_: bytes, blind: bytes, evaluated_element: bytes) -> bytes:
        """The tail of Finalize: ``Hash(len||input||len||ScalarInverse(blind)*E||"Finalize")``."""
        n = scalar_mult(rbcl.crypto_core_ristretto255_scalar_invert(blind), evaluated_element)
        return self._output(input_, n)

    def evaluate(self, sk: bytes, input_: bytes) -> bytes:
        """Evaluate (§3.3.1): the PRF output from the private key and the input."""
        _check_input(input_)
        input_element = self.hash_to_group(input_)
        if input_element == IDENTITY:
            raise InvalidInputError("input maps to the identity element")
        return self._output(input_, scalar_mult(sk, input_element))


def _weighted_sum(weights: list[bytes], elements: list[bytes]) -> bytes:
    """``Σ w_i * E_i``, starting from the first term rather than the identity."""
    acc = scalar_mult(weights[0], elements[0])
    for w, e in zip(weights[1:], elements[1:]):
        acc = add(scalar_mult(w, e), acc)
    return acc


def _check_input(input_: bytes) -> None:
    # RFC 9497 §5.1: inputs are shorter than 2^16 - 1 bytes.
    if len(input_) >= 0xFFFF:
        raise InvalidInputError("OPRF inputs must be shorter than 65535 bytes")


class VOPRF(Suite):
    """The VOPRF mode (RFC 9497 §3.3.2), batched.

    ``blind_evaluate_batch`` / ``finalize_batch`` are BlindEvaluate / Finalize
    with lists, sharing one DLEQ proof (the batched-tokens draft's
    BlindEvaluateBatch and FinalizeBatch).
    """

    def __init__(self) -> None:
        super().__init__(MODE_VOPRF)

    def blind_evaluate_batch(self, sk: bytes, pk: bytes, blinded_elements: list[bytes],
                             r: bytes | None = None) -> tuple[list[bytes], bytes]:
        """Evaluate every blinded element with ``sk`` and prove it once.

        ``blinded_elements`` must already have passed ``deserialize_element``.
        Returns ``(evaluatedElements, proof)``.
        """
        evaluated = [scalar_mult(sk, be) for be in blinded_elements]
        proof = self.generate_proof(sk, GENERATOR, pk, blinded_elements, evaluated, r)
        return evaluated, proof

    def blind_evaluate(self, sk: bytes, pk: bytes, blinded_element: bytes,
                       r: bytes | None = None) -> tuple[bytes, bytes]:
        evaluated, proof = self.blind_evaluate_batch(sk, pk, [blinded_element], r)
        return evaluated[0], proof

    def finalize_batch(self, inputs: list[bytes], blinds: list[bytes], evaluated_elements: list[bytes],
                       blinded_elements: list[bytes], pk: bytes, proof: bytes) -> list[bytes]:
        """Verify the batch proof, then unblind and hash each element.

        ``evaluated_elements`` must already have passed ``deserialize_element``.
        Raises :class:`VerifyError` if the proof does not verify.
        """
        n = len(inputs)
        if not (n == len(blinds) == len(evaluated_elements) == len(blinded_elements)):
            raise ValueError("finalize_batch: lists of different lengths")
        if not self.verify_proof(GENERATOR, pk, blinded_elements, evaluated_elements, proof):
            raise VerifyError("the server's DLEQ proof does not verify")
        return [self.unblind_and_hash(i, b, e) for i, b, e in zip(inputs, blinds, evaluated_elements)]

    def finalize(self, input_: bytes, blind: bytes, evaluated_element: bytes,
                 blinded_element: bytes, pk: bytes, proof: bytes) -> bytes:
        return self.finalize_batch([input_], [blind], [evaluated_element], [blinded_element], pk, proof)[0]
