"""The QS's memory of config lists (phoenix_ref.queuing.fanout.ConfigLists):
a remembered decoding or encoding is exactly what computing it again gives."""

import pytest
from hypothesis import given, strategies as st

from phoenix_ref.codec import DecodeError, decode, encode, vec
from phoenix_ref.ids import Fqdn, GroupId
from phoenix_ref.queuing.fanout import ConfigLists, config_digest, received_config_list
from phoenix_ref.queuing.messages import (
    ClientQueueConfig, FanOutMessage, MessageContent, QsToQsMessage,
)

from tests.qs_helpers import fan_out

PLAIN = vec(ClientQueueConfig)
configs = st.builds(ClientQueueConfig, st.sampled_from([Fqdn("a.example"), Fqdn("b.example")]),
                    st.binary(max_size=40))
config_lists = st.lists(configs, max_size=4)


@st.composite
def list_bytes(draw):
    """Encoded config lists, some damaged (a flipped byte, cut short, extended)."""
    raw = bytearray(encode(draw(config_lists), PLAIN))
    damage = draw(st.sampled_from(["none", "flip", "cut", "extend"]))
    if damage == "flip":
        raw[draw(st.integers(0, len(raw) - 1))] ^= draw(st.integers(1, 255))
    elif damage == "cut":
        del raw[draw(st.integers(0, len(raw) - 1)):]
    elif damage == "extend":
        raw += draw(st.binary(min_size=1, max_size=4))
    return bytes(raw)


@given(st.one_of(list_bytes(), st.binary(max_size=80)))
def test_remembered_decoding_accepts_and_refuses_like_plain_decoding(raw):
    """Twice each, so that the second decoding of good input is remembered."""
    lists = ConfigLists(max_bytes=1 << 16)
    for _ in range(2):
        try:
            expected = decode(PLAIN, raw)
        except DecodeError as e:
            with pytest.raises(DecodeError) as got:
                lists.decode(raw)
            assert str(got.value) == str(e)
            continue
        assert lists.decode(raw) == [(c, config_digest(c.sealed_config)) for c in expected]
    assert lists._decoded.hits == (1 if lists._decoded.keys() else 0)


def test_a_remembered_decoding_is_a_new_list_of_the_same_configs():
    lists = ConfigLists()
    raw = encode([ClientQueueConfig(Fqdn("a.example"), b"x"), ClientQueueConfig(Fqdn("b.example"), b"y")], PLAIN)
    first, second = lists.decode(raw), lists.decode(raw)
    assert first == second and first is not second
    assert all(a[0] is b[0] for a, b in zip(first, second))
    first.clear()                                  # a caller's change stays its own
    assert len(lists.decode(raw)) == 2


@given(config_lists, st.binary(max_size=20))
def test_remembered_encoding_is_the_fan_out_message_encoding(items, body):
    lists = ConfigLists(max_bytes=1 << 16)
    message = fan_out(items, GroupId.random("a.example"), body)
    content = encode(message.message_content, MessageContent)
    for _ in range(2):   # the second encoding of the list is remembered
        assert lists.encode_fan_out(list(items), content) == encode(message)
    assert lists._encoded.hits == 1


def test_both_directions_keep_at_most_their_bytes():
    lists = ConfigLists(max_bytes=64)
    content = encode(fan_out([], GroupId.random("a.example")).message_content, MessageContent)
    samples = [[ClientQueueConfig(Fqdn("a.example"), bytes([i]) * 10)] for i in range(5)]   # 23 bytes each
    for items in samples:
        lists.decode(encode(items, PLAIN))
        lists.encode_fan_out(items, content)
    recent = samples[-2:]
    assert lists._decoded.keys() == [encode(v, PLAIN) for v in recent]
    assert lists._encoded.keys() == [tuple(v) for v in recent]
    big = [ClientQueueConfig(Fqdn("a.example"), bytes(70))]                               # larger than the bound
    assert [c for c, _ in lists.decode(encode(big, PLAIN))] == big
    assert len(lists._decoded) == 2 and lists._decoded.weight <= 64


@given(config_lists, st.integers(0, 2**64 - 1), st.binary(max_size=70))
def test_received_config_list_is_the_payloads_list(items, timestamp, signature):
    message = QsToQsMessage(Fqdn("a.example"), Fqdn("b.example"), timestamp, bytes(16),
                            FanOutMessage(items, fan_out([], GroupId.random("a.example")).message_content),
                            signature)
    assert received_config_list(encode(message), message) == encode(items, PLAIN)
