"""The sweeper loop (phoenix_ref/sweeper.py): rules run in worker threads,
in order, with the clock read per rule; a rule that fails is logged and the
others still run, round after round."""

from __future__ import annotations

import logging
import threading

import pytest
import trio

from phoenix_ref.clock import FixedClock
from phoenix_ref.sweeper import Rule, Sweeper


async def test_one_round_runs_every_rule_in_order_in_a_worker_thread_with_the_clock():
    clock = FixedClock(1000)
    seen = []

    def rule(name, n):
        def run(now_ms):
            seen.append((name, now_ms, threading.current_thread() is threading.main_thread()))
            clock.advance(5)
            return n
        return Rule(name, run)

    sweeper = Sweeper([rule("a", 2), rule("b", 0)], clock.now_ms, 60)
    assert await sweeper.sweep() == {"a": 2, "b": 0}
    assert seen == [("a", 1000, False), ("b", 1005, False)]     # each rule reads the clock when it starts
    await sweeper.sweep()
    assert sweeper.rounds == 2 and sweeper.totals == {"a": 4, "b": 0}


async def test_a_failing_rule_is_logged_and_the_others_still_run(caplog):
    def broken(now_ms):
        raise RuntimeError("disk on fire")

    sweeper = Sweeper([Rule("broken", broken), Rule("no count", lambda now: None), Rule("fine", lambda now: 1)],
                      FixedClock().now_ms, 60, name="a.example")
    with caplog.at_level(logging.ERROR, logger="phoenix_ref.sweeper"):
        assert await sweeper.sweep() == {"broken": None, "no count": None, "fine": 1}
    assert sweeper.failures == {"broken": 1, "no count": 1, "fine": 0}
    assert "sweeping broken failed" in caplog.text and "disk on fire" in caplog.text
    assert "returned None, not a count" in caplog.text


async def test_the_loop_sweeps_at_start_and_every_interval_and_never_stops_on_an_exception():
    calls = []

    def broken(now_ms):
        raise ValueError("always")

    sweeper = Sweeper([Rule("broken", broken), Rule("counting", lambda now: calls.append(now) or 1)],
                      FixedClock().now_ms, 0.02)
    async with trio.open_nursery() as nursery:
        await nursery.start(sweeper.run)
        with trio.fail_after(30):
            while sweeper.rounds < 4:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert len(calls) >= 4 and sweeper.failures["broken"] >= 4 and sweeper.totals["counting"] >= 4


async def test_the_loop_waits_its_interval_between_rounds(autojump_clock):
    """Trio times at which the rounds ran: at start, then every interval."""
    times = []
    sweeper = Sweeper([Rule("r", lambda now: times.append(trio.from_thread.run_sync(trio.current_time)) or 0)],
                      FixedClock().now_ms, 3600)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        await nursery.start(sweeper.run)
        while len(times) < 3:
            await trio.sleep(1)
        nursery.cancel_scope.cancel()
    # the autojump clock may jump ahead while a round's worker thread runs,
    # so the check is: the first round at once, then never sooner than the interval
    assert times[0] - start < 3600
    assert all(later - earlier >= 3600 for earlier, later in zip(times, times[1:]))


def test_rule_names_are_unique():
    with pytest.raises(ValueError):
        Sweeper([Rule("x", lambda now: 0), Rule("x", lambda now: 0)], FixedClock().now_ms, 1)
