"""The QS store (phoenix_ref/queuing/store.py): one SQLite database, one
transaction per fan-out.

``spec/queuing_service.md#local-enqueue-message``: a FanOutMessage is
enqueued for local clients and forwarded once to every other homeserver. The
local queue writes and the outbound messages are one transaction, so a crash
(or any failure) between them cannot split a fan-out: either every local
queue and every remote domain get the message, or none does and the DS's
retry starts from a clean state.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from phoenix_ref.codec import encode
from phoenix_ref.ids import Fqdn, GroupId
from phoenix_ref.queuing.messages import MESSAGE_ID_LEN, ClientQueueConfig
from phoenix_ref.queuing.records import LOCAL_SOURCE
from phoenix_ref.queuing.store import QsStore
from phoenix_ref.spec_plugin import spec
from phoenix_ref.storage import NestedUnitFailed

from tests.qs_helpers import NOW, OUTBOUND_KEYS, Client, fan_out, make_core

LOCAL_ENQUEUE = "spec/queuing_service.md#local-enqueue-message"
GROUP = GroupId.random("a.example")
REPO = Path(__file__).resolve().parent.parent


def remote_config() -> ClientQueueConfig:
    """A config of another homeserver: the sending QS forwards it unopened."""
    return ClientQueueConfig(Fqdn("b.example"), os.urandom(120))


def counts(path) -> tuple[int, int, int]:
    """(stored queue messages, pending outbound messages, taken message ids) in a QS database file."""
    with sqlite3.connect(path) as db:
        return tuple(db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                     for t in ("qs_messages", "outbound_queue", "qs_message_ids"))


@spec(LOCAL_ENQUEUE, "informative")
def test_failure_between_queue_writes_and_outbound_append_commits_nothing(tmp_path):
    core = make_core("a.example", sqlite_dir=tmp_path)
    alice, bob = Client.register(core), Client.register(core)
    queue = encode(alice.qs_cid)
    before = core.queues.info(queue)
    message = fan_out([alice.client_queue_config(), bob.client_queue_config(), remote_config()], GROUP, b"m1")

    def crash(*args):
        assert core.queues.info(queue).next_sequence_number == before.next_sequence_number + 1  # written …
        raise RuntimeError("crash between the two writes")                                     # … not committed

    core.outbound.append = crash
    with pytest.raises(RuntimeError):
        core.local_enqueue(message, NOW)
    assert core.queues.info(queue) == before
    assert core.outbound.destinations() == []

    del core.outbound.append   # the DS hands the message over again: all of it happens, once
    result = core.local_enqueue(message, NOW)
    assert len(result.enqueued) == 2 and [str(d) for d in result.forwarded] == ["b.example"]
    assert core.queues.info(queue).next_sequence_number == before.next_sequence_number + 1
    assert core.outbound.head("b.example") is not None


@spec(LOCAL_ENQUEUE, "informative")
def test_failure_in_a_later_queue_write_rolls_back_the_earlier_ones(tmp_path):
    core = make_core("a.example", sqlite_dir=tmp_path)
    clients = [Client.register(core) for _ in range(3)]
    before = [core.queues.info(encode(c.qs_cid)) for c in clients]
    step = core.queues._enqueue_step
    built = []

    def failing_step(plaintext, now_ms):
        build = step(plaintext, now_ms)

        def third_fails(material):
            built.append(material)
            if len(built) == 3:
                raise RuntimeError("crash in the middle of the fan-out")
            return build(material)
        return third_fails

    core.queues._enqueue_step = failing_step
    with pytest.raises(RuntimeError):
        core.local_enqueue(fan_out([c.client_queue_config() for c in clients] + [remote_config()], GROUP), NOW)
    assert [core.queues.info(encode(c.qs_cid)) for c in clients] == before
    assert core.outbound.destinations() == []


@spec(LOCAL_ENQUEUE, "informative")
@spec("spec/delivery_service.md#message-distribution", "informative")
@pytest.mark.parametrize("fails", ["outbound.append", "records.remember_message_id"])
def test_a_failed_hand_over_leaves_no_message_id_and_its_retry_does_everything_once(tmp_path, monkeypatch, fails):
    """Decision A40: the message id of a hand-over is remembered in the
    fan-out's transaction. A failure after the queue writes (the outbound
    append, or remembering the id itself) leaves neither the fan-out nor
    the id; the DS's retry then does the whole fan-out, and a third
    hand-over nothing."""
    core = make_core("a.example", sqlite_dir=tmp_path)
    alice = Client.register(core)
    queue = encode(alice.qs_cid)
    before = core.queues.info(queue)
    message = fan_out([alice.client_queue_config(), remote_config()], GROUP, b"m1")
    message_id = os.urandom(MESSAGE_ID_LEN)
    store, name = fails.split(".")

    def broken(*args):
        assert core.queues.info(queue).next_sequence_number == before.next_sequence_number + 1  # written …
        raise RuntimeError(f"{name} fails")                                                    # … not committed

    monkeypatch.setattr(getattr(core, store), name, broken)
    with pytest.raises(RuntimeError):
        core.local_enqueue(message, NOW, message_id)
    monkeypatch.undo()
    assert core.queues.info(queue) == before and core.outbound.destinations() == []
    assert core.records.message_answer(LOCAL_SOURCE, message_id, NOW) is None
    assert counts(tmp_path / "qs-a.example.sqlite3") == (1, 0, 0)   # alice's initial reset message only

    retry = core.local_enqueue(message, NOW, message_id)
    assert not retry.duplicate and retry.enqueued == [alice.qs_cid] and retry.forwarded == [Fqdn("b.example")]
    again = core.local_enqueue(message, NOW, message_id)
    assert again.duplicate and again.enqueued == [] and again.forwarded == []
    assert core.queues.info(queue).next_sequence_number == before.next_sequence_number + 1
    item = core.outbound.head("b.example")
    assert core.outbound.remove("b.example", item.seq) is None   # one outbound message: the retry's


def test_a_remembered_message_id_survives_a_restart(tmp_path):
    """The DS hands its outbox over again when the homeserver restarts: the
    ids (and answers) of fan-outs done before are in the QS's file."""
    core = make_core("a.example", sqlite_dir=tmp_path)
    gone = Client.register(core)
    gone_cfg = gone.client_queue_config()
    core.records.delete_user(gone.qs_uid)
    message = fan_out([gone_cfg, remote_config()], GROUP)
    first = core.local_enqueue(message, NOW, b"i" * 16)
    core.records.close()
    reopened = make_core("a.example", sqlite_dir=tmp_path)
    reopened.keys, reopened.config_cache = core.keys, core.config_cache
    again = reopened.local_enqueue(message, NOW + 3_600_000, b"i" * 16)
    assert again.duplicate and again.forwarded == [] and again.queue_deleted == first.queue_deleted != []
    # the gone client's initial message (its queue outlived the record here), one outbound message, one id
    assert counts(tmp_path / "qs-a.example.sqlite3") == (1, 1, 1)


CRASHING_SENDER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, sys.argv[1])
    from tests.qs_helpers import NOW, Client, fan_out, make_core
    from tests.test_qs_store import GROUP, remote_config

    core = make_core("a.example", sqlite_dir=sys.argv[2])
    alice = Client.register(core)
    store, name = (core.records, "remember_message_id") if sys.argv[3] == "remembered" else (core.outbound, "append")
    write = getattr(store, name)

    def killed(*args):
        if sys.argv[3] != "before":
            write(*args)
        os.kill(os.getpid(), signal.SIGKILL)   # no cleanup, no rollback: like a power cut of the process

    setattr(store, name, killed)
    core.local_enqueue(fan_out([alice.client_queue_config(), remote_config()], GROUP), NOW, b"m" * 16)
    sys.exit("not killed")
""")


@spec(LOCAL_ENQUEUE, "informative")
@pytest.mark.parametrize("when", ["before", "after", "remembered"])
def test_sender_killed_during_a_fan_out_leaves_all_or_nothing(tmp_path, when):
    """A QS process killed with SIGKILL while it enqueues a fan-out the DS
    handed over with a message id (before or after its outbound append, or
    after it remembered the id; always before the commit): the database
    holds none of the fan-out — neither the local message nor the outbound
    one nor the id, so the DS's next hand-over does all of it."""
    proc = subprocess.run([sys.executable, "-c", CRASHING_SENDER, str(REPO), str(tmp_path), when],
                          capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    path = tmp_path / "qs-a.example.sqlite3"
    assert counts(path) == (1, 0, 0)   # alice's initial reset message only; nothing outbound, no id
    store = QsStore(path, OUTBOUND_KEYS)           # the file opens and works after the crash
    try:
        assert store.outbound.destinations() == []
    finally:
        store.close()


def test_qs_store_shares_one_connection(tmp_path):
    store = QsStore(tmp_path / "qs.sqlite3", OUTBOUND_KEYS)
    try:
        with store.transaction():   # the stores' units join one transaction
            store.outbound.append("b.example", b"\x01" * 16, b"payload", NOW)
        assert store.outbound.destinations() == ["b.example"]
        with pytest.raises(NestedUnitFailed):
            with store.transaction():
                store.outbound.append("c.example", b"\x02" * 16, b"payload", NOW)
                with pytest.raises(RuntimeError):
                    with store.transaction():   # a nested unit fails after writing …
                        store.outbound.append("d.example", b"\x03" * 16, b"payload", NOW)
                        raise RuntimeError("inner")
        assert store.outbound.destinations() == ["b.example"]   # … so none of the transaction commits
        with pytest.raises(RuntimeError):
            with store.transaction():
                store.outbound.append("d.example", b"\x03" * 16, b"payload", NOW)
                raise RuntimeError("outer")
        assert store.outbound.destinations() == ["b.example"]
    finally:
        store.close()
