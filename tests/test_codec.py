"""The presentation-language codec (RFC 9420 §2.1): vectors, round trips, strictness."""

import enum

import pytest
from hypothesis import given, strategies as st

from phoenix_ref.codec import (
    U8, U16, U32, U64, DecodeError, EncodeError, Reader, String, VarBytes, decode,
    decode_varint, encode, encode_varint, enum as enum_, fixed, keep_encoding, optional, struct, variant, vec,
)
from tests.conftest import vector_params


@pytest.mark.parametrize("v", vector_params("deserialization.json"))
def test_deserialization_vector(v):
    header = bytes.fromhex(v["vlbytes_header"])
    assert encode_varint(v["length"]) == header
    r = Reader(header)
    assert decode_varint(r) == v["length"]
    assert r.done()


class Color(enum.IntEnum):
    red = 1
    green = 2


@struct
class Empty:
    pass


@struct
class Leaf:
    n: U32
    data: VarBytes


@struct
class Sample:
    a: U8
    b: U16
    c: U64
    key: fixed(4)
    name: String
    leaves: vec(Leaf)
    maybe: optional(Leaf)
    color: enum_(U8, Color)
    choice: variant(U16, {1: Empty, 2: Leaf}, "Choice")
    nested: vec(vec(U8))


leaves = st.builds(Leaf, st.integers(0, 2**32 - 1), st.binary(max_size=300))
samples = st.builds(
    Sample,
    st.integers(0, 255), st.integers(0, 2**16 - 1), st.integers(0, 2**64 - 1),
    st.binary(min_size=4, max_size=4), st.text(max_size=40), st.lists(leaves, max_size=5),
    st.none() | leaves, st.sampled_from(Color), st.just(Empty()) | leaves,
    st.lists(st.lists(st.integers(0, 255), max_size=4), max_size=4),
)


@given(samples)
def test_round_trip(s):
    assert decode(Sample, encode(s)) == s


@given(st.integers(0, 2**30 - 1))
def test_varint_round_trip_and_minimal(n):
    data = encode_varint(n)
    assert len(data) == (1 if n < 64 else 2 if n < 16384 else 4)
    assert decode_varint(Reader(data)) == n


@given(samples, st.binary(min_size=1, max_size=8))
def test_trailing_bytes_rejected(s, extra):
    with pytest.raises(DecodeError, match="trailing"):
        decode(Sample, encode(s) + extra)


@given(samples, st.data())
def test_truncation_rejected(s, data):
    raw = encode(s)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(DecodeError):
        decode(Sample, raw[:cut])


@given(st.binary(max_size=200))
def test_garbage_never_crashes(raw):
    try:
        decode(Sample, raw)
    except DecodeError:
        pass


def test_non_minimal_varint_rejected():
    for raw in (b"\x40\x05", b"\x80\x00\x00\x05", b"\x80\x00\x3f\xff"):
        with pytest.raises(DecodeError, match="non-minimal"):
            decode_varint(Reader(raw))
    with pytest.raises(DecodeError, match="0b11"):
        decode_varint(Reader(b"\xc0\x00\x00\x00\x00\x00\x00\x01"))


def test_errors_name_struct_and_field():
    good = encode(Sample(1, 2, 3, b"abcd", "x", [Leaf(1, b"z")], None, Color.red, Empty(), []))
    with pytest.raises(DecodeError) as e:
        decode(Sample, good[:18])
    assert "Sample.leaves" in str(e.value)
    bad_color = bytearray(good)
    idx = len(good) - 1 - 1 - 2  # color octet sits before the 2-byte tag + empty case + nested
    bad_color[idx] = 9
    with pytest.raises(DecodeError, match="Sample.color: unknown Color value 9"):
        decode(Sample, bytes(bad_color))
    bad_tag = good[:-3] + b"\x00\x07" + good[-1:]
    with pytest.raises(DecodeError, match="unknown Choice tag 7"):
        decode(Sample, bad_tag)


def test_length_past_end_and_limit():
    with pytest.raises(DecodeError, match="past the end|needs"):
        decode(Leaf, b"\x00\x00\x00\x01\x05ab")
    with pytest.raises(DecodeError, match="exceeds the limit"):
        decode(Leaf, encode(Leaf(1, b"x" * 100)), max_len=50)


def test_optional_presence_octet_strict():
    @struct
    class Opt:
        x: optional(U8)
    assert decode(Opt, b"\x00") == Opt(None)
    assert decode(Opt, b"\x01\x07") == Opt(7)
    with pytest.raises(DecodeError, match="presence"):
        decode(Opt, b"\x02\x07")


def test_encode_rejects_out_of_range():
    with pytest.raises(EncodeError):
        encode(Leaf(2**32, b""))
    with pytest.raises(EncodeError):
        encode_varint(2**30)


def _reference_prefixed(r: Reader) -> bytes:
    return r.take(decode_varint(r))


@given(st.binary(max_size=70), st.integers(0, 3))
def test_take_prefixed_agrees_with_the_general_path(raw, start):
    """``Reader.take_prefixed`` (the short-length fast path every
    ``opaque<V>`` field decodes through) accepts, refuses and positions
    exactly like a varint read followed by ``take``."""
    start = min(start, len(raw))
    for data in (raw, b"\x01x" + raw, b"\x40\x41" + b"y" * 65 + raw, b"\x40\x05abcde", b"\x3f" + raw):
        fast, slow = Reader(data, start), Reader(data, start)
        try:
            expected = _reference_prefixed(slow)
        except DecodeError as e:
            with pytest.raises(DecodeError) as got:
                fast.take_prefixed()
            assert str(got.value) == str(e)
            continue
        assert fast.take_prefixed() == expected
        assert fast.pos == slow.pos


def test_take_prefixed_edges():
    assert Reader(b"\x00").take_prefixed() == b""            # empty, at the very end
    assert Reader(b"\x02ab").take_prefixed() == b"ab"
    assert Reader(b"\x40\x40" + b"z" * 64).take_prefixed() == b"z" * 64   # smallest 2-byte length
    assert Reader(b"\x80\x00\x40\x00" + b"q" * 0x4000).take_prefixed() == b"q" * 0x4000
    with pytest.raises(DecodeError, match="non-minimal"):
        Reader(b"\x40\x3f" + b"z" * 63).take_prefixed()
    with pytest.raises(DecodeError, match="needs 3 bytes, only 2 left"):
        Reader(b"\x03ab").take_prefixed()
    with pytest.raises(DecodeError, match="0b11"):
        Reader(b"\xc0\x00").take_prefixed()
    with pytest.raises(DecodeError):
        Reader(b"").take_prefixed()


@given(st.lists(st.integers(0, 2**32 - 1), max_size=40))
def test_integer_vectors_written_in_one_pack_match_the_item_writer(values):
    """A vector of uint32 is written in one pack; the bytes are those of
    writing item after item (``bool`` items take the item writer)."""
    expected = encode_varint(4 * len(values)) + b"".join(encode(v, U32) for v in values)
    assert encode(values, vec(U32)) == expected
    assert decode(vec(U32), expected) == values


def test_integer_vector_out_of_range_is_an_encode_error():
    with pytest.raises(EncodeError, match="4294967296 is not a uint32"):
        encode([1, 2**32, 3], vec(U32))
    with pytest.raises(EncodeError):
        encode([1, -1], vec(U16))
    assert encode([True, 2], vec(U8)) == b"\x02\x01\x02"


@keep_encoding
@struct
class KeptLeaf:
    index: U32
    data: VarBytes


def test_a_kept_struct_read_from_the_wire_writes_the_bytes_it_came_from():
    wire = encode([KeptLeaf(1, b"ab"), KeptLeaf(2, b"")], vec(KeptLeaf))
    values = decode(vec(KeptLeaf), wire)
    assert values == [KeptLeaf(1, b"ab"), KeptLeaf(2, b"")]
    assert values[0].__dict__["_kept_encoding"] == b"\x00\x00\x00\x01\x02ab"
    assert encode(values, vec(KeptLeaf)) == wire
    # a value built in Python computes its encoding on first write
    fresh = KeptLeaf(3, b"x")
    assert "_kept_encoding" not in fresh.__dict__
    assert encode(fresh) == b"\x00\x00\x00\x03\x01x"
