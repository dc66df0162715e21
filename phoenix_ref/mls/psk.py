"""Pre-shared keys in the key schedule (RFC 9420 §8.4, §12.1.4, §12.4.3.1).

A Commit's PreSharedKey proposals, or a Welcome's ``GroupSecrets.psks``,
name PSKs by :class:`~phoenix_ref.mls.messages.PreSharedKeyID`. Their values
are chained into one ``psk_secret``::

    psk_extracted_[i] = KDF.Extract(0, psk_[i])
    psk_input_[i]     = ExpandWithLabel(psk_extracted_[i], "derived psk", PSKLabel, Nh)
    psk_secret_[0]    = 0
    psk_secret_[i]    = KDF.Extract(psk_input_[i-1], psk_secret_[i-1])

(``KDF.Extract(salt, ikm)``: the PSK input is the salt.) With no PSKs the
result is the all-zero vector.

How a PSK value is found is the application's business: callers pass a
``lookup`` function to :func:`resolve_psks`. External PSKs come from the
application; resumption PSKs are the ``resumption_psk`` of the named group
and epoch (§8.6).
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

from ..codec import U16, encode, struct
from ..crypto import NH, expand_with_label, kdf_extract, random_bytes
from . import MlsError
from .messages import PreSharedKeyID, PSKType, ResumptionPSKUsage

__all__ = [
    "PSKLabel", "psk_secret", "external_psk_id", "resumption_psk_id", "validate_psk_ids",
    "resolve_psks", "PskError", "MissingPsk", "InvalidPskId",
]


class PskError(MlsError):
    """A PreSharedKeyID cannot be used."""


class MissingPsk(PskError):
    """The client does not hold the PSK a Commit or Welcome names (§12.4.3.1)."""


class InvalidPskId(PskError):
    """A PreSharedKeyID breaks a rule of §12.1.4 or §12.4.3.1."""


@struct
class PSKLabel:
    """§8.4: the context of the "derived psk" expansion."""
    id: PreSharedKeyID
    index: U16
    count: U16


def psk_secret(psks: Sequence[tuple[PreSharedKeyID, bytes]]) -> bytes:
    """psk_secret for an ordered list of (PreSharedKeyID, psk value) — §8.4.

    The order is the order of the PreSharedKey proposals in the Commit, or
    of ``GroupSecrets.psks``; an empty list gives the all-zero vector.
    """
    count = len(psks)
    if count > 0xFFFF:
        raise InvalidPskId("more PSKs than a uint16 count can hold")
    secret = bytes(NH)
    for index, (psk_id, psk) in enumerate(psks):
        extracted = kdf_extract(bytes(NH), psk)
        psk_input = expand_with_label(extracted, "derived psk", encode(PSKLabel(psk_id, index, count)), NH)
        secret = kdf_extract(psk_input, secret)
    return secret


def external_psk_id(psk_id: bytes, psk_nonce: bytes | None = None) -> PreSharedKeyID:
    """An external PreSharedKeyID; a fresh Nh-byte nonce unless one is given (§8.4)."""
    return PreSharedKeyID.external(psk_id, psk_nonce if psk_nonce is not None else random_bytes(NH))


def resumption_psk_id(usage: ResumptionPSKUsage, group_id: bytes, epoch: int,
                      psk_nonce: bytes | None = None) -> PreSharedKeyID:
    """A resumption PreSharedKeyID naming the resumption_psk of (group_id, epoch)."""
    return PreSharedKeyID.resumption(usage, group_id, epoch,
                                     psk_nonce if psk_nonce is not None else random_bytes(NH))


def validate_psk_ids(ids: Iterable[PreSharedKeyID], *, allow_reinit: bool = False,
                     allow_branch: bool = False) -> None:
    """Check the rules on a list of PSK ids:

    * every ``psk_nonce`` has length KDF.Nh (§12.1.4);
    * resumption PSKs with usage ``reinit`` / ``branch`` only where the
      caller is performing a reinitialisation / branch (§12.1.4), and then
      at most one of them (§12.4.3.1);
    * no PSK is named twice (§12.2: "multiple PreSharedKey proposals that
      reference the same PreSharedKeyID" make a Commit invalid).

    Raises :class:`InvalidPskId`.
    """
    seen: set[bytes] = set()
    special = 0
    for pid in ids:
        if len(pid.psk_nonce) != NH:
            raise InvalidPskId(f"psk_nonce has {len(pid.psk_nonce)} bytes, not {NH}")
        if pid.psktype == PSKType.resumption and pid.usage in (ResumptionPSKUsage.reinit, ResumptionPSKUsage.branch):
            if pid.usage == ResumptionPSKUsage.reinit and not allow_reinit:
                raise InvalidPskId("resumption PSK with usage reinit outside a reinitialisation")
            if pid.usage == ResumptionPSKUsage.branch and not allow_branch:
                raise InvalidPskId("resumption PSK with usage branch outside a branch")
            special += 1
            if special > 1:
                raise InvalidPskId("more than one reinit/branch resumption PSK")
        key = encode(pid)
        if key in seen:
            raise InvalidPskId("the same PreSharedKeyID is named twice")
        seen.add(key)


def resolve_psks(ids: Sequence[PreSharedKeyID],
                 lookup: Callable[[PreSharedKeyID], bytes | None]) -> list[tuple[PreSharedKeyID, bytes]]:
    """Pair each id with its value from ``lookup``; :class:`MissingPsk` if any
    is unknown (§12.4.3.1: "return an error")."""
    out = []
    for pid in ids:
        value = lookup(pid)
        if value is None:
            raise MissingPsk(f"no PSK for {pid.psktype.name} id")
        out.append((pid, value))
    return out
