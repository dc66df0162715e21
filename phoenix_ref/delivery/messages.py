"""Wire structs of the Delivery Service (``spec/delivery_service.md``).

* ``DsVerifyingKeyResponse`` — the DS's verifying keys
  (``spec/federation/use_cases.md#authentication-key-distribution``): the
  spec defines no answer, so it is a list of Ed25519 public keys, current
  first, then older keys still accepted (docs/decisions.md).
"""

from __future__ import annotations

from ..codec import VarBytes, struct, vec

__all__ = ["DsVerifyingKeyResponse"]


@struct
class DsVerifyingKeyResponse:
    """The DS verifying keys, current first."""
    verifying_keys: vec(VarBytes)
