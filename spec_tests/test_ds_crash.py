"""A group's homeserver killed between its state write and its fan-out.

``spec/delivery_service.md#message-distribution``: the DS distributes every
message it accepted to the group's members. Here the DS of ``a.example``
accepts a commit, writes the new group state (and the fan-out with it,
decision A40) and dies by SIGKILL before handing anything to its QS — the
crash point ``PHOENIX_CRASH_AT=ds-after-state-write`` of
:mod:`phoenix_ref.delivery.service`. After a restart on the same data
directory every other member gets that commit exactly once, the committer
learns that its commit went through although it never got the answer
(docs/decisions.md, "A commit whose answer was lost"), and the group works
on.

Three homeservers, each a ``phoenix-ref serve`` child process (``python -m
phoenix_ref.cli serve``) on loopback over TLS 1.3, with certificates of one
test CA; the clients are :class:`~phoenix_ref.client.messenger.Messenger`
objects over HTTPS, on the real clock.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from phoenix_ref.cli import certificate_names, generate_config
from phoenix_ref.client.messenger import Messenger
from phoenix_ref.clock import Clock
from phoenix_ref.codec import decode, encode
from phoenix_ref.config import Limits
from phoenix_ref.delivery.service import CRASH_AFTER_STATE_WRITE, CRASH_ENV
from phoenix_ref.federation.client import client_ssl_context, https_transport
from phoenix_ref.queuing.messages import CommitContent, MessageContent
from phoenix_ref.shared import REPO_ROOT
from phoenix_ref.spec_plugin import spec

from .test_ds_groups import agree, chat, until

#: beyond HTTPS: serve processes started with a crash point, killed and restarted; the DS outbox rows on disk
pytestmark = pytest.mark.needs_control("serve processes started with a crash point, killed and restarted; the DS outbox rows on disk")

A, B, C = "a.example", "b.example", "c.example"
DISTRIBUTION = "spec/delivery_service.md#message-distribution"
TEST_TIMEOUT_S = 60
FAST_RETRIES = Limits(federation_retry_base_s=0.05, federation_retry_max_s=0.3)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """``phoenix-ref serve --config <dir>/config.toml`` as a child process,
    its output in ``<dir>/serve.log``."""

    def __init__(self, directory: Path, domain: str, http: httpx.AsyncClient):
        self.dir, self.domain, self.http = directory, domain, http
        self.proc: trio.Process | None = None

    async def start(self, crash_at: str | None = None) -> None:
        """Start the child (with the crash point ``crash_at``, if given) and
        wait until its QS answers over TLS."""
        env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        if crash_at is not None:
            env[CRASH_ENV] = crash_at
        with open(self.dir / "serve.log", "ab") as log:
            self.proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "phoenix_ref.cli", "serve", "--config", str(self.dir / "config.toml")],
                stdout=log, stderr=subprocess.STDOUT, env=env)
        while True:
            assert self.proc.poll() is None, f"{self.domain} exited: {self.log()}"
            try:
                if (await self.http.get(f"https://qs.{self.domain}/phoenix/v1/qs_verifying_key")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await trio.sleep(0.05)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            with trio.CancelScope(shield=True):
                await self.proc.wait()

    def log(self) -> str:
        return (self.dir / "serve.log").read_text(errors="replace")[-3000:]

    def outbox_rows(self) -> int:
        """Fan-outs the DS wrote and the QS has not taken (read from its database)."""
        with sqlite3.connect(self.dir / "data" / "ds.sqlite3") as db:
            return db.execute("SELECT COUNT(*) FROM ds_outbox").fetchone()[0]


def count_commits(m: Messenger) -> list[bytes]:
    """The commits ``m`` dequeues from now on, as bytes (a spy on its QS client)."""
    seen: list[bytes] = []
    inner = m.qs.receive

    async def receive(me):
        plaintexts = await inner(me)
        for p in plaintexts:
            content = decode(MessageContent, p)
            if isinstance(content, CommitContent):
                seen.append(encode(content.message))
        return plaintexts
    m.qs.receive = receive
    return seen


@spec(DISTRIBUTION, "informative")
async def test_a_commit_written_before_a_sigkill_reaches_every_member_once(tmp_path):
    with trio.fail_after(TEST_TIMEOUT_S):
        ports = {d: free_port() for d in (A, B, C)}
        resolve = {h: f"127.0.0.1:{ports[d]}" for d in ports for h in certificate_names(d)}
        for d in ports:
            generate_config(tmp_path / d, d, port=ports[d], test_ca=True, test_ca_dir=tmp_path / "ca",
                            resolve=resolve, limits=FAST_RETRIES)
        transport = https_transport(client_ssl_context(tmp_path / "ca" / "ca.pem"), resolve)
        async with httpx.AsyncClient(transport=transport, trust_env=False, timeout=10.0) as http:
            servers = {d: ServeProcess(tmp_path / d, d, http) for d in ports}
            try:
                for s in servers.values():
                    await s.start()
                await _crash_and_recover(http, servers)
            finally:
                for s in servers.values():
                    await s.stop()


async def _crash_and_recover(http: httpx.AsyncClient, servers: dict[str, ServeProcess]) -> None:
    clock = Clock()
    alice, bob, carol = [await Messenger.register(http, d, clock=clock) for d in (A, B, C)]
    everyone = [alice, bob, carol]
    for x in everyone:
        for y in everyone:
            if x is not y:
                x.add_contact(y.card())
        await x.trust_domains(A, B, C)
    gid = await alice.create_group()                      # the group lives on a.example
    await alice.invite(gid, [bob.user_id, carol.user_id])
    await until(lambda: all(gid in m.groups for m in everyone), *everyone)
    agree(*everyone, group_id=gid)
    epoch = alice.groups[gid].group.epoch

    hs_a = servers[A]                                     # a.example again, armed
    await hs_a.stop()
    await hs_a.start(crash_at=CRASH_AFTER_STATE_WRITE)
    seen = {m.user_id: count_commits(m) for m in everyone}

    with pytest.raises(httpx.TransportError):             # the answer never comes
        await bob.update(gid)
    await hs_a.proc.wait()
    assert hs_a.proc.returncode == -signal.SIGKILL, hs_a.log()
    assert bob.groups[gid].unsure is not None             # bob keeps the commit: its fate is unknown
    assert hs_a.outbox_rows() == 1                        # the state and its fan-out are on disk ...
    commit = encode(bob.groups[gid].unsure.body.params.commit)
    assert bob.groups[gid].group.epoch == epoch           # ... and bob does not know it: still pending

    with pytest.raises(httpx.TransportError):             # carol tries while a.example is down
        await carol.update(gid)
    assert carol.groups[gid].unsure is not None
    assert await carol.receive() == 0 and await bob.receive() == 0   # nothing was fanned out

    await hs_a.start()                                    # same data, same keys, no crash point
    await until(lambda: all(m.groups[gid].group.epoch == epoch + 1 for m in everyone), *everyone)
    await trio.sleep(0.5)                                 # anything sent twice would be here by now
    for m in everyone:
        await m.receive()
    agree(*everyone, group_id=gid)
    assert alice.groups[gid].group.epoch == epoch + 1     # one epoch step: bob's commit, applied once
    assert seen[alice.user_id] == [commit] and seen[carol.user_id] == [commit]
    assert seen[bob.user_id] == []                        # the committer gets no copy (A17)
    assert bob.groups[gid].unsure is None                 # the DS told bob it had applied the commit
    assert ("commit_refused", gid) in carol.events        # carol's commit lost to it (409 wrong_epoch)
    assert carol.groups[gid].unsure is None
    assert hs_a.outbox_rows() == 0

    await carol.update(gid)                               # the group goes on
    await until(lambda: all(m.groups[gid].group.epoch == epoch + 2 for m in everyone), *everyone)
    agree(*everyone, group_id=gid)
    await chat(gid, *everyone)
