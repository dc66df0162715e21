"""*Negotiate websocket connection* (``spec/queuing_service.md#negotiate-websocket-connection``).

Over a real websocket in both modes: on sockets, ``wsproto`` over TLS to
anycorn; in-process, ASGI websocket events after an emulated TLS
handshake (``Deployment.websocket``). Framing: :mod:`phoenix_ref.queuing.messages`.
"""

import pytest
import trio

from phoenix_ref import endpoints
from phoenix_ref.client.qs_client import QsNotifications, WebsocketRefused
from phoenix_ref.codec import decode, encode
from phoenix_ref.crypto import SigningKey
from phoenix_ref.errors import ErrorResponse
from phoenix_ref.http import MEDIA_TYPE
from phoenix_ref.queuing import messages as m
from phoenix_ref.spec_plugin import spec

from .qs_http import message, qs_client, read_all

WS = "spec/queuing_service.md#negotiate-websocket-connection"
PATH = endpoints.by_name("qs", "websocket").path


@spec(WS, "informative")
@pytest.mark.needs_control("the QS's local enqueue (the DS's in-process path to its QS)")
async def test_connected_client_is_woken_when_its_queue_gets_a_message(deployment):
    hs = deployment["hs1"].hs
    async with deployment.client() as http:
        qs = await qs_client(deployment, http)
        alice, bob = await qs.register("a.example"), await qs.register("a.example")
        key = await qs.queue_config_key("a.example")
        async with deployment.websocket("hs1", "qs", PATH) as ws:
            events = await qs.open_websocket(alice, ws)   # no Privacy Pass token needed
            assert hs.qs.notifier.listeners(alice.qs_cid) == 1
            # a message for somebody else does not wake alice
            await hs.qs.local_enqueue(message([bob.client_queue_config(key)], b"for bob"))
            with trio.move_on_after(0.3):
                await events.next_event()
                pytest.fail("alice was woken by bob's message")
            await hs.qs.local_enqueue(message([alice.client_queue_config(key)], b"for alice"))
            with trio.fail_after(10):
                assert isinstance(await events.next_event(), m.WsQueueUpdate)
            assert await read_all(qs, alice, 1) == [b"for alice"]
        with trio.fail_after(10):   # closing the socket unsubscribes
            while hs.qs.notifier.listeners(alice.qs_cid):
                await trio.sleep(0.01)


@spec(WS, "informative")
@spec("spec/queuing_service.md#authentication", "informative")
async def test_websocket_refuses_a_bad_token_with_4401(deployment):
    async with deployment.client() as http:
        qs = await qs_client(deployment, http)
        alice = await qs.register("a.example")
        now = deployment.clock.now_ms()
        params = m.WsParams(alice.qs_cid)
        from phoenix_ref.auth_tokens import QsAuthToken, RequestBinding
        forged = QsAuthToken.create(SigningKey.generate(), alice.qs_cid, now,
                                    RequestBinding(alice.domain, PATH, encode(params)))
        for first, code, reason in ((encode(m.WsRequest(forged, params)), 4401, "auth_token_bad_signature"),
                                    (b"\x07garbage", 4400, "malformed")):
            async with deployment.websocket("hs1", "qs", PATH) as ws:
                await ws.send_bytes(first)
                with pytest.raises(WebsocketRefused) as e:
                    await QsNotifications(ws).next_event()
                assert (e.value.code, e.value.reason) == (code, reason)


@spec(WS, "informative")
async def test_plain_get_of_the_websocket_endpoint_needs_an_upgrade(deployment):
    async with deployment.client() as http:
        qs = await qs_client(deployment, http)
        alice = await qs.register("a.example")
        url = f"https://qs.a.example{PATH}"
        body = encode(alice.ws_request(deployment.clock.now_ms()))
        resp = await http.request("GET", url, content=body, headers={"content-type": MEDIA_TYPE})
        assert resp.status_code == 426
        assert decode(ErrorResponse, resp.content).code == "websocket_required"


@spec(WS, "informative")
@spec("spec/queuing_service.md#user-record-management-endpoints", "informative")
@pytest.mark.needs_control("the QS's local enqueue (the DS's in-process path to its QS)")
async def test_websocket_closes_when_its_client_record_is_deleted(deployment):
    """The socket watches a queue; when the client record (and so the queue)
    is deleted — by *delete client record* or with its user record — the QS
    closes the socket with 4410 ``client_record_deleted``, not leaving it
    open for a queue that no longer exists."""
    hs = deployment["hs1"].hs
    async with deployment.client() as http:
        qs = await qs_client(deployment, http)
        alice, bob, carol = [await qs.register("a.example") for _ in range(3)]
        async with deployment.websocket("hs1", "qs", PATH) as ws_a, \
                deployment.websocket("hs1", "qs", PATH) as ws_b, \
                deployment.websocket("hs1", "qs", PATH) as ws_c:
            events_a = await qs.open_websocket(alice, ws_a)
            events_b = await qs.open_websocket(bob, ws_b)
            events_c = await qs.open_websocket(carol, ws_c)
            await qs.send(alice, "delete_client_record", m.DeleteClientRecordParams(alice.qs_cid))
            await qs.send(bob, "delete_user_record", m.DeleteUserRecordParams(bob.qs_uid))
            for events in (events_a, events_b):
                with trio.fail_after(10), pytest.raises(WebsocketRefused) as e:
                    await events.next_event()
                assert (e.value.code, e.value.reason) == (4410, "client_record_deleted")
            assert hs.qs.notifier.listeners(alice.qs_cid) == hs.qs.notifier.listeners(bob.qs_cid) == 0
            # carol's socket is untouched and still wakes up
            key = await qs.queue_config_key("a.example")
            await hs.qs.local_enqueue(message([carol.client_queue_config(key)], b"still here"))
            with trio.fail_after(10):
                assert isinstance(await events_c.next_event(), m.WsQueueUpdate)
