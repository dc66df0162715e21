"""The TLS presentation language as MLS uses it (RFC 9420 §2.1, RFC 8446 §3).

Every wire struct in phoenix_ref is declared once, as a dataclass whose field
annotations name their wire types, and is encoded and decoded from that one
declaration::

    @struct
    class ExpirationData:
        not_before: U64
        not_after: U64

    data = encode(ExpirationData(1, 2))
    assert decode(ExpirationData, data) == ExpirationData(1, 2)

Wire types:

* ``U8``, ``U16``, ``U32``, ``U64`` — big-endian unsigned integers.
* ``VarBytes`` — ``opaque x<V>``: bytes behind an MLS variable-length
  integer (RFC 9420 §2.1.2). ``fixed(n)`` — ``opaque x[n]``.
* ``vec(T)`` — ``T x<V>``: a vector of any wire type, length in bytes.
* ``optional(T)`` — ``optional<T>``: a presence octet, then ``T``.
* ``enum(U16, SomeIntEnum)`` — an integer restricted to the enum's members.
* ``variant(U16, {tag: Case, ...})`` — a tagged union (``select`` in the
  RFC, a Rust enum in the Phoenix spec). The Python value is an instance of
  the case class; the tag is derived from its class.
* ``String`` — UTF-8 text as ``opaque x<V>``.
* ``selected(key, cases)`` inside a ``@select_struct`` — a field present only
  for some values of an earlier field (RFC 9420's ``select`` inside a struct,
  e.g. ``FramedContent.content`` by ``content_type``).

Decoding is strict (GUIDE §2): trailing bytes, a non-minimal varint, a length
past the end, an unknown enum tag or an input longer than the caller's limit
raise :class:`DecodeError`, whose message names the struct and the field.
"""

from __future__ import annotations

import abc
import dataclasses
import enum as _enum
import struct as _struct
import typing
from typing import Annotated, Any, Callable

__all__ = [
    "DecodeError", "EncodeError", "WireType", "U8", "U16", "U32", "U64",
    "VarBytes", "String", "fixed", "vec", "optional", "enum", "variant",
    "struct", "encode", "decode", "wire_type_of", "Reader",
    "encode_varint", "decode_varint", "MAX_VARINT", "selected", "select_struct", "keep_encoding",
]

MAX_VARINT = (1 << 30) - 1


class DecodeError(ValueError):
    """Input bytes do not follow the declared wire format.

    ``path`` names where decoding stopped, outermost first, e.g.
    ``"QsToQsMessage.payload.client_queue_configs[2].sealed_config"``.
    """

    def __init__(self, message: str, path: tuple[str, ...] = ()):
        self.reason = message
        self.path = path
        where = ".".join(path).replace(".[", "[")
        super().__init__(f"{where}: {message}" if where else message)

    def within(self, *outer: str) -> "DecodeError":
        return DecodeError(self.reason, outer + self.path)


class EncodeError(ValueError):
    """A value cannot be encoded with its declared wire type."""


class Reader:
    """A cursor over an immutable byte string."""

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None):
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def take(self, n: int) -> bytes:
        if n > self.end - self.pos:
            raise DecodeError(f"needs {n} bytes, only {self.end - self.pos} left")
        start = self.pos
        self.pos += n
        return self.data[start:self.pos]

    def take_prefixed(self) -> bytes:
        """A varint length, then that many bytes (``opaque<V>`` and the
        body of every ``<V>`` field). Lengths of one and two bytes, the
        common ones, are read here without the general varint path; the
        checks are the same as :func:`decode_varint` and :meth:`take`."""
        data, pos, end = self.data, self.pos, self.end
        if pos + 1 < end:
            first = data[pos]
            if first < 0x40:
                n, pos = first, pos + 1
            elif first < 0x80:
                n = ((first & 0x3F) << 8) | data[pos + 1]
                if n < 0x40:
                    raise DecodeError("non-minimal varint")
                pos += 2
            else:
                return self.take(decode_varint(self))
            if n > end - pos:
                raise DecodeError(f"needs {n} bytes, only {end - pos} left")
            self.pos = pos + n
            return data[pos:pos + n]
        return self.take(decode_varint(self))

    def length(self) -> int:
        """A varint length (:func:`decode_varint`), the one and two byte
        forms read here directly; same checks, same errors."""
        data, pos = self.data, self.pos
        if pos < self.end:
            first = data[pos]
            if first < 0x40:
                self.pos = pos + 1
                return first
            if first < 0x80 and pos + 1 < self.end:
                n = ((first & 0x3F) << 8) | data[pos + 1]
                if n < 0x40:
                    raise DecodeError("non-minimal varint")
                self.pos = pos + 2
                return n
        return decode_varint(self)

    def sub(self, n: int) -> "Reader":
        """A reader over the next ``n`` bytes; this reader skips them."""
        if n > self.end - self.pos:
            raise DecodeError(f"length {n} runs past the end ({self.end - self.pos} bytes left)")
        r = Reader(self.data, self.pos, self.pos + n)
        self.pos += n
        return r

    def done(self) -> bool:
        return self.pos >= self.end


# --- the MLS variable-length integer (RFC 9420 §2.1.2) -----------------------

def encode_varint(n: int) -> bytes:
    """Encode a length with the shortest of the 1, 2 or 4 byte forms."""
    if n < 0 or n > MAX_VARINT:
        raise EncodeError(f"length {n} does not fit an MLS varint")
    if n < 1 << 6:
        return bytes([n])
    if n < 1 << 14:
        return (0x4000 | n).to_bytes(2, "big")
    return (0x80000000 | n).to_bytes(4, "big")


def decode_varint(r: Reader) -> int:
    """Decode a varint; the 0b11 prefix and non-minimal forms are invalid."""
    first = r.take(1)[0]
    prefix = first >> 6
    if prefix == 0:
        return first
    if prefix == 1:
        v = ((first & 0x3F) << 8) | r.take(1)[0]
        if v < 1 << 6:
            raise DecodeError("non-minimal varint")
        return v
    if prefix == 2:
        v = int.from_bytes(bytes([first & 0x3F]) + r.take(3), "big")
        if v < 1 << 14:
            raise DecodeError("non-minimal varint")
        return v
    raise DecodeError("varint with invalid prefix 0b11")


# --- wire types ---------------------------------------------------------------

class WireType(abc.ABC):
    """How one value travels. Subclasses implement ``write`` and ``read``."""

    name = "?"

    @abc.abstractmethod
    def write(self, value: Any, out: bytearray) -> None:
        """Append the encoding of ``value`` to ``out``; raise EncodeError if it does not fit."""

    @abc.abstractmethod
    def read(self, r: Reader) -> Any:
        """Read one value from ``r``; raise DecodeError on malformed input."""

    def __repr__(self) -> str:
        return self.name


class _UInt(WireType):
    def __init__(self, size: int):
        self.size = size
        self.limit = 1 << (8 * size)
        self.name = f"uint{8 * size}"
        self.code = {1: "B", 2: "H", 4: "I", 8: "Q"}[size]
        fmt = _struct.Struct(">" + self.code)
        self._pack, self._unpack_from = fmt.pack, fmt.unpack_from

    def write(self, value: int, out: bytearray) -> None:
        if not isinstance(value, int) or not 0 <= value < self.limit:
            raise EncodeError(f"{value!r} is not a {self.name}")
        out += self._pack(value)

    def read(self, r: Reader) -> int:
        pos, n = r.pos, self.size
        if n > r.end - pos:
            raise DecodeError(f"needs {n} bytes, only {r.end - pos} left")
        r.pos = pos + n
        return self._unpack_from(r.data, pos)[0]


class _VarBytes(WireType):
    name = "opaque<V>"

    def write(self, value: bytes, out: bytearray) -> None:
        if not isinstance(value, (bytes, bytearray)):
            raise EncodeError(f"{type(value).__name__} is not bytes")
        n = len(value)
        if n < 0x40:
            out.append(n)
        else:
            out += encode_varint(n)
        out += value

    def read(self, r: Reader) -> bytes:
        return r.take_prefixed()


class _String(WireType):
    name = "string<V>"

    def write(self, value: str, out: bytearray) -> None:
        data = value.encode("utf-8")
        out += encode_varint(len(data))
        out += data

    def read(self, r: Reader) -> str:
        raw = r.take_prefixed()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DecodeError(f"not UTF-8 ({e.reason})") from None


class _Fixed(WireType):
    def __init__(self, n: int):
        self.n = n
        self.name = f"opaque[{n}]"

    def write(self, value: bytes, out: bytearray) -> None:
        if not isinstance(value, (bytes, bytearray)) or len(value) != self.n:
            raise EncodeError(f"expected exactly {self.n} bytes")
        out += value

    def read(self, r: Reader) -> bytes:
        return r.take(self.n)


class _Vec(WireType):
    def __init__(self, item: WireType):
        self.item = item
        self.name = f"{item.name}<V>"
        self._item: WireType | None = None   # ``item`` resolved, on first use

    def _resolve(self) -> WireType:
        self._item = _resolved(self.item)
        return self._item

    def write(self, value: list, out: bytearray) -> None:
        item = self._item or self._resolve()
        if isinstance(item, _UInt) and value and all(type(v) is int for v in value):
            # whole integers: one pack for the vector (the read below does
            # one unpack); a value out of range fails like the item writer
            try:
                body = _struct.pack(f">{len(value)}{item.code}", *value)
            except _struct.error:
                bad = next(v for v in value if not 0 <= v < item.limit)
                raise EncodeError(f"{bad!r} is not a {item.name}") from None
            out += encode_varint(len(body))
            out += body
            return
        write = item.write   # a long vector: one lookup, not one per item
        body = bytearray()
        for v in value:
            write(v, body)
        out += encode_varint(len(body))
        out += body

    def read(self, r: Reader) -> list:
        n = r.length()
        outer_end = r.end
        if n > outer_end - r.pos:
            raise DecodeError(f"length {n} runs past the end ({outer_end - r.pos} bytes left)")
        item = self._item or self._resolve()
        end = r.end = r.pos + n    # the items read up to the vector's end, not past it
        try:
            if isinstance(item, _UInt) and n % item.size == 0:
                # whole integers only: one unpack for the vector (an odd
                # length takes the loop below, which fails on the last item)
                items = list(_struct.unpack_from(f">{n // item.size}{item.code}", r.data, r.pos))
                r.pos = end
                return items
            read = item.read
            items = []
            try:
                while r.pos < end:
                    items.append(read(r))
            except DecodeError as e:
                raise e.within(f"[{len(items)}]") from None
            return items
        finally:
            r.end = outer_end


class _Optional(WireType):
    def __init__(self, item: WireType):
        self.item = item
        self.name = f"optional<{item.name}>"
        self._item: WireType | None = None   # ``item`` resolved, on first use

    def _resolve(self) -> WireType:
        self._item = _resolved(self.item)
        return self._item

    def write(self, value: Any, out: bytearray) -> None:
        if value is None:
            out.append(0)
        else:
            out.append(1)
            (self._item or self._resolve()).write(value, out)

    def read(self, r: Reader) -> Any:
        if r.pos >= r.end:
            raise DecodeError(f"needs 1 bytes, only {r.end - r.pos} left")
        present = r.data[r.pos]
        r.pos += 1
        if present == 0:
            return None
        if present == 1:
            return (self._item or self._resolve()).read(r)
        raise DecodeError(f"optional presence octet is {present}, not 0 or 1")


class _Enum(WireType):
    def __init__(self, tag: _UInt, cls: type[_enum.IntEnum]):
        self.tag = tag
        self.cls = cls
        self.name = cls.__name__
        self._members = {int(m): m for m in cls}   # cls(raw) without the Enum call machinery

    def write(self, value: int, out: bytearray) -> None:
        self.tag.write(int(self.cls(value)), out)

    def read(self, r: Reader) -> Any:
        raw = self.tag.read(r)
        member = self._members.get(raw)
        if member is None:
            raise DecodeError(f"unknown {self.cls.__name__} value {raw}")
        return member


class _Variant(WireType):
    def __init__(self, tag: _UInt, cases: dict[int, type], name: str):
        self.tag = tag
        self.cases = dict(cases)
        self.tags = {cls: t for t, cls in cases.items()}
        self.name = name

    def write(self, value: Any, out: bytearray) -> None:
        t = self.tags.get(type(value))
        if t is None:
            raise EncodeError(f"{type(value).__name__} is not a case of {self.name}")
        self.tag.write(t, out)
        wire_type_of(type(value)).write(value, out)

    def read(self, r: Reader) -> Any:
        t = self.tag.read(r)
        cls = self.cases.get(t)
        if cls is None:
            raise DecodeError(f"unknown {self.name} tag {t}")
        return wire_type_of(cls).read(r)


class _Struct(WireType):
    """Wire type of a ``@struct`` class; fields resolved on first use.

    On first use each field's wire type is resolved once (a :class:`_Lazy`
    to the struct it names) and the bound ``read`` / ``write`` of every
    field kept in a list (:meth:`_compile`), so that a value is read or
    written by one loop over those functions, without looking anything up
    per field."""

    def __init__(self, cls: type):
        self.cls = cls
        self.name = cls.__name__
        self._fields: list[tuple[str, WireType]] | None = None
        self._readers: list[Callable[[Reader], Any]] | None = None   # each field's read, resolved
        self._writers: list[tuple[str, Callable[[Any, bytearray], None]]] | None = None

    @property
    def fields(self) -> list[tuple[str, WireType]]:
        if self._fields is None:
            hints = typing.get_type_hints(self.cls, include_extras=True)
            resolved = []
            for f in dataclasses.fields(self.cls):
                if not f.init:
                    continue
                resolved.append((f.name, _wire_type_from_hint(hints[f.name], self.cls, f.name)))
            self._fields = resolved
        return self._fields

    def _compile(self) -> None:
        self._writers = [(name, _resolved(wt).write) for name, wt in self.fields]
        self._readers = [_resolved(wt).read for _, wt in self.fields]

    def write(self, value: Any, out: bytearray) -> None:
        writers = self._writers
        if writers is None:
            self._compile()
            writers = self._writers
        for name, write in writers:
            try:
                write(getattr(value, name), out)
            except EncodeError as e:
                raise EncodeError(f"{self.name}.{name}: {e}") from None

    def read(self, r: Reader) -> Any:
        readers = self._readers
        if readers is None:
            self._compile()
            readers = self._readers
        values = []
        try:
            for read in readers:
                values.append(read(r))
        except DecodeError as e:
            raise e.within(self.name, self.fields[len(values)][0]) from None
        return self.cls(*values)


def _wire_type_from_hint(hint: Any, owner: type, field: str) -> WireType:
    if typing.get_origin(hint) is Annotated:
        for meta in hint.__metadata__:
            if isinstance(meta, WireType):
                return meta
    if isinstance(hint, type) and hasattr(hint, "__wire_type__"):
        return hint.__wire_type__
    raise TypeError(f"{owner.__name__}.{field}: annotation {hint!r} has no wire type")


# Public constructors. Annotated types keep the Python type visible to
# readers and checkers while carrying the wire type for the codec.
U8 = Annotated[int, _UInt(1)]
U16 = Annotated[int, _UInt(2)]
U32 = Annotated[int, _UInt(4)]
U64 = Annotated[int, _UInt(8)]
VarBytes = Annotated[bytes, _VarBytes()]
String = Annotated[str, _String()]


def wire_type_of(t: Any) -> WireType:
    """The wire type behind an annotation, a struct class or a wire type."""
    if isinstance(t, type):   # a struct class, the common case (every encode): no typing introspection
        wt = getattr(t, "__wire_type__", None)
        if wt is not None:
            return wt
    if isinstance(t, WireType):
        return t
    return _wire_type_from_hint(t, type(t), "?")


def fixed(n: int) -> Any:
    return Annotated[bytes, _Fixed(n)]


def vec(item: Any) -> Any:
    return Annotated[list, _Vec(_Lazy(item))]


def optional(item: Any) -> Any:
    return Annotated[Any, _Optional(_Lazy(item))]


def enum(tag: Any, cls: type[_enum.IntEnum]) -> Any:
    return Annotated[cls, _Enum(wire_type_of(tag), cls)]


def variant(tag: Any, cases: dict[int, type], name: str = "variant") -> Any:
    """A tagged union; each case is a ``@struct`` class (possibly empty)."""
    return Annotated[Any, _Variant(wire_type_of(tag), cases, name)]


def _resolved(wt: WireType) -> WireType:
    """``wt``, or the wire type a :class:`_Lazy` stands for."""
    return wt.wt if isinstance(wt, _Lazy) else wt


class _Lazy(WireType):
    """Resolves a struct class when first used, so declarations may refer
    to classes defined further down a module."""

    def __init__(self, target: Any):
        self.target = target
        self._wt: WireType | None = None

    @property
    def wt(self) -> WireType:
        if self._wt is None:
            self._wt = wire_type_of(self.target)
        return self._wt

    @property
    def name(self) -> str:  # type: ignore[override]
        return getattr(self.target, "__name__", None) or repr(self.target)

    def write(self, value: Any, out: bytearray) -> None:
        self.wt.write(value, out)

    def read(self, r: Reader) -> Any:
        return self.wt.read(r)


T = typing.TypeVar("T")


def struct(cls: type[T]) -> type[T]:
    """Make ``cls`` a frozen dataclass that encodes as its fields in order."""
    if not dataclasses.is_dataclass(cls):
        cls = dataclasses.dataclass(frozen=True)(cls)
    cls.__wire_type__ = _Struct(cls)  # type: ignore[attr-defined]
    return cls


class _KeptStruct(_Struct):
    """Wire type of a :func:`keep_encoding` struct: a value's encoding is
    kept on the value (attribute ``_KEPT_ENCODING``), from the bytes it was
    read from, or computed on its first write."""

    def write(self, value: Any, out: bytearray) -> None:
        kept = value.__dict__.get(_KEPT_ENCODING)
        if kept is None:
            body = bytearray()
            super().write(value, body)
            kept = bytes(body)
            object.__setattr__(value, _KEPT_ENCODING, kept)
        out += kept

    def read(self, r: Reader) -> Any:
        start = r.pos
        value = super().read(r)
        object.__setattr__(value, _KEPT_ENCODING, r.data[start:r.pos])
        return value


_KEPT_ENCODING = "_kept_encoding"


def keep_encoding(cls: type[T]) -> type[T]:
    """A ``@struct`` class whose values remember their encoding.

    For a struct that is large and encoded several times as a part of other
    structures: the DS encodes a Commit (at n = 1024 some 84 KB, a thousand
    HPKE ciphertexts) for the sender's token binding, the signed content,
    the transcript hash, the commit's digest and the fan-out; with this the
    Commit is encoded once and its bytes copied the other times. Sound
    because struct values are frozen dataclasses, replaced, never changed:
    a value keeps the encoding of its fields (changing a list a value holds,
    in place, would break this, as it breaks the value's meaning anywhere).

    A value read from the wire keeps the bytes it was read from: every
    reader here accepts only the canonical encoding (minimal varints,
    presence octets 0 or 1, known tags, valid UTF-8), so those bytes are
    the ones a fresh encoding would give."""
    cls.__wire_type__ = _KeptStruct(cls)  # type: ignore[attr-defined]
    return cls


# --- select structs (RFC 9420 `select`) ---------------------------------------
class _Selected(WireType):
    """A field that is on the wire only when an earlier field has given values.

    ``key`` is the name of an earlier field of the same struct, or a function
    of the already-read fields (a dict) returning the selector. ``cases`` maps
    selector values to wire types; a selector value missing from ``cases``
    means the field is absent (``None`` in Python, nothing on the wire).
    """

    def __init__(self, key: str | Callable[[dict], Any], cases: dict[Any, Any]):
        self.key = key
        self.cases = cases
        self.name = "select"

    def choose(self, earlier: dict) -> WireType | None:
        sel = self.key(earlier) if callable(self.key) else earlier[self.key]
        case = self.cases.get(sel)
        return None if case is None else wire_type_of(case)

    # A selected field has no encoding of its own: only the enclosing
    # ``@select_struct`` knows the selector.
    def write(self, value: Any, out: bytearray) -> None:
        raise TypeError("a selected(...) field is only valid inside a @select_struct")

    def read(self, r: Reader) -> Any:
        raise TypeError("a selected(...) field is only valid inside a @select_struct")


def selected(key: str | Callable[[dict], Any], cases: dict[Any, Any]) -> Any:
    """Annotation for a ``select`` case field (see :class:`_Selected`)."""
    return Annotated[Any, _Selected(key, cases)]


class _SelectStruct(_Struct):
    """A struct whose ``selected`` fields depend on fields before them.

    Compiled like :class:`_Struct`: a plain field keeps its bound
    ``read`` / ``write``; a ``selected`` field its selector and the
    ``read`` / ``write`` of each case (``None`` for a case that is absent)."""

    def _compile(self) -> None:
        plans = []
        for name, wt in self.fields:
            if isinstance(wt, _Selected):
                cases = {sel: None if case is None else _resolved(wire_type_of(case))
                         for sel, case in wt.cases.items()}
                plans.append((name, wt.key, {sel: None if c is None else c.read for sel, c in cases.items()},
                              {sel: None if c is None else c.write for sel, c in cases.items()}))
            else:
                res = _resolved(wt)
                plans.append((name, None, res.read, res.write))
        self._plans = plans
        self._readers = [p[2] for p in plans]
        self._writers = [(p[0], p[3]) for p in plans]

    def write(self, value: Any, out: bytearray) -> None:
        if self._writers is None:
            self._compile()
        earlier: dict[str, Any] = {}
        for name, key, _, write in self._plans:
            v = getattr(value, name)
            earlier[name] = v
            if key is not None:
                write = write.get(key(earlier) if callable(key) else earlier[key])
                if write is None:
                    if v is not None:
                        raise EncodeError(f"{self.name}.{name} must be absent for this selector")
                    continue
            try:
                write(v, out)
            except EncodeError as e:
                raise EncodeError(f"{self.name}.{name}: {e}") from None
            except (AttributeError, TypeError) as e:
                raise EncodeError(f"{self.name}.{name}: {e}") from None

    def read(self, r: Reader) -> Any:
        if self._readers is None:
            self._compile()
        earlier: dict[str, Any] = {}
        for name, key, read, _ in self._plans:
            try:
                if key is not None:
                    read = read.get(key(earlier) if callable(key) else earlier[key])
                    earlier[name] = None if read is None else read(r)
                else:
                    earlier[name] = read(r)
            except DecodeError as e:
                raise e.within(self.name, name) from None
        return self.cls(*earlier.values())


def select_struct(cls: type) -> type:
    """Like :func:`codec.struct`, allowing :func:`selected` fields."""
    cls = struct(cls)
    cls.__wire_type__ = _SelectStruct(cls)  # type: ignore[attr-defined]
    return cls


def encode(value: Any, wire: Any = None) -> bytes:
    """Serialize a struct instance (or ``value`` as ``wire``)."""
    wt = wire_type_of(wire if wire is not None else type(value))
    out = bytearray()
    wt.write(value, out)
    return bytes(out)


def decode(wire: Any, data: bytes, *, max_len: int | None = None) -> Any:
    """Parse exactly ``data`` as ``wire``; anything left over is an error."""
    wt = wire_type_of(wire)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError("input is not bytes", (wt.name,))
    data = bytes(data)
    if max_len is not None and len(data) > max_len:
        raise DecodeError(f"input of {len(data)} bytes exceeds the limit of {max_len}", (wt.name,))
    r = Reader(data)
    try:
        value = wt.read(r)
    except DecodeError as e:
        raise (e if e.path and e.path[0] == wt.name else e.within(wt.name)) from None
    if not r.done():
        raise DecodeError(f"{r.end - r.pos} trailing bytes", (wt.name,))
    return value


def decode_prefix(wire: Any, r: Reader) -> Any:
    """Parse one ``wire`` value from a reader, leaving the rest unread."""
    return wire_type_of(wire).read(r)
