"""Net-splits and crashes of federated delivery (GUIDE §3, outbound queues).

``spec/federation/use_cases.md#federation-use-cases``: "If a net-split
happens … homeserver instances on each side of the net-split can continue
to federate." While ``b.example`` is unreachable, ``a.example`` keeps
accepting messages for it; once it is back, every message arrives exactly
once, in order per sender (``spec/queuing_service.md#federated-qs-to-qs-communication``).

* in-process: ``b.example``'s transport refuses connections;
* real sockets: ``b.example``'s server is stopped and its port closed;
* a sending homeserver in its own OS process is killed with SIGKILL while
  messages wait for a remote domain, and restarted on the same data
  directory: they are delivered, none twice.

Every test runs on real time with a short backoff (``FAST_RETRIES``), not on
a ``MockClock``: an autojumping clock advances while worker threads (SQLite,
crypto) run, firing timeouts that never happened. The tests wait on
observable state (failed attempts, queue rows) and each is bounded by
``TEST_TIMEOUT_S``, so a hang fails within a minute.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys

import httpx
import pytest
import trio

from phoenix_ref.client.qs_client import QsClient
from phoenix_ref.clock import Clock
from phoenix_ref.config import Limits
from phoenix_ref.spec_plugin import spec
from phoenix_ref.testing import Deployment

from .qs_http import message, qs_client, read_all

pytestmark = pytest.mark.needs_control("stopping, killing and restarting homeservers and their shared clock")

USE_CASES = "spec/federation/use_cases.md#federation-use-cases"
FEDERATED = "spec/queuing_service.md#federated-qs-to-qs-communication"
FAST_RETRIES = Limits(federation_retry_base_s=0.05, federation_retry_max_s=0.3)
HOUR_MS = 3_600_000
TEST_TIMEOUT_S = 60
POLL_S = 0.02


def pending(node) -> int:
    """Messages waiting in ``node``'s outbound queues (read from its QS database)."""
    with sqlite3.connect(node.config.data_dir / "qs.sqlite3") as db:
        return db.execute("SELECT COUNT(*) FROM outbound_queue").fetchone()[0]


async def _split_and_heal(d: Deployment) -> None:
    hs1 = d["hs1"].hs
    async with d.client() as http:
        qs = await qs_client(d, http, "b.example")
        bob = await qs.register("b.example")
        cfg = await qs.client_queue_config(bob)
        await d.set_down("hs2")
        for i in range(5):   # a.example keeps accepting messages for b.example
            result = await hs1.qs.local_enqueue(message([cfg], b"m%d" % i))
            assert [str(x) for x in result.forwarded] == ["b.example"]
        while hs1.qs.outbound_sender.pending_failures("b.example") < 4:
            await trio.sleep(POLL_S)
        assert pending(d["hs1"]) == 5
        d.clock.advance(2 * HOUR_MS)   # a split longer than the maximal message age
        await d.set_up("hs2")
        while pending(d["hs1"]):
            await trio.sleep(POLL_S)
    async with d.client() as http:   # new connections: b.example restarted (dequeue needs no token)
        qs = QsClient(http, now_ms=d.clock.now_ms)
        assert await read_all(qs, bob, 5) == [b"m0", b"m1", b"m2", b"m3", b"m4"]   # in order
        assert await qs.receive(bob) == []                                             # once


@spec(USE_CASES, "informative")
@spec(FEDERATED, "informative")
async def test_net_split_in_process_heals_exactly_once_in_order():
    with trio.fail_after(TEST_TIMEOUT_S):
        async with Deployment("in_process", ["hs1", "hs2"], limits=FAST_RETRIES) as d:
            await _split_and_heal(d)


@spec(USE_CASES, "informative")
@spec(FEDERATED, "informative")
async def test_net_split_on_sockets_heals_exactly_once_in_order():
    with trio.fail_after(TEST_TIMEOUT_S):
        async with Deployment("sockets", ["hs1", "hs2"], limits=FAST_RETRIES) as d:
            await _split_and_heal(d)


# --- the sender in its own process, killed with SIGKILL ----------------------------------------

class ProcessHomeserver:
    """``phoenix-ref serve --config <node>/config.toml`` as a child process.

    Use it as ``async with ProcessHomeserver(d, name) as sender``: leaving the
    block kills a child that is still running, so a failed test leaves no
    process behind.
    """

    def __init__(self, d: Deployment, name: str):
        self.d = d
        self.node = d[name]
        self.proc: trio.Process | None = None

    async def __aenter__(self) -> "ProcessHomeserver":
        return self

    async def __aexit__(self, *exc) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            with trio.CancelScope(shield=True):
                await self.proc.wait()

    async def start(self) -> None:
        """Start the child and wait until its QS answers over TLS."""
        cmd = [sys.executable, "-m", "phoenix_ref.cli", "serve", "--config", str(self.node.dir / "config.toml")]
        self.proc = await trio.lowlevel.open_process(cmd, stdout=subprocess.DEVNULL,
                                                     stderr=subprocess.DEVNULL)
        url = f"https://qs.{self.node.domain}/phoenix/v1/qs_verifying_key"
        async with self.d.client() as http:
            while True:
                assert self.proc.poll() is None, "the homeserver process exited"
                try:
                    if (await http.get(url)).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await trio.sleep(0.1)

    async def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        assert self.proc.returncode == -signal.SIGKILL


@spec(USE_CASES, "informative")
@spec(FEDERATED, "informative")
async def test_sender_killed_with_messages_queued_delivers_after_restart_none_twice():
    with trio.fail_after(TEST_TIMEOUT_S):
        async with Deployment("sockets", ["hs1", "hs2"], limits=FAST_RETRIES) as d:
            async with ProcessHomeserver(d, "hs1") as sender:
                await _kill_and_restart_sender(d, sender)


async def _kill_and_restart_sender(d: Deployment, sender: ProcessHomeserver) -> None:
    async with d.client() as http:
        qs = await qs_client(d, http, "b.example")
        bob = await qs.register("b.example")
        cfg = await qs.client_queue_config(bob)
    await d.set_down("hs2")
    for i in range(10):   # queued by the in-test homeserver while b.example is down
        await d["hs1"].hs.qs.local_enqueue(message([cfg], b"m%d" % i))
    await d.set_down("hs1")
    assert pending(d["hs1"]) == 10

    await sender.start()          # resumes the queue, fails against the split …
    await trio.sleep(1)
    await sender.kill()           # … and dies without warning
    assert pending(d["hs1"]) == 10

    d.clock.t = Clock().now_ms()  # the child signs with the real clock
    await d.set_up("hs2")
    async with d.client() as http:
        qs = QsClient(http, now_ms=d.clock.now_ms)   # dequeue needs no Privacy Pass token
        await sender.start()
        got = await read_all(qs, bob, 1, timeout=TEST_TIMEOUT_S)
        await sender.kill()           # probably in the middle of the queue
        d.clock.t = Clock().now_ms()
        await sender.start()
        got += await read_all(qs, bob, 10 - len(got), timeout=TEST_TIMEOUT_S)
        while pending(d["hs1"]):
            await trio.sleep(POLL_S)
        await sender.kill()
        assert got == [b"m%d" % i for i in range(10)]     # all, in order
        assert await qs.receive(bob) == []                 # none twice
