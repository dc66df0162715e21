"""PSK secret (RFC 9420 §8.4) and PSK id rules (§12.1.4, §12.4.3.1)."""

import pytest

from tests.conftest import vector_params
from phoenix_ref.crypto import NH
from phoenix_ref.mls import MlsError
from phoenix_ref.mls.messages import ResumptionPSKUsage
from phoenix_ref.mls.psk import (
    InvalidPskId,
    MissingPsk,
    external_psk_id,
    psk_secret,
    resolve_psks,
    resumption_psk_id,
    validate_psk_ids,
)


@pytest.mark.parametrize("v", vector_params("psk_secret.json"))
def test_psk_secret_vector(v):
    psks = [(external_psk_id(bytes.fromhex(p["psk_id"]), bytes.fromhex(p["psk_nonce"])), bytes.fromhex(p["psk"]))
            for p in v["psks"]]
    assert psk_secret(psks).hex() == v["psk_secret"]


def test_no_psks_is_the_zero_vector():
    assert psk_secret([]) == bytes(NH)


def test_order_matters():
    a = (external_psk_id(b"a"), b"\x01" * 32)
    b = (external_psk_id(b"b"), b"\x02" * 32)
    assert psk_secret([a, b]) != psk_secret([b, a])


def test_fresh_nonces_have_length_nh():
    assert len(external_psk_id(b"x").psk_nonce) == NH
    assert external_psk_id(b"x").psk_nonce != external_psk_id(b"x").psk_nonce


def test_validate_psk_ids():
    validate_psk_ids([external_psk_id(b"a"), resumption_psk_id(ResumptionPSKUsage.application, b"g", 3)])
    with pytest.raises(InvalidPskId):
        validate_psk_ids([external_psk_id(b"a", b"short")])
    same = external_psk_id(b"a")
    with pytest.raises(InvalidPskId):
        validate_psk_ids([same, same])
    reinit = resumption_psk_id(ResumptionPSKUsage.reinit, b"g", 3)
    with pytest.raises(InvalidPskId):
        validate_psk_ids([reinit])
    validate_psk_ids([reinit], allow_reinit=True)
    branch = resumption_psk_id(ResumptionPSKUsage.branch, b"g", 3)
    with pytest.raises(InvalidPskId):
        validate_psk_ids([reinit, branch], allow_reinit=True, allow_branch=True)


def test_resolve_psks_reports_missing_as_mls_error():
    known = external_psk_id(b"known")
    store = {known.psk_id: b"\x09" * 32}
    lookup = lambda pid: store.get(pid.psk_id)  # noqa: E731
    assert resolve_psks([known], lookup) == [(known, b"\x09" * 32)]
    with pytest.raises(MissingPsk) as e:
        resolve_psks([known, external_psk_id(b"unknown")], lookup)
    assert isinstance(e.value, MlsError)
