"""Federated fan-out between QSs
(``spec/queuing_service.md#federated-qs-to-qs-communication``,
``#local-enqueue-message``, ``spec/federation/federation_protocol.md#qs-to-qs-communication``).

In-process and on real sockets with TLS. Every refusal is checked at the
HTTP level: a forged, misdirected or stale QsToQsMessage, or one for a group
of another homeserver, gets a 4xx and enqueues nothing; a replayed one gets
the first answer again and enqueues nothing.
"""

import os

import pytest
import trio

from phoenix_ref import endpoints
from phoenix_ref.codec import VarBytes, decode, encode
from phoenix_ref.crypto import SigningKey, hs_sign
from phoenix_ref.errors import ErrorResponse
from phoenix_ref.http import MEDIA_TYPE
from phoenix_ref.ids import Fqdn, GroupId
from phoenix_ref.queuing import messages as m
from phoenix_ref.queuing.core import QS_TO_QS_BATCH_LABEL, QS_TO_QS_LABEL
from phoenix_ref.spec_plugin import spec
from phoenix_ref.testing import Deployment

from .qs_http import message, qs_client, read_all

pytestmark = pytest.mark.needs_control("QsToQsMessages signed with the homeserver's own key, its outbound queues and counters, key rotation")

FEDERATED = "spec/queuing_service.md#federated-qs-to-qs-communication"
URL = "https://qs.b.example" + endpoints.by_name("qs", "federated_enqueue").path


async def _wait_outbound_empty(node, timeout: float = 30) -> None:
    with trio.fail_after(timeout):
        while await trio.to_thread.run_sync(node.hs.qs_store.outbound.destinations):
            await trio.sleep(0.05)


@spec("spec/queuing_service.md#local-enqueue-message", "informative")
@spec(FEDERATED, "informative")
@spec("spec/federation/federation_protocol.md#qs-to-qs-communication", "informative")
async def test_fan_out_over_three_homeservers_with_k_minus_1_requests(deployment_mode):
    async with Deployment(deployment_mode, ["hs1", "hs2", "hs3"]) as d, d.client() as http:
        users = []   # (QS client, identity, its ClientQueueConfig)
        for name in ("hs1", "hs2", "hs3"):
            domain = d[name].domain
            qs = await qs_client(d, http, domain)
            key = await qs.queue_config_key(domain)
            for _ in range(2):
                me = await qs.register(domain)
                users.append((qs, me, me.client_queue_config(key)))
        hs1 = d["hs1"].hs
        result = await hs1.qs.local_enqueue(message([cfg for _, _, cfg in users], b"to everyone"))
        assert sorted(result.forwarded) == [Fqdn("b.example"), Fqdn("c.example")]
        assert len(result.enqueued) == 2
        for qs, me, _ in users:
            assert await read_all(qs, me, 1) == [b"to everyone"]
        await _wait_outbound_empty(d["hs1"])
        # exactly K - 1 = 2 federation requests: one per remote homeserver
        assert hs1.qs.stats["federated_enqueue_sent"] == 2
        assert [d[n].hs.qs.stats["federated_enqueue_received"] for n in ("hs2", "hs3")] == [1, 1]
        assert hs1.qs.stats["federated_enqueue_received"] == 0
        for qs, me, _ in users:   # and nothing arrives twice
            assert me.read((await qs.dequeue(me)).messages) == []


def _frame(d, payload: m.FanOutMessage, *, destination: str = "b.example", timestamp: int | None = None,
           key: SigningKey | None = None, message_id: bytes | None = None) -> bytes:
    """A QsToQsMessage from a.example, signed with a.example's QS key unless ``key``."""
    unsigned = m.QsToQsMessage(Fqdn("a.example"), Fqdn(destination),
                               d.clock.now_ms() if timestamp is None else timestamp,
                               message_id or os.urandom(m.MESSAGE_ID_LEN), payload, b"")
    key = key or d["hs1"].hs.keystore.qs_signing_keys[0]
    return encode(m.QsToQsMessage(unsigned.source, unsigned.destination, unsigned.timestamp,
                                  unsigned.message_id, payload, hs_sign(key, QS_TO_QS_LABEL, unsigned.tbs())))


@spec(FEDERATED, "informative")
@spec("spec/delivery_service.md#message-distribution", "informative")
async def test_forged_misdirected_and_stale_messages_are_refused_and_a_replay_gets_the_first_answer(deployment):
    d = deployment
    async with d.client() as http:
        qs = await qs_client(d, http, "b.example")
        bob, gone = await qs.register("b.example"), await qs.register("b.example")
        gone_cfg = await qs.client_queue_config(gone)
        await qs.send(gone, "delete_user_record", m.DeleteUserRecordParams(gone.qs_uid))
        payload = message([await qs.client_queue_config(bob), gone_cfg], b"federated")
        refused = {
            "forged signature": (_frame(d, payload, key=SigningKey.generate()), 401, "bad_signature"),
            "wrong destination": (_frame(d, payload, destination="c.example"), 403, "wrong_destination"),
            "stale timestamp": (_frame(d, payload, timestamp=d.clock.now_ms() - 3_600_001), 401, "message_expired"),
            "from the future": (_frame(d, payload, timestamp=d.clock.now_ms() + 600_000), 401,
                                "timestamp_in_future"),
        }
        headers = {"content-type": MEDIA_TYPE}
        for what, (body, status, code) in refused.items():
            resp = await http.post(URL, content=body, headers=headers)
            assert (resp.status_code, decode(ErrorResponse, resp.content).code) == (status, code), what
        assert await qs.receive(bob) == []            # nothing was enqueued

        original = _frame(d, payload)
        resp = await http.post(URL, content=original, headers=headers)
        assert resp.status_code == 200
        first = resp.content
        assert [q.client_queue_config for q in decode(m.FederatedEnqueueResponse, first).queue_deleted] == [gone_cfg]
        d.clock.advance(1000)
        for replay in (original, _frame(d, payload, message_id=decode(m.QsToQsMessage, original).message_id)):
            resp = await http.post(URL, content=replay, headers=headers)   # same bytes, or re-signed same id
            assert (resp.status_code, resp.content) == (200, first)        # the first answer, QueueDeleted too
        assert await read_all(qs, bob, 1) == [b"federated"]
        assert await qs.receive(bob) == []            # once


@spec("threat_model/stride/security_requirements/federated_homeservers.md#message-fan-out", "MUST")
@spec(FEDERATED, "informative")
async def test_a_homeserver_cannot_fan_out_for_another_homeservers_group(deployment_mode):
    """hs1 (a.example) sends hs2 a correctly signed QsToQsMessage for a group
    that lives at hs3 (c.example): 403 not_group_owner, nothing enqueued.
    The same frame for a group of hs1 is delivered."""
    async with Deployment(deployment_mode, ["hs1", "hs2", "hs3"]) as d, d.client() as http:
        assert [d[n].domain for n in ("hs1", "hs2", "hs3")] == ["a.example", "b.example", "c.example"]
        qs = await qs_client(d, http, "b.example")
        bob = await qs.register("b.example")
        headers = {"content-type": MEDIA_TYPE}
        foreign = message([await qs.client_queue_config(bob)], b"for c", group=GroupId.random("c.example"))
        refused = _frame(d, foreign)
        resp = await http.post(URL, content=refused, headers=headers)
        assert (resp.status_code, decode(ErrorResponse, resp.content).code) == (403, "not_group_owner")
        assert await qs.receive(bob) == []            # nothing was enqueued
        # … and its message id was not taken: a frame of hs1's own group with that id is delivered
        own = message([await qs.client_queue_config(bob)], b"for a", group=GroupId.random("a.example"))
        resp = await http.post(URL, content=_frame(d, own, message_id=decode(m.QsToQsMessage, refused).message_id),
                               headers=headers)
        assert resp.status_code == 200 and decode(m.FederatedEnqueueResponse, resp.content).queue_deleted == []
        assert await read_all(qs, bob, 1) == [b"for a"]


@spec(FEDERATED, "informative")
async def test_a_rotated_source_key_is_refetched_once_and_then_cached(deployment):
    """The receiver checks a QsToQsMessage with the source's verifying keys
    from its cache; a message signed with a key the source published after
    that is verified after one refetch, and the next one from the cache."""
    d = deployment
    async with d.client() as http:
        qs = await qs_client(d, http, "b.example")
        bob = await qs.register("b.example")
        payload = message([await qs.client_queue_config(bob)], b"first")
        headers = {"content-type": MEDIA_TYPE}
        assert (await http.post(URL, content=_frame(d, payload), headers=headers)).status_code == 200
        keys = d["hs2"].hs.federation.keys
        fetched = keys.fetches[("qs_verifying_key", "a.example")]
        assert keys.cached_qs_verifying_keys("a.example") == [d["hs1"].hs.keystore.qs_signing_keys[0].public]
        new_key = d["hs1"].hs.keystore.rotate_qs_signing_key()      # a.example publishes a new current key
        d.clock.advance(keys.cooldown_ms)   # (a refetch within the cooldown would be refused: flood guard)
        for text in (b"second", b"third"):
            body = _frame(d, message([await qs.client_queue_config(bob)], text), key=new_key)
            assert (await http.post(URL, content=body, headers=headers)).status_code == 200
        assert keys.fetches[("qs_verifying_key", "a.example")] == fetched + 1
        assert keys.cached_qs_verifying_keys("a.example")[0] == new_key.public
        assert await read_all(qs, bob, 3) == [b"first", b"second", b"third"]


@spec(FEDERATED, "informative")
@spec("spec/queuing_service.md#enqueuing-messages", "informative")
async def test_remote_queue_deleted_travels_back(deployment):
    d = deployment
    deleted = []
    d["hs1"].hs.on_queue_deleted = deleted.extend
    async with d.client() as http:
        qs = await qs_client(d, http, "b.example")
        bob, gone = await qs.register("b.example"), await qs.register("b.example")
        gone_cfg = await qs.client_queue_config(gone)
        await qs.send(gone, "delete_user_record", m.DeleteUserRecordParams(gone.qs_uid))
        await d["hs1"].hs.qs.local_enqueue(message([await qs.client_queue_config(bob), gone_cfg], b"x"))
        assert await read_all(qs, bob, 1) == [b"x"]
        with trio.fail_after(30):
            while not deleted:
                await trio.sleep(0.05)
        assert [q.client_queue_config for q in deleted] == [gone_cfg]


BATCH_URL = "https://qs.b.example" + endpoints.by_name("qs", "federated_enqueue_batch").path


def _batch(d, entries: list[tuple[bytes, bytes]], *, key: SigningKey | None = None) -> bytes:
    """A QsToQsBatch from a.example of ``(message id, encoded payload)`` entries."""
    tbs = m.encode_qs_to_qs_batch_tbs(Fqdn("a.example"), Fqdn("b.example"), d.clock.now_ms(), entries)
    key = key or d["hs1"].hs.keystore.qs_signing_keys[0]
    return tbs + encode(hs_sign(key, QS_TO_QS_BATCH_LABEL, tbs), VarBytes)


@spec(FEDERATED, "informative")
async def test_a_batch_answers_each_message_and_refuses_bad_requests_with_4xx(deployment):
    """Several messages in one QsToQsBatch (docs/decisions.md, "QS-to-QS
    batches"): a fresh one, one already delivered as a lone QsToQsMessage,
    one for a deleted queue, one whose payload does not decode and one for
    a group of another homeserver each get their own answer; the good ones
    are enqueued once. Bodies that are no batch, a forged one and one of
    more than 100 messages get a 4xx and enqueue nothing."""
    d = deployment
    headers = {"content-type": MEDIA_TYPE}
    async with d.client() as http:
        qs = await qs_client(d, http, "b.example")
        bob, gone = await qs.register("b.example"), await qs.register("b.example")
        cfg, gone_cfg = await qs.client_queue_config(bob), await qs.client_queue_config(gone)
        await qs.send(gone, "delete_user_record", m.DeleteUserRecordParams(gone.qs_uid))
        lone = _frame(d, message([cfg], b"lone"))
        assert (await http.post(URL, content=lone, headers=headers)).status_code == 200
        assert await read_all(qs, bob, 1) == [b"lone"]

        lone_id = decode(m.QsToQsMessage, lone).message_id
        entries = [(os.urandom(16), encode(message([cfg], b"fresh"))),
                   (lone_id, encode(message([cfg], b"lone"))),
                   (os.urandom(16), encode(message([gone_cfg], b"to gone"))),
                   (os.urandom(16), b"\x05 not a fan-out"),
                   (os.urandom(16), encode(message([cfg], b"foreign", group=GroupId.random("c.example"))))]
        resp = await http.post(BATCH_URL, content=_batch(d, entries), headers=headers)
        assert resp.status_code == 200
        fresh, replay, deleted, bad, foreign = decode(m.FederatedEnqueueBatchResponse, resp.content).results
        assert isinstance(fresh, m.BatchAccepted) and fresh.response.queue_deleted == []
        assert isinstance(replay, m.BatchAccepted)                 # the lone message's first answer
        assert [q.client_queue_config for q in deleted.response.queue_deleted] == [gone_cfg]
        assert (bad.status, bad.code) == (400, "bad_payload")
        assert (foreign.status, foreign.code) == (403, "not_group_owner")
        assert await read_all(qs, bob, 1) == [b"fresh"]
        assert await qs.receive(bob) == []                          # the replay enqueued nothing

        good = [(os.urandom(16), encode(message([cfg], b"never")))]
        refused = {
            "not a batch": (b"\x00\x01\x02", 400),
            "a lone message on the batch endpoint": (lone, 400),
            "trailing bytes": (_batch(d, good) + b"\x00", 400),
            "forged": (_batch(d, good, key=SigningKey.generate()), 401),
            "empty": (_batch(d, []), 400),
            "too many": (_batch(d, good * 101), 413),
        }
        for what, (body, status) in refused.items():
            resp = await http.post(BATCH_URL, content=body, headers=headers)
            assert resp.status_code == status, (what, resp.status_code, resp.content)
            decode(ErrorResponse, resp.content)
        assert await qs.receive(bob) == []
