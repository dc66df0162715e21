"""The QS store (``spec/queuing_service.md#qs-state``), SQLite.

The QS's key material (signing key, queue-config key pair) lives in the
keystore; the QS tables (user and client records, queues, QS-to-QS queues)
are added here by the queuing service.
"""

from __future__ import annotations

from ..storage import SqliteStore


class QsStore(SqliteStore):
    SCHEMA = ""
