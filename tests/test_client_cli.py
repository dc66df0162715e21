"""``phoenix-ref client``, driven as a person would: separate processes
against homeservers on real TLS sockets (the harness's socket mode with its
generated CA, on the real clock as the client processes are), each user
with a state directory of their own."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from phoenix_ref.cli import load_or_create_ca
from phoenix_ref.clock import Clock
from phoenix_ref.client_cli import COMMANDS
from phoenix_ref.config import Limits
from phoenix_ref.shared import REPO_ROOT
from phoenix_ref.spec_plugin import spec
from phoenix_ref.testing import Deployment
from tests.test_cli import undocumented_options

A, B = "a.example", "b.example"
ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
ENV.pop("PHOENIX_DEBUG", None)


def cli(state: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "phoenix_ref.cli", "client", "--state", str(state), *args]


async def run(state: Path, *args: str) -> subprocess.CompletedProcess:
    """One command in a terminal session: its stdin and stdout are a pseudo
    terminal (as when a person types it), its stderr is kept apart so the
    one-line errors can be checked."""
    master, slave = os.openpty()
    chunks: list[bytes] = []

    def drain() -> None:   # until the terminal closes (EIO once no process holds it)
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, drain)
            try:
                done = await trio.run_process(cli(state, *args), stdin=slave, stdout=slave, capture_stderr=True,
                                              check=False, env=ENV)
            finally:
                os.close(slave)
                slave = -1
    finally:
        os.close(master)
        if slave != -1:
            os.close(slave)
    stdout = b"".join(chunks).replace(b"\r\n", b"\n")
    return subprocess.CompletedProcess(done.args, done.returncode, stdout, done.stderr)


async def ok(state: Path, *args: str) -> str:
    done = await run(state, *args)
    assert done.returncode == 0, (args, done.stderr.decode())
    assert b"Traceback" not in done.stderr
    return done.stdout.decode()


def where(d: Deployment) -> list[str]:
    out = ["--ca", str(d.tmp / "ca" / "ca.pem")]
    for node in d.nodes.values():
        out += ["--resolve", f"{node.domain}=127.0.0.1:{node.port}"]
    return out


async def fails(state: Path, *args: str) -> str:
    """The command fails with exactly one line on stderr, no traceback."""
    done = await run(state, *args)
    err = done.stderr.decode()
    assert done.returncode == 1, (args, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


@spec("spec/clients/creation.md#qs-registration", "informative")
@spec("spec/authentication_service/connection_establishment.md#connection-group-creation", "MUST")
@spec("spec/delivery_service.md#send-application-message", "informative")
@spec("spec/authentication_service.md#update-user-profile", "informative")
async def test_two_people_on_two_homeservers_talk_through_the_command_line(tmp_path):
    """Two people, each with a state directory, talk through ``phoenix-ref
    client`` commands run in pseudo terminals; every command is a new process,
    so each restarts the client from its state."""
    async with Deployment("sockets", ["hs1", "hs2"], clock=Clock()) as d:
        alice_dir, bob_dir = tmp_path / "alice", tmp_path / "bob"
        alice = (await ok(alice_dir, "register", "--domain", A, *where(d))).strip()
        bob = (await ok(bob_dir, "register", "--domain", B, *where(d))).strip()
        assert alice.endswith("@" + A) and bob.endswith("@" + B)
        assert (await ok(bob_dir, "whoami")).strip() == bob       # the state needs only --state now

        await ok(alice_dir, "connect", bob)
        assert f"connected with {alice}" in await ok(bob_dir, "accept", "--wait", "20")
        assert f"* new contact {bob}" in await ok(alice_dir, "read", "--wait", "20")
        assert f"* new contact {alice}" in await ok(bob_dir, "read", "--wait", "20")
        assert (await ok(alice_dir, "contacts")).split() == [bob]

        gid = (await ok(alice_dir, "create-group", "--name", "friends")).strip()
        await ok(alice_dir, "invite", "friends", bob)
        assert f"* joined group {gid}" in await ok(bob_dir, "read", "--wait", "20")
        await ok(alice_dir, "send", "friends", "hello bob")
        assert f"{gid} {alice}: hello bob" in await ok(bob_dir, "read", "--wait", "20")
        await ok(bob_dir, "send", gid, "hi alice")
        assert f"friends {bob}: hi alice" in await ok(alice_dir, "read", "--wait", "20")
        assert "nothing new" in (await run(alice_dir, "read")).stderr.decode()   # each text is printed once

        # bob listens; a message arrives while his process runs; then he stops it
        listener = await trio.lowlevel.open_process(cli(bob_dir, "listen"), stdout=subprocess.PIPE,
                                                    stderr=subprocess.PIPE, env=ENV)
        try:
            with trio.fail_after(30):
                lines = _lines(listener.stdout)
                first = await _until_stderr(listener, "listening on")
                assert "lost" not in first, first
                await ok(alice_dir, "send", "friends", "while bob listens")
                assert f"{gid} {alice}: while bob listens" == await lines.__anext__()
        finally:
            listener.send_signal(signal.SIGINT)
            with trio.fail_after(20):
                assert await listener.wait() == 0
                rest = await _rest(listener.stderr)
        assert "lost" not in rest and "Traceback" not in rest, rest    # it came through the websocket
        # a new process with the same state still has the conversation, and reads what is new
        await ok(alice_dir, "send", "friends", "after bob's restart")
        assert (await ok(bob_dir, "read", "--all", gid)).splitlines() == [
            f"{gid} {alice}: hello bob", f"{gid} {alice}: while bob listens"]
        assert (await ok(bob_dir, "read", "--wait", "20")).splitlines() == [f"{gid} {alice}: after bob's restart"]
        await ok(bob_dir, "send", gid, "bob is back")
        assert f"friends {bob}: bob is back" in await ok(alice_dir, "read", "--wait", "20")

        await ok(alice_dir, "profile", "--set", "Alice A.")
        assert (await ok(bob_dir, "profile", alice)).strip() == "Alice A."
        assert re.search(rf"^{gid} \(friends\) admin epoch=\d+ members=", await ok(alice_dir, "groups"), re.M)

        # a third person connects to bob by an alias of his
        await ok(bob_dir, "alias", "bob-b")
        carol_dir = tmp_path / "carol-a"
        carol = (await ok(carol_dir, "register", "--domain", A, *where(d))).strip()
        await ok(carol_dir, "connect", "--alias", B, "bob-b")
        assert f"connected with {carol}" in await ok(bob_dir, "accept", "--alias", "bob-b", "--wait", "20")
        assert f"* new contact {bob}" in await ok(carol_dir, "read", "--wait", "20")
        assert f"* new contact {carol}" in await ok(bob_dir, "read", "--wait", "20")
        assert sorted((await ok(bob_dir, "contacts")).split()) == sorted([alice, carol])

        # the error paths a person can act on: one line each, exit status 1
        stranger = f"{uuid.uuid4()}@{A}"
        (tmp_path / "junk").mkdir()
        (tmp_path / "junk" / "client.sqlite3").write_bytes(b"not a database, not even close" * 100)
        table = [
            (tmp_path / "nobody", ["read"], "holds no client state"),
            (tmp_path / "junk", ["read"], "is not a client state file"),
            (alice_dir, ["register", "--domain", A, *where(d)], "already holds a client"),
            (alice_dir, ["connect", stranger], f"unknown user: {stranger}"),
            (alice_dir, ["connect", "not-a-user-id"], "is not a user id"),
            (alice_dir, ["invite", "friends", stranger], "is not a contact"),
            (alice_dir, ["send", "no-such-group", "hi"], "no group named 'no-such-group'"),
            (bob_dir, ["remove", gid, alice], "you are not an admin of group"),
            (bob_dir, ["delete-group", gid], "you are not an admin of group"),
            (tmp_path / "carol", ["register", "--domain", "c.example", "--ca", str(d.tmp / "ca" / "ca.pem"),
                                  "--resolve", f"c.example=127.0.0.1:{_closed_port()}"],
             "cannot reach as.c.example"),
            (tmp_path / "dave", ["register", "--domain", A, "--ca", str(_other_ca(tmp_path)),
                                 "--resolve", f"{A}=127.0.0.1:{d['hs1'].port}"],
             "certificate verification failed"),
        ]
        for state, args, message in table:
            assert message in await fails(state, *args), (args, message)
        assert not (tmp_path / "carol" / "client.sqlite3").exists()    # a failed register leaves nothing


@spec("spec/authentication_service.md#token-issuance", "SHOULD")
async def test_a_spent_token_budget_is_one_line(tmp_path):
    async with Deployment("sockets", ["hs1"], limits=replace(Limits(), token_allowance=12),
                          clock=Clock()) as d:
        state = tmp_path / "alice"
        await ok(state, "register", "--domain", A, *where(d))
        for _ in range(12):
            done = await run(state, "create-group")
            if done.returncode != 0:
                break
        err = done.stderr.decode()
        assert done.returncode == 1 and len(err.strip().splitlines()) == 1, err
        assert "token budget spent" in err and "try again in" in err


def test_every_client_command_has_help_and_an_example(capsys):
    from phoenix_ref.cli import main
    for name, _, _ in COMMANDS:
        with pytest.raises(SystemExit):
            main(["client", "--state", "s", name, "--help"])
        text = capsys.readouterr().out
        assert f"example: phoenix-ref client --state alice {name}" in text, name
        assert undocumented_options(text) == [], name


async def test_two_processes_cannot_share_a_state_dir(tmp_path):
    from phoenix_ref.client.state_store import ClientStore, StateDirError
    first = ClientStore.create(tmp_path / "s")
    try:
        with pytest.raises(StateDirError, match="in use by another client process"):
            ClientStore.open(tmp_path / "s")
    finally:
        first.close()
    ClientStore.open(tmp_path / "s").close()


def _closed_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _other_ca(tmp_path: Path) -> Path:
    load_or_create_ca(tmp_path / "other-ca")
    return tmp_path / "other-ca" / "ca.pem"


async def _lines(stream):
    buf = b""
    while True:
        while b"\n" not in buf:
            chunk = await stream.receive_some(4096)
            if not chunk:
                return
            buf += chunk
        line, buf = buf.split(b"\n", 1)
        yield line.decode()


async def _rest(stream) -> str:
    buf = b""
    while chunk := await stream.receive_some(4096):
        buf += chunk
    return buf.decode()


async def _until_stderr(proc, text: str) -> str:
    buf = b""
    while text.encode() not in buf:
        chunk = await proc.stderr.receive_some(4096)
        assert chunk, buf.decode()
        buf += chunk
    return buf.decode()
