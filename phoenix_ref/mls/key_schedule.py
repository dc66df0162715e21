"""The MLS key schedule (RFC 9420 §8, §8.3, §8.5–§8.7, §11, §12.4.3.1).

Every epoch starts from three inputs — the previous epoch's ``init_secret``,
the Commit's ``commit_secret`` and the ``psk_secret`` (§8.4, see
:mod:`phoenix_ref.mls.psk`) — plus the serialized GroupContext of the new
epoch. The chain of §8 is::

    joiner_secret  = ExpandWithLabel(Extract(init_secret, commit_secret),
                                     "joiner", GroupContext, Nh)
    member_secret  = Extract(joiner_secret, psk_secret)      # salt, ikm
    welcome_secret = DeriveSecret(member_secret, "welcome")
    epoch_secret   = ExpandWithLabel(member_secret, "epoch", GroupContext, Nh)

and every per-epoch secret is ``DeriveSecret(epoch_secret, <label>)`` with
the labels of the table "Epoch-Derived Secrets" (§8), which
:data:`EPOCH_SECRET_LABELS` reproduces.

Three ways into an epoch exist, one constructor each on :class:`EpochSecrets`:

* :meth:`EpochSecrets.from_epoch` — a member processing (or creating) a
  Commit knows ``init_secret`` and ``commit_secret``;
* :meth:`EpochSecrets.from_joiner` — a new member holding a Welcome knows
  only ``joiner_secret`` (§12.4.3.1);
* :meth:`EpochSecrets.from_epoch_secret` — the creator of a group picks a
  random epoch secret for epoch 0 (§11); there is no joiner or welcome
  secret then.

External joins (§8.3) get their ``init_secret`` from an HPKE export against
the previous epoch's ``external_pub``: see :func:`external_init_sender` and
:func:`external_init_receiver`.

Deletion (§9.2): the values here are immutable ``bytes``; Python cannot wipe
them, so "deleting" a secret means dropping every reference to it. The
group state that owns an :class:`EpochSecrets` should drop it (or the
fields it no longer needs) when the epoch ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..codec import encode
from ..crypto import (
    NH,
    NK,
    NN,
    HpkeKeyPair,
    derive_secret,
    expand_with_label,
    hash_,
    hpke_export_receiver,
    hpke_export_sender,
    kdf_extract,
    random_bytes,
)

__all__ = [
    "EPOCH_SECRET_LABELS", "EXTERNAL_INIT_LABEL", "EpochSecrets", "zero_secret",
    "joiner_secret", "welcome_secret", "welcome_key_nonce", "mls_exporter",
    "external_init_sender", "external_init_receiver",
]

# §8, table "Epoch-Derived Secrets": field name -> DeriveSecret label.
EPOCH_SECRET_LABELS: dict[str, str] = {
    "sender_data_secret": "sender data",
    "encryption_secret": "encryption",
    "exporter_secret": "exporter",
    "external_secret": "external",
    "confirmation_key": "confirm",
    "membership_key": "membership",
    "resumption_psk": "resumption",
    "epoch_authenticator": "authentication",
    # Not in the table, but derived the same way at the bottom of the
    # key schedule diagram: the init secret of the *next* epoch.
    "init_secret": "init",
}

# §8.3: the HPKE exporter context for external initialisation.
EXTERNAL_INIT_LABEL = b"MLS 1.0 external init secret"


def zero_secret() -> bytes:
    """The all-zero vector of length KDF.Nh (``0`` in the §8 diagram)."""
    return bytes(NH)


def _context_bytes(group_context: Any) -> bytes:
    """Accept a GroupContext struct or its serialization."""
    if isinstance(group_context, (bytes, bytearray)):
        return bytes(group_context)
    return encode(group_context)


def joiner_secret(init_secret: bytes, commit_secret: bytes, group_context: Any) -> bytes:
    """joiner_secret = ExpandWithLabel(KDF.Extract(init_secret, commit_secret),
    "joiner", GroupContext_[n], KDF.Nh) — §8 (init_secret is the salt)."""
    prk = kdf_extract(init_secret, commit_secret)
    return expand_with_label(prk, "joiner", _context_bytes(group_context), NH)


def _member_secret(joiner: bytes, psk_secret: bytes | None) -> bytes:
    """KDF.Extract(joiner_secret, psk_secret or 0) — the unnamed value in §8
    from which both welcome_secret and epoch_secret are derived."""
    return kdf_extract(joiner, psk_secret if psk_secret is not None else zero_secret())


def welcome_secret(joiner: bytes, psk_secret: bytes | None) -> bytes:
    """welcome_secret = DeriveSecret(Extract(joiner_secret, psk_secret), "welcome") — §8."""
    return derive_secret(_member_secret(joiner, psk_secret), "welcome")


def welcome_key_nonce(welcome: bytes) -> tuple[bytes, bytes]:
    """(welcome_key, welcome_nonce) from welcome_secret — §12.4.3.1."""
    return (expand_with_label(welcome, "key", b"", NK),
            expand_with_label(welcome, "nonce", b"", NN))


def mls_exporter(exporter_secret: bytes, label: str | bytes, context: bytes, length: int) -> bytes:
    """MLS-Exporter(Label, Context, Length) — §8.5::

        ExpandWithLabel(DeriveSecret(exporter_secret, Label),
                        "exported", Hash(Context), Length)
    """
    return expand_with_label(derive_secret(exporter_secret, label), "exported", hash_(context), length)


@dataclass(frozen=True)
class EpochSecrets:
    """The secrets of one epoch (§8). ``joiner_secret`` and
    ``welcome_secret`` are ``None`` only for a group's first epoch created
    from a random epoch secret (§11).

    ``init_secret`` is the init secret for the *next* epoch (the last step
    of the §8 diagram).
    """

    joiner_secret: bytes | None
    welcome_secret: bytes | None
    epoch_secret: bytes
    sender_data_secret: bytes
    encryption_secret: bytes
    exporter_secret: bytes
    external_secret: bytes
    confirmation_key: bytes
    membership_key: bytes
    resumption_psk: bytes
    epoch_authenticator: bytes
    init_secret: bytes

    # -- constructors --------------------------------------------------------

    @classmethod
    def from_epoch(cls, init_secret: bytes, commit_secret: bytes | None,
                   psk_secret: bytes | None, group_context: Any) -> "EpochSecrets":
        """Derive epoch n from init_secret_[n-1], the Commit's commit_secret
        (``None`` = the all-zero vector, as for a Commit without a path, §12.4)
        and psk_secret (``None`` = no PSKs, the all-zero vector, §8.4).

        ``group_context`` is GroupContext_[n] (the struct or its bytes).
        """
        cs = commit_secret if commit_secret is not None else zero_secret()
        return cls.from_joiner(joiner_secret(init_secret, cs, group_context), psk_secret, group_context)

    @classmethod
    def from_joiner(cls, joiner: bytes, psk_secret: bytes | None, group_context: Any) -> "EpochSecrets":
        """Derive the epoch from a joiner_secret, as a new member does with
        the GroupSecrets of a Welcome (§12.4.3.1)."""
        member = _member_secret(joiner, psk_secret)
        epoch = expand_with_label(member, "epoch", _context_bytes(group_context), NH)
        return cls._derive(joiner, derive_secret(member, "welcome"), epoch)

    @classmethod
    def from_epoch_secret(cls, epoch_secret: bytes) -> "EpochSecrets":
        """Epoch 0 of a new group: a given epoch secret (§11); no joiner or
        welcome secret exists for it."""
        return cls._derive(None, None, epoch_secret)

    @classmethod
    def for_new_group(cls) -> "EpochSecrets":
        """Epoch 0 with "a fresh random value of size KDF.Nh" (§11)."""
        return cls.from_epoch_secret(random_bytes(NH))

    @classmethod
    def _derive(cls, joiner: bytes | None, welcome: bytes | None, epoch: bytes) -> "EpochSecrets":
        derived = {name: derive_secret(epoch, label) for name, label in EPOCH_SECRET_LABELS.items()}
        return cls(joiner_secret=joiner, welcome_secret=welcome, epoch_secret=epoch, **derived)

    # -- uses -----------------------------------------------------------------

    def exporter(self, label: str | bytes, context: bytes, length: int) -> bytes:
        """MLS-Exporter for this epoch (§8.5)."""
        return mls_exporter(self.exporter_secret, label, context, length)

    def external_key_pair(self) -> HpkeKeyPair:
        """(external_priv, external_pub) = KEM.DeriveKeyPair(external_secret) — §8."""
        return HpkeKeyPair.derive(self.external_secret)

    @property
    def external_pub(self) -> bytes:
        return self.external_key_pair().public


def external_init_sender(external_pub: bytes) -> tuple[bytes, bytes]:
    """The joiner's half of §8.3: ``SetupBaseS(external_pub, "")`` then
    ``export("MLS 1.0 external init secret", Nh)``.

    Returns ``(kem_output, init_secret)``; ``kem_output`` goes into the
    ExternalInit proposal.
    """
    return hpke_export_sender(external_pub, b"", EXTERNAL_INIT_LABEL, NH)


def external_init_receiver(external_priv: bytes, kem_output: bytes) -> bytes:
    """The members' half of §8.3: recover init_secret from an ExternalInit's
    ``kem_output`` with the previous epoch's external private key.

    Raises :class:`phoenix_ref.crypto.CryptoError` for a malformed kem_output.
    """
    return hpke_export_receiver(external_priv, kem_output, b"", EXTERNAL_INIT_LABEL, NH)
