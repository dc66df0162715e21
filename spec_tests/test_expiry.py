"""State expiration, black-box (``spec/general_concepts/state_expiration.md``).

"All pieces of state on the homeserver either have an explicit expiration
date, or a timestamp that indicates the last time of use", and each kind
goes after its configured age. Every homeserver here sweeps every
``FAST.sweep_interval_s`` seconds of real time; a test moves the shared
FixedClock past a limit, lets the sweeper run (:func:`swept` only waits for
it, it triggers nothing) and then looks through the endpoints that the
expired state is gone and the live state is untouched.
"""

from __future__ import annotations

import datetime

import pytest
import trio

from phoenix_ref.client.messenger import Messenger
from phoenix_ref.client.session import ClientSession
from phoenix_ref.config import Limits
from phoenix_ref.errors import NotFound, ProtocolError
from phoenix_ref.federation import outbound_admin
from phoenix_ref.queuing.messages import AddPackageParams
from phoenix_ref.spec_plugin import spec
from phoenix_ref.testing import Deployment

from .qs_http import message, qs_client, read_all

#: beyond HTTPS: the homeservers' shared clock and the sweeper's round counter; hs1's outbound store
pytestmark = pytest.mark.needs_control("the homeservers' shared clock and the sweeper's round counter; hs1's outbound store")

A = "a.example"
DAY_MS = 86_400_000
HOUR_MS = 3_600_000
EXPIRATION = "spec/general_concepts/state_expiration.md#"
FAST = Limits(sweep_interval_s=0.05, ds_group_expiry_days=1, federation_outbound_max_age_s=60,
              federation_retry_base_s=0.05, federation_retry_max_s=0.3)


async def swept(d: Deployment, name: str = "hs1", rounds: int = 2) -> None:
    """Wait until ``name``'s sweeper finished ``rounds`` more rounds, so at
    least one whole round began after the clock last moved."""
    sweeper = d[name].hs.sweeper
    target = sweeper.rounds + rounds
    with trio.fail_after(30):
        while sweeper.rounds < target:
            await trio.sleep(0.02)


async def refused(call) -> ProtocolError:
    with pytest.raises(ProtocolError) as e:
        await call
    return e.value


@spec(EXPIRATION + "expiration-of-clients", "informative")
async def test_an_expired_client_credential_removes_its_client_entry(deployment_mode):
    """"The AS enforces this by removing expired client credentials": the
    client entry goes as in account deletion — the user entry with its last
    client — while a client with a valid credential stays."""
    async with Deployment(deployment_mode, ["hs1"], limits=FAST) as d, d.client() as http:
        short = await ClientSession.register(http, A, clock=d.clock, credential_validity_ms=DAY_MS)
        other = await ClientSession.register(http, A, clock=d.clock)
        await swept(d)
        assert await other.profile(short.user_id) == b""                # not expired yet
        d.clock.advance(DAY_MS + 1000)
        await swept(d)
        assert (await refused(other.profile(short.user_id))).code == "unknown_user"
        assert (await refused(other.connection_package(short.user_id))).code == "unknown_user"
        assert (await refused(short.update_profile(b"x"))).status == 401
        await other.update_profile(b"still here")
        assert await other.profile(other.user_id) == b"still here"


@spec(EXPIRATION + "state-expiration", "MUST")
@spec("spec/authentication_service.md#get-user-id-connection-package", "informative")
async def test_an_expired_connection_package_is_not_handed_out(deployment_mode):
    async with Deployment(deployment_mode, ["hs1"], limits=FAST) as d, d.client() as http:
        owner = await ClientSession.register(http, A, clock=d.clock, connection_packages=0)
        await owner.upload_connection_packages(1, lifetime_ms=DAY_MS)
        peer = await ClientSession.register(http, A, clock=d.clock)
        await peer.connection_package(owner.user_id)                    # the last one is kept: handed out again
        d.clock.advance(2 * DAY_MS)
        await swept(d)
        assert (await refused(peer.connection_package(owner.user_id))).code == "no_connection_package"
        await owner.upload_connection_packages(1)
        package = await peer.connection_package(owner.user_id)
        assert package.payload.lifetime.is_valid_at(d.clock.now_ms())


@spec(EXPIRATION + "state-expiration", "MUST")
@spec("spec/queuing_service.md#get-addpackage", "informative")
async def test_an_expired_keypackage_is_not_handed_out(deployment_mode):
    """KeyPackages "ha[ve] to be rotated in time": once its lifetime ended
    the QS hands it out no more — a client with no live one is left out of
    the answer — and a fresh publication is handed out again. The sweeper
    sweeps only at start here: the answer itself must skip the expired ones
    (the sweeper deletes them later, tests/test_qs_records.py)."""
    async with Deployment(deployment_mode, ["hs1"], limits=Limits(sweep_interval_s=3600)) as d, \
            d.client() as http:
        alice = await Messenger.register(http, A, clock=d.clock)
        bob = await Messenger.register(http, A, clock=d.clock)
        await bob.publish_add_packages(2, lifetime_seconds=DAY_MS // 1000)   # replaces the default ones
        token = bob.card().friendship_token
        assert len((await alice.qs.call(A, "get_add_package", AddPackageParams(token))).add_packages) == 1
        d.clock.advance(2 * DAY_MS)
        assert (await alice.qs.call(A, "get_add_package", AddPackageParams(token))).add_packages == []
        await bob.publish_add_packages(2)
        [package] = (await alice.qs.call(A, "get_add_package", AddPackageParams(token))).add_packages
        assert package.key_package.leaf_node.lifetime.not_after > d.clock.now_ms() // 1000


def _into_next_month(now_ms: int, extra_ms: int) -> int:
    """Milliseconds from ``now_ms`` to ``extra_ms`` past the start of the next UTC month."""
    d = datetime.datetime.fromtimestamp(now_ms / 1000, datetime.timezone.utc)
    nxt = datetime.datetime(d.year + d.month // 12, d.month % 12 + 1, 1, tzinfo=datetime.timezone.utc)
    return int(nxt.timestamp() * 1000) + extra_ms - now_ms


@spec(EXPIRATION + "expiration-of-groups", "informative")
async def test_a_group_without_commits_for_the_expiry_is_deleted(deployment_mode):
    """"A group state is deleted if no group member has updated their state
    in a pre-configured interval" (here one day; the DS keeps the month
    only, so the group goes once its month ended a day ago, decision A18):
    the old group answers 404 unknown_group, a fresh one works."""
    async with Deployment(deployment_mode, ["hs1"], limits=FAST) as d, d.client() as http:
        alice = await Messenger.register(http, A, clock=d.clock)
        old = await alice.create_group()
        d.clock.advance(_into_next_month(d.clock.now_ms(), 2 * HOUR_MS))   # the month of `old` ended 2 h ago
        await swept(d)
        await alice.send(old, b"one day is not over")                      # kept: not a day yet
        d.clock.advance(DAY_MS)
        fresh = await alice.create_group()
        await swept(d)
        with pytest.raises(NotFound) as e:
            await alice.send(old, b"too late")
        assert e.value.code == "unknown_group"
        await alice.send(fresh, b"this one is alive")


@spec("spec/delivery_service.md#request-group-id", "informative")
async def test_a_group_id_placeholder_expires_after_a_day(deployment_mode):
    """A requested group id is reserved for 24 hours (decision A22): within
    them the group can be created, after them creation answers 404
    unknown_group_id."""
    async with Deployment(deployment_mode, ["hs1"], limits=FAST) as d, d.client() as http:
        alice = await Messenger.register(http, A, clock=d.clock)
        soon, late = await alice.request_group_id(), await alice.request_group_id()
        d.clock.advance(23 * HOUR_MS)
        await swept(d)
        assert await alice.create_group(soon) == soon
        d.clock.advance(3 * HOUR_MS)
        await swept(d)
        with pytest.raises(NotFound) as e:
            await alice.create_group(late)
        assert e.value.code == "unknown_group_id"
        await alice.send(soon, b"created in time")


@spec(EXPIRATION + "state-expiration", "MUST")
@spec("spec/queuing_service.md#federated-qs-to-qs-communication", "MUST")
async def test_an_outbound_message_past_the_age_limit_becomes_a_dead_letter(deployment_mode):
    """A QS-to-QS message its destination did not take within
    ``federation_outbound_max_age_s`` is not sent any more: it moves to the
    dead letters, which ``phoenix-ref admin … outbound`` reports as expired.
    Later messages are delivered once the destination is back."""
    async with Deployment(deployment_mode, ["hs1", "hs2"], limits=FAST) as d:
        hs1 = d["hs1"].hs
        async with d.client() as http:
            qs = await qs_client(d, http, "b.example")
            bob = await qs.register("b.example")
            cfg = await qs.client_queue_config(bob)
        await d.set_down("hs2")
        with trio.fail_after(30):
            await hs1.qs.local_enqueue(message([cfg], b"stale"))
            while hs1.qs.outbound_sender.pending_failures("b.example") < 1:
                await trio.sleep(0.02)
            d.clock.advance(61_000)
            while "1 dead letters" not in outbound_admin.run(d["hs1"].config.data_dir):
                await trio.sleep(0.02)
        report = outbound_admin.run(d["hs1"].config.data_dir)
        assert "b.example: 0 pending" in report and " expired " in report and "not delivered within 60 s" in report
        await d.set_up("hs2")
        await hs1.qs.local_enqueue(message([cfg], b"fresh"))
        async with d.client() as http:
            qs = await qs_client(d, http, "b.example")
            assert await read_all(qs, bob, 1) == [b"fresh"]                  # the stale one never arrives
            assert await qs.receive(bob) == []
