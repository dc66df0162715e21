"""The expiry rules the sweeper runs (``spec/general_concepts/state_expiration.md``),
one service at a time, on their stores and cores: what goes, what stays,
and the races with requests that read a row the sweeper then deletes."""

from __future__ import annotations

import datetime
import random

import pytest
import trio

from phoenix_ref.authentication import messages as m
from phoenix_ref.client.as_client import AliasIdentity
from phoenix_ref.delivery.core import Outcome
from phoenix_ref.delivery.store import DsStore, expired_before_month, month_of
from phoenix_ref.errors import NotFound, Unauthorized
from phoenix_ref.federation import outbound_admin
from phoenix_ref.federation.outbound import (
    EXPIRED, BackoffPolicy, Delivered, MemoryOutboundStore, OutboundSender, SqliteOutboundStore, expired_rejection,
)
from phoenix_ref.federation.outbound_crypto import OutboundKeys
from phoenix_ref.ids import Fqdn, GroupId
from phoenix_ref.spec_plugin import spec

from .as_fixtures import NOW, build

DAY = 86_400_000
HOUR = 3_600_000
KEYS = OutboundKeys([b"\x01" * 32])
A = Fqdn("a.example")


def utc(*args) -> int:
    return int(datetime.datetime(*args, tzinfo=datetime.timezone.utc).timestamp() * 1000)


# --- DS: groups (decision A18) and placeholders (A22) ---------------------------------------------

@pytest.fixture
def ds(tmp_path):
    store = DsStore(tmp_path / "ds.sqlite3", KEYS)
    yield store
    store.close()


def _group(ds: DsStore, now_ms: int) -> GroupId:
    gid = GroupId.random(A)
    assert ds.add_placeholder(gid, now_ms)
    ds.store_outcome(gid, Outcome(sealed_state=b"sealed", queue_id_key=b"k" * 32), [], now_ms, created=True)
    return gid


def test_a_month_is_expired_only_once_its_last_day_lies_the_expiry_back():
    """The stored month says the last commit was at the latest on its last
    millisecond; the group goes only when even that is ``expiry_days`` old."""
    jan = month_of(utc(2026, 1, 15))
    # January 2026 ends at Feb 1 00:00; 180 days later is Jul 31 00:00
    assert expired_before_month(utc(2026, 7, 30, 23, 59), 180) <= jan      # not yet
    assert expired_before_month(utc(2026, 7, 31, 0, 0), 180) == jan + 1     # now January is old enough
    assert expired_before_month(utc(2026, 2, 2), 1) == jan + 1              # Feb 1 00:00 + 1 day has passed


def test_groups_without_a_commit_for_the_expiry_go_with_their_deleted_queue_rows(ds):
    t0 = utc(2026, 1, 15)
    old, recent = _group(ds, t0), _group(ds, utc(2026, 2, 10))
    ds.add_deleted_queues([(old, b"sealed config"), (recent, b"another")])
    assert ds.expire_groups(utc(2026, 2, 1, 12), 1) == 0                    # January ended half a day ago
    assert ds.expire_groups(utc(2026, 2, 2, 1), 1) == 1
    assert ds.read_group(old) is None
    assert ds.read_group(recent).deleted_queues == [(2, b"another")]        # the live group is untouched
    with ds.lock:
        assert ds.conn.execute("SELECT COUNT(*) FROM ds_deleted_queues").fetchone() == (1,)


def test_a_request_on_a_group_the_sweeper_deleted_writes_nothing(ds):
    """A request read the row, then the sweeper deleted the group: its
    write finds no row and answers 404 unknown_group instead of reviving
    it; no outbox entry is left behind (the transaction rolls back)."""
    from phoenix_ref.queuing.messages import FanOutMessage
    gid = _group(ds, utc(2026, 1, 15))
    assert ds.expire_groups(utc(2026, 3, 1), 1) == 1
    outcome = Outcome(sealed_state=b"new", fan_outs=[FanOutMessage([], b"\x02")])
    with pytest.raises(NotFound) as e:
        ds.store_outcome(gid, outcome, [b"m" * 16], utc(2026, 3, 1))
    assert e.value.code == "unknown_group" and ds.read_group(gid) is None and ds.outbox() == []


def test_placeholders_go_between_24_and_25_hours_after_they_were_handed_out(ds):
    t0 = utc(2026, 1, 15, 10, 30)
    gid, later = GroupId.random(A), GroupId.random(A)
    assert ds.add_placeholder(gid, t0) and ds.add_placeholder(later, t0 + 2 * HOUR)
    assert ds.expire_placeholders(t0 + 24 * HOUR) == 0                      # 24 h: kept
    assert ds.expire_placeholders(utc(2026, 1, 16, 11)) == 1                # 24.5 h, its hour ended 24 h ago
    assert not ds.has_placeholder(gid) and ds.has_placeholder(later)


def test_creating_a_group_whose_placeholder_the_sweeper_deleted_meanwhile_fails(ds):
    gid = GroupId.random(A)
    t0 = utc(2026, 1, 15, 10)
    assert ds.add_placeholder(gid, t0)
    assert ds.has_placeholder(gid)                                          # the request checked it…
    assert ds.expire_placeholders(t0 + 26 * HOUR) == 1                      # …then the sweeper ran
    with pytest.raises(NotFound) as e:
        ds.store_outcome(gid, Outcome(sealed_state=b"s", queue_id_key=b"k" * 32), [], t0 + 26 * HOUR, created=True)
    assert e.value.code == "unknown_group_id" and ds.read_group(gid) is None


# --- AS ---------------------------------------------------------------------------------------------

@pytest.fixture
def asu(tmp_path):
    a = build("a.example", tmp_path / "as.sqlite3")
    yield a
    a.close()


@spec("spec/general_concepts/state_expiration.md#expiration-of-clients", "informative")
def test_client_entries_with_expired_credentials_are_removed_with_their_user(asu):
    """"The AS enforces this by removing expired client credentials": the
    entry goes as in account deletion (packages, queue, and the user entry
    with its last client); a client whose credential is valid stays."""
    short = asu.register(validity_ms=DAY)
    other = asu.register()
    assert asu.core.expire_credentials(NOW + DAY) == []                     # not_after is inclusive
    assert asu.core.expire_credentials(NOW + DAY + 1) == [short.client_id]
    assert asu.core.expire_credentials(NOW + DAY + 1) == []
    with pytest.raises(NotFound):
        asu.core.user_profile(m.UserProfileParams(short.user_id), NOW + DAY + 1)
    with pytest.raises(NotFound):
        asu.core.enqueue_message(m.EnqueueMessageParams(short.client_id, b"x"), NOW + DAY + 1)
    asu.core.user_profile(m.UserProfileParams(other.user_id), NOW + DAY + 1)
    asu.core.enqueue_message(m.EnqueueMessageParams(other.client_id, b"x"), NOW + DAY + 1)


def test_expired_connection_packages_are_deleted_and_live_ones_kept(asu):
    ident = asu.register(packages=0)
    asu.core.upload_connection_packages(ident.upload_packages(1, NOW, lifetime_ms=DAY), NOW)
    asu.core.upload_connection_packages(ident.upload_packages(1, NOW, lifetime_ms=10 * DAY), NOW)
    assert asu.core.expire_connection_packages(NOW + DAY) == 0
    assert asu.core.expire_connection_packages(NOW + DAY + 1) == 1
    with asu.core.accounts.lock:
        assert asu.core.accounts.connection.execute("SELECT COUNT(*) FROM connection_packages").fetchone() == (1,)
    asu.core.user_connection_package(m.UserClientsParams(ident.user_id), NOW + DAY + 1)


def test_alias_entries_whose_queue_nobody_fetched_from_go_after_their_age(asu):
    quiet, reg_quiet = AliasIdentity.new(asu.domain, "quiet")
    busy, reg_busy = AliasIdentity.new(asu.domain, "busy")
    asu.core.register_alias(reg_quiet, NOW)
    asu.core.register_alias(reg_busy, NOW)
    assert asu.core.config.max_alias_age_ms == 90 * DAY
    asu.core.dequeue_alias_messages(busy.dequeue(NOW + 60 * DAY), NOW + 60 * DAY)
    assert asu.core.prune_inactive_aliases(NOW + 80 * DAY) == []
    assert asu.core.prune_inactive_aliases(NOW + 130 * DAY) == [quiet.alias]
    with pytest.raises(NotFound):
        asu.core.enqueue_alias_message(m.EnqueueAliasMessageParams(quiet.alias, b"x"), NOW + 130 * DAY)
    asu.core.enqueue_alias_message(m.EnqueueAliasMessageParams(busy.alias, b"x"), NOW + 130 * DAY)
    assert asu.core.prune_inactive(NOW + 130 * DAY) == []            # client pruning leaves aliases alone
    asu.core.dequeue_alias_messages(busy.dequeue(NOW + 130 * DAY), NOW + 130 * DAY)


def test_pending_registrations_that_ran_out_are_dropped(asu):
    from phoenix_ref.client.as_client import Registration
    reg, init = Registration.start(asu.domain, b"pw", asu.secrets.intermediate.fingerprint(), NOW)
    asu.core.init_user_registration(init, NOW)
    assert len(asu.core.ephemeral) == 1
    assert asu.core.expire_pending(NOW + asu.core.config.ephemeral_ttl_ms - 1) == 0
    assert asu.core.expire_pending(NOW + asu.core.config.ephemeral_ttl_ms) == 1
    assert len(asu.core.ephemeral) == 0


# --- QS outbound: the federation age limit --------------------------------------------------------

@pytest.fixture(params=["memory", "sqlite"])
def outbound(request, tmp_path):
    store = MemoryOutboundStore() if request.param == "memory" else \
        SqliteOutboundStore(str(tmp_path / "qs.sqlite3"), keys=KEYS)
    yield store
    if request.param == "sqlite":
        store.close()


def _dead(store):
    if isinstance(store, MemoryOutboundStore):
        return store.dead_letters
    return [d for dest in ("b.example", "c.example") for d in store.recent_dead_letters(dest, 10)]


def test_old_outbound_items_move_to_the_dead_letters_but_not_a_held_head(outbound):
    b1 = outbound.append("b.example", b"\x01" * 16, b"p1", 1000)
    outbound.append("b.example", b"\x02" * 16, b"p2", 2000)
    outbound.append("b.example", b"\x03" * 16, b"p3", 9000)
    outbound.append("c.example", b"\x04" * 16, b"p4", 1000)
    rejection = expired_rejection(7000)
    assert outbound.expire(5000, rejection, 9999, keep={"b.example": (b1,)}) == 2   # p2, p4; p1 is held
    assert outbound.head("b.example").payload == b"p1"
    assert outbound.remove("b.example", b1).payload == b"p3"
    assert outbound.destinations() == ["b.example"]
    dead = sorted(_dead(outbound), key=lambda d: d.message_id)
    assert [(d.message_id, d.status, d.code, d.rejected_ms) for d in dead] == \
        [(b"\x02" * 16, 0, EXPIRED, 9999), (b"\x04" * 16, 0, EXPIRED, 9999)]
    assert "not delivered within 7 s" in dead[0].message


def test_the_operator_report_shows_expired_messages(tmp_path):
    store = SqliteOutboundStore(str(tmp_path / "qs.sqlite3"), keys=KEYS)
    store.append("b.example", b"\x07" * 16, b"p", 1)
    store.expire(2, expired_rejection(7 * DAY), 1_767_225_600_000, keep={})
    store.close()
    out = outbound_admin.run(tmp_path)
    assert "b.example: 0 pending, sending, 1 dead letters" in out
    assert "dead letter " + "07" * 16 + " expired 2026-01-01 00:00:00 UTC: not delivered within 604800 s" in out


async def test_the_sender_dead_letters_a_head_that_grew_too_old_and_goes_on(autojump_clock):
    """A destination that never answers: its head is retried with backoff
    until it is older than the limit, then it moves to the dead letters and
    is never sent again; the message behind it is then delivered."""
    store = MemoryOutboundStore()
    sent = []
    up = trio.Event()

    async def send(item):
        sent.append((trio.current_time(), item.payload))
        if not up.is_set():
            raise OSError("unreachable")
        return Delivered()

    now_ms = lambda: int(trio.current_time() * 1000)   # noqa: E731
    sender = OutboundSender(store, send, now_ms=now_ms, max_age_ms=60_000, rng=random.Random(1))
    async with trio.open_nursery() as n:
        await n.start(sender.run)
        await sender.submit("b.example", b"\x01" * 16, b"old", now_ms())
        await trio.sleep(50)
        await sender.submit("b.example", b"\x02" * 16, b"new", now_ms())
        with trio.fail_after(3600):                                      # mock time: fails, never hangs
            while not store.dead_letters:
                await trio.sleep(1)
        up.set()
        while store.destinations():
            await trio.sleep(1)
        n.cancel_scope.cancel()
    [dead] = store.dead_letters
    assert dead.message_id == b"\x01" * 16 and dead.code == EXPIRED
    assert all(t <= 60 for t, p in sent if p == b"old")                  # never sent once too old
    assert sent[-1][1] == b"new" and sender.stats["expired"] == 1


async def test_the_sweeper_never_expires_the_head_a_sender_is_sending(autojump_clock):
    """The sender holds its head before it checks the age; the sweeper
    spares held heads, so a message in flight is never also a dead letter."""
    store = MemoryOutboundStore()
    in_flight, release = trio.Event(), trio.Event()

    async def send(item):
        in_flight.set()
        await release.wait()
        return Delivered()

    now_ms = lambda: int(trio.current_time() * 1000)   # noqa: E731
    sender = OutboundSender(store, send, now_ms=now_ms, max_age_ms=60_000,
                            policy=BackoffPolicy(attempt_timeout=3600))   # one long attempt
    async with trio.open_nursery() as n:
        await n.start(sender.run)
        await sender.submit("b.example", b"\x01" * 16, b"head", now_ms())
        await sender.submit("b.example", b"\x02" * 16, b"behind", now_ms())
        await in_flight.wait()
        await trio.sleep(120)                                           # both are now too old
        now = now_ms()
        assert store.expire(now - 60_000, expired_rejection(60_000), now, sender.held()) == 1
        release.set()
        while store.destinations():
            await trio.sleep(1)
        n.cancel_scope.cancel()
    assert [d.message_id for d in store.dead_letters] == [b"\x02" * 16]   # the one behind, not the head


async def test_a_parked_destination_holds_nothing_so_the_sweeper_expires_its_queue(autojump_clock):
    """A parked sender sends nothing until unparked: its whole queue,
    head included, is the sweeper's to expire."""
    store = MemoryOutboundStore()

    async def send(item):
        raise KeyError("a bug")                                         # a programming error parks

    now_ms = lambda: int(trio.current_time() * 1000)   # noqa: E731
    sender = OutboundSender(store, send, now_ms=now_ms, max_age_ms=60_000)
    async with trio.open_nursery() as n:
        await n.start(sender.run)
        await sender.submit("b.example", b"\x01" * 16, b"p1", now_ms())
        await sender.submit("b.example", b"\x02" * 16, b"p2", now_ms())
        with trio.fail_after(3600):
            while not sender.is_parked("b.example"):
                await trio.sleep(1)
        assert sender.held() == {}
        await trio.sleep(120)
        now = now_ms()
        assert store.expire(now - 60_000, expired_rejection(60_000), now, sender.held()) == 2
        n.cancel_scope.cancel()
    assert store.destinations() == [] and len(store.dead_letters) == 2
