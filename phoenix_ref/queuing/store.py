"""The QS store (``spec/queuing_service.md#qs-state``): one SQLite file.

The QS's key material (signing key, queue-config key pair) lives in the
keystore. Everything else the spec lists under *QS state* lives in the
homeserver's ``qs.sqlite3``, in three groups of tables:

* ``qs_users``, ``qs_clients``, ``qs_key_packages``, ``qs_blocklist``,
  ``qs_seen_messages``, ``qs_rate_limits`` — records, KeyPackages,
  blocklists, the federated replay cache and rate-limit counters
  (:class:`~phoenix_ref.queuing.records.SqliteQsRecords`);
* ``qs_queues``, ``qs_messages`` — the fan-out queues with their encryption
  key material (:class:`~phoenix_ref.queues.SqliteQueueStore`);
* ``outbound_queue`` — the durable per-destination queues of QsToQsMessages
  ("QS-to-QS queues", :class:`~phoenix_ref.federation.outbound.SqliteOutboundStore`),
  sharing the records' connection.

Every store method is one transaction and runs in a worker thread (GUIDE §4).
"""

from __future__ import annotations

import os
from pathlib import Path

import trio

from ..federation.outbound import SqliteOutboundStore
from ..queues import SqliteQueueStore
from .records import SqliteQsRecords

__all__ = ["QsStore"]


class QsStore:
    """The QS's SQLite file: ``records``, ``queue_store`` and ``outbound``."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records = SqliteQsRecords(os.fspath(self.path))
        self.queue_store = SqliteQueueStore(os.fspath(self.path), "qs")
        self.outbound = SqliteOutboundStore(self.records.connection, self.records.lock)

    @classmethod
    async def open(cls, path: Path | str) -> "QsStore":
        """Open (and create if needed) off the Trio thread."""
        return await trio.to_thread.run_sync(cls, path)

    def close(self) -> None:
        self.queue_store.close()
        self.outbound.close()
        self.records.close()
