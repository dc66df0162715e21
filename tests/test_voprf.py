"""RFC 9497 VOPRF (ristretto255-SHA512) against its official test vectors.

Vectors: ``shared/vectors/voprf/ristretto255-sha512.json`` (RFC 9497
Appendix A.1); every vector is its own test case, id ``<file>-mode<m>-<index>``.
"""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phoenix_ref import voprf
from phoenix_ref.shared import shared_dir

h = bytes.fromhex
VECTOR_FILE = "ristretto255-sha512.json"


def _suites() -> list[dict]:
    return json.loads((shared_dir() / "vectors" / "voprf" / VECTOR_FILE).read_text())


def _suite(mode: int) -> dict:
    (s,) = [s for s in _suites() if s["mode"] == mode]
    return s


def _vector_params(mode: int):
    suite = _suite(mode)
    return [pytest.param(suite, v, id=f"{VECTOR_FILE}-mode{mode}-{i}") for i, v in enumerate(suite["vectors"])]


def _split(field: str) -> list[bytes]:
    return [h(x) for x in field.split(",")]


@pytest.mark.parametrize("suite", [pytest.param(s, id=f"{VECTOR_FILE}-mode{s['mode']}") for s in _suites()])
def test_context_and_derive_key_pair(suite):
    s = voprf.Suite(suite["mode"])
    assert suite["identifier"] == "ristretto255-SHA512"
    assert b"HashToGroup-" + s.context_string == h(suite["groupDST"])
    sk, pk = s.derive_key_pair(h(suite["seed"]), h(suite["keyInfo"]))
    assert sk == h(suite["skSm"])
    if "pkSm" in suite:
        assert pk == h(suite["pkSm"])


def test_voprf_context_string():
    assert voprf.VOPRF().context_string == b"OPRFV1-\x01-ristretto255-SHA512"


@pytest.mark.parametrize("suite,v", _vector_params(voprf.MODE_VOPRF))
def test_voprf_vector(suite, v):
    """RFC 9497 Appendix A.1.2: Blind, batched BlindEvaluate with one proof, Finalize."""
    vo = voprf.VOPRF()
    sk, pk = h(suite["skSm"]), h(suite["pkSm"])
    inputs, blinds = _split(v["Input"]), _split(v["Blind"])
    assert len(inputs) == v["Batch"]

    blinded = [vo.blind(i, b)[1] for i, b in zip(inputs, blinds)]
    assert blinded == _split(v["BlindedElement"])

    evaluated, proof = vo.blind_evaluate_batch(sk, pk, blinded, r=h(v["Proof"]["r"]))
    assert evaluated == _split(v["EvaluationElement"])
    assert proof == h(v["Proof"]["proof"])

    outputs = vo.finalize_batch(inputs, blinds, evaluated, blinded, pk, proof)
    assert outputs == _split(v["Output"])
    assert [vo.evaluate(sk, i) for i in inputs] == outputs


@pytest.mark.parametrize("suite,v", _vector_params(voprf.MODE_OPRF))
def test_oprf_vector(suite, v):
    """RFC 9497 Appendix A.1.1: the base mode shares Blind and the unblinding."""
    s = voprf.Suite(voprf.MODE_OPRF)
    sk = h(suite["skSm"])
    (inp,), (blind,) = _split(v["Input"]), _split(v["Blind"])
    _, blinded = s.blind(inp, blind)
    assert blinded == h(v["BlindedElement"])
    evaluated = voprf.scalar_mult(sk, blinded)
    assert evaluated == h(v["EvaluationElement"])
    assert s.unblind_and_hash(inp, blind, evaluated) == h(v["Output"])
    assert s.evaluate(sk, inp) == h(v["Output"])


# RFC 9380 Appendix K.3, expand_message_xmd(SHA-512). The 128-byte case
# exercises the chaining of b_i blocks that 64-byte outputs never reach.
XMD_DST = b"QUUX-V01-CS02-with-expander-SHA512-256"
XMD_VECTORS = [
    (b"", 0x20, "6b9a7312411d92f921c6f68ca0b6380730a1a4d982c507211a90964c394179ba"),
    (b"abc", 0x20, "0da749f12fbe5483eb066a5f595055679b976e93abe9be6f0f6318bce7aca8dc"),
    (b"abc", 0x80,
     "7f1dddd13c08b543f2e2037b14cefb255b44c83cc397c1786d975653e36a6b11"
     "bdd7732d8b38adb4a0edc26a0cef4bb45217135456e58fbca1703cd6032cb134"
     "7ee720b87972d63fbf232587043ed2901bce7f22610c0419751c065922b48843"
     "1851041310ad659e4b23520e1772ab29dcdeb2002222a363f0c2b1c972b3efe1"),
]


@pytest.mark.parametrize("msg,length,expected", XMD_VECTORS, ids=["empty-32", "abc-32", "abc-128"])
def test_expand_message_xmd_rfc9380(msg, length, expected):
    assert voprf.expand_message_xmd(msg, XMD_DST, length) == h(expected)


def test_expand_message_xmd_rejects_too_long_output():
    with pytest.raises(ValueError):
        voprf.expand_message_xmd(b"", XMD_DST, 256 * 64)


# --- negative cases -----------------------------------------------------------

def _batch(n: int = 3):
    vo = voprf.VOPRF()
    sk, pk = vo.generate_key_pair()
    inputs = [bytes([i]) * 7 for i in range(n)]
    blinds, blinded = zip(*(vo.blind(i) for i in inputs))
    evaluated, proof = vo.blind_evaluate_batch(sk, pk, list(blinded))
    return vo, sk, pk, inputs, list(blinds), list(blinded), evaluated, proof


def test_random_batch_round_trip():
    vo, sk, pk, inputs, blinds, blinded, evaluated, proof = _batch(5)
    outputs = vo.finalize_batch(inputs, blinds, evaluated, blinded, pk, proof)
    assert outputs == [vo.evaluate(sk, i) for i in inputs]
    assert len(set(outputs)) == 5


def test_tampered_proof_fails():
    vo, sk, pk, inputs, blinds, blinded, evaluated, proof = _batch()
    bad = bytes([proof[0] ^ 1]) + proof[1:]
    with pytest.raises(voprf.VerifyError):
        vo.finalize_batch(inputs, blinds, evaluated, blinded, pk, bad)


def test_swapped_evaluations_fail():
    vo, sk, pk, inputs, blinds, blinded, evaluated, proof = _batch()
    swapped = [evaluated[1], evaluated[0], evaluated[2]]
    with pytest.raises(voprf.VerifyError):
        vo.finalize_batch(inputs, blinds, swapped, blinded, pk, proof)


def test_wrong_key_fails():
    vo, sk, pk, inputs, blinds, blinded, evaluated, proof = _batch()
    _, other_pk = vo.generate_key_pair()
    with pytest.raises(voprf.VerifyError):
        vo.finalize_batch(inputs, blinds, evaluated, blinded, other_pk, proof)


def test_one_evaluation_with_another_key_fails():
    """The batch proof covers every element: one rogue evaluation is caught."""
    vo, sk, pk, inputs, blinds, blinded, evaluated, proof = _batch()
    other_sk, _ = vo.generate_key_pair()
    evaluated[2] = voprf.scalar_mult(other_sk, blinded[2])
    with pytest.raises(voprf.VerifyError):
        vo.finalize_batch(inputs, blinds, evaluated, blinded, pk, proof)


def test_non_canonical_proof_scalar_fails():
    vo, sk, pk, inputs, blinds, blinded, evaluated, proof = _batch()
    c = int.from_bytes(proof[:32], "little") + voprf.ORDER
    assert c < 2**256
    assert not vo.verify_proof(voprf.GENERATOR, pk, blinded, evaluated, c.to_bytes(32, "little") + proof[32:])


def test_deserialize_element():
    assert voprf.deserialize_element(voprf.GENERATOR) == voprf.GENERATOR
    for bad in (bytes(32), b"\x01" + bytes(31), b"\xff" * 32, bytes(31), b"\x00" * 33):
        with pytest.raises(voprf.DeserializeError):
            voprf.deserialize_element(bad)


def test_deserialize_scalar():
    assert voprf.deserialize_scalar(voprf.serialize_scalar(5)) == (5).to_bytes(32, "little")
    for bad in (voprf.ORDER.to_bytes(32, "little"), b"\xff" * 32, bytes(31)):
        with pytest.raises(voprf.DeserializeError):
            voprf.deserialize_scalar(bad)


def test_derive_key_pair_rejects_short_seed():
    with pytest.raises(ValueError):
        voprf.VOPRF().derive_key_pair(b"short", b"")


_VO = voprf.VOPRF()
_SK, _PK = _VO.derive_key_pair(bytes(32), b"garbage proofs")
_BLINDED = _VO.blind(b"input", voprf.serialize_scalar(7))[1]
_EVALUATED = voprf.scalar_mult(_SK, _BLINDED)


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=0, max_size=80))
def test_verify_proof_on_garbage_is_false(proof):
    """Random bytes never verify and never raise (VerifyProof only says no)."""
    assert _VO.verify_proof(voprf.GENERATOR, _PK, [_BLINDED], [_EVALUATED], proof) is False
