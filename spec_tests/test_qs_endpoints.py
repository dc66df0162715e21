"""QS client endpoints over HTTPS (``spec/queuing_service.md#client-endpoints``).

Every scenario runs in-process and on real sockets with TLS
(``deployment_mode``); Privacy Pass tokens are real (``qs_http.qs_client``).
Messages reach queues through the local DS's Python API
(``hs.qs.local_enqueue``), as in a homeserver.
"""

import os

import pytest

from phoenix_ref import endpoints
from phoenix_ref.codec import decode, encode
from phoenix_ref.crypto import HpkeKeyPair, SigningKey, hs_verify
from phoenix_ref.errors import ErrorResponse, Forbidden, Malformed, Unauthorized
from phoenix_ref.http import MEDIA_TYPE
from phoenix_ref.ids import GroupId
from phoenix_ref.queuing import messages as m
from phoenix_ref.queuing.core import ADD_PACKAGE_RESPONSE_LABEL
from phoenix_ref.spec_plugin import spec
from tests.qs_helpers import make_key_package

from .qs_http import GROUP, message, qs_client, read_all

QS = "spec/queuing_service.md#"


def qs_url(node, name: str) -> str:
    return f"https://qs.{node.domain}{endpoints.by_name('qs', name).path}"


@spec(QS + "create-new-qs-user-record", "informative")
@spec(QS + "get-own-qs-user-record", "informative")
@spec(QS + "update-qs-user-record", "informative")
@spec(QS + "delete-qs-user-record", "informative")
async def test_user_record_lifecycle(deployment):
    async with deployment.client() as http:
        qs = await qs_client(deployment, http)
        alice = await qs.register("a.example")
        got = await qs.send(alice, "get_user_record", m.UserRecordParams(alice.qs_uid))
        assert got.friendship_token == alice.friendship_token
        assert got.user_record_auth_key == alice.user_key.public
        assert [c.qs_cid for c in got.client_records] == [alice.qs_cid]
        assert got.client_records[0].queue_encryption_key == alice.queue_key.public

        new_key, new_token = SigningKey.generate(), os.urandom(32)
        await qs.send(alice, "update_user_record", m.UpdateUserRecordParams(alice.qs_uid, new_key.public, new_token))
        with pytest.raises(Unauthorized):   # the old user record key no longer authenticates
            await qs.send(alice, "get_user_record", m.UserRecordParams(alice.qs_uid))
        alice.user_key, alice.friendship_token = new_key, new_token
        got = await qs.send(alice, "get_user_record", m.UserRecordParams(alice.qs_uid))
        assert (got.user_record_auth_key, got.friendship_token) == (new_key.public, new_token)

        await qs.send(alice, "delete_user_record", m.DeleteUserRecordParams(alice.qs_uid))
        with pytest.raises(Unauthorized) as e:
            await qs.send(alice, "get_user_record", m.UserRecordParams(alice.qs_uid))
        assert e.value.code == "unknown_record"
        with pytest.raises(Unauthorized):   # its client records and queues went with it
            await qs.dequeue(alice)


@spec(QS + "user-record-management-endpoints", "informative")
@pytest.mark.needs_control("the QS's local enqueue (the DS's in-process path to its QS)")
async def test_client_records_and_last_client_takes_the_user_along(deployment):
    async with deployment.client() as http:
        qs = await qs_client(deployment, http)
        alice = await qs.register("a.example")
        second = type(alice).new("a.example")
        second.qs_uid = alice.qs_uid
        params = m.CreateClientRecordParams(alice.qs_uid, second.client_key.public, second.queue_key.public)
        second.qs_cid = (await qs.send(alice, "create_client_record", params)).qs_cid
        assert second.qs_cid.qs_uid == alice.qs_uid and second.qs_cid != alice.qs_cid
        got = await qs.send(alice, "get_user_record", m.UserRecordParams(alice.qs_uid))
        assert {c.qs_cid for c in got.client_records} == {alice.qs_cid, second.qs_cid}

        # a new queue encryption key takes effect with a key update sealed to it
        new_queue_key = HpkeKeyPair.generate()
        await qs.receive(second)
        await qs.send(second, "update_client_record", m.UpdateClientRecordParams(
            second.qs_cid, second.client_key.public, new_queue_key.public, None))
        second.queue_key = new_queue_key
        await deployment["hs1"].hs.qs.local_enqueue(message([await qs.client_queue_config(second)], b"after"))
        assert await read_all(qs, second, 1) == [b"after"]

        await qs.send(alice, "delete_client_record", m.DeleteClientRecordParams(alice.qs_cid))
        got = await qs.send(alice, "get_user_record", m.UserRecordParams(alice.qs_uid))
        assert [c.qs_cid for c in got.client_records] == [second.qs_cid]
        await qs.send(second, "delete_client_record", m.DeleteClientRecordParams(second.qs_cid))
        with pytest.raises(Unauthorized):   # the last client record took the user record along
            await qs.send(alice, "get_user_record", m.UserRecordParams(alice.qs_uid))


@spec(QS + "authentication", "informative")
async def test_qs_auth_token_names_the_record_and_is_bound_to_the_request(deployment):
    async with deployment.client() as http:
        qs = await qs_client(deployment, http)
        alice, bob = await qs.register("a.example"), await qs.register("a.example")
        now = deployment.clock.now_ms()
        params = m.DequeueMessagesParams(alice.qs_cid, 0, 10)
        forged = alice.token("dequeue_messages", params, now)
        cases = {
            # signed by a key that is not the client record auth key
            "wrong key": m.DequeueMessagesRequest(
                type(forged).create(SigningKey.generate(), alice.qs_cid, now, _binding(alice, params)), params),
            # a token for another endpoint, or other params
            "other endpoint": m.DequeueMessagesRequest(alice.token("websocket", m.WsParams(alice.qs_cid), now), params),
            "other params": m.DequeueMessagesRequest(
                alice.token("dequeue_messages", m.DequeueMessagesParams(alice.qs_cid, 1, 10), now), params),
            # too old
            "stale": m.DequeueMessagesRequest(alice.token("dequeue_messages", params, now - 3_600_001), params),
            # a QsUid where the endpoint names a QsCid
            "user token": m.DequeueMessagesRequest(
                type(forged).create(alice.user_key, alice.qs_uid, now, _binding(alice, params)), params),
        }
        for what, request in cases.items():
            with pytest.raises(Unauthorized):
                await qs.call("a.example", "dequeue_messages", request)
            assert what
        # bob's valid token on alice's queue: authenticated, but not authorized
        with pytest.raises(Forbidden):
            await qs.call("a.example", "dequeue_messages",
                          m.DequeueMessagesRequest(bob.token("dequeue_messages", params, now), params))
        assert (await qs.dequeue(alice)).messages   # the right token works


def _binding(me, params):
    from phoenix_ref.auth_tokens import RequestBinding
    return RequestBinding(me.domain, endpoints.by_name("qs", "dequeue_messages").path, encode(params))


@spec(QS + "authentication", "informative")
async def test_privacy_pass_on_every_client_endpoint_but_dequeue_and_websocket(deployment):
    qs_rows = [ep for ep in endpoints.ENDPOINTS if ep.service == "qs" and not ep.federated]
    assert {ep.name for ep in qs_rows if not ep.privacy_pass} == {"dequeue_messages", "websocket"}
    async with deployment.client() as http:
        qs = await qs_client(deployment, http)
        alice = await qs.register("a.example")
        now = deployment.clock.now_ms()
        a, uid, cid = alice, alice.qs_uid, alice.qs_cid
        requests = {   # a well-formed, correctly authenticated request for every row that needs a token
            "create_user_record": type(alice).new("a.example").create_user_record_params(),
            "update_user_record": a.request("update_user_record", m.UpdateUserRecordParams(
                uid, a.user_key.public, a.friendship_token), now),
            "get_user_record": a.request("get_user_record", m.UserRecordParams(uid), now),
            "delete_user_record": a.request("delete_user_record", m.DeleteUserRecordParams(uid), now),
            "create_client_record": a.request("create_client_record", m.CreateClientRecordParams(
                uid, a.client_key.public, a.queue_key.public), now),
            "update_client_record": a.request("update_client_record", m.UpdateClientRecordParams(
                cid, a.client_key.public, a.queue_key.public, None), now),
            "delete_client_record": a.request("delete_client_record", m.DeleteClientRecordParams(cid), now),
            "block_group": a.request("block_group", m.BlockGroupParams(cid, GROUP), now),
            "publish_key_packages": a.request("publish_key_packages", m.PublishKeyPackagesParams(cid, []), now),
            "get_add_package": m.AddPackageParams(a.friendship_token),
        }
        for ep in qs_rows:
            if not ep.privacy_pass:
                continue
            body = encode(requests[ep.name]) if ep.request is not None else b""
            headers = {"content-type": MEDIA_TYPE} if ep.request is not None else {}
            resp = await http.request(ep.method, qs_url(deployment["hs1"], ep.name), content=body, headers=headers)
            assert resp.status_code == 401, ep.name
            assert decode(ErrorResponse, resp.content).code == "token_required"
        # a token is spent once
        from phoenix_ref import privacy_pass as pp
        token = await qs.privacy_pass(alice.domain)
        hdr = {"content-type": MEDIA_TYPE, "Authorization": pp.authorization_header(token)}
        body = encode(alice.request("get_user_record", m.UserRecordParams(alice.qs_uid), now))
        assert (await http.post(qs_url(deployment["hs1"], "get_user_record"), content=body, headers=hdr)).status_code == 200
        again = await http.post(qs_url(deployment["hs1"], "get_user_record"), content=body, headers=hdr)
        assert again.status_code == 401 and decode(ErrorResponse, again.content).code == "token_spent"
        # dequeue needs none
        body = encode(alice.dequeue_request(now))
        resp = await http.post(qs_url(deployment["hs1"], "dequeue_messages"), content=body,
                               headers={"content-type": MEDIA_TYPE})
        assert resp.status_code == 200


@spec(QS + "fetch-queue-config-encryption-key", "informative")
@pytest.mark.needs_control("the QS's keystore and its local enqueue")
async def test_queue_config_key_seals_configs_the_qs_opens(deployment):
    async with deployment.client() as http:
        qs = await qs_client(deployment, http)
        alice = await qs.register("a.example")
        key = await qs.queue_config_key("a.example")
        assert key == deployment["hs1"].hs.keystore.qs_queue_config_keys[0].public
        result = await deployment["hs1"].hs.qs.local_enqueue(message([alice.client_queue_config(key)], b"x"))
        assert result.enqueued == [alice.qs_cid]


@spec(QS + "fetch-queue-config-encryption-key", "informative")
@spec("spec/glossary.md#queueconfig-encryption-key", "informative")
@pytest.mark.needs_control("rotating the QS's queue config key and its local enqueue")
async def test_configs_sealed_to_a_rotated_out_key_still_deliver(deployment):
    """After the operator rotates the QueueConfig encryption key, the answer
    lists the new key and the old one, and configs that group members hold,
    sealed to the old key, still deliver next to configs sealed to the new one."""
    hs = deployment["hs1"].hs
    async with deployment.client() as http:
        qs = await qs_client(deployment, http)
        alice = await qs.register("a.example")
        old_key = await qs.queue_config_key("a.example")
        old_cfg = alice.client_queue_config(old_key)
        new_key = await hs.operator.rotate_queue_config_key()
        answer = await qs.call("a.example", "queue_config_encryption_key")
        assert answer.encryption_keys == [new_key, old_key]
        new_cfg = await qs.client_queue_config(alice)
        result = await hs.qs.local_enqueue(message([old_cfg, new_cfg], b"x"))
        assert result.rejected == [] and result.enqueued == [alice.qs_cid, alice.qs_cid]
        assert await read_all(qs, alice, 2) == [b"x", b"x"]


@spec(QS + "publish-keypackages", "MUST")
@spec(QS + "get-addpackage", "informative")
async def test_publish_key_packages_and_get_add_package(deployment):
    async with deployment.client() as http:
        qs = await qs_client(deployment, http)
        alice = await qs.register("a.example")
        key = await qs.queue_config_key("a.example")

        def add_package(last_resort=False, config=None):
            kp = make_key_package("a.example", config or alice.sealed_config(key), last_resort=last_resort,
                                  now_ms=deployment.clock.now_ms())
            return m.AddPackage(kp, os.urandom(40), os.urandom(40))

        with pytest.raises(Malformed) as e:   # at least one KeyPackage of last resort
            await qs.send(alice, "publish_key_packages", m.PublishKeyPackagesParams(alice.qs_cid, [add_package()]))
        assert e.value.code == "missing_last_resort"
        bob = await qs.register("a.example")
        with pytest.raises(Malformed) as e:   # the QueueConfig extension must be the publisher's
            await qs.send(alice, "publish_key_packages", m.PublishKeyPackagesParams(
                alice.qs_cid, [add_package(True, bob.sealed_config(key))]))
        assert e.value.code == "foreign_queue_config"

        ordinary, last = add_package(), add_package(last_resort=True)
        await qs.send(alice, "publish_key_packages", m.PublishKeyPackagesParams(alice.qs_cid, [last, ordinary]))
        first = await qs.call("a.example", "get_add_package", m.AddPackageParams(alice.friendship_token))
        second = await qs.call("a.example", "get_add_package", m.AddPackageParams(alice.friendship_token))
        assert first.add_packages == [ordinary] and second.add_packages == [last]   # last resort stays
        verifying = (await http.get(qs_url(deployment["hs1"], "qs_verifying_key"))).content
        qs_key = decode(endpoints.by_name("qs", "qs_verifying_key").response, verifying).verifying_keys[0]
        tbs = encode(m.AddPackageResponseTBS(alice.friendship_token, first.add_packages))
        hs_verify(qs_key, ADD_PACKAGE_RESPONSE_LABEL, tbs, first.signature)
        with pytest.raises(Unauthorized):   # the friendship token authenticates
            await qs.call("a.example", "get_add_package", m.AddPackageParams(os.urandom(32)))
        # publishing again replaces everything
        newer = add_package(last_resort=True)
        await qs.send(alice, "publish_key_packages", m.PublishKeyPackagesParams(alice.qs_cid, [newer]))
        assert (await qs.call("a.example", "get_add_package",
                              m.AddPackageParams(alice.friendship_token))).add_packages == [newer]


@spec(QS + "dequeue-messages", "informative")
@pytest.mark.needs_control("the QS's local enqueue (the DS's in-process path to its QS)")
async def test_dequeue_in_batches_deletes_only_below_the_start(deployment):
    async with deployment.client() as http:
        qs = await qs_client(deployment, http)
        alice = await qs.register("a.example")
        cfg = alice.client_queue_config(await qs.queue_config_key("a.example"))
        for i in range(4):
            await deployment["hs1"].hs.qs.local_enqueue(message([cfg], b"m%d" % i))
        first = await qs.dequeue(alice, max_messages=3)   # the reset message (seq 0) and m0, m1
        assert [x.sequence_number for x in first.messages] == [0, 1, 2]
        assert first.remaining_messages_number == 2
        assert len(alice.read(first.messages)) == 2
        again = await qs.call("a.example", "dequeue_messages", alice.request(
            "dequeue_messages", m.DequeueMessagesParams(alice.qs_cid, 1, 1), deployment.clock.now_ms()))
        assert [x.sequence_number for x in again.messages] == [1]   # nothing at or above 1 was deleted
        rest = await qs.dequeue(alice)
        assert [x.sequence_number for x in rest.messages] == [3, 4] and rest.remaining_messages_number == 0
        assert len(alice.read(rest.messages)) == 2


@spec(QS + "enqueuing-messages", "informative")
@spec(QS + "qs-state", "SHOULD")
@pytest.mark.needs_control("the QS's local enqueue (the DS's in-process path to its QS)")
async def test_blocklist_and_queue_deleted(deployment):
    async with deployment.client() as http:
        qs = await qs_client(deployment, http)
        alice, gone = await qs.register("a.example"), await qs.register("a.example")
        key = await qs.queue_config_key("a.example")
        blocked_group = GroupId.random("a.example")
        await qs.send(alice, "block_group", m.BlockGroupParams(alice.qs_cid, blocked_group))
        gone_cfg = gone.client_queue_config(key)
        await qs.send(gone, "delete_user_record", m.DeleteUserRecordParams(gone.qs_uid))
        hs = deployment["hs1"].hs
        cfg = alice.client_queue_config(key)
        blocked = await hs.qs.local_enqueue(message([cfg], b"spam", blocked_group))
        assert blocked.blocked == [cfg] and blocked.enqueued == []
        result = await hs.qs.local_enqueue(message([cfg, gone_cfg], b"ok"))
        assert result.enqueued == [alice.qs_cid]
        assert [(d.client_queue_config, d.group_id) for d in result.queue_deleted] == [(gone_cfg, GROUP)]
        assert await read_all(qs, alice, 1) == [b"ok"]


@spec("spec/queuing_service.md#local-enqueue-message", "informative")
@spec("spec/federation/use_cases.md#message-distribution", "informative")
@pytest.mark.needs_control("the homeserver's route table and its local enqueue")
async def test_local_enqueue_is_not_reachable_over_http(deployment):
    hs = deployment["hs1"].hs
    # no route takes a bare FanOutMessage; the only QS rows for remote QSs are the federated
    # ones (a QsToQsMessage, or a QsToQsBatch of them), both signed by the remote QS
    assert all(ep.request is not m.FanOutMessage for ep in endpoints.ENDPOINTS)
    remote_rows = [ep for ep in endpoints.ENDPOINTS if ep.service == "qs" and ep.federated and ep.request is not None]
    assert [ep.name for ep in remote_rows] == ["federated_enqueue", "federated_enqueue_batch"]
    assert {ep.auth for ep in remote_rows} == {endpoints.Auth.QS_SIGNATURE}
    registered = set(hs.app.routes())
    table = {(hs.config.host(str(ep.service)), ep.method, ep.path) for ep in endpoints.ENDPOINTS}
    assert registered - table == {(hs.domain, "GET", endpoints.WELL_KNOWN_PATH)}
    async with deployment.client() as http:
        qs = await qs_client(deployment, http)
        alice = await qs.register("a.example")
        body = encode(message([alice.client_queue_config(await qs.queue_config_key("a.example"))], b"sneaky"))
        for host in ("qs.a.example", "ds.a.example", "as.a.example", "a.example"):
            for path in ("/phoenix/v1/local_enqueue", "/phoenix/v1/enqueue", "/phoenix/v1/enqueue_message"):
                resp = await http.post(f"https://{host}{path}", content=body, headers={"content-type": MEDIA_TYPE})
                assert resp.status_code == 404, (host, path)
        resp = await http.post(qs_url(deployment["hs1"], "federated_enqueue"), content=body,
                               headers={"content-type": MEDIA_TYPE})
        assert resp.status_code == 400   # a FanOutMessage is not a QsToQsMessage
        got = await qs.dequeue(alice)
        assert alice.read(got.messages) == []


@spec(QS + "qs-configuration-options", "informative")
@pytest.mark.needs_control("the homeservers' clock and the QS's pruning")
async def test_inactive_client_records_are_pruned_after_the_maximal_age(deployment):
    """"Maximal QS client record age: maximal age of an inactive QS client
    record" (default 90 days here): a client that has not fetched from its
    queue for longer loses its record, its queue and, as the last client,
    its user record; one that dequeued meanwhile keeps them."""
    d = deployment
    day = 24 * 3600 * 1000
    async with d.client() as http:
        qs = await qs_client(d, http)
        idle, active = await qs.register("a.example"), await qs.register("a.example")
        svc = d["hs1"].hs.qs
        assert await svc.call(svc.core.prune_inactive, d.clock.now_ms()) == []
        d.clock.advance(60 * day)
        assert await qs.receive(active) == []                 # a dequeue is activity
        d.clock.advance(60 * day)                             # 120 days after registration
        assert await svc.call(svc.core.prune_inactive, d.clock.now_ms()) == [idle.qs_cid]
        with pytest.raises(Unauthorized) as e:
            await qs.dequeue(idle)
        assert e.value.code == "unknown_record"
        with pytest.raises(Unauthorized):
            await qs.send(idle, "get_user_record", m.UserRecordParams(idle.qs_uid))
        assert await qs.receive(active) == []
