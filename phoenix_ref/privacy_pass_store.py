"""SQLite persistence for Privacy Pass state (GUIDE §4: stdlib ``sqlite3``).

One file holds what ``privacy_pass.py`` needs to survive a restart:

* ``spent_tokens`` — the double-spend store: one row per redeemed token,
  keyed by ``spend_id = SHA-256(token_key_id || nonce)``. Redemption is one
  ``INSERT OR IGNORE``; whether it inserted a row decides, atomically, if the
  token was fresh, so two concurrent redemptions of one token cannot both
  succeed. The rows of a key go when the key stops redeeming
  (:meth:`PrivacyPassStore.forget_key`). No time is kept: nothing reads it.
* ``issuance_windows`` — the allowance counters of ``IssuancePolicy``
  (``spec/authentication_service.md#rate-limiting``), updated in one
  transaction per request (:func:`phoenix_ref.storage.transaction`): a keyed
  hash of the subject, the window's end (rounded) and the count. Rows go
  when their window ends (:meth:`PrivacyPassStore.purge`).

What each column holds, why and for how long: ``docs/storage.md, "Privacy Pass store"``.
* ``issuer_keys`` — the issuer's key pairs ("AS Privacy Pass key material",
  ``spec/authentication_service.md#as-state``), one row per key, each of one
  of two sets (``role``): the **local** keys the AS issues under for its own
  clients and the **federated** keys it issues under for clients of other
  homeservers (docs/decisions.md, A21). A file written before the roles
  existed gets the column on open, its keys becoming the local set.

The methods are synchronous; under Trio the caller runs them with
``trio.to_thread.run_sync``. One connection is shared by those threads and
serialised by a lock.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

from .privacy_pass import AllowanceWindow, IssuerKey, IssuerKeys
from .storage import open_connection, transaction

__all__ = ["PrivacyPassStore", "LOCAL", "FEDERATED", "ISSUER_ROLES"]

#: The two issuer key sets (``issuer_keys.role``).
LOCAL, FEDERATED = "local", "federated"
ISSUER_ROLES = (LOCAL, FEDERATED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spent_tokens (
    spend_id      BLOB PRIMARY KEY,
    token_key_id  BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS spent_tokens_by_key ON spent_tokens (token_key_id);
CREATE TABLE IF NOT EXISTS issuance_windows (
    counter_key   BLOB PRIMARY KEY,   -- HMAC-SHA256 of the subject (IssuancePolicy.counter_key)
    end_ms        INTEGER NOT NULL,
    issued        INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS issuance_windows_by_end ON issuance_windows (end_ms);
CREATE TABLE IF NOT EXISTS issuer_keys (
    key_id           BLOB PRIMARY KEY,
    private_key      BLOB NOT NULL,
    public_key       BLOB NOT NULL,
    created_ms       INTEGER NOT NULL,
    redeem_until_ms  INTEGER,         -- NULL: the current key of its role
    role             TEXT NOT NULL DEFAULT 'local' CHECK (role IN ('local', 'federated'))
);
"""


class PrivacyPassStore:
    """Spent tokens, issuance counters and issuer keys in one SQLite file.

    Implements ``privacy_pass.SpentTokenStore`` and ``privacy_pass.CounterStore``.
    ``path`` may be ``":memory:"`` for throwaway stores.
    """

    def __init__(self, path: str | Path):
        self._lock = threading.RLock()
        self._db = open_connection(path)
        with self._lock:
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(issuer_keys)")}
            if "role" not in columns:   # a file from before the two key sets: its keys are local
                self._db.execute("ALTER TABLE issuer_keys ADD COLUMN role TEXT NOT NULL DEFAULT 'local' "
                                 "CHECK (role IN ('local', 'federated'))")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "PrivacyPassStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- spent tokens --------------------------------------------------------------

    def mark_spent(self, spend_id: bytes, token_key_id: bytes) -> bool:
        """Insert-if-absent in one statement; ``False`` means a double spend."""
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO spent_tokens (spend_id, token_key_id) VALUES (?, ?)",
                (spend_id, token_key_id),
            )
            return cur.rowcount == 1

    def forget_key(self, token_key_id: bytes) -> int:
        with self._lock:
            return self._db.execute("DELETE FROM spent_tokens WHERE token_key_id = ?", (token_key_id,)).rowcount

    def spent_count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM spent_tokens").fetchone()[0]

    # -- issuance counters ----------------------------------------------------------

    def load(self, key: bytes) -> AllowanceWindow | None:
        with self._lock:
            row = self._db.execute(
                "SELECT end_ms, issued FROM issuance_windows WHERE counter_key = ?", (key,)).fetchone()
        return AllowanceWindow(*row) if row else None

    def delete(self, keys: list[bytes]) -> None:
        with transaction(self._db, self._lock) as db:
            db.executemany("DELETE FROM issuance_windows WHERE counter_key = ?", [(k,) for k in keys])

    def purge(self, now_ms: int) -> int:
        """Delete the windows that ended by ``now_ms``; returns how many."""
        with transaction(self._db, self._lock) as db:
            return db.execute("DELETE FROM issuance_windows WHERE end_ms <= ?", (now_ms,)).rowcount

    def window_count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM issuance_windows").fetchone()[0]

    def update(self, keys: list[bytes],
               fn: Callable[[list[AllowanceWindow | None]], list[AllowanceWindow]]) -> None:
        """Load, apply ``fn`` and store in one write transaction (rolled back if ``fn`` raises)."""
        with transaction(self._db, self._lock) as db:
            current = []
            for k in keys:
                row = db.execute(
                    "SELECT end_ms, issued FROM issuance_windows WHERE counter_key = ?", (k,)).fetchone()
                current.append(AllowanceWindow(*row) if row else None)
            new = fn(current)
            db.executemany(
                "INSERT INTO issuance_windows (counter_key, end_ms, issued) VALUES (?, ?, ?) "
                "ON CONFLICT (counter_key) DO UPDATE SET end_ms = excluded.end_ms, issued = excluded.issued",
                [(k, w.end_ms, w.issued) for k, w in zip(keys, new)],
            )

    # -- issuer keys -------------------------------------------------------------------

    def save_issuer_keys(self, keys: IssuerKeys, role: str = LOCAL) -> None:
        """Replace the stored key set of ``role`` with ``keys`` (one transaction)."""
        if role not in ISSUER_ROLES:
            raise ValueError(f"unknown issuer key role {role!r}")
        rows = [(k.key_id, k.private_key, k.public_key, k.created_ms, k.redeem_until_ms, role) for k in keys.all()]
        with transaction(self._db, self._lock) as db:
            db.execute("DELETE FROM issuer_keys WHERE role = ?", (role,))
            db.executemany("INSERT INTO issuer_keys (key_id, private_key, public_key, created_ms, "
                           "redeem_until_ms, role) VALUES (?, ?, ?, ?, ?, ?)", rows)

    def load_issuer_keys(self, role: str = LOCAL) -> IssuerKeys | None:
        """The stored key set of ``role``, or ``None`` before its first ``save_issuer_keys``."""
        if role not in ISSUER_ROLES:
            raise ValueError(f"unknown issuer key role {role!r}")
        with self._lock:
            rows = self._db.execute(
                "SELECT private_key, public_key, created_ms, redeem_until_ms FROM issuer_keys WHERE role = ? "
                "ORDER BY redeem_until_ms IS NOT NULL, redeem_until_ms DESC, created_ms DESC", (role,)).fetchall()
        if not rows:
            return None
        keys = [IssuerKey(bytes(sk), bytes(pk), created, until) for sk, pk, created, until in rows]
        return IssuerKeys(keys[0], keys[1:])
