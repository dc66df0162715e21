"""The QS core (phoenix_ref.queuing.core): client endpoints, local and federated enqueue."""

from __future__ import annotations

import dataclasses
import os

import pytest

from phoenix_ref.codec import DecodeError, VarBytes, decode, encode
from phoenix_ref.spec_plugin import spec
from phoenix_ref.crypto import HpkeKeyPair, SigningKey, hs_verify, sign_with_label
from phoenix_ref.mls.messages import leaf_node_tbs
from phoenix_ref.errors import Conflict, Forbidden, Malformed, NotFound, RateLimited, Unauthorized
from phoenix_ref.federation.outbound import OutboundItem
from phoenix_ref.ids import Fqdn, GroupId
from phoenix_ref.queuing.core import (
    ADD_PACKAGE_RESPONSE_LABEL, QS_TO_QS_LABEL, QsKeys, RateLimit, UnknownSourceKey,
)
from phoenix_ref.queuing.fanout import config_digest, config_key_id, received_config_list, seal_queue_config
from phoenix_ref.queuing.messages import (
    AddPackage, AddPackageParams, AddPackageResponseTBS, BlockGroupParams, ClientQueueConfig,
    CreateClientRecordParams, CreateUserRecordParams, DeleteClientRecordParams, DeleteUserRecordParams,
    MESSAGE_ID_LEN, DequeueMessagesParams, DequeueMessagesRequest, FanOutMessage, MessageContent, PublishKeyPackagesParams,
    QsToQsMessage, QueueConfig, UpdateClientRecordParams, UpdateUserRecordParams, UserRecordParams, WsParams,
    WsRequest, decode_sealed_queue_config, received_qs_to_qs_tbs,
)

from tests.qs_helpers import NOW, Client, fan_out, make_core

GROUP = GroupId.random("a.example")


@pytest.fixture(params=["memory", "sqlite"])
def core(request, tmp_path):
    return make_core("a.example", sqlite_dir=tmp_path if request.param == "sqlite" else None)


def dequeue(client: Client, start: int = 0, max_n: int = 1000, now_ms: int = NOW):
    params = DequeueMessagesParams(client.qs_cid, start, max_n)
    return client.core.dequeue_messages(client.request("dequeue_messages", params,
                                                       now_ms=now_ms), now_ms)


def received(client: Client) -> list[bytes]:
    resp = dequeue(client, client.ratchet.generation)
    return client.read(resp.messages)


def content_bytes(body: bytes, group=GROUP) -> bytes:
    return encode(fan_out([], group, body).message_content, MessageContent)


# --- user and client records ---------------------------------------------------------------

def test_create_user_record_starts_queue_with_sealed_ratchet_key(core):
    alice = Client.register(core)
    resp = dequeue(alice)
    assert [m.sequence_number for m in resp.messages] == [0]
    assert alice.read(resp.messages) == []  # the reset message carries only the key
    assert alice.ratchet.ratchet_key is not None


def test_get_update_delete_user_record(core):
    alice = Client.register(core)
    got = core.get_user_record(alice.request("get_user_record",
                                             UserRecordParams(alice.qs_uid), as_user=True), NOW)
    assert got.friendship_token == alice.friendship_token
    assert [c.qs_cid for c in got.client_records] == [alice.qs_cid]
    assert got.client_records[0].queue_encryption_key == alice.queue_key.public

    new_key, new_token = SigningKey.generate(), os.urandom(32)
    params = UpdateUserRecordParams(alice.qs_uid, new_key.public, new_token)
    core.update_user_record(alice.request("update_user_record", params, as_user=True), NOW)
    alice.user_key, alice.friendship_token = new_key, new_token
    got = core.get_user_record(alice.request("get_user_record",
                                             UserRecordParams(alice.qs_uid), as_user=True), NOW)
    assert got.friendship_token == new_token and got.user_record_auth_key == new_key.public

    params = DeleteUserRecordParams(alice.qs_uid)
    core.delete_user_record(alice.request("delete_user_record", params, as_user=True), NOW)
    with pytest.raises(Unauthorized):
        dequeue(alice)
    assert core.records.get_user(alice.qs_uid) is None


def test_friendship_token_must_be_unique(core):
    alice = Client.register(core)
    with pytest.raises(Conflict):
        core.create_user_record(CreateUserRecordParams(SigningKey.generate().public, alice.friendship_token,
                                                       SigningKey.generate().public,
                                                       HpkeKeyPair.generate().public), NOW)


@pytest.mark.parametrize("field,value", [
    ("user_record_auth_key", b"short"), ("client_record_auth_key", b""),
    ("queue_encryption_key", b"x" * 31), ("friendship_token", b"tiny")])
def test_create_user_record_refuses_bad_keys(core, field, value):
    good = dict(user_record_auth_key=SigningKey.generate().public, friendship_token=os.urandom(32),
                client_record_auth_key=SigningKey.generate().public, queue_encryption_key=HpkeKeyPair.generate().public)
    good[field] = value
    with pytest.raises(Malformed):
        core.create_user_record(CreateUserRecordParams(**good), NOW)


def test_client_records_limit_and_last_one_takes_the_user(tmp_path):
    core = make_core(max_client_records_per_user=3)
    alice = Client.register(core)
    extra = []
    for _ in range(2):
        params = CreateClientRecordParams(alice.qs_uid, SigningKey.generate().public, HpkeKeyPair.generate().public)
        extra.append(core.create_client_record(
            alice.request("create_client_record", params, as_user=True), NOW).qs_cid)
    params = CreateClientRecordParams(alice.qs_uid, SigningKey.generate().public, HpkeKeyPair.generate().public)
    with pytest.raises(Conflict):
        core.create_client_record(alice.request("create_client_record", params,
                                                as_user=True), NOW)
    assert len(core.records.get_user(alice.qs_uid)[1]) == 3
    # alice's own client deletes itself; the user stays for the other two
    core.delete_client_record(alice.request("delete_client_record",
                                            DeleteClientRecordParams(alice.qs_cid)), NOW)
    assert core.records.get_user(alice.qs_uid) is not None
    for cid in extra:
        core.records.delete_client(cid)
    assert core.records.get_user(alice.qs_uid) is None


def test_update_client_record_new_queue_key_heals_ratchet(core):
    alice = Client.register(core)
    received(alice)
    new_queue_key, new_client_key = HpkeKeyPair.generate(), SigningKey.generate()
    params = UpdateClientRecordParams(alice.qs_cid, new_client_key.public, new_queue_key.public, b"enc-push")
    core.update_client_record(alice.request("update_client_record", params), NOW)
    alice.client_key, alice.queue_key = new_client_key, new_queue_key
    core.local_enqueue(fan_out([alice.client_queue_config()], GROUP, b"after"), NOW)
    assert received(alice) == [content_bytes(b"after")]
    assert core.records.get_client(alice.qs_cid).encrypted_push_token == b"enc-push"


# --- authentication (#authentication) --------------------------------------------------------------

def test_token_signed_with_wrong_key_is_refused(core):
    alice = Client.register(core)
    params = DequeueMessagesParams(alice.qs_cid, 0, 10)
    with pytest.raises(Unauthorized):
        core.dequeue_messages(DequeueMessagesRequest(alice.token("dequeue_messages", params,
                                                                 key=SigningKey.generate()), params), NOW)


def test_token_older_than_max_age_is_refused(core):
    alice = Client.register(core)
    params = DequeueMessagesParams(alice.qs_cid, 0, 10)
    old = DequeueMessagesRequest(alice.token("dequeue_messages", params, now_ms=NOW - 3_600_001), params)
    with pytest.raises(Unauthorized):
        core.dequeue_messages(old, NOW)
    fresh = DequeueMessagesRequest(alice.token("dequeue_messages", params, now_ms=NOW - 3_500_000), params)
    assert core.dequeue_messages(fresh, NOW).messages


def test_token_bound_to_operation_params_and_audience(core):
    alice = Client.register(core)
    params = DequeueMessagesParams(alice.qs_cid, 0, 10)
    for token in (alice.token("websocket", WsParams(alice.qs_cid)),           # other endpoint
                  alice.token("dequeue_messages", DequeueMessagesParams(alice.qs_cid, 1, 10)),  # other params
                  alice.token("dequeue_messages", params, domain="b.example")):  # other homeserver
        with pytest.raises(Unauthorized):
            core.dequeue_messages(DequeueMessagesRequest(token, params), NOW)


def test_token_of_one_record_cannot_act_on_another(core):
    alice, bob = Client.register(core), Client.register(core)
    params = DequeueMessagesParams(bob.qs_cid, 0, 10)
    with pytest.raises(Forbidden):
        core.dequeue_messages(DequeueMessagesRequest(alice.token("dequeue_messages", params), params), NOW)


def test_user_token_is_refused_where_client_token_is_required(core):
    alice = Client.register(core)
    params = WsParams(alice.qs_cid)
    with pytest.raises(Unauthorized):
        core.authorize_websocket(WsRequest(alice.token("websocket", params, as_user=True), params), NOW)
    assert core.authorize_websocket(alice.request("websocket", params), NOW) == alice.qs_cid


# --- KeyPackages ------------------------------------------------------------------------------------

def publish(client: Client, packages):
    params = PublishKeyPackagesParams(client.qs_cid, packages)
    return client.core.publish_key_packages(client.request("publish_key_packages",
                                                           params), NOW)


def test_publish_and_get_add_packages(core):
    alice = Client.register(core)
    ordinary = [alice.add_package() for _ in range(2)]
    last = alice.add_package(last_resort=True)
    publish(alice, ordinary + [last])
    got = [core.get_add_package(AddPackageParams(alice.friendship_token), NOW) for _ in range(4)]
    assert [r.add_packages for r in got] == [[ordinary[0]], [ordinary[1]], [last], [last]]
    # the answer is signed by the QS signing key
    tbs = encode(AddPackageResponseTBS(alice.friendship_token, got[0].add_packages))
    hs_verify(core.keys.signing_key.public, ADD_PACKAGE_RESPONSE_LABEL, tbs, got[0].signature)
    # publishing again replaces everything
    newer = alice.add_package(last_resort=True)
    publish(alice, [newer])
    assert core.get_add_package(AddPackageParams(alice.friendship_token), NOW).add_packages == [newer]


def test_add_packages_one_per_client(core):
    alice = Client.register(core)
    second = Client(alice.domain, alice.user_key, SigningKey.generate(), HpkeKeyPair.generate(),
                    alice.friendship_token, alice.qs_uid, core=core)
    params = CreateClientRecordParams(alice.qs_uid, second.client_key.public, second.queue_key.public)
    second.qs_cid = core.create_client_record(
        alice.request("create_client_record", params, as_user=True), NOW).qs_cid
    publish(alice, [alice.add_package(last_resort=True)])
    publish(second, [second.add_package(last_resort=True)])
    assert len(core.get_add_package(AddPackageParams(alice.friendship_token), NOW).add_packages) == 2


def test_unknown_friendship_token_is_refused(core):
    with pytest.raises(Unauthorized):
        core.get_add_package(AddPackageParams(os.urandom(32)), NOW)


def test_publish_requires_last_resort(core):
    alice = Client.register(core)
    with pytest.raises(Malformed) as e:
        publish(alice, [alice.add_package(), alice.add_package()])
    assert e.value.code == "missing_last_resort"


def test_publish_requires_queue_config_extension(core):
    alice = Client.register(core)
    with pytest.raises(Malformed) as e:
        publish(alice, [alice.add_package(last_resort=True), alice.add_package(with_queue_config=False)])
    assert e.value.code == "missing_queue_config"


def test_publish_refuses_someone_elses_queue_config(core):
    alice, bob = Client.register(core), Client.register(core)
    with pytest.raises(Malformed) as e:
        publish(alice, [alice.add_package(last_resort=True, config=bob.sealed_config())])
    assert e.value.code == "foreign_queue_config"


def test_publish_refuses_bad_key_package_signature(core):
    import dataclasses
    alice = Client.register(core)
    ap = alice.add_package(last_resort=True)
    bad = dataclasses.replace(ap, key_package=dataclasses.replace(ap.key_package, signature=bytes(64)))
    with pytest.raises(Malformed):
        publish(alice, [bad])


def test_publish_validates_key_packages_as_the_mls_module_does(core):
    """RFC 9420 §10.1 with the leaf checks of §7.3: a KeyPackage whose leaf
    signature does not verify (KeyPackage signature valid), whose lifetime
    has ended or not begun, or whose capabilities do not list its extensions,
    is refused at publish; nothing is stored."""
    alice = Client.register(core)
    signer = SigningKey.generate()
    kp = alice.key_package(last_resort=True, signer=signer)
    bad_leaf = dataclasses.replace(kp.leaf_node, signature=bytes(64))
    unsigned = dataclasses.replace(kp, leaf_node=bad_leaf)
    resigned = dataclasses.replace(unsigned, signature=sign_with_label(signer, "KeyPackageTBS", unsigned.tbs()))
    expired = alice.key_package(last_resort=True, now_ms=NOW - 100 * 86_400_000)   # 90 days, ended
    future = alice.key_package(last_resort=True, now_ms=NOW + 2 * 3_600_000)      # begins in an hour
    caps = dataclasses.replace(kp.leaf_node.capabilities, extensions=[])
    no_caps_leaf = dataclasses.replace(kp.leaf_node, capabilities=caps)
    no_caps_leaf = dataclasses.replace(no_caps_leaf, signature=sign_with_label(
        signer, "LeafNodeTBS", leaf_node_tbs(no_caps_leaf, None, None)))
    no_caps = dataclasses.replace(kp, leaf_node=no_caps_leaf)
    no_caps = dataclasses.replace(no_caps, signature=sign_with_label(signer, "KeyPackageTBS", no_caps.tbs()))
    for bad, why in ((resigned, "signature"), (expired, "lifetime"), (future, "lifetime"),
                     (no_caps, "capabilities")):
        with pytest.raises(Malformed) as e:
            publish(alice, [AddPackage(bad, os.urandom(40), os.urandom(40))])
        assert e.value.code == "bad_key_package" and why in e.value.message, e.value.message
    assert core.records.take_add_packages(alice.friendship_token, NOW // 1000) == []
    publish(alice, [AddPackage(kp, os.urandom(40), os.urandom(40))])   # the untouched one is accepted
    got = core.get_add_package(AddPackageParams(alice.friendship_token), NOW)
    assert [ap.key_package for ap in got.add_packages] == [kp]


# --- local enqueue (#local-enqueue-message) ------------------------------------------------------------

def test_local_enqueue_delivers_encrypted_to_local_queues(core):
    alice, bob = Client.register(core), Client.register(core)
    result = core.local_enqueue(fan_out([alice.client_queue_config(), bob.client_queue_config()], GROUP, b"m1"), NOW)
    assert sorted(result.enqueued, key=str) == sorted([alice.qs_cid, bob.qs_cid], key=str)
    assert result.queue_deleted == [] and result.forwarded == []
    assert received(alice) == [content_bytes(b"m1")]
    assert received(bob) == [content_bytes(b"m1")]
    # stored encrypted: the plaintext is nowhere in the queue store
    raw = dequeue(alice, 0).messages
    assert all(b"m1" not in encode(m) for m in raw)


def test_missing_queue_is_reported_as_queue_deleted(core):
    alice = Client.register(core)
    cqc = alice.client_queue_config()
    core.delete_user_record(alice.request("delete_user_record",
                                          DeleteUserRecordParams(alice.qs_uid), as_user=True), NOW)
    result = core.local_enqueue(fan_out([cqc], GROUP), NOW)
    assert [(d.client_queue_config, d.group_id) for d in result.queue_deleted] == [(cqc, GROUP)]
    assert result.enqueued == []


def test_blocklisted_group_is_not_enqueued(core):
    alice = Client.register(core)
    received(alice)
    core.block_group(alice.request("block_group", BlockGroupParams(alice.qs_cid, GROUP)), NOW)
    other = GroupId.random("a.example")
    result = core.local_enqueue(fan_out([alice.client_queue_config()], GROUP, b"spam"), NOW)
    assert result.enqueued == [] and len(result.blocked) == 1
    core.local_enqueue(fan_out([alice.client_queue_config()], other, b"ok"), NOW)
    assert received(alice) == [content_bytes(b"ok", other)]


def test_blocklist_stores_only_salted_hashes(tmp_path):
    core = make_core(sqlite_dir=tmp_path)
    alice = Client.register(core)
    core.block_group(alice.request("block_group", BlockGroupParams(alice.qs_cid, GROUP)), NOW)
    rows = core.records.connection.execute("SELECT group_hash FROM qs_blocklist").fetchall()
    assert len(rows) == 1 and encode(GROUP) not in bytes(rows[0][0])
    assert GROUP.group_uuid.bytes not in bytes(rows[0][0])


def test_forged_sealed_config_is_rejected(core):
    alice = Client.register(core)
    received(alice)
    mallory_key = SigningKey.generate()
    forged = seal_queue_config(core.keys.queue_config_key.public, QueueConfig(None, alice.qs_cid),
                               queue_encryption_key=HpkeKeyPair.generate(), client_record_key=mallory_key)
    garbage = ClientQueueConfig(core.config.domain, os.urandom(80))
    result = core.local_enqueue(fan_out([ClientQueueConfig(core.config.domain, forged), garbage], GROUP), NOW)
    assert len(result.rejected) == 2 and result.enqueued == []
    assert received(alice) == []


def test_sealed_configs_are_unlinkable_and_cached(core):
    alice = Client.register(core)
    c1, c2 = alice.sealed_config(), alice.sealed_config()
    assert c1 != c2  # fresh HPKE encapsulations each time
    cqc = ClientQueueConfig(core.config.domain, c1)
    core.local_enqueue(fan_out([cqc], GROUP, b"1"), NOW)
    misses = core.config_cache.misses
    for i in range(5):
        core.local_enqueue(fan_out([cqc], GROUP, b"x%d" % i), NOW)
    assert core.config_cache.misses == misses and core.config_cache.hits >= 5
    assert len(received(alice)) == 6


def test_a_repeated_config_list_is_decoded_and_hashed_once():
    """A busy group's configs arrive unchanged with every message: the
    receiving QS decodes the list from the bytes it received through its
    :class:`~phoenix_ref.queuing.fanout.ConfigLists` (the configs and their
    digests once per list), and the sender encodes a remote domain's list
    once (``spec/performance_goals.md``)."""
    f = Federation()
    configs = [f.bob.client_queue_config()]
    framed = []
    for body in (b"1", b"2"):
        f.a.local_enqueue(fan_out([dataclasses.replace(c) for c in configs], GROUP, body), NOW)
        item = f.a.outbound.head("b.example")
        f.a.outbound.remove("b.example", item.seq)
        framed.append(f.a.frame_outbound(item, NOW))
    assert f.a.config_lists._encoded.misses == 1 and f.a.config_lists._encoded.hits == 1
    for raw in framed:
        result = f.b.federated_enqueue(decode(QsToQsMessage, raw), NOW, f.keys_of(Fqdn("a.example")), received=raw)
        assert result.enqueued == [f.bob.qs_cid]
    lists = f.b.config_lists._decoded
    assert lists.misses == 1 and lists.hits == 1
    key = received_config_list(framed[0], decode(QsToQsMessage, framed[0]))
    assert lists.keys() == [key] and lists.get(key) == tuple((c, config_digest(c.sealed_config)) for c in configs)
    assert f.b.config_cache.misses == 1 and f.b.config_cache.hits == 1
    assert received(f.bob) == [content_bytes(b"1"), content_bytes(b"2")]


def test_cached_config_dies_with_a_key_rotation(core):
    alice = Client.register(core)
    cqc = alice.client_queue_config()
    core.local_enqueue(fan_out([cqc], GROUP, b"before"), NOW)
    params = UpdateClientRecordParams(alice.qs_cid, SigningKey.generate().public, alice.queue_key.public, None)
    core.update_client_record(alice.request("update_client_record", params), NOW)
    result = core.local_enqueue(fan_out([cqc], GROUP, b"after"), NOW)
    assert result.rejected == [cqc] and result.enqueued == []


def test_remote_domains_get_exactly_one_message_each(core):
    alice = Client.register(core)
    b_cfgs = [ClientQueueConfig(Fqdn("b.example"), os.urandom(60)) for _ in range(3)]
    c_cfgs = [ClientQueueConfig(Fqdn("c.example"), os.urandom(60)) for _ in range(2)]
    msg = fan_out([b_cfgs[0], alice.client_queue_config(), c_cfgs[0], b_cfgs[1], c_cfgs[1], b_cfgs[2]], GROUP)
    result = core.local_enqueue(msg, NOW)
    assert sorted(d.value for d in result.forwarded) == ["b.example", "c.example"]
    assert result.enqueued == [alice.qs_cid]
    assert core.outbound.destinations() == ["b.example", "c.example"]
    for dest, cfgs in (("b.example", b_cfgs), ("c.example", c_cfgs)):
        item = core.outbound.head(dest)
        payload = decode(FanOutMessage, item.payload)
        assert payload.client_queue_configs == cfgs
        assert payload.message_content == msg.message_content
        core.outbound.remove(dest, item.seq)
        assert core.outbound.head(dest) is None  # exactly one


def _pending(core, destination: str) -> int:
    """How many outbound messages wait for ``destination`` (taken out to count)."""
    n = 0
    while (item := core.outbound.head(destination)) is not None:
        core.outbound.remove(destination, item.seq)
        n += 1
    return n


@spec("spec/queuing_service.md#local-enqueue-message", "informative")
@spec("spec/delivery_service.md#message-distribution", "informative")
def test_a_fan_out_handed_over_twice_with_one_message_id_happens_once(core):
    """Decision A40: the DS hands a fan-out over with the id of its outbox
    entry; a second hand-over (the DS crashed before it learnt the answer)
    enqueues and forwards nothing and gets the first QueueDeleted answer."""
    alice, gone = Client.register(core), Client.register(core)
    received(alice)
    gone_cfg = gone.client_queue_config()
    core.records.delete_user(gone.qs_uid)
    msg = fan_out([alice.client_queue_config(), gone_cfg, ClientQueueConfig(Fqdn("b.example"), os.urandom(60))],
                  GROUP, b"once")
    message_id = os.urandom(MESSAGE_ID_LEN)
    first = core.local_enqueue(msg, NOW, message_id)
    assert not first.duplicate and first.enqueued == [alice.qs_cid] and first.forwarded == [Fqdn("b.example")]
    assert [d.client_queue_config for d in first.queue_deleted] == [gone_cfg]
    for later in (NOW + 1, NOW + core.config.local_message_id_keep_ms - 1):
        again = core.local_enqueue(msg, later, message_id)
        assert again.duplicate and again.enqueued == [] and again.forwarded == []
        assert again.queue_deleted == first.queue_deleted
    assert received(alice) == [content_bytes(b"once")]
    assert _pending(core, "b.example") == 1
    # another id is another fan-out, and so is a call without an id
    assert core.local_enqueue(msg, NOW, os.urandom(MESSAGE_ID_LEN)).enqueued == [alice.qs_cid]
    assert core.local_enqueue(msg, NOW).enqueued == [alice.qs_cid]
    assert _pending(core, "b.example") == 2
    # the id is kept for local_message_id_keep_ms, then forgotten
    late = core.local_enqueue(msg, NOW + core.config.local_message_id_keep_ms, message_id)
    assert not late.duplicate and late.enqueued == [alice.qs_cid]


def test_a_local_message_id_is_not_a_federated_one():
    """The local DS's ids and a remote QS's ids are kept apart: the same 16
    bytes from both are two messages."""
    f = Federation()
    msg = f.message(b"remote")
    local = f.b.local_enqueue(fan_out([f.bob.client_queue_config()], GroupId.random("b.example"), b"local"), NOW,
                              msg.message_id)
    assert not local.duplicate and local.enqueued == [f.bob.qs_cid]
    remote = f.deliver(msg)
    assert not remote.duplicate and remote.enqueued == [f.bob.qs_cid]
    assert len(received(f.bob)) == 2


def test_a_message_id_has_sixteen_bytes(core):
    alice = Client.register(core)
    with pytest.raises(ValueError):
        core.local_enqueue(fan_out([alice.client_queue_config()], GROUP), NOW, b"short")
    assert received(alice) == []


def test_deny_listed_domain_gets_nothing(tmp_path):
    core = make_core(federation_deny=frozenset({Fqdn("evil.example")}))
    cfg = ClientQueueConfig(Fqdn("evil.example"), os.urandom(60))
    result = core.local_enqueue(fan_out([cfg], GROUP), NOW)
    assert result.rejected == [cfg] and result.forwarded == []
    assert core.outbound.destinations() == []


def test_fan_out_content_must_be_a_group_message(core):
    from phoenix_ref.mls.messages import MLSMessage
    from phoenix_ref.queuing.messages import ApplicationContent
    alice = Client.register(core)
    kp_msg = MLSMessage.wrap(alice.key_package())
    with pytest.raises(Malformed):
        core.local_enqueue(FanOutMessage([alice.client_queue_config()], ApplicationContent(kp_msg)), NOW)


def test_dequeue_limits_and_deletes_older():
    small = make_core(sqlite_dir=None)
    small.queues.config = type(small.queues.config)(max_messages=3, rotation_interval_ms=None)
    alice = Client.register(small)
    for i in range(5):
        small.local_enqueue(fan_out([alice.client_queue_config()], GROUP, b"%d" % i), NOW)
    r = dequeue(alice, 0, 100)
    assert [m.sequence_number for m in r.messages] == [0, 1, 2] and r.remaining_messages_number == 3
    r = dequeue(alice, 2, 1)
    assert [m.sequence_number for m in r.messages] == [2] and r.remaining_messages_number == 3
    r = dequeue(alice, 5, 100)
    assert [m.sequence_number for m in r.messages] == [5] and r.remaining_messages_number == 0


# --- federated enqueue (#federated-qs-to-qs-communication) ---------------------------------------------

class Federation:
    """Two QSs (a.example sends, b.example receives) and b's view of a's key."""

    def __init__(self, **b_config):
        self.a = make_core("a.example")
        self.b = make_core("b.example", **b_config)
        self.bob = Client.register(self.b)
        received(self.bob)

    def keys_of(self, domain: Fqdn) -> list[bytes] | None:
        """What b's key cache holds: a.example's key, nobody else's."""
        return [self.a.keys.signing_key.public] if domain.value == "a.example" else None

    def message(self, body=b"fed", *, now_ms=NOW, configs=None, group=GROUP) -> QsToQsMessage:
        configs = configs if configs is not None else [self.bob.client_queue_config()]
        self.a.local_enqueue(fan_out(configs, group, body), now_ms)
        item = self.a.outbound.head("b.example")
        self.a.outbound.remove("b.example", item.seq)
        return decode(QsToQsMessage, self.a.frame_outbound(item, now_ms))

    def deliver(self, msg, now_ms=NOW):
        return self.b.federated_enqueue(msg, now_ms, self.keys_of(msg.source))


def test_federated_message_is_enqueued():
    f = Federation()
    result = f.deliver(f.message(b"hi"))
    assert result.enqueued == [f.bob.qs_cid]
    assert received(f.bob) == [content_bytes(b"hi")]


def test_federated_signature_label_and_frame():
    f = Federation()
    msg = f.message()
    assert msg.source == Fqdn("a.example") and msg.destination == Fqdn("b.example")
    assert msg.timestamp == NOW and len(msg.message_id) == 16
    hs_verify(f.a.keys.signing_key.public, QS_TO_QS_LABEL, msg.tbs(), msg.signature)
    assert decode(QsToQsMessage, encode(msg)) == msg


def _nothing_enqueued(f: Federation):
    assert received(f.bob) == []


def test_forged_signature_is_refused_and_nothing_enqueued():
    import dataclasses
    f = Federation()
    msg = f.message()
    forged = dataclasses.replace(msg, signature=SigningKey.generate().sign(msg.tbs()))
    with pytest.raises(Unauthorized):
        f.deliver(forged)
    tampered = dataclasses.replace(msg, timestamp=msg.timestamp + 1)
    with pytest.raises(UnknownSourceKey) as e:
        f.deliver(tampered)
    assert e.value.status == 401 and e.value.code == "bad_signature" and e.value.source == Fqdn("a.example")
    _nothing_enqueued(f)


@spec("spec/queuing_service.md#federated-qs-to-qs-communication")
def test_without_source_keys_the_core_asks_for_them_after_the_cheap_checks():
    """The core fetches nothing: given no keys it raises UnknownSourceKey
    (the async layer fetches and calls again), but only for a message that
    passed every check that needs no key, so a stale or misdirected message
    never makes the QS fetch anything."""
    f = Federation()
    msg = f.message()
    with pytest.raises(UnknownSourceKey) as e:
        f.b.federated_enqueue(msg, NOW, None)
    assert e.value.source == Fqdn("a.example")
    with pytest.raises(Forbidden):
        make_core("c.example").federated_enqueue(msg, NOW, None)
    with pytest.raises(Unauthorized) as e:
        f.b.federated_enqueue(msg, NOW + 3_600_001, None)
    assert e.value.code == "message_expired"
    _nothing_enqueued(f)
    assert f.b.federated_enqueue(msg, NOW, [SigningKey.generate().public, f.a.keys.signing_key.public]).enqueued \
        == [f.bob.qs_cid]   # any published key may verify


def test_signature_by_another_qs_is_refused():
    f = Federation()
    impostor = make_core("c.example")
    impostor.local_enqueue(fan_out([f.bob.client_queue_config()], GROUP), NOW)   # a group of a.example
    msg = decode(QsToQsMessage, impostor.frame_outbound(impostor.outbound.head("b.example"), NOW))
    claimed = dataclasses.replace(msg, source=Fqdn("a.example"))
    with pytest.raises(Unauthorized):
        f.deliver(claimed)
    impostor.local_enqueue(fan_out([f.bob.client_queue_config()], GroupId.random("c.example")), NOW)
    impostor.outbound.remove("b.example", impostor.outbound.head("b.example").seq)
    own_group = decode(QsToQsMessage, impostor.frame_outbound(impostor.outbound.head("b.example"), NOW))
    with pytest.raises(Unauthorized):
        f.deliver(own_group)  # c.example's key cannot be fetched here
    _nothing_enqueued(f)


@spec("threat_model/stride/security_requirements/federated_homeservers.md#message-fan-out", "MUST")
@spec("spec/queuing_service.md#federated-qs-to-qs-communication", "informative")
def test_a_homeserver_fans_out_only_for_its_own_groups():
    """"Homeservers must not be able to fan out messages on behalf of other
    homeservers": a correctly signed QsToQsMessage whose group lives at
    another DS (GroupId.ds_domain is not the source) is refused with 403
    not_group_owner, before any key is needed, and leaves no trace."""
    f = Federation()
    for owner in ("c.example", "b.example", "ds.a.example"):
        msg = f.message(group=GroupId.random(owner))
        for keys in (f.keys_of(msg.source), None):   # refused before the source's keys are asked for
            with pytest.raises(Forbidden) as e:
                f.b.federated_enqueue(msg, NOW, keys)
            assert (e.value.status, e.value.code) == (403, "not_group_owner"), owner
        assert f.b.records.message_answer("a.example", msg.message_id, NOW) is None   # not remembered
    _nothing_enqueued(f)
    own = GroupId.random("a.example")
    assert f.deliver(f.message(b"own group", group=own)).enqueued == [f.bob.qs_cid]
    assert received(f.bob) == [content_bytes(b"own group", own)]


def test_wrong_destination_is_refused():
    f = Federation()
    other = make_core("c.example")
    msg = f.message()
    with pytest.raises(Forbidden) as e:
        other.federated_enqueue(msg, NOW, f.keys_of(msg.source))
    assert e.value.code == "wrong_destination"


def test_stale_and_future_timestamps_are_refused():
    f = Federation()
    with pytest.raises(Unauthorized):
        f.deliver(f.message(now_ms=NOW - 3_600_001))
    with pytest.raises(Unauthorized):
        f.deliver(f.message(now_ms=NOW + 600_000))
    _nothing_enqueued(f)
    f.deliver(f.message(b"edge", now_ms=NOW - 3_599_000))
    assert received(f.bob) == [content_bytes(b"edge")]


@spec("spec/queuing_service.md#federated-qs-to-qs-communication", "informative")
@spec("spec/delivery_service.md#message-distribution", "informative")
def test_a_replay_gets_the_first_answer_and_enqueues_nothing():
    """Decision A40: a QsToQsMessage whose id was taken (the sender's retry
    after a lost answer) is answered with the first answer, QueueDeleted
    entries included, and enqueues nothing, whether it comes as the same
    bytes or re-framed later with the same id."""
    f = Federation()
    gone = Client.register(f.b)
    gone_cfg = gone.client_queue_config()
    f.b.records.delete_user(gone.qs_uid)
    f.a.local_enqueue(fan_out([f.bob.client_queue_config(), gone_cfg], GROUP, b"once"), NOW)
    item = f.a.outbound.head("b.example")
    first = f.deliver(decode(QsToQsMessage, f.a.frame_outbound(item, NOW)))
    assert not first.duplicate and first.enqueued == [f.bob.qs_cid]
    assert [d.client_queue_config for d in first.response.queue_deleted] == [gone_cfg]
    for now_ms in (NOW, NOW + 1000):
        again = f.deliver(decode(QsToQsMessage, f.a.frame_outbound(item, now_ms)), now_ms)
        assert again.duplicate and again.enqueued == []
        assert encode(again.response) == encode(first.response)
    assert received(f.bob) == [content_bytes(b"once")]


def test_replay_memory_survives_restart(tmp_path):
    a = make_core("a.example")
    b = make_core("b.example", sqlite_dir=tmp_path)
    bob = Client.register(b)
    received(bob)
    a.local_enqueue(fan_out([bob.client_queue_config()], GROUP), NOW)
    msg = decode(QsToQsMessage, a.frame_outbound(a.outbound.head("b.example"), NOW))
    first = b.federated_enqueue(msg, NOW, [a.keys.signing_key.public])
    b.records.close()
    b2 = make_core("b.example", sqlite_dir=tmp_path)
    b2.keys = b.keys
    b2.config_cache = b.config_cache
    again = b2.federated_enqueue(msg, NOW + 5, [a.keys.signing_key.public])
    assert again.duplicate and again.enqueued == [] and again.response == first.response
    bob.core = b2
    assert len(received(bob)) == 1


def test_configs_for_a_third_domain_are_refused():
    f = Federation()
    msg = f.message(configs=[f.bob.client_queue_config()])
    import dataclasses
    payload = dataclasses.replace(msg.payload, client_queue_configs=msg.payload.client_queue_configs + [
        ClientQueueConfig(Fqdn("c.example"), os.urandom(40))])
    unsigned = dataclasses.replace(msg, payload=payload)
    resigned = dataclasses.replace(unsigned, signature=f.a.keys.signing_key.sign(b""))
    from phoenix_ref.crypto import hs_sign
    resigned = dataclasses.replace(unsigned, signature=hs_sign(f.a.keys.signing_key, QS_TO_QS_LABEL, unsigned.tbs()))
    with pytest.raises(Forbidden):
        f.deliver(resigned)
    _nothing_enqueued(f)


def test_federated_queue_deleted_is_answered():
    f = Federation()
    gone = Client.register(f.b)
    cqc = gone.client_queue_config()
    f.b.records.delete_user(gone.qs_uid)
    result = f.deliver(f.message(configs=[cqc, f.bob.client_queue_config()]))
    assert [d.client_queue_config for d in result.response.queue_deleted] == [cqc]
    assert result.enqueued == [f.bob.qs_cid]


def test_operator_deny_and_allow_lists():
    f = Federation(federation_deny=frozenset({Fqdn("a.example")}))
    with pytest.raises(Forbidden):
        f.deliver(f.message())
    g = Federation(federation_allow=frozenset({Fqdn("z.example")}))
    with pytest.raises(Forbidden):
        g.deliver(g.message())
    h = Federation(federation_allow=frozenset({Fqdn("a.example")}))
    assert h.deliver(h.message()).enqueued


def test_rate_limit_per_source_domain():
    f = Federation(rate_limit_per_domain=RateLimit(2, 60_000), rate_limit_per_client_queue_config=None,
                   rate_limit_per_queue=None)
    f.deliver(f.message(b"1"))
    f.deliver(f.message(b"2"))
    with pytest.raises(RateLimited) as e:
        f.deliver(f.message(b"3"), NOW + 15_000)
    assert e.value.status == 429 and 1 <= e.value.retry_after <= 60
    assert received(f.bob) == [content_bytes(b"1"), content_bytes(b"2")]
    # the next window accepts again, and the refused message was not remembered
    late = f.message(b"4", now_ms=NOW + 60_000)
    assert f.deliver(late, NOW + 60_000).enqueued


def test_rate_limit_per_client_queue_config():
    f = Federation(rate_limit_per_domain=None, rate_limit_per_client_queue_config=RateLimit(1, 60_000),
                   rate_limit_per_queue=None)
    cqc = f.bob.client_queue_config()
    f.deliver(f.message(configs=[cqc]))
    with pytest.raises(RateLimited):
        f.deliver(f.message(configs=[cqc]))
    # another config of the same queue (another group) is still accepted
    assert f.deliver(f.message(configs=[f.bob.client_queue_config()])).enqueued


def test_rate_limit_per_queue():
    f = Federation(rate_limit_per_domain=None, rate_limit_per_client_queue_config=None,
                   rate_limit_per_queue=RateLimit(2, 60_000))
    f.deliver(f.message(configs=[f.bob.client_queue_config()]))
    f.deliver(f.message(configs=[f.bob.client_queue_config()]))
    with pytest.raises(RateLimited):
        f.deliver(f.message(configs=[f.bob.client_queue_config()]))
    assert len(received(f.bob)) == 2


def test_rate_limited_message_enqueues_nothing_even_for_other_queues():
    f = Federation(rate_limit_per_domain=None, rate_limit_per_client_queue_config=None,
                   rate_limit_per_queue=RateLimit(1, 60_000))
    carol = Client.register(f.b)
    received(carol)
    f.deliver(f.message(configs=[f.bob.client_queue_config()]))
    with pytest.raises(RateLimited):
        f.deliver(f.message(configs=[carol.client_queue_config(), f.bob.client_queue_config()]))
    assert received(carol) == []


def test_outbound_item_is_reframed_with_fresh_timestamp_same_id():
    f = Federation()
    f.a.local_enqueue(fan_out([f.bob.client_queue_config()], GROUP), NOW)
    item = f.a.outbound.head("b.example")
    first, later = (decode(QsToQsMessage, f.a.frame_outbound(item, t)) for t in (NOW, NOW + 7_200_000))
    assert first.message_id == later.message_id and later.timestamp == NOW + 7_200_000
    assert f.deliver(later, NOW + 7_200_000).enqueued


def test_outbound_frame_is_the_encoded_signed_message_without_decoding_the_payload():
    """The sender frames the stored payload as is; the result is exactly the
    encoding of the QsToQsMessage with that payload, signed over its TBS."""
    f = Federation()
    f.a.local_enqueue(fan_out([f.bob.client_queue_config(), f.bob.client_queue_config()], GROUP), NOW)
    item = f.a.outbound.head("b.example")
    framed = f.a.frame_outbound(item, NOW)
    msg = decode(QsToQsMessage, framed)
    assert encode(msg.payload) == item.payload and (msg.source.value, msg.destination.value) == ("a.example",
                                                                                                  "b.example")
    assert encode(QsToQsMessage(msg.source, msg.destination, NOW, item.message_id, msg.payload,
                                msg.signature)) == framed
    hs_verify(f.a.keys.signing_key.public, QS_TO_QS_LABEL, msg.tbs(), msg.signature)
    # a stored payload that is not a FanOutMessage gives a frame no receiver decodes
    garbage = f.a.frame_outbound(OutboundItem("b.example", 1, b"\x00" * 16, b"garbage", NOW), NOW)
    with pytest.raises(DecodeError):
        decode(QsToQsMessage, garbage)


def test_cached_fan_out_costs_one_record_read_and_one_queue_write():
    """spec/performance_goals.md (IO overhead): with the configs cached, a
    fan-out to any number of local queues costs one record read (records +
    blocklists) and one queue write (one transaction)."""
    core = make_core()
    clients = [Client.register(core) for _ in range(3)]
    cfgs = [c.client_queue_config() for c in clients]
    core.local_enqueue(fan_out(cfgs, GROUP, b"warm"), NOW)

    calls = []

    class Counting:
        def __init__(self, inner, tag):
            self.inner, self.tag = inner, tag

        def __getattr__(self, name):
            attr = getattr(self.inner, name)
            if callable(attr):
                def wrapped(*a, **kw):
                    calls.append((self.tag, name))
                    return attr(*a, **kw)
                return wrapped
            return attr

    core.records = Counting(core.records, "records")
    core.queues.store = Counting(core.queues.store, "queues")
    result = core.local_enqueue(fan_out(cfgs, GROUP, b"hot"), NOW)
    assert calls == [("records", "clients_for_enqueue"), ("queues", "append_many")]
    assert sorted(result.enqueued, key=str) == sorted((c.qs_cid for c in clients), key=str)
    for c in clients:
        assert received(c) == [content_bytes(b"warm"), content_bytes(b"hot")]


# --- rotated QueueConfig encryption keys (spec/glossary.md#queueconfig-encryption-key) -----------

def _rotate_config_key(core) -> HpkeKeyPair:
    """The operator rotates the QueueConfig key; the old one stays published."""
    old = core.keys.queue_config_key
    core.keys = QsKeys(core.keys.signing_key, HpkeKeyPair.generate(), (old, *core.keys.older_queue_config_keys))
    return old


def test_config_sealed_to_a_rotated_out_published_key_still_opens(core):
    alice = Client.register(core)
    old_cqc = alice.client_queue_config()            # sealed to the key that is current now
    old = _rotate_config_key(core)
    assert decode_sealed_queue_config(old_cqc.sealed_config).config_key_id == config_key_id(old.public)
    new_cqc = alice.client_queue_config()            # sealed to the new current key
    assert decode_sealed_queue_config(new_cqc.sealed_config).config_key_id == config_key_id(
        core.keys.queue_config_key.public)
    result = core.local_enqueue(fan_out([old_cqc, new_cqc], GROUP, b"both"), NOW)
    assert result.rejected == [] and result.enqueued == [alice.qs_cid, alice.qs_cid]
    assert received(alice) == [content_bytes(b"both")] * 2


def test_config_sealed_to_a_key_no_longer_published_is_refused(core):
    alice = Client.register(core)
    cached, uncached = alice.client_queue_config(), alice.client_queue_config()
    core.local_enqueue(fan_out([cached], GROUP, b"warm"), NOW)       # now in the cache
    _rotate_config_key(core)
    core.keys = QsKeys(core.keys.signing_key, core.keys.queue_config_key)   # the old key is retired
    result = core.local_enqueue(fan_out([cached, uncached], GROUP, b"late"), NOW)
    assert result.rejected == [cached, uncached] and result.enqueued == []


def test_config_key_id_picks_the_key_without_trying_others(core, monkeypatch):
    """The key id names the key: a config for an unknown key costs no HPKE
    operation, and a known one exactly the two opens of its layers."""
    import phoenix_ref.queuing.fanout as fanout
    alice = Client.register(core)
    for _ in range(3):
        _rotate_config_key(core)
    opens = []
    real_open = fanout.hpke_open
    monkeypatch.setattr(fanout, "hpke_open", lambda *a, **kw: opens.append(a[0]) or real_open(*a, **kw))
    stranger = seal_queue_config(HpkeKeyPair.generate().public, QueueConfig(None, alice.qs_cid),
                                 queue_encryption_key=alice.queue_key, client_record_key=alice.client_key)
    result = core.local_enqueue(fan_out([ClientQueueConfig(core.config.domain, stranger)], GROUP), NOW)
    assert len(result.rejected) == 1 and opens == []
    result = core.local_enqueue(fan_out([alice.client_queue_config()], GROUP), NOW)
    assert result.enqueued == [alice.qs_cid] and opens == [core.keys.queue_config_key.private] * 2


def test_config_key_id_is_signed(core):
    alice = Client.register(core)
    _rotate_config_key(core)
    sealed = decode_sealed_queue_config(alice.sealed_config())
    other_id = config_key_id(core.keys.older_queue_config_keys[0].public)   # another published key
    moved = encode(dataclasses.replace(sealed, config_key_id=other_id))
    result = core.local_enqueue(fan_out([ClientQueueConfig(core.config.domain, moved)], GROUP), NOW)
    assert len(result.rejected) == 1 and result.enqueued == []


def test_deleted_client_records_are_reported_for_their_websockets(core):
    """``on_clients_deleted`` hears of every deleted client record (the
    service closes their websockets), once, after the deletion."""
    deleted = []
    core.on_clients_deleted = deleted.append
    alice, bob = Client.register(core), Client.register(core)
    params = CreateClientRecordParams(alice.qs_uid, SigningKey.generate().public, HpkeKeyPair.generate().public)
    second = core.create_client_record(alice.request("create_client_record", params,
                                                     as_user=True), NOW).qs_cid
    core.delete_client_record(bob.request("delete_client_record",
                                          DeleteClientRecordParams(bob.qs_cid)), NOW)
    assert deleted == [[bob.qs_cid]] and core.records.get_client(bob.qs_cid) is None
    core.delete_user_record(alice.request("delete_user_record",
                                          DeleteUserRecordParams(alice.qs_uid), as_user=True), NOW)
    assert sorted(map(str, deleted[1])) == sorted(map(str, [alice.qs_cid, second]))


def test_signature_is_checked_over_the_received_bytes():
    """The receiver checks the QsToQsMessage signature over the bytes it
    received (minus the signature) instead of re-encoding the fan-out; those
    are exactly ``msg.tbs()`` because strict decoding accepts only canonical
    bytes. A forged or tampered message is refused the same way."""
    f = Federation()
    f.a.local_enqueue(fan_out([f.bob.client_queue_config()], GROUP, b"raw"), NOW)
    item = f.a.outbound.head("b.example")
    framed = f.a.frame_outbound(item, NOW)
    msg = decode(QsToQsMessage, framed)
    assert received_qs_to_qs_tbs(framed, msg) == msg.tbs()
    with pytest.raises(ValueError):
        received_qs_to_qs_tbs(framed[:-1] + bytes([framed[-1] ^ 1]), msg)
    forged = dataclasses.replace(msg, signature=SigningKey.generate().sign(msg.tbs()))
    with pytest.raises(Unauthorized):
        f.b.federated_enqueue(forged, NOW, f.keys_of(forged.source), received=encode(forged))
    # one flipped bit in the signed part: the received bytes decode, the signature fails
    tampered_raw = bytearray(framed)
    tampered_raw[len(framed) - len(encode(msg.signature, VarBytes)) - 1] ^= 1
    tampered = decode(QsToQsMessage, bytes(tampered_raw))
    with pytest.raises(Unauthorized):
        f.b.federated_enqueue(tampered, NOW, f.keys_of(tampered.source), received=bytes(tampered_raw))
    _nothing_enqueued(f)
    result = f.b.federated_enqueue(msg, NOW, f.keys_of(msg.source), received=framed)
    assert result.enqueued == [f.bob.qs_cid] and received(f.bob) == [content_bytes(b"raw")]


@spec("spec/queuing_service.md#qs-configuration-options", "informative")
def test_inactive_client_records_are_pruned_after_the_maximal_age(core):
    """"Maximal QS client record age": a client record whose queue nobody
    fetched from for longer goes, with its queue and its KeyPackages; a
    user record goes with its last client record; a recent dequeue keeps a
    record; the websockets of deleted records are told."""
    age = core.config.max_client_record_age_ms
    deleted = []
    core.on_clients_deleted = deleted.append
    idle, active = Client.register(core), Client.register(core)
    publish(idle, [idle.add_package(last_resort=True)])
    assert core.prune_inactive(NOW + age) == []                  # exactly the maximal age: still kept
    later = NOW + age // 2
    dequeue(active, now_ms=later)                               # fetching counts as activity
    assert core.prune_inactive(NOW + age + 1) == [idle.qs_cid]
    assert deleted == [[idle.qs_cid]]
    assert core.records.get_client(idle.qs_cid) is None and core.records.get_user(idle.qs_uid) is None
    assert core.records.take_add_packages(idle.friendship_token, NOW // 1000) is None
    with pytest.raises(NotFound):
        core.queues.info(encode(idle.qs_cid))
    assert core.records.get_client(active.qs_cid) is not None
    assert core.prune_inactive(later + age + 1) == [active.qs_cid]
