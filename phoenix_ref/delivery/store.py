"""The DS store (``spec/delivery_service.md#ds-state``), SQLite.

Tables:

* ``ds_groups`` — the ``GroupStateDbEntry`` of each group: the sealed state
  (:mod:`.group_state`), the month of last activity (``#activity-times``:
  month and year only, as ``year * 12 + month - 1``) and the Queue ID
  encryption key. Nothing else of a group is in plaintext.
* ``ds_deleted_queues`` — the entry's ``deleted_queues``: configs the QS
  reported deleted, each sealed to the group's Queue ID key (decision A2).
* ``ds_placeholders`` — group ids handed out by *request group id* and not
  yet created, with the hour they were handed out (decision A22).

Expiry (``spec/general_concepts/state_expiration.md``; the homeserver's
sweeper calls :meth:`DsStore.expire_groups` and
:meth:`DsStore.expire_placeholders`) works on these plaintext columns only:
the DS holds no EAR key at rest. What expires inside a state (past states,
inactive members) is dealt with when a member's request opens it
(``core.py``).
* ``ds_outbox`` — fan-outs written with the state that caused them and not
  yet taken by the local QS (decision A40), sealed with the homeserver's
  at-rest key (:class:`~phoenix_ref.federation.outbound_crypto.OutboundKeys`).

The DS signing key lives in the keystore. ``reads`` and ``writes`` count the
read units and write transactions, for the benchmark.
"""

from __future__ import annotations

import datetime
import sqlite3
from dataclasses import dataclass
from typing import Sequence

from ..codec import decode, encode
from ..errors import NotFound
from ..federation.outbound_crypto import OutboundKeys
from ..ids import GroupId
from ..queuing.messages import FanOutMessage
from ..storage import SqliteStore, purge_deleted
from .core import GroupRow, Outcome

__all__ = ["DsStore", "OutboxEntry", "month_of", "expired_before_month", "PLACEHOLDER_HOURS"]

_OUTBOX = "ds outbox"
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
#: A placeholder lives this many hours (decision A22).
PLACEHOLDER_HOURS = 24


def month_of(now_ms: int) -> int:
    """``#activity-times``: a timestamp with only the month and the year."""
    d = datetime.datetime.fromtimestamp(now_ms / 1000, datetime.timezone.utc)
    return d.year * 12 + d.month - 1


def expired_before_month(now_ms: int, expiry_days: int) -> int:
    """Groups whose stored month is below this one have had no commit for
    more than ``expiry_days`` at ``now_ms``.

    A stored month says only that the last commit fell somewhere in it, at
    the latest on its last millisecond; a group is old enough only when even
    that latest moment lies ``expiry_days`` back, i.e. when the month of
    ``now - expiry_days`` is a later one (decision A18). So no group goes
    early, and one goes at most a month (plus a sweep interval) late."""
    return month_of(now_ms - expiry_days * DAY_MS)


@dataclass
class OutboxEntry:
    seq: int
    message_id: bytes
    message: FanOutMessage


class DsStore(SqliteStore):
    SCHEMA = """
    CREATE TABLE IF NOT EXISTS ds_groups (
        group_id BLOB PRIMARY KEY,
        state BLOB NOT NULL,
        month INTEGER NOT NULL,
        queue_id_key BLOB NOT NULL
    );
    CREATE TABLE IF NOT EXISTS ds_deleted_queues (
        id INTEGER PRIMARY KEY,
        group_id BLOB NOT NULL,
        sealed BLOB NOT NULL
    );
    CREATE INDEX IF NOT EXISTS ds_deleted_queues_group ON ds_deleted_queues (group_id);
    CREATE TABLE IF NOT EXISTS ds_placeholders (
        group_id BLOB PRIMARY KEY,
        created_hour INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS ds_outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        message_id BLOB NOT NULL,
        key_id BLOB NOT NULL,
        sealed BLOB NOT NULL
    );
    """

    def __init__(self, path, outbox_keys: OutboundKeys):
        super().__init__(path)
        self.outbox_keys = outbox_keys
        self.reads = 0
        self.writes = 0

    # --- groups ----------------------------------------------------------------------------

    def read_group(self, group_id: GroupId) -> GroupRow | None:
        """The group's row and its deleted-queue rows (one read unit)."""
        gid = encode(group_id)
        self.reads += 1
        with self.lock:
            row = self.conn.execute("SELECT state, queue_id_key FROM ds_groups WHERE group_id=?", (gid,)).fetchone()
            if row is None:
                return None
            deleted = self.conn.execute("SELECT id, sealed FROM ds_deleted_queues WHERE group_id=? ORDER BY id",
                                        (gid,)).fetchall()
        return GroupRow(bytes(row[0]), bytes(row[1]), [(i, bytes(s)) for i, s in deleted])

    def has_placeholder(self, group_id: GroupId) -> bool:
        self.reads += 1
        with self.lock:
            return self.conn.execute("SELECT 1 FROM ds_placeholders WHERE group_id=?",
                                     (encode(group_id),)).fetchone() is not None

    def add_placeholder(self, group_id: GroupId, now_ms: int) -> bool:
        """Enter a placeholder; False if the id is taken (placeholder or group)."""
        gid = encode(group_id)
        with self.transaction() as db:
            self.writes += 1
            if db.execute("SELECT 1 FROM ds_groups WHERE group_id=?", (gid,)).fetchone():
                return False
            return db.execute("INSERT OR IGNORE INTO ds_placeholders VALUES (?,?)",
                              (gid, now_ms // HOUR_MS)).rowcount == 1

    # --- expiry (the sweeper; decisions A18, A22) -----------------------------------------------

    def expire_groups(self, now_ms: int, expiry_days: int) -> int:
        """Delete the groups without a commit for more than ``expiry_days``
        (:func:`expired_before_month`) with their deleted-queue rows, in one
        transaction; returns how many groups went. Their outbox entries stay
        (decision A18), and the freed rows are wiped from the files."""
        before = expired_before_month(now_ms, expiry_days)
        with self.transaction() as db:
            self.writes += 1
            db.execute("DELETE FROM ds_deleted_queues WHERE group_id IN "
                       "(SELECT group_id FROM ds_groups WHERE month < ?)", (before,))
            n = db.execute("DELETE FROM ds_groups WHERE month < ?", (before,)).rowcount
        if n:   # metadata minimalism: no old page of the group stays in the log
            purge_deleted(self.conn, self.lock)
        return n

    def expire_placeholders(self, now_ms: int) -> int:
        """Delete the placeholders handed out more than ``PLACEHOLDER_HOURS``
        ago (decision A22). Only the hour is stored, so one counts from the
        end of its hour: a placeholder goes between 24 and 25 hours after it
        was handed out, never earlier. Returns how many went."""
        with self.transaction() as db:
            self.writes += 1
            return db.execute("DELETE FROM ds_placeholders WHERE created_hour + ? <= ?",
                              (PLACEHOLDER_HOURS + 1, now_ms // HOUR_MS)).rowcount

    def store_outcome(self, group_id: GroupId, outcome: Outcome, message_ids: list[bytes], now_ms: int,
                      *, created: bool = False, outbox_done: Sequence[int] = ()) -> list[int]:
        """Write what a request did in one transaction: the state (or the
        group's deletion), the consumed deleted-queue rows, the placeholder
        a creation used, and the outbox entries. Returns their sequence numbers.
        ``outbox_done``: earlier entries the QS took, deleted in the same
        transaction (the DS service defers their deletion to the next write)."""
        gid = encode(group_id)
        with self.transaction() as db:
            self.writes += 1
            if outbox_done:
                db.executemany("DELETE FROM ds_outbox WHERE seq=?", [(s,) for s in outbox_done])
            if outcome.delete_group:
                for table in ("ds_groups", "ds_deleted_queues", "ds_placeholders"):
                    db.execute(f"DELETE FROM {table} WHERE group_id=?", (gid,))
            elif outcome.sealed_state is not None:
                # The sweeper may have deleted the placeholder or the group
                # since the request read it: then nothing is written and the
                # request gets the answer it would have got a moment later.
                if created:
                    if db.execute("DELETE FROM ds_placeholders WHERE group_id=?", (gid,)).rowcount != 1:
                        raise NotFound(f"no placeholder for group id {group_id}: it expired",
                                       code="unknown_group_id")
                    db.execute("INSERT INTO ds_groups VALUES (?,?,?,?)",
                               (gid, outcome.sealed_state, month_of(now_ms), outcome.queue_id_key))
                elif db.execute("UPDATE ds_groups SET state=?, month=? WHERE group_id=?",
                                (outcome.sealed_state, month_of(now_ms), gid)).rowcount != 1:
                    raise NotFound(f"no group {group_id} on this DS: it expired", code="unknown_group")
            db.executemany("DELETE FROM ds_deleted_queues WHERE id=?", [(i,) for i in outcome.consumed_deleted])
            return [self._append_outbox(db, mid, fo) for mid, fo in zip(message_ids, outcome.fan_outs)]

    def add_deleted_queues(self, rows: list[tuple[GroupId, bytes]]) -> None:
        """Deleted-queue rows for groups that still exist (decision A30)."""
        with self.transaction() as db:
            self.writes += 1
            for group_id, sealed in rows:
                db.execute("INSERT INTO ds_deleted_queues (group_id, sealed) SELECT ?, ? "
                           "WHERE EXISTS (SELECT 1 FROM ds_groups WHERE group_id=?)",
                           (encode(group_id), sealed, encode(group_id)))

    def state_sizes(self) -> list[int]:
        """The lengths of the stored states (for the padding bucket, A19)."""
        with self.lock:
            return [n for (n,) in self.conn.execute("SELECT length(state) FROM ds_groups")]

    def queue_id_keys(self, group_ids: list[GroupId]) -> dict[GroupId, bytes]:
        with self.lock:
            out = {}
            for gid in group_ids:
                row = self.conn.execute("SELECT queue_id_key FROM ds_groups WHERE group_id=?",
                                        (encode(gid),)).fetchone()
                if row is not None:
                    out[gid] = bytes(row[0])
            return out

    # --- outbox (decision A40) ------------------------------------------------------------------

    def _append_outbox(self, db: sqlite3.Connection, message_id: bytes, message: FanOutMessage) -> int:
        key_id, sealed = self.outbox_keys.seal(_OUTBOX, message_id, encode(message))
        return db.execute("INSERT INTO ds_outbox (message_id, key_id, sealed) VALUES (?,?,?)",
                          (message_id, key_id, sealed)).lastrowid

    def outbox(self) -> list[OutboxEntry]:
        """Every entry not yet taken by the QS, oldest first."""
        with self.lock:
            rows = self.conn.execute("SELECT seq, message_id, key_id, sealed FROM ds_outbox ORDER BY seq").fetchall()
        return [OutboxEntry(seq, bytes(mid), decode(FanOutMessage, self.outbox_keys.open(kid, _OUTBOX, bytes(mid),
                                                                                          bytes(sealed))))
                for seq, mid, kid, sealed in rows]

    def outbox_done(self, seqs: list[int], deleted: list[tuple[GroupId, bytes]]) -> None:
        """The QS took these entries; what it reported deleted is kept."""
        with self.transaction() as db:
            self.writes += 1
            db.executemany("DELETE FROM ds_outbox WHERE seq=?", [(s,) for s in seqs])
            for group_id, sealed in deleted:
                db.execute("INSERT INTO ds_deleted_queues (group_id, sealed) SELECT ?, ? "
                           "WHERE EXISTS (SELECT 1 FROM ds_groups WHERE group_id=?)",
                           (encode(group_id), sealed, encode(group_id)))
