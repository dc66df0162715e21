"""``phoenix-ref demo``: three federating homeservers on this machine and a
story told through them, with what each homeserver did at every step.

What it does:

1. In a fresh temporary folder: a test CA and configs for ``a.example``,
   ``b.example`` and ``c.example`` (``phoenix-ref generate-config``, each
   with resolve overrides to the others' loopback ports and a short
   federation retry delay), then one ``phoenix-ref serve --request-log``
   process per homeserver, over TLS 1.3.
2. A story through the client library (:class:`~.client.messenger.Messenger`):
   alice@a, bob@b and carol@c register; they connect across domains (by
   user id, and alice reaches carol by her alias); alice creates a group and
   invites bob and carol; they chat; alice removes bob and adds him back;
   ``c.example`` is cut off (its process is killed) while alice and bob go
   on writing, in the group and bob to carol; ``c.example`` restarts on the
   same data and carol gets every message sent while she was away exactly
   once, delivered by the outbound federation queues of ``a.example`` and
   ``b.example``.
3. After every step it prints the requests each homeserver served and the
   federation requests between homeservers — read from the homeservers'
   request logs (:class:`~.http.RequestLog`), not counted by the client —
   and adds them to a Mermaid ``sequenceDiagram`` written at the end.

Every check is printed as it holds; the first that does not ends the demo
with exit status 1 and a one-line reason (the folder is then kept for a look
at the homeservers' logs). ``--keep`` leaves the homeservers running after
the story and prints how to join them with ``phoenix-ref client``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from collections import Counter
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterable

import httpx
import trio

from .client.messenger import Messenger
from .clock import Clock
from .config import Limits
from .federation.client import USER_AGENT, client_ssl_context, https_transport
from .provision import certificate_names, generate_config

DOMAINS = ("a.example", "b.example", "c.example")
A, B, C = DOMAINS
#: The User-Agent of the demo's clients: ``phoenix-ref-demo (alice)``. The
#: homeservers log it with each request, which is how the trace tells whose
#: request a homeserver served.
AGENT = "phoenix-ref-demo"
#: Participant ids of the diagram (Mermaid ids cannot contain dots).
SHORT = {A: "a", B: "b", C: "c"}
#: Outbound federation retries: the first after 0.2 s, never more than 1 s
#: apart, so that c.example's return is noticed at once (defaults: 1 s, 300 s).
DEMO_LIMITS = Limits(federation_retry_base_s=0.2, federation_retry_max_s=1.0)
#: How long one wait of the story (a homeserver starting, messages arriving) may take.
WAIT_S = 30.0
POLL_S = 0.2


class StoryFailed(Exception):
    """A check of the story did not hold; the message is the one-line reason."""


# --- the homeserver processes ------------------------------------------------------------------

def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports on loopback that are free right now."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def stop_processes(procs, grace_s: float = 5.0) -> None:
    """SIGTERM every process of ``procs``; SIGKILL what has not ended after ``grace_s``."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Lab:
    """Three homeservers in ``root``: ``root/ca`` (the test CA) and
    ``root/<domain>`` (config.toml, keys, data, ``requests.jsonl`` — the
    request log — and ``serve.log``, the process's output)."""
    root: Path
    ports: dict[str, int]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @classmethod
    def create(cls, root: Path) -> "Lab":
        lab = cls(root, dict(zip(DOMAINS, free_ports(len(DOMAINS)))))
        for d in DOMAINS:
            generate_config(root / d, d, port=lab.ports[d], test_ca=True, test_ca_dir=root / "ca",
                            peers={o: lab.ports[o] for o in DOMAINS if o != d}, limits=DEMO_LIMITS)
        return lab

    @property
    def ca(self) -> Path:
        return self.root / "ca" / "ca.pem"

    def config(self, domain: str) -> Path:
        return self.root / domain / "config.toml"

    def request_log(self, domain: str) -> Path:
        return self.root / domain / "requests.jsonl"

    def serve_log(self, domain: str) -> Path:
        return self.root / domain / "serve.log"

    def resolve(self) -> dict[str, str]:
        """Every host name of the three homeservers → its loopback address."""
        return {h: f"127.0.0.1:{self.ports[d]}" for d in DOMAINS for h in certificate_names(d)}

    def serve_command(self, domain: str) -> list[str]:
        return ["phoenix-ref", "serve", "--config", str(self.config(domain)),
                "--request-log", str(self.request_log(domain))]

    def start(self, domain: str) -> subprocess.Popen:
        """``phoenix-ref serve`` for ``domain`` in a process of its own
        (its own session, so a Ctrl-C in the terminal reaches only the demo,
        which then stops it)."""
        argv = [sys.executable, "-m", "phoenix_ref.cli"] + self.serve_command(domain)[1:]
        with open(self.serve_log(domain), "ab") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs[domain] = proc
        return proc

    def kill(self, domain: str) -> None:
        """Stop ``domain``'s process at once (SIGKILL: no goodbye, no shutdown)."""
        proc = self.procs.pop(domain)
        proc.kill()
        proc.wait()

    def stop_all(self) -> None:
        """SIGTERM every process; SIGKILL what has not ended after 5 s."""
        stop_processes(self.procs.values())
        self.procs.clear()

    def tail(self, domain: str, lines: int = 5) -> str:
        try:
            text = self.serve_log(domain).read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    async def wait_ready(self, domain: str, http: httpx.AsyncClient) -> float:
        """Until ``domain`` answers its ``.well-known/phoenix`` over TLS; the seconds it took."""
        started = time.monotonic()
        url = f"https://{domain}:{self.ports[domain]}/.well-known/phoenix"
        while True:
            proc = self.procs[domain]
            if proc.poll() is not None:
                raise StoryFailed(f"{domain} exited with status {proc.returncode}: {self.tail(domain)}")
            try:
                if (await http.get(url)).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            if time.monotonic() - started > WAIT_S:
                raise StoryFailed(f"{domain} did not answer within {WAIT_S:.0f} s: {self.tail(domain)}")
            await trio.sleep(0.1)


# --- reading the request logs --------------------------------------------------------------------

def endpoint_name(path: str) -> str:
    """The endpoint a path names: every Phoenix endpoint is ``/phoenix/v1/<name>``."""
    prefix = "/phoenix/v1/"
    if path.startswith(prefix):
        return path[len(prefix):]
    return "well-known" if path == "/.well-known/phoenix" else path


def who(entry: dict[str, Any]) -> str:
    """Who sent a request a homeserver served: a demo user (by the
    User-Agent of the demo's clients), ``homeserver`` or ``other``."""
    agent = entry.get("agent", "")
    if agent.startswith(AGENT + " (") and agent.endswith(")"):
        return agent[len(AGENT) + 2:-1]
    return "homeserver" if agent == USER_AGENT else "other"


def ok(entry: dict[str, Any]) -> bool:
    status = entry.get("status")
    return status is not None and status < 400


def counted(names: Iterable[str]) -> str:
    """``["a", "b", "a"]`` → ``"a x2, b"`` (in order of first appearance)."""
    counts = Counter(names)
    return ", ".join(n if c == 1 else f"{n} x{c}" for n, c in counts.items())


class RequestLogs:
    """Reads what the homeservers appended to their request logs since the last read."""

    def __init__(self, lab: Lab):
        self.lab = lab
        self._offsets = {d: 0 for d in DOMAINS}

    def read_new_into(self, entries: list[dict[str, Any]]) -> int:
        """Append what is new to ``entries``; how many lines that was."""
        new = self.read_new()
        entries += new
        return len(new)

    def read_new(self) -> list[dict[str, Any]]:
        """The complete lines written since the last call, of all three logs, by time."""
        entries = []
        for d in DOMAINS:
            try:
                with open(self.lab.request_log(d), "rb") as f:
                    f.seek(self._offsets[d])
                    data = f.read()
            except FileNotFoundError:
                continue
            end = data.rfind(b"\n") + 1          # a line still being written waits for the next read
            self._offsets[d] += end
            entries += [json.loads(line) for line in data[:end].splitlines() if line.strip()]
        return sorted(entries, key=lambda e: e["t"])


def summary_lines(entries: list[dict[str, Any]]) -> list[str]:
    """The console summary of one step's log entries: per homeserver what it
    served (by client), then the federation requests between homeservers."""
    out = []
    for d in DOMAINS:
        served = [e for e in entries if e["dir"] == "in" and e["hs"] == d]
        if not served:
            continue
        by_client: dict[str, list[str]] = {}
        for e in served:
            name = endpoint_name(e["path"]) + ("" if ok(e) else f" ({e.get('status')})")
            by_client.setdefault(who(e), []).append(name)
        parts = [f"{c} {len(ns)} ({counted(ns)})" for c, ns in by_client.items()]
        out.append(f"{d} served {len(served)}: " + "; ".join(parts))
    sent: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for e in entries:
        if e["dir"] == "out":
            sent.setdefault((e["hs"], e["to"]), []).append(e)
    for (src, dst), es in sent.items():
        good = [endpoint_name(e["path"]) for e in es if ok(e)]
        bad = [f"{endpoint_name(e['path'])} ({e.get('error') or e.get('status')})" for e in es if not ok(e)]
        text = f"federation {src} -> {dst}: "
        text += "; ".join(p for p in (f"{len(good)} ok ({counted(good)})" if good else "",
                                      f"{len(bad)} failed ({counted(bad)})" if bad else "") if p)
        out.append(text)
    return out or ["(no requests)"]


# --- the sequence diagram ------------------------------------------------------------------------

class Diagram:
    """A Mermaid ``sequenceDiagram``: a note per step and per announced
    action, each followed by the requests logged meanwhile, one arrow per
    (sender, receiver, success) with the endpoints and their counts."""

    def __init__(self, users: Iterable[str]):
        self.users = list(users)
        self.lines = ["sequenceDiagram"]
        self.lines += [f"    participant {u} as {u} (client)" for u in self.users]
        self.lines += [f"    participant {SHORT[d]} as {d}" for d in DOMAINS]

    def _span(self) -> str:
        return f"{self.users[0]},{SHORT[DOMAINS[-1]]}"

    def step(self, title: str) -> None:
        self.lines.append(f"    Note over {self._span()}: {_safe(title)}")

    def note(self, over: str | None, text: str) -> None:
        """A note over one participant, or over all of them."""
        self.lines.append(f"    Note over {over or self._span()}: {_safe(text)}")

    def requests(self, entries: list[dict[str, Any]]) -> None:
        """Arrows for a stretch of log entries. A request served for another
        homeserver is drawn from the sender's log (it also says when the
        receiver could not be reached), so it is skipped on the receiving side."""
        arrows: dict[tuple[str, str, bool], list[str]] = {}
        for e in entries:
            if e["dir"] == "in":
                src = who(e)
                if src not in self.users:
                    continue
                dst = SHORT[e["hs"]]
            elif e["dir"] == "out":     # "attempt" lines repeat what the "out" lines show
                src, dst = SHORT[e["hs"]], SHORT.get(e["to"])
                if dst is None:
                    continue
            else:
                continue
            good = ok(e)
            label = endpoint_name(e["path"])
            if not good:
                label += f" ({e.get('error') or e.get('status')})"
            arrows.setdefault((src, dst, good), []).append(label)
        for (src, dst, good), names in arrows.items():
            self.lines.append(f"    {src}{'->>' if good else '-x'}{dst}: {_safe(counted(names))}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _safe(text: str) -> str:
    """Text for a Mermaid message or note: no statement separators, entity
    codes or line breaks."""
    return text.replace(";", ",").replace("#", "no.").replace("\n", " ")


# --- the story -----------------------------------------------------------------------------------

class Story:
    """Runs the steps, prints them, checks them, and keeps the trace.

    Within a step, :meth:`say` announces an action before it is done; the
    log entries written from then until the next announcement are drawn
    after it in the diagram, so the diagram reads like the console."""

    def __init__(self, lab: Lab, out: Callable[[str], None] = print):
        self.lab = lab
        self.logs = RequestLogs(lab)
        self.diagram = Diagram(["alice", "bob", "carol"])
        self.out = out
        self.steps = 0
        self.checks = 0
        self.step_entries: list[dict[str, Any]] = []
        #: this step's announcements: (time, text, participant it concerns)
        self.marks: list[tuple[float, str, str | None]] = []
        self.clients: dict[str, httpx.AsyncClient] = {}

    # --- printing and checking ---

    @asynccontextmanager
    async def step(self, title: str) -> AsyncIterator[None]:
        self.steps += 1
        self.out(f"\n[{self.steps}] {title}")
        started = time.monotonic()
        self.step_entries, self.marks = [], []
        try:
            yield
        finally:
            await self.settle()
            self.out(f"  ({time.monotonic() - started:.1f} s)")
            for line in summary_lines(self.step_entries):
                self.out(textwrap.fill(line, 110, initial_indent="  | ", subsequent_indent="  |     "))
            self.draw(f"{self.steps}. {title}")

    def draw(self, title: str) -> None:
        """This step in the diagram: its title, then each announcement with
        the requests logged after it."""
        self.diagram.step(title)
        bounds = [t for t, _, _ in self.marks] + [float("inf")]
        self.diagram.requests([e for e in self.step_entries if e["t"] < bounds[0]])
        for i, (t, text, actor) in enumerate(self.marks):
            self.diagram.note(actor, text)
            self.diagram.requests([e for e in self.step_entries if t <= e["t"] < bounds[i + 1]])

    def collect(self) -> list[dict[str, Any]]:
        """This step's log entries so far (reading what is new)."""
        self.step_entries += self.logs.read_new()
        return self.step_entries

    async def settle(self) -> None:
        """Read the logs until they have been quiet for 0.1 s (at most 0.5 s):
        a federation request's line is written once its answer came back."""
        deadline = time.monotonic() + 0.5
        self.collect()
        while time.monotonic() < deadline:
            await trio.sleep(0.1)
            if not self.logs.read_new_into(self.step_entries):
                return

    def say(self, text: str, actor: str | None = None, *, note: str | None = None) -> None:
        """Announce what happens next (``actor``: the participant it
        concerns; ``note``: a shorter text for the diagram)."""
        self.collect()
        self.marks.append((time.time(), note or text, actor))
        self.out(f"  - {text}")

    def check(self, holds: bool, what: str, detail: str = "") -> None:
        if not holds:
            raise StoryFailed(f"step {self.steps}: {what} does not hold" + (f" ({detail})" if detail else ""))
        self.checks += 1
        self.out(f"  ok {what}")

    # --- clients ---

    def http(self, name: str) -> httpx.AsyncClient:
        """An HTTPS client named ``name`` (in its User-Agent) that reaches the
        three homeservers on loopback, verifying them against the test CA."""
        if name not in self.clients:
            transport = https_transport(client_ssl_context(self.lab.ca), self.lab.resolve())
            self.clients[name] = httpx.AsyncClient(transport=transport, trust_env=False, timeout=10.0,
                                                   headers={"user-agent": f"{AGENT} ({name})"})
        return self.clients[name]

    async def aclose(self) -> None:
        for client in self.clients.values():
            await client.aclose()

    async def until(self, what: str, condition: Callable[[], bool], *members: Any,
                    poll: Callable[[], Any] | None = None) -> None:
        """Receive at ``members`` (or run ``poll``) until ``condition()``
        holds; fail the story after :data:`WAIT_S`."""
        deadline = time.monotonic() + WAIT_S
        while True:
            for m in members:
                await m.receive()
            if poll is not None:
                poll()
            if condition():
                return
            if time.monotonic() > deadline:
                raise StoryFailed(f"step {self.steps}: {what} did not happen within {WAIT_S:.0f} s")
            await trio.sleep(POLL_S)

    def agree(self, gid: Any, members: dict[str, Any]) -> None:
        groups = {n: m.groups[gid].group for n, m in members.items()}
        epochs = {g.epoch for g in groups.values()}
        auths = {bytes(g.epoch_authenticator) for g in groups.values()}
        self.check(len(epochs) == 1 and len(auths) == 1,
                   f"{', '.join(members)} agree on epoch {min(epochs)} and its authenticator "
                   f"{min(auths).hex()[:12]}...", f"epochs {[g.epoch for g in groups.values()]}")

    async def chat(self, gid: Any, members: dict[str, Any], round_no: int) -> None:
        """Each member sends one text; each gets the others' exactly once."""
        before = {n: len(m.text_bodies(gid)) for n, m in members.items()}
        sent = {}
        for n, m in members.items():
            sent[n] = f"{n}: hello everyone (round {round_no})".encode()
            self.say(f"{n} sends {sent[n].decode()!r}", n)
            await m.send(gid, sent[n])
        expected = {n: sorted(t for o, t in sent.items() if o != n) for n in members}

        def arrived() -> bool:
            return all(len(m.text_bodies(gid)) >= before[n] + len(expected[n]) for n, m in members.items())
        self.say("everyone fetches their queue until the texts are in")
        await self.until("every text arriving", arrived, *members.values())
        await trio.sleep(2 * POLL_S)               # anything extra would show now
        for m in members.values():
            await m.receive()
        for n, m in members.items():
            got = sorted(m.text_bodies(gid)[before[n]:])
            self.check(got == expected[n], f"{n} got the {len(expected[n])} other texts exactly once", str(got))

    # --- the steps ---

    async def run(self) -> None:
        lab = self.lab

        async with self.step("three homeservers start, each a `phoenix-ref serve` process over TLS 1.3"):
            for d in DOMAINS:
                self.say(" ".join(lab.serve_command(d)), SHORT[d], note=f"phoenix-ref serve ({d})")
                lab.start(d)
            for d in DOMAINS:
                took = await lab.wait_ready(d, self.http("demo"))
                self.out(f"    {d} (pid {lab.procs[d].pid}) answers on "
                         f"https://{{as,ds,qs}}.{d}:{lab.ports[d]} after {took:.1f} s")
            self.check(all(p.poll() is None for p in lab.procs.values()), "the three homeservers are up")

        users: dict[str, Messenger] = {}
        async with self.step("alice@a.example, bob@b.example and carol@c.example register"):
            for name, domain in (("alice", A), ("bob", B), ("carol", C)):
                self.say(f"{name} registers at {domain} and fetches the three ASs' credentials", name)
                users[name] = await Messenger.register(self.http(name), domain, clock=Clock())
                await users[name].trust_domains(*DOMAINS)
                self.out(f"    {name} is {users[name].user_id}")
            alice, bob, carol = users["alice"], users["bob"], users["carol"]
            self.say("carol registers the alias 'carol' at c.example", "carol")
            await carol.session.register_alias("carol")
            self.check(len({str(u.user_id) for u in users.values()}) == 3, "three distinct users registered")

        async with self.step("connections: alice -> bob by user id, alice -> carol by alias, bob -> carol"):
            self.say("alice asks bob's AS for a connection package and sends bob a request", "alice")
            with_bob = await alice.connect(bob.user_id)
            self.say("alice reaches carol through her alias 'carol' at c.example", "alice")
            with_carol = await alice.connect(alias=(C, "carol"))
            self.say("bob sends carol a request by her user id", "bob")
            bob_carol = await bob.connect(carol.user_id)
            self.say("bob accepts: he joins the connection group on a.example", "bob")
            self.check(await bob.accept_connections() == [with_bob], "bob found and accepted alice's request")
            self.say("carol accepts both requests (alias queue, direct queue)", "carol")
            self.check(await carol.accept_connections(alias="carol") == [with_carol],
                       "carol found alice's request in her alias queue")
            self.check(await carol.accept_connections() == [bob_carol], "carol found bob's request")
            uid_names = {u.user_id: n for n, u in users.items()}

            def contacts_known() -> bool:
                return all(set(users) - {n} <= {uid_names.get(u) for u in m.contacts}
                           for n, m in users.items())
            self.say("they swap contact cards in the connection groups")
            await self.until("the contact cards being swapped", contacts_known, *users.values())
            self.check(True, "everyone has the other two as contacts")

        async with self.step("alice creates a group on a.example and invites bob and carol"):
            self.say("alice creates the group", "alice")
            gid = await alice.create_group()
            self.say("alice fetches bob's and carol's AddPackages and adds them", "alice")
            await alice.invite(gid, [bob.user_id, carol.user_id])
            self.say("bob and carol fetch their Welcome and join")
            await self.until("bob and carol joining", lambda: gid in bob.groups and gid in carol.groups, bob, carol)
            self.check(True, f"bob and carol joined group {gid}")
            self.agree(gid, users)

        async with self.step("they chat"):
            await self.chat(gid, users, 1)

        async with self.step("alice (the admin) removes bob, then adds him back"):
            self.say("alice removes bob", "alice")
            await alice.remove(gid, [bob.user_id])
            await self.until("bob learning he was removed", lambda: gid not in bob.groups and
                             carol.groups[gid].group.epoch == alice.groups[gid].group.epoch, bob, carol)
            self.check(("removed", gid) in bob.events, "bob's client saw it was removed")
            self.agree(gid, {"alice": alice, "carol": carol})
            self.say("alice invites bob again", "alice")
            await alice.invite(gid, [bob.user_id])
            await self.until("bob rejoining", lambda: gid in bob.groups and
                             carol.groups[gid].group.epoch == alice.groups[gid].group.epoch, bob, carol)
            self.agree(gid, users)
            await self.chat(gid, users, 2)

        async with self.step("c.example is cut off: its process is killed (SIGKILL)"):
            self.say(f"kill -KILL {lab.procs[C].pid} ({C})", SHORT[C])
            lab.kill(C)
            try:
                await carol.receive()
                reached = True
            except httpx.HTTPError as e:
                reached = False
                self.out(f"    carol's client: {type(e).__name__} reaching qs.{C}")
            self.check(not reached, "carol's client can no longer reach c.example")

        away_group: list[bytes] = []
        away_direct: list[bytes] = []
        carol_before = (len(carol.text_bodies(gid)), len(carol.text_bodies(bob_carol)))
        async with self.step("alice and bob keep chatting while c.example is away"):
            alice_0, bob_0 = len(alice.text_bodies(gid)), len(bob.text_bodies(gid))
            for i, (name, m) in enumerate((("alice", alice), ("bob", bob), ("alice", alice), ("bob", bob)), 1):
                text = f"{name}: message {i} while carol is away".encode()
                self.say(f"{name} sends {text.decode()!r} to the group", name)
                await m.send(gid, text)
                away_group.append(text)
            text = b"bob: carol, call me when you are back"
            self.say(f"bob sends {text.decode()!r} to carol alone (their connection group, on b.example)", "bob")
            await bob.send(bob_carol, text)
            away_direct.append(text)
            self.say("alice and bob fetch their queues")
            await self.until("alice and bob getting each other's texts", lambda: (
                len(alice.text_bodies(gid)) >= alice_0 + 2 and len(bob.text_bodies(gid)) >= bob_0 + 2), alice, bob)
            await trio.sleep(2 * POLL_S)
            for m in (alice, bob):
                await m.receive()
            self.check(alice.text_bodies(gid)[alice_0:] == [away_group[1], away_group[3]]
                       and bob.text_bodies(gid)[bob_0:] == [away_group[0], away_group[2]],
                       "alice and bob each got the other's two texts exactly once")

            def failed_to_c(src: str) -> bool:
                return any(e["dir"] == "out" and e["hs"] == src and e["to"] == C and not ok(e)
                           for e in self.step_entries)
            await self.until("both outbound queues trying c.example", lambda: failed_to_c(A) and failed_to_c(B),
                             poll=self.collect)
            self.check(True, "a.example's and b.example's logs show their deliveries to c.example failing")

        async with self.step("c.example comes back (same data directory); the queues deliver"):
            self.say(" ".join(lab.serve_command(C)) + " (again)", SHORT[C],
                     note=f"phoenix-ref serve ({C}) again, on the same data")
            lab.start(C)
            took = await lab.wait_ready(C, self.http("demo"))
            self.out(f"    {C} (pid {lab.procs[C].pid}) answers after {took:.1f} s")
            self.say("carol fetches her queue", "carol")
            await self.until("carol catching up", lambda: (
                len(carol.text_bodies(gid)) >= carol_before[0] + len(away_group)
                and len(carol.text_bodies(bob_carol)) >= carol_before[1] + len(away_direct)), carol)
            await trio.sleep(1.5)                # longer than the retry cap: a duplicate would be in by now
            await carol.receive()
            got_group = carol.text_bodies(gid)[carol_before[0]:]
            got_direct = carol.text_bodies(bob_carol)[carol_before[1]:]
            self.check(got_group == away_group,
                       f"carol got the {len(away_group)} group texts sent while she was away, in order, once each",
                       str(got_group))
            self.check(got_direct == away_direct, "carol got bob's direct text exactly once", str(got_direct))
            entries = self.collect()
            for src in (A, B):
                self.check(any(e["dir"] == "out" and e["hs"] == src and e["to"] == C and ok(e)
                               and endpoint_name(e["path"]) in ("federated_enqueue", "federated_enqueue_batch")
                               for e in entries),
                           f"{src}'s outbound queue delivered to c.example (its request log)")
            self.agree(gid, users)

        async with self.step("all three chat again"):
            await self.chat(gid, users, 3)


# --- the command ---------------------------------------------------------------------------------

def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "demo", help="three homeservers on this machine and a story through them (exit 0 if it all held)",
        description=__doc__.split("\n\n")[0].replace("``", "'"),
        epilog="example: phoenix-ref demo --trace /tmp/trace.mmd")
    p.add_argument("--trace", type=Path, default=Path("demo-trace.mmd"), metavar="FILE",
                   help="where to write the Mermaid sequence diagram (default: %(default)s)")
    p.add_argument("--keep", action="store_true",
                   help="leave the homeservers running afterwards and print how to join with phoenix-ref client")


def run(args: argparse.Namespace) -> int:
    """``phoenix-ref demo``: 0 when every check held, 1 (and one line why) otherwise."""
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="phoenix-demo-"))
    print(f"phoenix-ref demo: three homeservers in {root}", flush=True)
    lab: Lab | None = None
    story: Story | None = None
    failure = None
    try:
        lab = Lab.create(root)
        story = Story(lab, out=lambda line: print(line, flush=True))
        trio.run(_run_story, story)
    except KeyboardInterrupt:
        failure = "interrupted"
    except Exception as e:
        first = _first_leaf(e)
        failure = str(first) if isinstance(first, StoryFailed) else \
            f"step {story.steps if story else 0}: {type(first).__name__}: {first}"
        if not isinstance(first, StoryFailed):
            (root / "demo-error.txt").write_text(traceback.format_exc())
    finally:
        if lab is not None and (failure is not None or not args.keep):
            lab.stop_all()
    if story is not None:
        try:
            args.trace.write_text(story.diagram.text(), encoding="utf-8")
            print(f"\ntrace: {args.trace} (a Mermaid sequenceDiagram)")
        except OSError as e:
            failure = failure or f"cannot write the trace: {e}"
    if failure is not None:
        print(f"phoenix-ref demo: FAILED: {failure}  (the homeservers' files are kept in {root})",
              file=sys.stderr)
        return 1
    print(f"all {story.checks} checks held in {story.steps} steps; {time.monotonic() - started:.1f} s")
    if args.keep:
        print_join_instructions(lab)
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def _first_leaf(error: BaseException) -> BaseException:
    """The first exception inside (nested) exception groups."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


async def _run_story(story: Story) -> None:
    try:
        await story.run()
    finally:
        await story.aclose()


def print_join_instructions(lab: Lab) -> None:
    """How to join the running homeservers by hand (``--keep``)."""
    resolve = " ".join(f"--resolve {h}={a}" for h, a in lab.resolve().items())
    print("\nThe homeservers keep running:")
    for d in DOMAINS:
        print(f"  {d}: pid {lab.procs[d].pid}, https://127.0.0.1:{lab.ports[d]}, config {lab.config(d)}, "
              f"request log {lab.request_log(d)}")
    print(f"  test CA: {lab.ca}")
    print("Join in with the command-line client, e.g. one user on a.example and one on b.example:")
    for who_, d in (("you", A), ("friend", B)):
        state = lab.root / "clients" / who_
        print(f"  phoenix-ref client --state {shlex.quote(str(state))} register --domain {d} "
              f"--ca {shlex.quote(str(lab.ca))} {resolve}")
    print("Stop them with:")
    print(f"  kill {' '.join(str(p.pid) for p in lab.procs.values())}; rm -r {shlex.quote(str(lab.root))}")
