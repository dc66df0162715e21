"""KeyPackages: creation and validation (RFC 9420 §10, §10.1, §7.2, §7.3).

A KeyPackage announces a client that can be added to a group: a fresh HPKE
``init_key`` (used once, to encrypt the Welcome's GroupSecrets to it), a
LeafNode with source ``key_package`` (its own fresh ``encryption_key``, the
signature key, credential, capabilities and lifetime), and the signature
``SignWithLabel(., "KeyPackageTBS", KeyPackageTBS)`` (§10).

:func:`create_key_package` returns a :class:`KeyPackageBundle`: the public
KeyPackage together with the private keys that its owner must keep until
the KeyPackage is used (init and leaf encryption keys) and the signing key.
:func:`validate_key_package` runs the checks of §10.1.

Lifetime: a new KeyPackage is valid from one hour before now (to tolerate
clock skew) to :data:`DEFAULT_LIFETIME_SECONDS` after now. Time is in
seconds since the epoch, as in ``Lifetime`` (§7.2).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Sequence

from ..crypto import CryptoError, HpkeKeyPair, SigningKey, sign_with_label, verify_with_label
from . import MlsError
from .extensions import PHOENIX_EXTENSION_TYPES, ExtensionError, check_unique
from .messages import (
    CIPHER_SUITE_1,
    Capabilities,
    Credential,
    CredentialType,
    Extension,
    KeyPackage,
    LeafNode,
    LeafNodeSource,
    Lifetime,
    ProtocolVersion,
    make_key_package_ref,
)
from .tree import (
    DEFAULT_EXTENSION_TYPES, LeafNodeError, check_extensions_listed, sign_leaf_node, validate_leaf_node,
)

__all__ = [
    "KEY_PACKAGE_TBS_LABEL", "DEFAULT_LIFETIME_SECONDS", "CLOCK_SKEW_SECONDS",
    "KeyPackageError", "KeyPackageBundle", "default_capabilities", "make_leaf_node",
    "create_key_package", "validate_key_package",
]

KEY_PACKAGE_TBS_LABEL = "KeyPackageTBS"
DEFAULT_LIFETIME_SECONDS = 90 * 24 * 3600
CLOCK_SKEW_SECONDS = 3600


class KeyPackageError(MlsError):
    """A KeyPackage fails validation (§10.1)."""


def default_capabilities(extra_extensions: Iterable[int] = ()) -> Capabilities:
    """What phoenix_ref supports: MLS 1.0, suite 1, basic and x509
    credentials, the Phoenix extension types and ``extra_extensions``
    (non-default types must be listed, default ones must not, §7.2)."""
    exts = sorted((set(PHOENIX_EXTENSION_TYPES) | set(extra_extensions)) - DEFAULT_EXTENSION_TYPES)
    return Capabilities([ProtocolVersion.mls10], [CIPHER_SUITE_1], exts, [],
                        [CredentialType.basic, CredentialType.x509])


def make_leaf_node(signing_key: SigningKey, credential: Credential, encryption_key: bytes,
                   source: LeafNodeSource, *, capabilities: Capabilities | None = None,
                   lifetime: Lifetime | None = None, parent_hash: bytes | None = None,
                   extensions: Sequence[Extension] = (), group_id: bytes | None = None,
                   leaf_index: int | None = None) -> LeafNode:
    """A signed LeafNode (§7.2) for any of the three sources.

    ``lifetime`` belongs to the ``key_package`` source, ``parent_hash`` to
    ``commit``; ``group_id`` / ``leaf_index`` enter the signature for
    ``update`` and ``commit``. Without ``capabilities``, the defaults plus
    the types of ``extensions`` (§7.2: they must be listed).
    """
    leaf = LeafNode(
        encryption_key, signing_key.public, credential,
        capabilities if capabilities is not None
        else default_capabilities(e.extension_type for e in extensions),
        source,
        lifetime if source == LeafNodeSource.key_package else None,
        (parent_hash if parent_hash is not None else b"") if source == LeafNodeSource.commit else None,
        list(extensions), b"")
    return sign_leaf_node(leaf, signing_key, group_id, leaf_index)


@dataclass(frozen=True)
class KeyPackageBundle:
    """A KeyPackage and the private keys that go with it.

    ``init_priv`` decrypts the Welcome (§12.4.3.1), ``encryption_priv`` is
    the private key of the leaf's ``encryption_key`` (the new member's leaf
    in the tree), ``signing_key`` signs as that member.
    """
    key_package: KeyPackage
    init_priv: bytes
    encryption_priv: bytes
    signing_key: SigningKey

    @property
    def ref(self) -> bytes:
        return make_key_package_ref(self.key_package)


def create_key_package(signing_key: SigningKey, credential: Credential, *,
                       now: int, lifetime_seconds: int = DEFAULT_LIFETIME_SECONDS,
                       capabilities: Capabilities | None = None,
                       extensions: Sequence[Extension] = (),
                       leaf_extensions: Sequence[Extension] = ()) -> KeyPackageBundle:
    """A new KeyPackage with fresh init and encryption key pairs (§10).

    ``now`` is the current time in seconds; the lifetime runs from
    ``now - CLOCK_SKEW_SECONDS`` to ``now + lifetime_seconds``.
    ``extensions`` are KeyPackage extensions (e.g. Phoenix's QueueConfig and
    last resort), ``leaf_extensions`` LeafNode extensions; non-default types
    of both are added to the capabilities if missing (§10: "MUST be included
    in the leaf_node.capabilities field").
    """
    init = HpkeKeyPair.generate()
    enc = HpkeKeyPair.generate()
    used = {e.extension_type for e in list(extensions) + list(leaf_extensions)} - DEFAULT_EXTENSION_TYPES
    caps = capabilities if capabilities is not None else default_capabilities()
    if not used <= set(caps.extensions):
        caps = replace(caps, extensions=sorted(set(caps.extensions) | used))
    lifetime = Lifetime(max(0, now - CLOCK_SKEW_SECONDS), now + lifetime_seconds)
    leaf = make_leaf_node(signing_key, credential, enc.public, LeafNodeSource.key_package,
                          capabilities=caps, lifetime=lifetime, extensions=leaf_extensions)
    unsigned = KeyPackage(ProtocolVersion.mls10, CIPHER_SUITE_1, init.public, leaf, list(extensions), b"")
    kp = replace(unsigned, signature=sign_with_label(signing_key, KEY_PACKAGE_TBS_LABEL, unsigned.tbs()))
    return KeyPackageBundle(kp, init.private, enc.private, signing_key)


def validate_key_package(kp: KeyPackage, *, group_extensions: Sequence[Extension] = (),
                         credential_types_in_use: Iterable[int] = (),
                         now: int | None = None) -> None:
    """KeyPackage validation (§10.1), with leaf node validation (§7.3).

    * version mls10 and cipher suite 1 (the only group parameters here);
    * the LeafNode is valid for a KeyPackage (source ``key_package``,
      signature, capabilities against ``group_extensions`` and the credential
      types in use, lifetime containing ``now`` when given);
    * the KeyPackage signature verifies with the leaf's signature key;
    * ``leaf_node.encryption_key`` differs from ``init_key``;
    * the KeyPackage's extensions name each type once (§13), and its
      non-default ones are in the capabilities (§10).

    Raises :class:`KeyPackageError` (a :class:`LeafNodeError` from the leaf
    checks is re-raised as one, keeping its message).
    """
    if kp.version != ProtocolVersion.mls10:
        raise KeyPackageError("KeyPackage version is not mls10")
    if kp.cipher_suite != CIPHER_SUITE_1:
        raise KeyPackageError(f"KeyPackage cipher suite {kp.cipher_suite} is not the group's")
    try:
        validate_leaf_node(kp.leaf_node, group_id=None, leaf_index=None,
                           expected_source=LeafNodeSource.key_package,
                           extensions=group_extensions,
                           credential_types_in_use=credential_types_in_use, now=now)
    except LeafNodeError as e:
        raise KeyPackageError(f"leaf node: {e}") from None
    try:
        verify_with_label(kp.leaf_node.signature_key, KEY_PACKAGE_TBS_LABEL, kp.tbs(), kp.signature)
    except CryptoError:
        raise KeyPackageError("KeyPackage signature does not verify") from None
    if kp.leaf_node.encryption_key == kp.init_key:
        raise KeyPackageError("init_key equals the leaf's encryption_key")
    try:
        check_unique(kp.extensions)
        check_extensions_listed((e.extension_type for e in kp.extensions), kp.leaf_node.capabilities,
                                "KeyPackage extension")
    except (ExtensionError, LeafNodeError) as e:
        raise KeyPackageError(str(e)) from None

