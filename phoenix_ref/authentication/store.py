"""The AS store (``spec/authentication_service.md#as-state``), SQLite.

For now it holds what key distribution needs: the fingerprints of AS and
intermediate credentials the operator revoked, which *Get AS credentials*
publishes (``spec/authentication_service.md#get-as-credentials``). Services
built later add their tables to ``SCHEMA``.
"""

from __future__ import annotations

from ..storage import SqliteStore


class AsStore(SqliteStore):
    SCHEMA = """
    CREATE TABLE IF NOT EXISTS revoked_credentials (
        fingerprint BLOB PRIMARY KEY,
        revoked_ms INTEGER NOT NULL
    );
    """

    async def revoke(self, fingerprint: bytes, now_ms: int) -> None:
        await self.run(lambda c: c.execute(
            "INSERT OR IGNORE INTO revoked_credentials (fingerprint, revoked_ms) VALUES (?, ?)",
            (fingerprint, now_ms)))

    async def revoked(self) -> list[bytes]:
        """Revoked fingerprints, oldest revocation first."""
        rows = await self.run(lambda c: c.execute(
            "SELECT fingerprint FROM revoked_credentials ORDER BY revoked_ms, fingerprint").fetchall())
        return [bytes(r[0]) for r in rows]
