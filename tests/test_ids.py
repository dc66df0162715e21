"""Identifiers (spec/glossary.md): validation, text forms, wire round trips, strict decoding."""

import dataclasses
import uuid

import pytest
from hypothesis import given, strategies as st

from phoenix_ref.codec import DecodeError, EncodeError, decode, encode, struct
from phoenix_ref.errors import Malformed
from phoenix_ref.ids import (
    Alias, ClientId, Fqdn, GroupId, InvalidId, PseudonymousClientId, QsCid, QsUid, UserId,
)
from phoenix_ref.spec_plugin import spec

# --- strategies -------------------------------------------------------------------

_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True).filter(lambda l: l[2:4] != "--")
_tld = st.from_regex(r"[a-z]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True).filter(lambda l: l[2:4] != "--")
fqdns = st.builds(lambda ls, tld: Fqdn(".".join(ls + [tld])), st.lists(_label, min_size=1, max_size=4), _tld)
uuids = st.uuids() | st.binary(min_size=16, max_size=16).map(lambda b: uuid.UUID(bytes=b))
user_ids = st.builds(UserId, fqdns, uuids)
client_ids = st.builds(ClientId, user_ids, uuids)
qs_uids = st.builds(QsUid, uuids)
qs_cids = st.builds(QsCid, qs_uids, uuids)
group_ids = st.builds(GroupId, fqdns, uuids)
_alias_text = st.text(
    st.characters(categories=("Lu", "Ll", "Lo", "Nd"), max_codepoint=0x2FFF) | st.sampled_from("._-"),
    min_size=1, max_size=40)


def _valid_alias(t):
    try:
        return Alias(t)
    except InvalidId:
        return None


aliases = _alias_text.map(_valid_alias).filter(lambda a: a is not None)


# --- Fqdn ----------------------------------------------------------------------------

@pytest.mark.parametrize("text, canonical", [
    ("a.example", "a.example"),
    ("AS.A.Example.", "as.a.example"),
    ("xn--bcher-kva.example", "xn--bcher-kva.example"),
    ("1-2.3com", "1-2.3com"),
    ("a" * 63 + ".example", "a" * 63 + ".example"),
])
def test_fqdn_valid_and_normalised(text, canonical):
    d = Fqdn.parse(text)
    assert d.value == canonical and str(d) == canonical
    assert d == Fqdn(canonical) and hash(d) == hash(Fqdn(canonical))


@pytest.mark.parametrize("text, why", [
    ("", "empty"),
    (".", "empty"),
    ("localhost", "two labels"),
    ("a..example", "empty label"),
    (".a.example", "empty label"),
    ("-a.example", "hyphen"),
    ("a-.example", "hyphen"),
    ("a_b.example", "letters, digits and hyphens"),
    ("a b.example", "letters, digits and hyphens"),
    ("bücher.example", "not ASCII"),
    ("a" * 64 + ".example", "longer than 63"),
    (".".join(["a" * 60] * 5), "more than 253"),
    ("127.0.0.1", "IP address"),
    ("ab--c.example", "not an A-label"),
    ("xn--\u00e4.example", "not ASCII"),
    ("example.", "two labels"),
])
def test_fqdn_invalid(text, why):
    with pytest.raises(InvalidId, match=why) as e:
        Fqdn.parse(text)
    assert isinstance(e.value, Malformed) and e.value.status == 400


def test_fqdn_rejects_non_string():
    with pytest.raises(InvalidId):
        Fqdn(b"a.example")  # type: ignore[arg-type]


def test_fqdn_length_limit_is_exact():
    name = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])  # 253 characters
    assert len(Fqdn(name).value) == 253
    with pytest.raises(InvalidId):
        Fqdn(name + "d")


def test_fqdn_immutable_and_subdomain():
    d = Fqdn("a.example")
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.value = "b.example"  # type: ignore[misc]
    assert d.subdomain("qs") == Fqdn("qs.a.example")


@struct
class _Holder:
    domain: Fqdn


def test_fqdn_wire_form_is_a_string():
    assert encode(_Holder(Fqdn("a.example"))) == b"\x09a.example"


@pytest.mark.parametrize("bad", ["A.example", "a.example.", "localhost", "a_b.example", "", "127.0.0.1"])
def test_fqdn_decode_rejects_invalid_or_non_canonical(bad):
    raw = bytes([len(bad.encode())]) + bad.encode()
    with pytest.raises(DecodeError) as e:
        decode(_Holder, raw)
    assert "_Holder.domain" in str(e.value)


def test_fqdn_decode_is_cached_only_for_valid_canonical_names():
    """Decoding parses a canonical name once and shares the (immutable)
    value; an invalid or non-canonical name is refused every time."""
    raw = encode(_Holder(Fqdn("cache.example")))
    first, second = decode(_Holder, raw), decode(_Holder, raw)
    assert first == second == _Holder(Fqdn("cache.example"))
    assert first.domain is second.domain
    for _ in range(2):
        with pytest.raises(DecodeError):
            decode(_Holder, b"\x0dCache.example")


def test_fqdn_encode_requires_fqdn():
    holder = object.__new__(_Holder)
    object.__setattr__(holder, "domain", "a.example")
    with pytest.raises(EncodeError):
        encode(holder)


# --- Alias ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, canonical", [
    ("alice", "alice"),
    ("Alice_W", "alice_w"),
    ("Ａｌｉｃｅ", "alice"),  # fullwidth → NFKC
    ("Straße", "strasse"),  # case folding
    ("bob.smith-2", "bob.smith-2"),
    ("日本語", "日本語"),
    ("x" * 64, "x" * 64),
])
def test_alias_valid(text, canonical):
    assert Alias.parse(text).value == canonical
    assert Alias(text) == Alias(canonical)


@pytest.mark.parametrize("text, why", [
    ("", "1 to 64"),
    ("x" * 65, "1 to 64"),
    ("x" * 5000, "at most 64"),
    ("al ice", "not a letter"),
    ("alice@a.example", "not a letter"),
    ("a\u0000b", "not a letter"),
    ("a\u200bb", "not a letter"),  # zero-width space (format character)
    ("_alice", "start and end"),
    ("alice.", "start and end"),
])
def test_alias_invalid(text, why):
    with pytest.raises(InvalidId, match=why):
        Alias(text)


@given(aliases)
def test_alias_canonical_form_is_a_fixed_point(a):
    assert Alias(a.value) == a and Alias(a.value).value == a.value
    assert decode(Alias, encode(a, Alias)) == a


@pytest.mark.parametrize("bad", ["Alice", "", "a b", "Ａ"])
def test_alias_decode_rejects_non_canonical(bad):
    raw = bytes([len(bad.encode())]) + bad.encode()
    with pytest.raises(DecodeError):
        decode(Alias, raw)


# --- structured ids ------------------------------------------------------------------

@spec("spec/glossary.md#user-id-uid", "informative")
def test_user_id_wire_layout():
    u = UserId(Fqdn("a.example"), uuid.UUID(int=1))
    assert encode(u) == b"\x09a.example" + uuid.UUID(int=1).bytes
    assert str(u) == "00000000-0000-0000-0000-000000000001@a.example"


@spec("spec/glossary.md#client-id-cid", "informative")
def test_client_id_wire_layout_and_text():
    u = UserId(Fqdn("a.example"), uuid.UUID(int=1))
    c = ClientId(u, uuid.UUID(int=2))
    assert encode(c) == encode(u) + uuid.UUID(int=2).bytes
    assert str(c) == f"{u}/{uuid.UUID(int=2)}"
    assert c.as_domain == Fqdn("a.example")


@spec("spec/glossary.md#qs-client-id-qscid", "informative")
def test_qs_cid_wire_layout():
    q = QsCid(QsUid(uuid.UUID(int=3)), uuid.UUID(int=4))
    assert encode(q) == uuid.UUID(int=3).bytes + uuid.UUID(int=4).bytes
    assert PseudonymousClientId is QsCid


def test_group_id_is_mls_group_id():
    g = GroupId(Fqdn("ds.example"), uuid.UUID(int=5))
    assert g.to_mls() == b"\x0ads.example" + uuid.UUID(int=5).bytes
    assert GroupId.from_mls(g.to_mls()) == g
    with pytest.raises(DecodeError):
        GroupId.from_mls(b"\x00" * 16)


def test_constructors_coerce_strings_and_raw_bytes():
    u = UserId("A.Example", bytes(16))
    assert u.as_domain == Fqdn("a.example") and u.user_id == uuid.UUID(int=0)
    assert GroupId("ds.example", bytes(16)) == GroupId(Fqdn("ds.example"), uuid.UUID(int=0))


@pytest.mark.parametrize("build", [
    lambda: UserId("a.example", b"short"),
    lambda: UserId("a.example", "00000000-0000-0000-0000-000000000000"),
    lambda: UserId("bad_domain", uuid.uuid4()),
    lambda: ClientId("not a user id", uuid.uuid4()),
    lambda: QsUid(5),
    lambda: QsCid(uuid.uuid4(), uuid.uuid4()),
    lambda: GroupId("a.example", None),
], ids=["user-id-bytes", "user-id-str", "user-id-bad-domain", "client-id-str", "qs-uid-int",
        "qs-cid-uuid", "group-id-none"])   # distinct ids: pytest --strict refuses repeats
def test_constructors_reject_wrong_types(build):
    with pytest.raises(InvalidId):
        build()


@pytest.mark.parametrize("cls, text", [
    (UserId, "nope"),
    (UserId, "1234@a.example"),
    (UserId, "{00000000-0000-0000-0000-000000000001}@a.example"),
    (UserId, "00000000-0000-0000-0000-000000000001@localhost"),
    (ClientId, "00000000-0000-0000-0000-000000000001@a.example"),
    (ClientId, "00000000-0000-0000-0000-000000000001@a.example/xyz"),
    (QsUid, "xyz"),
    (QsCid, "00000000-0000-0000-0000-000000000001"),
    (GroupId, "00000000-0000-0000-0000-000000000001"),
    (UserId, 42),
])
def test_parse_rejects(cls, text):
    with pytest.raises(InvalidId):
        cls.parse(text)


@pytest.mark.parametrize("cls, strategy", [
    (UserId, user_ids), (ClientId, client_ids), (QsUid, qs_uids), (QsCid, qs_cids), (GroupId, group_ids),
])
@given(data=st.data())
def test_round_trips(cls, strategy, data):
    v = data.draw(strategy)
    assert decode(cls, encode(v)) == v
    assert cls.parse(str(v)) == v
    assert hash(cls.parse(str(v))) == hash(v)


@given(fqdns)
def test_fqdn_round_trip(d):
    assert Fqdn(d.value) == d
    assert decode(_Holder, encode(_Holder(d))) == _Holder(d)
    assert Fqdn(d.value.upper() + ".") == d


@pytest.mark.parametrize("cls", [UserId, ClientId, QsUid, QsCid, GroupId, Alias, _Holder])
@given(data=st.binary(max_size=200))
def test_garbage_raises_only_decode_error(cls, data):
    try:
        v = decode(cls, data)
    except DecodeError:
        return
    assert encode(v, cls) == data  # whatever decodes is canonical


@given(st.text(max_size=300))
def test_fqdn_and_alias_text_raise_only_invalid_id(text):
    for cls in (Fqdn, Alias):
        try:
            v = cls(text)
        except InvalidId:
            continue
        assert cls(v.value) == v
