"""Typed MLS extensions (RFC 9420 §13, §17.3) and the Phoenix ones (spec/glossary.md)."""

import pytest

from phoenix_ref.codec import encode
from phoenix_ref.mls import extensions as x
from phoenix_ref.mls.messages import Credential, Extension


def test_phoenix_codes_are_private_use():
    for code in x.PHOENIX_EXTENSION_TYPES:
        assert 0xF000 <= code <= 0xFFFF
        assert x.EXTENSION_STRUCTS[code] is not None


def test_roles_round_trip_through_extension_list():
    roles = x.RolesExtension(admins=[0], members=[1, 2])
    exts = x.set_extension([Extension(0x0A0A, b"grease")], roles)
    assert exts[0] == Extension(0x0A0A, b"grease")
    assert exts[1].extension_type == x.ROLES_EXTENSION_TYPE
    assert x.get_extension(exts, x.RolesExtension) == roles
    updated = x.set_extension(exts, x.RolesExtension([0, 1], [2]))
    assert len(updated) == 2
    assert x.get_extension(updated, x.RolesExtension).admins == [0, 1]
    assert x.get_extension(x.remove_extension(updated, x.ROLES_EXTENSION_TYPE), x.RolesExtension) is None


def test_queue_config_and_last_resort():
    cqc = x.ClientQueueConfig(b"a.example", b"\x01\x02")
    ext = x.to_extension(x.QueueConfigExtension(cqc))
    assert ext.extension_data == encode(cqc)
    assert x.get_extension([ext], x.QueueConfigExtension).client_queue_config == cqc
    lr = x.to_extension(x.LastResortExtension())
    assert lr == Extension(x.LAST_RESORT_EXTENSION_TYPE, b"")
    assert x.get_extension([lr], x.LastResortExtension) == x.LastResortExtension()


def test_rfc_extensions_round_trip():
    senders = x.ExternalSenders([x.ExternalSender(b"k" * 32, Credential.basic(b"ds"))])
    caps = x.RequiredCapabilities([x.ROLES_EXTENSION_TYPE], [], [1])
    exts = [x.to_extension(senders), x.to_extension(caps), x.to_extension(x.ExternalPub(b"p" * 32))]
    assert x.get_extension(exts, x.ExternalSenders) == senders
    assert x.get_extension(exts, x.RequiredCapabilities) == caps
    assert x.get_extension(exts, x.ExternalPub).external_pub == b"p" * 32


def test_duplicate_types_and_malformed_data_are_errors():
    with pytest.raises(x.ExtensionError):
        x.check_unique([Extension(1, b""), Extension(1, b"")])
    x.check_unique([Extension(1, b""), Extension(2, b"")])
    with pytest.raises(x.ExtensionError):
        x.get_extension([Extension(x.ROLES_EXTENSION_TYPE, b"\x05")], x.RolesExtension)
