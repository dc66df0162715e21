"""The QS store (``spec/queuing_service.md#qs-state``): one SQLite file.

The QS's key material (signing key, queue-config key pair) lives in the
keystore. Everything else the spec lists under *QS state* lives in the
homeserver's ``qs.sqlite3``, in three groups of tables:

* ``qs_users``, ``qs_clients``, ``qs_key_packages``, ``qs_blocklist``,
  ``qs_message_ids`` — records, KeyPackages, blocklists and the
  taken message ids (federated replays, the local DS's hand-overs)
  (:class:`~phoenix_ref.queuing.records.SqliteQsRecords`);
* ``qs_queues``, ``qs_ratchets``, ``qs_messages`` — the fan-out queues with
  their encryption key material (:class:`~phoenix_ref.queues.SqliteQueueStore`);
* ``outbound_queue`` (with ``outbound_dead_letters``, ``outbound_parked``) —
  the durable per-destination queues of QsToQsMessages ("QS-to-QS queues",
  :class:`~phoenix_ref.federation.outbound.SqliteOutboundStore`), their
  payloads sealed with the keystore's outbound secrets (``outbound_keys``),
  so the file alone does not reveal them.

All three share one connection (and its lock). Every store method is one
unit of work and runs in a worker thread (GUIDE §4); :meth:`QsStore.transaction`
groups several into one SQLite transaction. The QS core uses it so that a
fan-out's local queue writes and its outbound messages for other homeservers
commit together: after a crash either the whole fan-out happened or none of
it (``spec/queuing_service.md#local-enqueue-message``; a split would leave
local members and remote members with different views of the group).
"""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager
from pathlib import Path

import trio

from ..federation.outbound import SqliteOutboundStore
from ..federation.outbound_crypto import OutboundKeys
from ..queues import SqliteQueueStore
from ..storage import open_connection, purge_deleted, transaction
from .records import SqliteQsRecords

__all__ = ["QsStore"]


class QsStore:
    """The QS's SQLite file: ``records``, ``queue_store`` and ``outbound``
    over one connection."""

    def __init__(self, path: Path | str, outbound_keys: OutboundKeys):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self.connection = open_connection(self.path)
        self.records = SqliteQsRecords(self.connection, self.lock)
        self.queue_store = SqliteQueueStore(self.connection, "qs", self.lock)
        self.outbound = SqliteOutboundStore(self.connection, self.lock, keys=outbound_keys)

    def transaction(self) -> AbstractContextManager:
        """One SQLite transaction around the store calls made inside it (same
        thread): they all commit at its end or none does."""
        return transaction(self.connection, self.lock)

    def purge_deleted(self) -> bool:
        """After a deletion of records: :func:`phoenix_ref.storage.purge_deleted`."""
        return purge_deleted(self.connection, self.lock)

    @classmethod
    async def open(cls, path: Path | str, outbound_keys: OutboundKeys) -> "QsStore":
        """Open (and create if needed) off the Trio thread."""
        return await trio.to_thread.run_sync(cls, path, outbound_keys)

    def close(self) -> None:
        with self.lock:
            self.connection.close()
