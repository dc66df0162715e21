"""The AS store (``spec/authentication_service.md#as-state``), one SQLite file.

Three views of the same database (``as.sqlite3`` in the data directory):

* this class's own table: the fingerprints of AS and intermediate
  credentials the operator revoked, which *Get AS credentials* publishes
  (``spec/authentication_service.md#get-as-credentials``);
* :attr:`AsStore.accounts` — user, client and alias entries and the AS OPAQUE
  key material (:class:`~phoenix_ref.authentication.accounts.SqliteAccountStore`);
* :attr:`AsStore.queues` — the direct queues of clients and aliases
  (:class:`~phoenix_ref.queues.Queues`, tables ``as_direct_*``).

All three share one connection and its lock (:class:`~phoenix_ref.storage.SqliteStore`),
so :meth:`AsStore.transaction` (or ``accounts.transaction()``, the same
unit) commits one request's writes to all of them together. The Privacy Pass state (issuer keys,
spent tokens, issuance counters) is the homeserver's, shared with the DS and
QS: :mod:`phoenix_ref.privacy_pass_gate`.
"""

from __future__ import annotations

from pathlib import Path

import trio

from ..queues import Queues
from ..storage import SqliteStore
from .accounts import SqliteAccountStore, open_as_storage

#: The AS's "maximal number of requested messages" (``#configuration``):
#: at most this many messages per dequeue answer.
MAX_MESSAGES_PER_DEQUEUE = 500


class AsStore(SqliteStore):
    SCHEMA = """
    CREATE TABLE IF NOT EXISTS revoked_credentials (
        fingerprint BLOB PRIMARY KEY,
        revoked_ms INTEGER NOT NULL
    );
    """

    def __init__(self, path: Path | str, *, max_messages: int = MAX_MESSAGES_PER_DEQUEUE):
        super().__init__(path)
        self.accounts: SqliteAccountStore
        self.queues: Queues
        try:
            self.accounts, self.queues = open_as_storage(self.conn, self.lock, max_messages=max_messages)
        except BaseException:
            super().close()
            raise
        #: Bumped by every revocation, so that the AS core refreshes the
        #: credentials it verifies with (``routes.py``).
        self.revocations = 0
        self._revoked_seen = self.conn.execute("SELECT COUNT(*) FROM revoked_credentials").fetchone()[0]

    async def revoke(self, fingerprint: bytes, now_ms: int) -> None:
        await trio.to_thread.run_sync(self.revoke_sync, fingerprint, now_ms)

    def revoke_sync(self, fingerprint: bytes, now_ms: int) -> None:
        """Add ``fingerprint`` to the revoked credentials (once)."""
        with self.transaction() as c:
            c.execute("INSERT OR IGNORE INTO revoked_credentials (fingerprint, revoked_ms) VALUES (?, ?)",
                      (fingerprint, now_ms))
        self.revocations += 1

    def notice_revocations(self) -> bool:
        """Whether another process (``phoenix-ref admin``) revoked credentials
        since this store last looked; if so :attr:`revocations` changes, and
        the AS rebuilds its trust in its own credentials."""
        with self.lock:
            (count,) = self.conn.execute("SELECT COUNT(*) FROM revoked_credentials").fetchone()
        if count == self._revoked_seen:
            return False
        self._revoked_seen = count
        self.revocations += 1
        return True

    async def revoked(self) -> list[bytes]:
        """Revoked fingerprints, oldest revocation first."""
        return await trio.to_thread.run_sync(self.revoked_sync)

    def revoked_sync(self) -> list[bytes]:
        with self.transaction() as c:
            rows = c.execute("SELECT fingerprint FROM revoked_credentials ORDER BY revoked_ms, fingerprint").fetchall()
        return [bytes(r[0]) for r in rows]
