"""Identifiers of the Phoenix protocol (``spec/glossary.md``).

============  =============================================  =========================================
Class         Spec                                           Text form (``str`` / ``parse``)
============  =============================================  =========================================
``Fqdn``      FQDN (every ``*_domain`` field)                ``a.example``
``UserId``    ``spec/glossary.md#user-id-uid``               ``<user uuid>@<as domain>``
``ClientId``  ``spec/glossary.md#client-id-cid``             ``<user uuid>@<as domain>/<client uuid>``
``QsUid``     ``spec/glossary.md#qs-user-id-qsuid``          ``<uuid>``
``QsCid``     ``spec/glossary.md#qs-client-id-qscid``        ``<qs uid>/<client uuid>``
              (the spec's ``PseudonymousClientId``)
``GroupId``   ``spec/delivery_service.md#request-group-id``  ``<group uuid>@<ds domain>``
``Alias``     ``spec/glossary.md#alias``                     the alias itself
============  =============================================  =========================================

Wire forms (docs/wire.md): a UUID is ``opaque[16]`` (its 16 bytes in RFC 9562
order); an ``Fqdn`` and an ``Alias`` are UTF-8 ``opaque<V>`` strings that must
already be in canonical form — a decoder receiving a non-canonical or invalid
one raises :class:`~phoenix_ref.codec.DecodeError`, so two equal identifiers
always have equal encodings (signatures and database keys depend on that).

Choices the spec leaves open (docs/decisions.md):

* **Fqdn** — ASCII only (internationalised names travel as their IDNA
  A-labels, ``xn--…``), compared lower-case, no trailing dot, labels of 1–63
  letters/digits/hyphens not starting or ending with a hyphen (RFC 1123 §2.1,
  RFC 5890 §2.3.1), at least two labels, at most 253 characters (RFC 1035
  §2.3.4), and a top-level label that is not all digits so that an IPv4
  literal is never taken for a domain (RFC 3696 §2).
* **GroupId** — a UUID sampled by the DS, qualified with the DS's domain,
  like ``UserId`` is qualified with the AS's (same field order, domain
  first): a federated client must learn
  from the group id alone which DS holds the group. The MLS ``group_id``
  (RFC 9420 §8.1, ``opaque<V>``) of a Phoenix group is the encoding of this
  struct (``GroupId.to_mls`` / ``GroupId.from_mls``).
* **Alias** — NFKC-normalised and case-folded, 1–64 characters, each a
  Unicode letter or digit or one of ``. _ -``; it must start and end with a
  letter or digit. No ``@`` and no spaces, so an alias can be written next to
  a domain (``alias@domain``) without ambiguity.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import unicodedata
import uuid
from typing import Annotated, Any

from .codec import DecodeError, EncodeError, Reader, String, WireType, decode, encode, struct, wire_type_of
from .errors import Malformed

__all__ = [
    "InvalidId", "Uuid", "Fqdn", "UserId", "ClientId", "QsUid", "QsCid",
    "PseudonymousClientId", "GroupId", "Alias", "MAX_FQDN_LEN", "MAX_ALIAS_LEN",
]

MAX_FQDN_LEN = 253
MAX_LABEL_LEN = 63
MAX_ALIAS_LEN = 64


class InvalidId(Malformed):
    """A string or value is not a valid identifier (400)."""
    code = "invalid_id"


# --- UUIDs ------------------------------------------------------------------------

class _UuidWire(WireType):
    """``opaque[16]`` holding a UUID; any 16 bytes are accepted on decode
    (the version nibble is the sampler's business, not the receiver's)."""

    name = "UUID"

    def write(self, value: Any, out: bytearray) -> None:
        if not isinstance(value, uuid.UUID):
            raise EncodeError(f"{type(value).__name__} is not a UUID")
        out += value.bytes

    def read(self, r: Reader) -> uuid.UUID:
        return uuid.UUID(bytes=r.take(16))


Uuid = Annotated[uuid.UUID, _UuidWire()]


def _as_uuid(value: Any, what: str) -> uuid.UUID:
    """Accept a UUID or its 16 raw bytes (convenience when constructing)."""
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, (bytes, bytearray)) and len(value) == 16:
        return uuid.UUID(bytes=bytes(value))
    raise InvalidId(f"{what} must be a UUID, not {value!r}")


def _parse_uuid(text: str, what: str) -> uuid.UUID:
    # uuid.UUID() also accepts braces, "urn:uuid:" and missing hyphens; the
    # text form here is exactly the canonical 36-character one.
    if not re.fullmatch(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}", text):
        raise InvalidId(f"{what} {text!r} is not a UUID (expected 8-4-4-4-12 hex digits)")
    return uuid.UUID(text)


# --- canonical strings: Fqdn and Alias ----------------------------------------------

class _CanonicalStringWire(WireType):
    """A validated string type on the wire: UTF-8 ``opaque<V>`` that must
    decode to a valid value already in canonical form."""

    def __init__(self, cls: type):
        self.cls = cls
        self.name = cls.__name__
        self._string = wire_type_of(String)
        # A fan-out names the same few domains hundreds of times. The values
        # are immutable, so a valid canonical text is parsed once and the
        # instance shared; invalid texts raise and are never cached (the
        # cache is bounded, so unique names cannot grow it).
        self._parse_canonical = functools.lru_cache(maxsize=4096)(self._parse_uncached)

    def write(self, value: Any, out: bytearray) -> None:
        if not isinstance(value, self.cls):
            raise EncodeError(f"{type(value).__name__} is not a {self.name}")
        self._string.write(value.value, out)

    def read(self, r: Reader) -> Any:
        return self._parse_canonical(self._string.read(r))

    def _parse_uncached(self, text: str) -> Any:
        try:
            parsed = self.cls(text)
        except InvalidId as e:
            raise DecodeError(e.message) from None
        if parsed.value != text:
            raise DecodeError(f"{self.name} {text!r} is not in canonical form ({parsed.value!r})")
        return parsed


_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def _normalise_fqdn(text: Any) -> str:
    if not isinstance(text, str):
        raise InvalidId(f"a domain must be a string, not {type(text).__name__}")
    return _normalised_name(text)


#: Domain names are few and checked again and again (every queue config a
#: DS state or fan-out decodes names one): a bounded cache of the checked
#: names saves ~4 µs per name, ~4 ms of a commit in a group of 1024
#: (benchmarks/ds_bench.py). Refusals are not cached (they raise).
@functools.lru_cache(maxsize=4096)
def _normalised_name(text: str) -> str:
    if not text.isascii():
        raise InvalidId(f"domain {text!r} is not ASCII; write internationalised names as IDNA A-labels (xn--...)")
    name = text.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise InvalidId("domain is empty")
    if len(name) > MAX_FQDN_LEN:
        raise InvalidId(f"domain is {len(name)} characters long, more than {MAX_FQDN_LEN}")
    labels = name.split(".")
    if len(labels) < 2:
        raise InvalidId(f"domain {text!r} must have at least two labels")
    for label in labels:
        if not label:
            raise InvalidId(f"domain {text!r} has an empty label")
        if len(label) > MAX_LABEL_LEN:
            raise InvalidId(f"label {label[:16]!r}... of domain is longer than {MAX_LABEL_LEN} characters")
        if not _LABEL.fullmatch(label):
            raise InvalidId(
                f"label {label!r} of domain {text!r} must be letters, digits and hyphens, "
                "not starting or ending with a hyphen")
        if label[2:4] == "--":
            _check_reserved_ldh(label, text)
    if labels[-1].isdigit():
        raise InvalidId(f"{text!r} looks like an IP address: the top-level label is all digits")
    return name


def _check_reserved_ldh(label: str, text: str) -> None:
    """RFC 5890 §2.3.1: ``??--`` labels are reserved except IDNA A-labels."""
    if not label.startswith("xn--"):
        raise InvalidId(f"label {label!r} of domain {text!r} has '--' in positions 3-4 but is not an A-label")
    try:
        label[4:].encode("ascii").decode("punycode")
    except UnicodeError:
        raise InvalidId(f"label {label!r} of domain {text!r} is not valid Punycode") from None


class Fqdn:
    """A fully qualified domain name, validated and normalised.

    ``Fqdn("AS.Example.")`` and ``Fqdn.parse("AS.Example.")`` both give
    ``Fqdn("as.example")``; anything invalid raises :class:`InvalidId`.
    Equal domains compare and hash equal.
    """

    __slots__ = ("value",)
    value: str

    def __init__(self, value: str):
        object.__setattr__(self, "value", _normalise_fqdn(value))

    @classmethod
    def parse(cls, text: str) -> "Fqdn":
        return cls(text)

    def __setattr__(self, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Fqdn) and other.value == self.value

    def __lt__(self, other: "Fqdn") -> bool:
        return self.value < other.value

    def __hash__(self) -> int:
        return hash(("Fqdn", self.value))

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:
        return f"Fqdn({self.value!r})"

    def subdomain(self, prefix: str) -> "Fqdn":
        """``Fqdn("a.example").subdomain("qs")`` is ``qs.a.example``."""
        return Fqdn(f"{prefix}.{self.value}")


Fqdn.__wire_type__ = _CanonicalStringWire(Fqdn)  # type: ignore[attr-defined]

_ALIAS_PUNCT = "._-"


def _normalise_alias(text: Any) -> str:
    if not isinstance(text, str):
        raise InvalidId(f"an alias must be a string, not {type(text).__name__}")
    # Like Unicode's NFKC_Casefold: fold compatibility forms and case until
    # nothing changes (case folding can leave un-normalised sequences), so
    # that the canonical form is a fixed point and round-trips on the wire.
    if len(text) > 16 * MAX_ALIAS_LEN:  # no normalisation shrinks text that much
        raise InvalidId(f"an alias has at most {MAX_ALIAS_LEN} characters")
    name = text
    for _ in range(4):
        folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
        if folded == name:
            break
        name = folded
    else:
        raise InvalidId(f"alias {text!r} has no stable case-folded form")
    if not 1 <= len(name) <= MAX_ALIAS_LEN:
        raise InvalidId(f"an alias has 1 to {MAX_ALIAS_LEN} characters, this one {len(name)}")
    for ch in name:
        if ch in _ALIAS_PUNCT:
            continue
        if unicodedata.category(ch)[0] not in "LN":
            raise InvalidId(f"alias character {ch!r} is not a letter, a digit or one of {_ALIAS_PUNCT!r}")
    if name[0] in _ALIAS_PUNCT or name[-1] in _ALIAS_PUNCT:
        raise InvalidId(f"alias {name!r} must start and end with a letter or digit")
    return name


class Alias:
    """A user-chosen discovery name (``spec/glossary.md#alias``).

    ``Alias("Alice_W")`` is ``Alias("alice_w")``: equality is on the folded
    form, which is also the only form accepted on the wire.
    """

    __slots__ = ("value",)
    value: str

    def __init__(self, value: str):
        object.__setattr__(self, "value", _normalise_alias(value))

    @classmethod
    def parse(cls, text: str) -> "Alias":
        return cls(text)

    def __setattr__(self, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Alias) and other.value == self.value

    def __hash__(self) -> int:
        return hash(("Alias", self.value))

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:
        return f"Alias({self.value!r})"


Alias.__wire_type__ = _CanonicalStringWire(Alias)  # type: ignore[attr-defined]


def _as_fqdn(value: Any) -> Fqdn:
    return value if isinstance(value, Fqdn) else Fqdn(value)


def _split_at(text: Any, sep: str, what: str) -> tuple[str, str]:
    if not isinstance(text, str):
        raise InvalidId(f"a {what} must be a string, not {type(text).__name__}")
    head, found, tail = text.rpartition(sep)
    if not found:
        raise InvalidId(f"{what} {text!r} has no {sep!r}")
    return head, tail


# --- structured ids -------------------------------------------------------------------

@struct
class UserId:
    """``spec/glossary.md#user-id-uid``: a UUID qualified with the AS domain."""
    as_domain: Fqdn
    user_id: Uuid

    def __post_init__(self) -> None:
        object.__setattr__(self, "as_domain", _as_fqdn(self.as_domain))
        object.__setattr__(self, "user_id", _as_uuid(self.user_id, "user_id"))

    @classmethod
    def random(cls, as_domain: Fqdn | str) -> "UserId":
        return cls(_as_fqdn(as_domain), uuid.uuid4())

    def __str__(self) -> str:
        return f"{self.user_id}@{self.as_domain}"

    @classmethod
    def parse(cls, text: str) -> "UserId":
        uid, domain = _split_at(text, "@", "user id")
        return cls(Fqdn(domain), _parse_uuid(uid, "user id"))


@struct
class ClientId:
    """``spec/glossary.md#client-id-cid``: a client UUID qualified with its user."""
    user_id: UserId
    client_uuid: Uuid

    def __post_init__(self) -> None:
        if not isinstance(self.user_id, UserId):
            raise InvalidId(f"user_id must be a UserId, not {type(self.user_id).__name__}")
        object.__setattr__(self, "client_uuid", _as_uuid(self.client_uuid, "client_uuid"))

    @classmethod
    def random(cls, user_id: UserId) -> "ClientId":
        return cls(user_id, uuid.uuid4())

    @property
    def as_domain(self) -> Fqdn:
        return self.user_id.as_domain

    def __str__(self) -> str:
        return f"{self.user_id}/{self.client_uuid}"

    @classmethod
    def parse(cls, text: str) -> "ClientId":
        user, client = _split_at(text, "/", "client id")
        return cls(UserId.parse(user), _parse_uuid(client, "client uuid"))


@struct
class QsUid:
    """``spec/glossary.md#qs-user-id-qsuid``: a QS user record id."""
    user_id: Uuid

    def __post_init__(self) -> None:
        object.__setattr__(self, "user_id", _as_uuid(self.user_id, "user_id"))

    @classmethod
    def random(cls) -> "QsUid":
        return cls(uuid.uuid4())

    def __str__(self) -> str:
        return str(self.user_id)

    @classmethod
    def parse(cls, text: str) -> "QsUid":
        if not isinstance(text, str):
            raise InvalidId(f"a QS user id must be a string, not {type(text).__name__}")
        return cls(_parse_uuid(text, "QS user id"))


@struct
class QsCid:
    """``spec/glossary.md#qs-client-id-qscid`` (struct ``PseudonymousClientId``)."""
    qs_uid: QsUid
    client_id: Uuid

    def __post_init__(self) -> None:
        if not isinstance(self.qs_uid, QsUid):
            raise InvalidId(f"qs_uid must be a QsUid, not {type(self.qs_uid).__name__}")
        object.__setattr__(self, "client_id", _as_uuid(self.client_id, "client_id"))

    @classmethod
    def random(cls, qs_uid: QsUid) -> "QsCid":
        return cls(qs_uid, uuid.uuid4())

    def __str__(self) -> str:
        return f"{self.qs_uid}/{self.client_id}"

    @classmethod
    def parse(cls, text: str) -> "QsCid":
        uid, cid = _split_at(text, "/", "QS client id")
        return cls(QsUid.parse(uid), _parse_uuid(cid, "QS client id"))


PseudonymousClientId = QsCid


@struct
class GroupId:
    """A group id: a UUID sampled by the DS (``spec/delivery_service.md#request-group-id``),
    qualified with the domain of that DS so that any client can tell where
    the group lives."""
    ds_domain: Fqdn
    group_uuid: Uuid

    def __post_init__(self) -> None:
        object.__setattr__(self, "ds_domain", _as_fqdn(self.ds_domain))
        object.__setattr__(self, "group_uuid", _as_uuid(self.group_uuid, "group_uuid"))

    @classmethod
    def random(cls, ds_domain: Fqdn | str) -> "GroupId":
        return cls(_as_fqdn(ds_domain), uuid.uuid4())

    def to_mls(self) -> bytes:
        """The MLS ``group_id`` (RFC 9420 §8.1) of this group: the struct's encoding."""
        return encode(self)

    @classmethod
    def from_mls(cls, group_id: bytes) -> "GroupId":
        """Parse an MLS ``group_id``; raises DecodeError if it is not a Phoenix GroupId."""
        return decode(cls, group_id)

    def __str__(self) -> str:
        return f"{self.group_uuid}@{self.ds_domain}"

    @classmethod
    def parse(cls, text: str) -> "GroupId":
        gid, domain = _split_at(text, "@", "group id")
        return cls(Fqdn(domain), _parse_uuid(gid, "group id"))
