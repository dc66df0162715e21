"""Typed MLS extensions: RFC 9420's own and the Phoenix spec's.

An :class:`~phoenix_ref.mls.messages.Extension` carries a ``uint16`` type
and opaque ``extension_data``. This module gives the data of each known type
a struct, so that ``get_extension(group_context.extensions, RolesExtension)``
returns a decoded value.

RFC 9420 extensions (§17.3, defined in §5.3.3, §12.4.3.3, §11.1, §12.4.3.2,
§12.1.8.1): ``application_id``, ``ratchet_tree``, ``required_capabilities``,
``external_pub``, ``external_senders``.

Phoenix extensions (``spec/glossary.md``):

* QueueConfig extension (``spec/glossary.md#queueconfig-extension``), a
  KeyPackage extension carrying the client's ClientQueueConfig
  (``spec/glossary.md#sealed-queue-config``); required on every KeyPackage
  uploaded to a QS.
* Last resort extension (``spec/glossary.md#last-resort-extension``), an
  empty KeyPackage extension marking a KeyPackage of last resort.
* RolesExtension (``spec/glossary.md#rolesextension``), a GroupContext
  extension listing admin and member leaf indices.

The spec gives no type codes for its extensions; phoenix_ref takes them from
the RFC 9420 §17.3 private-use range 0xF000–0xFFFF (see
:data:`PHOENIX_EXTENSION_TYPES`). Per RFC 9420 §13, an extension list holds
at most one extension of each type; unknown types are kept and ignored.
"""

from __future__ import annotations

from typing import Any, Iterable, TypeVar

from ..codec import U16, U32, DecodeError, VarBytes, decode, encode, struct, vec
from . import MlsError
from .messages import Credential, Extension, ExtensionType, RatchetTree


class ExtensionError(MlsError):
    """An extension list breaks a rule, or a known extension's data is malformed."""


# Phoenix extension type codes, from the private-use range of RFC 9420 §17.3.
# The spec (spec/glossary.md) names these extensions but assigns no codes.
QUEUE_CONFIG_EXTENSION_TYPE = 0xF001   # KeyPackage: ClientQueueConfig
LAST_RESORT_EXTENSION_TYPE = 0xF002    # KeyPackage: empty marker
ROLES_EXTENSION_TYPE = 0xF003          # GroupContext: RolesExtension

PHOENIX_EXTENSION_TYPES = {
    QUEUE_CONFIG_EXTENSION_TYPE: "queue_config",
    LAST_RESORT_EXTENSION_TYPE: "last_resort",
    ROLES_EXTENSION_TYPE: "roles",
}


# --- RFC 9420 extensions ---------------------------------------------------------


@struct
class ApplicationId:
    """§5.3.3: ``opaque application_id<V>`` in a LeafNode."""
    application_id: VarBytes


@struct
class RatchetTreeExtension:
    """§12.4.3.3: ``optional<Node> ratchet_tree<V>`` in a GroupInfo."""
    ratchet_tree: RatchetTree


@struct
class RequiredCapabilities:
    """§11.1: types every member must support (a GroupContext extension)."""
    extension_types: vec(U16)
    proposal_types: vec(U16)
    credential_types: vec(U16)


@struct
class ExternalPub:
    """§12.4.3.2: the public key for external commits, in a GroupInfo."""
    external_pub: VarBytes


@struct
class ExternalSender:
    """§12.1.8.1: one allowed external sender."""
    signature_key: VarBytes
    credential: Credential


@struct
class ExternalSenders:
    """§12.1.8.1: ``ExternalSender external_senders<V>`` in the GroupContext."""
    external_senders: vec(ExternalSender)


# --- Phoenix extensions ---------------------------------------------------------------


@struct
class ClientQueueConfig:
    """``spec/glossary.md#sealed-queue-config``.

    ``client_homeserver_domain`` is the FQDN's text as ``opaque<V>`` and
    ``sealed_config`` the SealedQueueConfig; both stay bytes here (the
    Phoenix id types validate and open them).
    """
    client_homeserver_domain: VarBytes
    sealed_config: VarBytes


@struct
class QueueConfigExtension:
    """``spec/glossary.md#queueconfig-extension``: a KeyPackage's ClientQueueConfig."""
    client_queue_config: ClientQueueConfig


@struct
class LastResortExtension:
    """``spec/glossary.md#last-resort-extension``: empty marker."""


@struct
class RolesExtension:
    """``spec/glossary.md#rolesextension``: leaf indices by role."""
    admins: vec(U32)
    members: vec(U32)


# extension type -> struct of its extension_data
EXTENSION_STRUCTS: dict[int, type] = {
    ExtensionType.application_id: ApplicationId,
    ExtensionType.ratchet_tree: RatchetTreeExtension,
    ExtensionType.required_capabilities: RequiredCapabilities,
    ExtensionType.external_pub: ExternalPub,
    ExtensionType.external_senders: ExternalSenders,
    QUEUE_CONFIG_EXTENSION_TYPE: QueueConfigExtension,
    LAST_RESORT_EXTENSION_TYPE: LastResortExtension,
    ROLES_EXTENSION_TYPE: RolesExtension,
}
_TYPE_OF = {cls: t for t, cls in EXTENSION_STRUCTS.items()}

T = TypeVar("T")


def extension_type_of(cls_or_value: Any) -> int:
    """The extension type code of a typed extension class or value."""
    cls = cls_or_value if isinstance(cls_or_value, type) else type(cls_or_value)
    try:
        return int(_TYPE_OF[cls])
    except KeyError:
        raise TypeError(f"{cls.__name__} is not a known extension") from None


def to_extension(value: Any) -> Extension:
    """Wrap a typed extension value as an Extension."""
    return Extension(extension_type_of(value), encode(value))


def check_unique(extensions: Iterable[Extension]) -> None:
    """RFC 9420 §13: at most one extension of each type in a list."""
    seen: set[int] = set()
    for ext in extensions:
        if ext.extension_type in seen:
            raise ExtensionError(f"extension type {ext.extension_type:#06x} appears twice")
        seen.add(ext.extension_type)


def find_extension(extensions: Iterable[Extension], extension_type: int) -> Extension | None:
    """The Extension of the given type, or None."""
    for ext in extensions:
        if ext.extension_type == extension_type:
            return ext
    return None


def get_extension(extensions: Iterable[Extension], cls: type[T]) -> T | None:
    """The decoded extension of class ``cls`` in the list, or None.

    Raises :class:`ExtensionError` if its data does not decode.
    """
    ext = find_extension(extensions, extension_type_of(cls))
    if ext is None:
        return None
    try:
        return decode(cls, ext.extension_data)
    except DecodeError as e:
        raise ExtensionError(f"malformed {cls.__name__}: {e}") from None


def set_extension(extensions: Iterable[Extension], value: Any) -> list[Extension]:
    """A new list with ``value`` replacing any extension of its type (appended if new)."""
    new = to_extension(value)
    out, replaced = [], False
    for ext in extensions:
        if ext.extension_type == new.extension_type:
            if not replaced:
                out.append(new)
                replaced = True
        else:
            out.append(ext)
    if not replaced:
        out.append(new)
    return out


def remove_extension(extensions: Iterable[Extension], extension_type: int) -> list[Extension]:
    """A new list without extensions of ``extension_type``."""
    return [e for e in extensions if e.extension_type != extension_type]


__all__ = [
    "ExtensionError", "QUEUE_CONFIG_EXTENSION_TYPE", "LAST_RESORT_EXTENSION_TYPE",
    "ROLES_EXTENSION_TYPE", "PHOENIX_EXTENSION_TYPES", "ApplicationId", "RatchetTreeExtension",
    "RequiredCapabilities", "ExternalPub", "ExternalSender", "ExternalSenders",
    "ClientQueueConfig", "QueueConfigExtension", "LastResortExtension", "RolesExtension",
    "EXTENSION_STRUCTS", "extension_type_of", "to_extension", "check_unique",
    "find_extension", "get_extension", "set_extension", "remove_extension",
]
