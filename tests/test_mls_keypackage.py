"""KeyPackage creation and validation (RFC 9420 §10, §10.1, §13)."""

from dataclasses import replace

import pytest

from phoenix_ref.crypto import SigningKey, sign_with_label
from phoenix_ref.mls.extensions import LAST_RESORT_EXTENSION_TYPE
from phoenix_ref.mls.keypackage import (
    KEY_PACKAGE_TBS_LABEL, KeyPackageError, create_key_package, validate_key_package,
)
from phoenix_ref.mls.messages import Credential, Extension, LeafNodeSource
from phoenix_ref.mls.tree import sign_leaf_node

NOW = 1_700_000_000


def _bundle(**kw):
    return create_key_package(SigningKey.generate(), Credential.basic(b"kp"), now=NOW, **kw)


def _resigned(bundle, **changes):
    """The bundle's KeyPackage with ``changes``, signed again (so that only
    the changed rule can fail)."""
    kp = replace(bundle.key_package, **changes)
    return replace(kp, signature=sign_with_label(bundle.signing_key, KEY_PACKAGE_TBS_LABEL, kp.tbs()))


def test_a_new_key_package_is_valid():
    b = _bundle(extensions=[Extension(LAST_RESORT_EXTENSION_TYPE, b"")])
    validate_key_package(b.key_package, now=NOW)
    assert LAST_RESORT_EXTENSION_TYPE in b.key_package.leaf_node.capabilities.extensions


def test_each_rule_of_section_10_1():
    b = _bundle()
    kp = b.key_package
    with pytest.raises(KeyPackageError, match="signature"):
        validate_key_package(replace(kp, signature=bytes(64)))
    with pytest.raises(KeyPackageError, match="init_key"):
        validate_key_package(_resigned(b, init_key=kp.leaf_node.encryption_key))
    with pytest.raises(KeyPackageError, match="cipher suite"):
        validate_key_package(_resigned(b, cipher_suite=2))
    with pytest.raises(KeyPackageError, match="lifetime"):
        validate_key_package(kp, now=kp.leaf_node.lifetime.not_after + 1)
    update_leaf = sign_leaf_node(replace(kp.leaf_node, leaf_node_source=LeafNodeSource.update, lifetime=None),
                                 b.signing_key, b"group", 0)
    with pytest.raises(KeyPackageError, match="leaf_node_source"):
        validate_key_package(_resigned(b, leaf_node=update_leaf))
    unlisted = Extension(0xF0AA, b"")
    with pytest.raises(KeyPackageError, match="not in capabilities"):
        validate_key_package(_resigned(b, extensions=[unlisted]))


def test_key_package_extensions_name_each_type_once():
    """RFC 9420 §13: no extension list holds two extensions of one type."""
    b = _bundle(extensions=[Extension(LAST_RESORT_EXTENSION_TYPE, b"")])
    twice = _resigned(b, extensions=[Extension(LAST_RESORT_EXTENSION_TYPE, b""),
                                     Extension(LAST_RESORT_EXTENSION_TYPE, b"")])
    with pytest.raises(KeyPackageError, match="appears twice"):
        validate_key_package(twice)


def test_fresh_keys_for_every_key_package():
    a, b = _bundle(), _bundle()
    assert a.key_package.init_key != b.key_package.init_key
    assert a.ref != b.ref
