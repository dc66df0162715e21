"""The DS store (``spec/delivery_service.md#ds-state``), SQLite.

The DS signing key lives in the keystore; the group-state tables are added
here by the delivery service.
"""

from __future__ import annotations

from ..storage import SqliteStore


class DsStore(SqliteStore):
    SCHEMA = ""
