"""The one task per homeserver that deletes expired state
(``spec/general_concepts/state_expiration.md#state-expiration``).

"All pieces of state on the homeserver either have an explicit expiration
date, or a timestamp that indicates the last time of use", and each such
kind has a configured age after which it goes. The services know their own
rules; this module only runs them: a :class:`Sweeper` holds a list of
:class:`Rule` — a name and a synchronous function ``now_ms -> rows deleted``
— and runs every rule in a worker thread (the rules talk to SQLite, GUIDE
§4), once when the homeserver starts and then every ``[limits]
sweep_interval_s``. A rule that raises is logged with its traceback and the
other rules still run; the next round tries it again. Nothing here stops
the homeserver.

The rules themselves are built in ``homeserver.py`` (``Homeserver._sweep_rules``)
from the services' stores; docs/storage.md says how long each row is kept
and which rule deletes it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import trio

__all__ = ["Rule", "Sweeper"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rule:
    """One kind of expiring state: ``run(now_ms)`` deletes (or, for outbound
    messages, dead-letters) what expired at ``now_ms`` and returns how many
    items it handled. It is called from a worker thread."""
    name: str
    run: Callable[[int], int]


class Sweeper:
    """Runs ``rules`` every ``interval_s`` seconds (module docstring).

    ``now_ms`` is the wall clock (a deployment's FixedClock in tests). Each
    rule is given the time read just before it runs. :attr:`rounds` counts
    finished rounds, :attr:`totals` the items each rule handled so far and
    :attr:`failures` the rounds in which each rule raised (for tests and
    metrics).
    """

    def __init__(self, rules: Sequence[Rule], now_ms: Callable[[], int], interval_s: float, *, name: str = ""):
        names = [r.name for r in rules]
        if len(set(names)) != len(names):
            raise ValueError(f"two sweeper rules share a name: {names}")
        self.rules = list(rules)
        self.now_ms = now_ms
        self.interval_s = interval_s
        self.name = name
        self.rounds = 0
        self.totals: dict[str, int] = {r.name: 0 for r in self.rules}
        self.failures: dict[str, int] = {r.name: 0 for r in self.rules}

    async def sweep(self) -> dict[str, int | None]:
        """One round: every rule once, in order. Returns what each rule
        handled (None for a rule that raised; the exception is logged)."""
        counts: dict[str, int | None] = {}
        for rule in self.rules:
            try:
                n = await trio.to_thread.run_sync(rule.run, self.now_ms())
                if not isinstance(n, int):
                    raise TypeError(f"rule {rule.name!r} returned {n!r}, not a count")
            except Exception:   # one broken rule must not keep the others from running
                log.exception("%s: sweeping %s failed; trying again next round", self.name, rule.name)
                self.failures[rule.name] += 1
                counts[rule.name] = None
                continue
            counts[rule.name] = n
            self.totals[rule.name] += n
            if n:
                log.info("%s: swept %d × %s", self.name, n, rule.name)
        self.rounds += 1
        return counts

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Sweep now, then every ``interval_s`` seconds, until cancelled."""
        task_status.started()
        while True:
            await self.sweep()
            await trio.sleep(self.interval_s)
