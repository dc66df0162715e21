"""The operator's view of the QS-to-QS queues: ``phoenix-ref admin --config FILE outbound``.

Reads the QS database of a homeserver (``qs.sqlite3`` in its data
directory) — also while the homeserver runs, SQLite's WAL lets both at it —
and lists per destination the pending messages, whether its sender is
parked and why (a programming error, :class:`~.outbound.OutboundSender`),
and the dead letters: their count and the last few with the refusing
answer, or, for a message that was never delivered within
``[limits] federation_outbound_max_age_s``, "expired" and that limit. ``--unpark DOMAIN`` removes a parking; a running sender notices
within its ``park_check_interval`` and sends again. ``--drop-dead-letters
DOMAIN`` deletes that destination's dead letters once the operator has
read them (docs/storage.md).

No key is needed: the report shows no payload (they stay sealed,
:mod:`.outbound_crypto`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .outbound import EXPIRED, DeadLetter, Parked, SqliteOutboundStore

__all__ = ["DestinationReport", "report", "format_report", "run"]

#: The file of the QS store in a homeserver's data directory (``homeserver.py``).
QS_DATABASE = "qs.sqlite3"


@dataclass(frozen=True)
class DestinationReport:
    destination: str
    pending: int
    parked: Parked | None
    dead_letters: int
    recent_dead_letters: list[DeadLetter]


def report(store: SqliteOutboundStore, recent: int = 3) -> list[DestinationReport]:
    """Every destination with pending items, a parking or dead letters."""
    pending, parked, dead = store.pending_counts(), store.parked(), store.dead_letter_counts()
    return [DestinationReport(d, pending.get(d, 0), parked.get(d), dead.get(d, 0),
                              store.recent_dead_letters(d, recent) if dead.get(d) else [])
            for d in sorted(set(pending) | set(parked) | set(dead))]


def _time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def format_report(reports: list[DestinationReport]) -> str:
    if not reports:
        return "no outbound messages pending, no parked destination, no dead letters"
    lines = []
    for r in reports:
        state = f"PARKED since {_time(r.parked.parked_ms)}: {r.parked.reason}" if r.parked else "sending"
        lines.append(f"{r.destination}: {r.pending} pending, {state}, {r.dead_letters} dead letters")
        for dl in r.recent_dead_letters:
            if dl.code == EXPIRED and dl.status == 0:   # never answered: it grew too old
                lines.append(f"  dead letter {dl.message_id.hex()} expired {_time(dl.rejected_ms)}: {dl.message}")
                continue
            lines.append(f"  dead letter {dl.message_id.hex()} refused {_time(dl.rejected_ms)}: "
                         f"{dl.status} {dl.code or '-'}: {dl.message}")
    return "\n".join(lines)


def run(data_dir: Path, unpark: str | None = None, recent: int = 3, drop_dead_letters: str | None = None) -> str:
    """The text ``phoenix-ref admin … outbound`` prints (after unparking
    ``unpark`` and deleting the dead letters of ``drop_dead_letters``)."""
    path = Path(data_dir) / QS_DATABASE
    if not path.exists():
        raise FileNotFoundError(f"no QS database {path}")
    store = SqliteOutboundStore(str(path), keys=None)
    try:
        head = ""
        if unpark is not None:
            head = (f"unparked {unpark}\n" if store.unpark(unpark) else f"{unpark} was not parked\n")
        if drop_dead_letters is not None:
            head += f"deleted {store.drop_dead_letters(drop_dead_letters)} dead letters of {drop_dead_letters}\n"
        return head + format_report(report(store, recent))
    finally:
        store.close()
