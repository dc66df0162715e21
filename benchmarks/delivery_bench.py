"""End-to-end cost and latency of federated delivery, DS in the path.

What runs: two homeservers, ``a.example`` and ``b.example``, each a
``phoenix-ref serve`` process over TLS 1.3 on loopback (configs and a test
CA made as ``phoenix-ref generate-config --test-ca`` makes them, with the
operator metrics listener on). The clients go through the client library
(:class:`~phoenix_ref.client.messenger.Messenger` over HTTPS): the sender
in this script's process, each scenario's recipients in a process of their
own (this script run with ``--recipients``, started for the scenario and
talking JSON lines on its stdin and stdout), so that decrypting for ten
recipients does not pace the sender — open loop means sending as fast as
the DS accepts, not as fast as a client busy with other work sends. In
every scenario the sender, one user registered on
``a.example`` for the whole run, creates a group on ``a.example``'s DS and
invites users registered on ``b.example``; then it sends MLS application
messages to the group. So a message goes client → DS of A (checks the
DsAuthToken and Privacy Pass token, fans out) → QS of A (outbound queue) →
federation request → QS of B → the recipient's queue → websocket
notification → the recipient's client dequeues and decrypts it.

Scenarios (each on a fresh group with fresh recipients, after 3 warm-up
messages that are not counted, so that the figures leave out what only a
group's first message costs; the QS's per-queue rate limits count per
minute, and fresh queues keep one scenario's traffic from counting against
the next):

* ``a``        one sender → one user on B, N messages (default 500), at most
  ``--in-flight`` (50) messages sent but not yet decrypted by the recipient;
* ``c``        one sender → ``--users`` (10) users on B, N messages (200),
  the same window, a message counting until every recipient has it;
* ``probe``    one user on B, ``--probe`` (30) messages one at a time: the next
  is sent when the previous one has been decrypted;
* ``open-a``, ``open-c``  as ``a`` and ``c`` but open loop: the sender sends as
  fast as the DS accepts (at most ``--in-flight`` send requests outstanding)
  and never waits for deliveries, so messages pile up in the outbound
  queue — which is where a batching sender shows its batches.

And first, the **floor**: ``--floor-requests`` (1000) ``GET /.well-known/phoenix``
requests to each homeserver, one at a time over one kept-alive HTTP/2
connection, and as many again over HTTP/1.1. That endpoint answers a small
constant document and touches no store and no key, so it is the cheapest
request through the same stack as every other one: TLS 1.3, anycorn's HTTP/2
or HTTP/1.1, the homeserver's ASGI app with its Host routing, the request log
and the metrics. Its CPU per request over HTTP/2 (mean of the two
homeservers) is the unit every other CPU figure is also given in
("×floor"). The client's CPU per request (this process, through the same
transport as every client here) is measured beside it.

With the floor, each scenario also shows **its requests at the floor**: what
the requests it made would cost if each cost no more than an empty one of its
protocol — the sends A serves and the dequeues B serves over HTTP/2, the
federation requests over HTTP/1.1 (B's side and A's as their client). "A+B"
is the homeservers' part, per federated delivery; "all" adds the clients'
side of the sends and dequeues, per message. A real request carries a body
and work, so this is less than the stack alone takes: the part of a CPU
figure that no change to the homeserver short of its HTTP server can win
back (``--lean-a``, below, measures what that change would win). Beside it,
**CPU ms/message, A+B+clients** adds the clients' CPU to the homeservers'.
In the probe, where each step waits for the one before, that sum is close
to the latency.

What is measured, per scenario, from outside the homeservers:

* **CPU** of each homeserver process: utime + stime of ``/proc/<pid>/stat``
  (all its threads) read before the first message and again once both
  processes have gone idle after the last delivery (no CPU tick for 0.3 s),
  so the tail — the outbound queue removing what B acknowledged — is in.
  The clients' CPU (this process and the recipients') is not counted (it
  is shown apart, for a look at whether the clients were the bottleneck).
  Tick: 10 ms, so run scenarios of hundreds of messages for a steady figure;
* **per federated delivery**: one message crossing from A to one destination
  homeserver, whatever the number of its recipients there (how this script
  reads the issue's term; it is what one QsToQsMessage carries, and what
  one event sent to one remote server is in a Matrix homeserver). In ``a``
  and ``probe`` it is also one user-delivery; in ``c`` one federated
  delivery carries a message to ``--users`` users;
* **per user-delivery**: one message decrypted by one recipient's client;
* **requests served** by each homeserver (``phoenix_http_requests_total``:
  the sends at A, the federation requests and dequeues at B; websocket
  notifications are no requests), to read the CPU figures against;
* **federation requests**: requests A sent to B on both federation rows
  (``federated_enqueue`` for a lone message, ``federated_enqueue_batch``
  for a batch, see ``FEDERATION_ENDPOINTS``), and
  **messages per request** read from A's ``phoenix_federation_batch_messages_sent``
  histogram (its sum over its count), as scraped from A's ``/metrics`` before
  and after; **429s** (``phoenix_rate_limit_given_total`` of both), federation
  **retries** and **dead letters** come from the same scrapes;
* **latency**: from the sender's send call to the recipient's client
  holding the decrypted text (when the client library's ``receive()`` that
  dequeued and decrypted it returns), per user-delivery (p50, p95). Recipients
  listen on the QS websocket (``#negotiate-websocket-connection``): a
  notification makes the client dequeue at once (those that come while it
  dequeues add up to one more dequeue), so no polling interval is in the
  figure. The times of both client processes are read from the same
  monotonic clock (``time.perf_counter``: ``CLOCK_MONOTONIC``, one per
  machine). On a machine of two cores the four processes share them, so
  under load the clients' CPU adds to the latency;
* **msgs/s**: messages delivered to all their recipients per second, from
  the first send to the last decryption; beside it **sends accepted/s**,
  from the first send to the DS's last answer. Under open loop the gap
  between the two is the backlog that built up behind the DS (in A's
  outbound queue, while its sender delivers one request after another),
  and it is also what makes the open-loop latencies long;
* **lost**: for every message the DS accepted and every recipient, whether
  the recipient decrypted it exactly once, checked on the decrypted texts
  (which carry the scenario and a sequence number, and must come from the
  sender byte for byte; anything else counts as ``foreign``): ``lost`` =
  copies that never came within ``--settle`` seconds without progress,
  ``duplicates`` = copies beyond the first. A send the DS did not accept
  is a send error, not a loss. The exit status is 2 when anything was
  lost, duplicated or foreign, 1 when the run could not be made.

Privacy Pass: every send request spends a token of A's AS. The sender tops
up its wallet before the measured window (issuance is not a delivery cost;
its CPU per token is printed apart), and the generated configs raise the
token allowance so that nothing is refused for want of tokens. The QS's
own rate limits (``spec/queuing_service.md#rate-limiting``) are not
configurable and keep their defaults; a scenario of more than 600 messages
within a minute to one recipient meets the per-queue-config one (the
script says so before it starts, and counts the 429s).

How to read it: the figures that matter for the targets of issue 17 are
CPU per federated delivery in ``a`` (≤ 3.5 ms; Synapse 35–50 ms), CPU per
user-delivery in ``c`` (≤ 1.5 ms), messages per federation request with
0 lost under open loop (≥ 10) and the probe's p50 (≤ 15 ms; Synapse
37–55 ms); the script prints each with whether it held. Absolute figures
depend on the machine and on what else runs on it; the ×floor figures much
less so. Run on a quiet machine.

``--lean-a`` serves A's public listener on ``lean_server.py`` instead of
anycorn: the homeserver, its request log and its metrics as ever, only the
HTTP server replaced by one with nothing between the TLS stream and ``h2``
/ ``h11`` (no timeouts, limits or websockets: a measuring instrument). A
serves every send, so the difference in A's CPU between a run with it and
one without is about what a server of the project's own could win back
(B keeps anycorn: its recipients listen on websockets).

Run: ``python benchmarks/delivery_bench.py [--n-a 500] [--n-c 200] [--users 10]
[--in-flight 50] [--probe 30] [--scenarios a,c,probe,open-a,open-c] [--lean-a] [--json FILE]``;
``--quick`` is a smoke run
(small N, 3 users). ``--keep`` keeps the homeservers' folder (configs, logs).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import httpx
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from phoenix_ref.client.messenger import ContactCard, Messenger  # noqa: E402
from phoenix_ref.client.qs_client import WsprotoTransport  # noqa: E402
from phoenix_ref.clock import Clock  # noqa: E402
from phoenix_ref.codec import decode, encode  # noqa: E402
from phoenix_ref.config import Limits, OperatorSettings  # noqa: E402
from phoenix_ref.demo import free_ports, stop_processes  # noqa: E402
from phoenix_ref.endpoints import by_name  # noqa: E402
from phoenix_ref.federation.client import client_ssl_context, https_transport  # noqa: E402
from phoenix_ref.ids import GroupId, UserId  # noqa: E402
from phoenix_ref.metrics import Scrape  # noqa: E402
from phoenix_ref.provision import certificate_names, generate_config  # noqa: E402
from phoenix_ref.queuing.core import QsConfig  # noqa: E402

A, B = "a.example", "b.example"
DOMAINS = (A, B)
#: the federation rows a QS sends on (decision "QS-to-QS batches"): a lone message, a batch
FEDERATION_ENDPOINTS = ("federated_enqueue", "federated_enqueue_batch")
#: The floor's protocols, as httpx names them, and whether the transport offers HTTP/2:
#: the clients speak HTTP/2 to their homeserver, the federation client HTTP/1.1
#: (docs/decisions.md, "Federation requests over HTTP/1.1").
FLOOR_PROTOCOLS = {"HTTP/2": True, "HTTP/1.1": False}
#: The generated configs' limits: no client runs short of Privacy Pass
#: tokens, and a connection is not closed after 1000 requests (the default):
#: anycorn's GOAWAY then fails the requests in flight on it that are not safe
#: to repeat (docs/decisions.md, "Connection reuse") — at 50 sends in flight,
#: a few sends a thousand, which would show as send errors here, not as
#: delivery cost. Everything else keeps its default.
BENCH_LIMITS = Limits(token_allowance=10 ** 9, token_domain_allowance=10 ** 9, token_batch_max=1000,
                      max_requests_per_connection=10 ** 9)
TICK_S = 1 / os.sysconf("SC_CLK_TCK")
WARMUP_MESSAGES = 3
#: Messages a dequeue asks for (the client library's default).
DEQUEUE_MAX = 500
#: A text of ordinary size: "dbench <tag> <seq> " and filler up to this many bytes.
BODY_BYTES = 100
#: Targets of issue 17 (Synapse baseline in brackets in the output).
TARGET_FED_CPU_MS = 3.5
TARGET_USER_CPU_MS = 1.5
TARGET_BATCH = 10.0
TARGET_P50_MS = 15.0
#: The QS's per-queue-config rate limit (its default; per minute): a scenario
#: sending more to one recipient within a minute meets 429s.
QS_CONFIG_LIMIT_PER_MINUTE = QsConfig.rate_limit_per_client_queue_config.limit


class BenchFailed(Exception):
    """The benchmark could not run (a homeserver did not start, a setup step failed)."""


# --- the homeserver processes ----------------------------------------------------------------------

def process_cpu_s(pid: int) -> float:
    """utime + stime of process ``pid`` (every thread), in seconds, from ``/proc/<pid>/stat``."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # the command name (field 2) may hold spaces: fields after its closing parenthesis
    fields = stat[stat.rindex(b")") + 2:].split()
    utime, stime = int(fields[11]), int(fields[12])    # fields 14 and 15 of proc(5)
    return (utime + stime) * TICK_S


async def wait_answering(name: str, proc: subprocess.Popen, up: Callable[[], Any], deadline: float,
                         tail: Callable[[], str]) -> None:
    """Poll ``await up()`` every 0.1 s until it is true; BenchFailed when
    ``proc`` exits or ``deadline`` (``time.monotonic``) passes first, with
    the end of its log (``tail()``)."""
    while True:
        if proc.poll() is not None:
            raise BenchFailed(f"{name} exited with status {proc.returncode}: {tail()}")
        try:
            if await up():
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise BenchFailed(f"{name} did not answer in time: {tail()}")
        await trio.sleep(0.1)


@dataclass
class Homeservers:
    """``a.example`` and ``b.example`` in ``root`` (``root/ca``: the test CA;
    ``root/<domain>``: config, keys, data, ``serve.log``)."""
    root: Path
    ports: dict[str, int]
    metrics_ports: dict[str, int]
    lean_a: bool = False            # A's public listener on benchmarks/lean_server.py, not anycorn
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @classmethod
    def create(cls, root: Path, lean_a: bool = False) -> "Homeservers":
        ports = free_ports(4)
        hs = cls(root, dict(zip(DOMAINS, ports[:2])), dict(zip(DOMAINS, ports[2:])), lean_a)
        for d in DOMAINS:
            generate_config(root / d, d, port=hs.ports[d], test_ca=True, test_ca_dir=root / "ca",
                            peers={o: hs.ports[o] for o in DOMAINS if o != d}, limits=BENCH_LIMITS,
                            operator=OperatorSettings(metrics_listen=f"127.0.0.1:{hs.metrics_ports[d]}"))
        return hs

    @property
    def ca(self) -> Path:
        return self.root / "ca" / "ca.pem"

    def resolve(self) -> dict[str, str]:
        """Every host name of both homeservers → its loopback address."""
        return {h: f"127.0.0.1:{self.ports[d]}" for d in DOMAINS for h in certificate_names(d)}

    def start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        for d in DOMAINS:
            config = ["--config", str(self.root / d / "config.toml")]
            if d == A and self.lean_a:
                argv = [sys.executable, str(ROOT / "benchmarks" / "lean_server.py"), *config]
            else:
                argv = [sys.executable, "-m", "phoenix_ref.cli", "serve", *config]
            with open(self.root / d / "serve.log", "ab") as out:
                self.procs[d] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                                 stderr=subprocess.STDOUT, env=env, start_new_session=True)

    async def wait_ready(self, http: httpx.AsyncClient, metrics_http: httpx.AsyncClient,
                         timeout_s: float = 60.0) -> None:
        """Until both answer ``.well-known/phoenix`` over TLS and ``/metrics``."""
        deadline = time.monotonic() + timeout_s
        for d in DOMAINS:
            async def up(d=d) -> bool:
                return (await http.get(f"https://{d}/.well-known/phoenix")).status_code == 200 and \
                    (await metrics_http.get(self.metrics_url(d))).status_code == 200
            await wait_answering(d, self.procs[d], up, deadline, lambda d=d: self.tail(d))

    def metrics_url(self, domain: str) -> str:
        return f"http://127.0.0.1:{self.metrics_ports[domain]}/metrics"

    def cpu_s(self) -> dict[str, float]:
        return {d: process_cpu_s(self.procs[d].pid) for d in DOMAINS}

    def check_alive(self) -> None:
        for d, proc in self.procs.items():
            if proc.poll() is not None:
                raise BenchFailed(f"{d} exited with status {proc.returncode}: {self.tail(d)}")

    async def quiet(self, idle_s: float = 0.3, timeout_s: float = 15.0) -> bool:
        """Wait until neither process has used a CPU tick for ``idle_s``;
        False if that did not happen within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        last, since = self.cpu_s(), time.monotonic()
        while time.monotonic() < deadline:
            await trio.sleep(0.05)
            now = self.cpu_s()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= idle_s:
                return True
        return False

    def stop(self) -> None:
        """SIGTERM both; SIGKILL what has not ended after 5 s."""
        stop_processes(self.procs.values())

    def tail(self, domain: str, lines: int = 5) -> str:
        try:
            text = (self.root / domain / "serve.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])


# --- metrics ---------------------------------------------------------------------------------------


async def scrape_all(hs: Homeservers, http: httpx.AsyncClient) -> dict[str, Scrape]:
    out = {}
    for d in DOMAINS:
        resp = await http.get(hs.metrics_url(d))
        resp.raise_for_status()
        out[d] = Scrape(resp.text)
    return out


def delta(before: dict[str, Scrape], after: dict[str, Scrape], domain: str, name: str, **labels: str) -> float:
    return after[domain].value(name, **labels) - before[domain].value(name, **labels)


# --- clients ----------------------------------------------------------------------------------------

def text_of(tag: str, seq: int) -> bytes:
    head = f"dbench {tag} {seq} ".encode()
    return head + b"x" * max(0, BODY_BYTES - len(head))


def parse_text(body: bytes) -> tuple[str, int] | None:
    """(tag, seq) of a text :func:`text_of` made, byte for byte; else None."""
    parts = body.split(b" ", 3)
    if len(parts) < 4 or parts[0] != b"dbench" or not parts[2].isdigit():
        return None
    key = parts[1].decode(errors="replace"), int(parts[2])
    return key if body == text_of(*key) else None


class Recipient:
    """A user on B (in the recipients' process) who listens on its QS
    websocket and stamps every text it decrypts with the time it had it:
    ``on_arrival(tag, seq, time)`` for each copy. A text that is not one the
    sender wrote, byte for byte, or that comes from anybody else counts in
    ``foreign``."""

    def __init__(self, messenger: Messenger, sender: UserId, on_arrival: Callable[[str, int, float], None]):
        self.m = messenger
        self.sender = sender
        self.foreign = 0
        self.on_arrival = on_arrival
        self._seen: dict[Any, int] = {}     # group → texts already stamped

    async def drain(self) -> None:
        """Dequeue until the queue is empty, stamping the new texts after
        each dequeue. A dequeue that met a closed connection is asked again
        (harmless: it names the first sequence number it wants, and texts
        already read are skipped)."""
        failures = 0
        while True:
            try:
                n = await self.m.receive()
            except httpx.TransportError:
                failures += 1
                if failures == 3:
                    raise
                continue
            self._stamp()
            if n < DEQUEUE_MAX:
                return

    def _stamp(self) -> None:
        now = time.perf_counter()
        for gid, texts in self.m.texts.items():
            done = self._seen.get(gid, 0)
            for t in texts[done:]:
                key = parse_text(t.body)
                if key is None or t.sender != self.sender:
                    self.foreign += 1
                    continue
                self.on_arrival(*key, now)
            self._seen[gid] = len(texts)

    async def listen(self, address: tuple[str, int], ca: Path, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Open the websocket, then dequeue whenever a notification came
        (until cancelled). Notifications that arrive while a dequeue runs
        add up to one more dequeue, as the QS adds up wake-ups that find
        one pending: the QS sends one per enqueue, and a client that
        dequeued once per notification would, behind a burst, ask its queue
        again and again after it had emptied it."""
        ws = WsprotoTransport(f"qs.{self.m.domain}", by_name("qs", "websocket").path)
        wake_send, wake_receive = trio.open_memory_channel(1)

        async def read_notifications(notifications: Any) -> None:
            while True:
                await notifications.next_event()
                try:
                    wake_send.send_nowait(None)
                except trio.WouldBlock:
                    pass                        # a dequeue is already due
        try:
            await ws.connect(address, ssl_context=client_ssl_context(ca))   # its own context: ALPN http/1.1
            notifications = await self.m.qs.open_websocket(self.m.me, ws)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_notifications, notifications)
                task_status.started()
                await self.drain()
                async for _ in wake_receive:
                    await self.drain()
        finally:
            with trio.CancelScope(shield=True):
                await ws.aclose()


class Lines:
    """JSON objects, one per line, over a pair of Trio streams: the two ends
    of the pipes between this script and its recipients' process."""

    def __init__(self, receive: trio.abc.ReceiveStream, send: trio.abc.SendStream):
        self._receive, self._send = receive, send
        self._buffer = bytearray()
        self._sending = trio.Lock()

    async def get(self) -> dict[str, Any] | None:
        """The next object; None once the other end has closed."""
        while (end := self._buffer.find(b"\n")) < 0:
            data = await self._receive.receive_some(1 << 16)
            if not data:
                return None
            self._buffer += data
        line = bytes(self._buffer[:end])
        del self._buffer[:end + 1]
        return json.loads(line)

    async def put(self, obj: dict[str, Any]) -> None:
        async with self._sending:
            await self._send.send_all(json.dumps(obj).encode() + b"\n")


async def recipients_process(ca: Path, resolve: dict[str, str], b_port: int) -> None:
    """The recipients of one scenario (run as ``delivery_bench.py --recipients
    CA RESOLVE B_PORT``, talking JSON lines on stdin and stdout): register
    ``users`` users on B and answer their contact cards; given the sender's
    card and the group, join it, listen on the websockets, answer
    ``listening``; then send every text's arrival as it is decrypted
    (``arrivals``: [recipient, tag, seq, time] rows, a batch per line) until
    asked for the ``foreign`` counts, and end."""
    pipe = Lines(trio.lowlevel.FdStream(os.dup(0)), trio.lowlevel.FdStream(os.dup(1)))
    arrived_send, arrived_receive = trio.open_memory_channel(math.inf)

    async def forward_arrivals() -> None:
        async for row in arrived_receive:
            rows = [row]
            while True:
                try:
                    rows.append(arrived_receive.receive_nowait())
                except trio.WouldBlock:
                    break
            await pipe.put({"arrivals": rows})

    transport = https_transport(client_ssl_context(ca), resolve)
    async with httpx.AsyncClient(transport=transport, trust_env=False, timeout=60.0,
                                 headers={"user-agent": "phoenix-ref-delivery-bench"}) as http, \
            trio.open_nursery() as nursery:
        asked = await pipe.get()
        users: list[Messenger] = []

        async def register_one() -> None:
            users.append(await register(http, B))
        async with trio.open_nursery() as n:      # their round trips overlap
            for _ in range(asked["users"]):
                n.start_soon(register_one)
        await pipe.put({"cards": [encode(m.card(), ContactCard).hex() for m in users]})
        asked = await pipe.get()
        sender = decode(ContactCard, bytes.fromhex(asked["sender"]))
        gid = GroupId.parse(asked["group"])
        for m in users:
            m.add_contact(sender)
        await wait_until("the recipients joining", lambda: all(gid in m.groups for m in users), *users)
        recipients = [Recipient(m, sender.user_id,
                                lambda tag, seq, t, i=i: arrived_send.send_nowait([i, tag, seq, t]))
                      for i, m in enumerate(users)]
        nursery.start_soon(forward_arrivals)
        async with trio.open_nursery() as listening:
            for r in recipients:
                await listening.start(r.listen, ("127.0.0.1", b_port), ca)
            await pipe.put({"listening": True})
            await pipe.get()                      # the report is asked for (or the script is gone)
            listening.cancel_scope.cancel()
        arrived_send.close()                      # forward_arrivals sends what is left, then ends
    await pipe.put({"foreign": [r.foreign for r in recipients]})


class Recipients:
    """This script's side of one scenario's recipients' process: their user
    ids, and per recipient the times each text arrived,
    ``arrivals[i][(tag, seq)]`` (one time per copy), and how many foreign
    texts it decrypted. ``on_arrival(tag, seq)`` is called for every copy."""

    def __init__(self, hs: Homeservers):
        self.hs = hs
        self.process: trio.Process | None = None
        self.pipe: Lines | None = None
        self.user_ids: list[UserId] = []
        self.arrivals: list[dict[tuple[str, int], list[float]]] = []
        self.foreign: list[int] = []
        self.on_arrival: Callable[[str, int], None] = lambda tag, seq: None
        self._report = trio.Event()

    async def start(self, nursery: trio.Nursery, users: int) -> list[ContactCard]:
        """Start the process in ``nursery`` (cancelling it ends the process);
        the contact cards of its ``users`` new users."""
        argv = [sys.executable, __file__, "--recipients", str(self.hs.ca), json.dumps(self.hs.resolve()),
                str(self.hs.ports[B])]
        with open(self.hs.root / "recipients.log", "ab") as log:
            self.process = await nursery.start(partial(trio.run_process, argv, stdin=subprocess.PIPE,
                                                       stdout=subprocess.PIPE, stderr=log, check=False))
        self.pipe = Lines(self.process.stdout, self.process.stdin)
        await self.pipe.put({"users": users})
        cards = [decode(ContactCard, bytes.fromhex(c)) for c in (await self._answer())["cards"]]
        self.user_ids = [c.user_id for c in cards]
        self.arrivals = [{} for _ in cards]
        return cards

    async def join(self, nursery: trio.Nursery, sender: ContactCard, gid: Any) -> None:
        """Have them join ``gid`` (they were invited) and listen; from then on
        their arrivals come in."""
        await self.pipe.put({"sender": encode(sender, ContactCard).hex(), "group": str(gid)})
        await self._answer()
        nursery.start_soon(self._read_arrivals)

    async def report(self) -> None:
        """Ask for the foreign counts (the arrivals are all in once this returns)."""
        await self.pipe.put({"report": True})
        with trio.fail_after(30):
            await self._report.wait()

    def cpu_s(self) -> float:
        return process_cpu_s(self.process.pid)

    async def _answer(self) -> dict[str, Any]:
        with trio.fail_after(120):
            got = await self.pipe.get()
        if got is None:
            raise self._ended()
        return got

    async def _read_arrivals(self) -> None:
        while (got := await self.pipe.get()) is not None:
            if "foreign" in got:
                self.foreign = got["foreign"]
                self._report.set()
                return
            for i, tag, seq, t in got["arrivals"]:
                self.arrivals[i].setdefault((tag, seq), []).append(t)
                self.on_arrival(tag, seq)
        raise self._ended()

    def _ended(self) -> BenchFailed:
        """The process is gone: why, as far as its log says."""
        text = (self.hs.root / "recipients.log").read_text(errors="replace").strip().splitlines()
        return BenchFailed("the recipients' process ended: " + (" | ".join(text[-5:]) or "(no output)"))


async def register(http: httpx.AsyncClient, domain: str) -> Messenger:
    m = await Messenger.register(http, domain, clock=Clock())
    await m.trust_domains(*DOMAINS)
    return m


async def top_up(m: Messenger, n: int) -> int:
    """Fill the wallet with at least ``n`` tokens of the home AS; how many were issued."""
    issued = 0
    while m.session.wallet.count(m.domain) < n:
        want = min(BENCH_LIMITS.token_batch_max, n - m.session.wallet.count(m.domain))
        issued += len(await m.session.fetch_tokens(m.domain, want))
    return issued


async def wait_until(what: str, condition: Callable[[], bool], *members: Messenger, timeout_s: float = 60) -> None:
    """Receive at ``members`` until ``condition()`` holds."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise BenchFailed(f"{what} did not happen within {timeout_s:.0f} s")
        for m in members:
            await m.receive()
        await trio.sleep(0.05)


# --- scenarios --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    n: int
    users: int
    #: "closed": at most ``window`` messages not yet decrypted by every recipient;
    #: "open": at most ``window`` send requests outstanding, deliveries not awaited
    mode: str
    window: int


@dataclass
class Result:
    key: str
    title: str
    mode: str
    window: int
    users: int
    n: int                          # messages to send
    sent: int = 0                   # messages the DS accepted
    send_errors: int = 0            # sends answered with an error or not answered at all
    send_error_kinds: dict[str, int] = field(default_factory=dict)
    lost: int = 0                   # (accepted message, recipient) copies that never came
    delivered_unconfirmed: int = 0  # messages whose send failed but that arrived all the same
    duplicates: int = 0             # copies beyond the first
    foreign: int = 0                # texts the recipients decrypted that the sender did not write
    federated_deliveries: int = 0   # delivered messages × destination homeservers (1)
    user_deliveries: int = 0        # (message, recipient) pairs decrypted
    wall_s: float = 0.0             # first send → last decryption
    send_s: float = 0.0             # first send → last send accepted
    msgs_per_s: float = 0.0
    user_deliveries_per_s: float = 0.0
    # homeserver CPU: keys "A", "B", "A+B"; the *_x_floor ones divided by the floor
    cpu_ms: dict[str, float] = field(default_factory=dict)          # the whole scenario
    cpu_ms_per_fed: dict[str, float] = field(default_factory=dict)
    cpu_ms_per_user: dict[str, float] = field(default_factory=dict)
    cpu_per_fed_x_floor: dict[str, float] = field(default_factory=dict)
    cpu_per_user_x_floor: dict[str, float] = field(default_factory=dict)
    client_cpu_ms_per_msg: float = 0.0
    # what the scenario's requests alone would cost if each cost the floor of its protocol:
    # the homeservers' side per federated delivery, and both sides (clients too) per message
    floor_ms_per_fed: float | None = None
    floor_ms_per_msg_all: float | None = None
    all_cpu_ms_per_msg: float = 0.0  # the homeservers' and the clients' CPU per message
    requests_served: dict[str, float] = field(default_factory=dict)   # every request, "A" and "B"
    fed_requests: float = 0.0       # federation requests A → B (single messages and batches)
    fed_requests_all: float = 0.0   # every federation request, both ways
    batch_sent_mean: float | None = None       # A's phoenix_federation_batch_messages_sent: sum / count
    batch_received_mean: float | None = None   # B's phoenix_federation_batch_messages_received
    msgs_per_fed_request: float | None = None  # federated deliveries / federation requests
    rate_limited_429: float = 0.0
    fed_retries: float = 0.0
    dead_letters: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)     # p50, p95, max


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class Run:
    """The clients and servers one benchmark run shares."""

    def __init__(self, hs: Homeservers, http: httpx.AsyncClient, metrics_http: httpx.AsyncClient,
                 out: Callable[[str], None], settle_s: float):
        self.hs = hs
        self.http = http
        self.metrics_http = metrics_http
        self.out = out
        self.settle_s = settle_s
        self.token_issue: list[tuple[int, float]] = []   # (tokens issued, A's CPU s) per top-up
        self.sender: Messenger | None = None
        self.floor: dict[str, Any] = {}    # what measure_floor() measured

    @property
    def floor_ms(self) -> float:
        """The unit of the ×floor figures (0 until the floor is measured)."""
        return self.floor.get("floor_ms", 0.0)

    async def settled(self, what: str) -> None:
        """Wait for both homeservers to go idle; say so if they did not (that
        CPU figure then includes whatever they were still doing)."""
        if not await self.hs.quiet():
            self.out(f"  {what}: the homeservers did not go idle within 15 s; measuring all the same")

    async def setup(self, s: Scenario, nursery: trio.Nursery) -> tuple[Messenger, Any, Recipients]:
        """``s.users`` fresh users on B in a recipients' process started in
        ``nursery``, a fresh group on A's DS with them and the sender (one
        user on A for the whole run), every recipient listening on its
        websocket, the sender's wallet topped up."""
        if self.sender is None:
            self.sender = await register(self.http, A)
        sender = self.sender
        recipients = Recipients(self.hs)
        for card in await recipients.start(nursery, s.users):
            sender.add_contact(card)
        gid = await sender.create_group()
        await sender.invite(gid, recipients.user_ids)
        await recipients.join(nursery, sender.card(), gid)
        await self.hs.quiet()
        cpu0 = self.hs.cpu_s()[A]
        issued = await top_up(sender, s.n + WARMUP_MESSAGES + 10)
        await self.hs.quiet()
        self.token_issue.append((issued, self.hs.cpu_s()[A] - cpu0))
        return sender, gid, recipients

    async def deliver(self, sender: Messenger, gid: Any, recipients: Recipients, tag: str, n: int,
                      mode: str, window: int) -> dict[str, Any]:
        """Send ``n`` texts tagged ``tag`` under ``mode``/``window`` (see :class:`Scenario`)
        and wait until every recipient has every accepted one, or until no
        new copy came for ``settle_s``. Returns the raw record."""
        started: dict[int, float] = {}
        accepted: dict[int, float] = {}
        errors: dict[str, int] = {}
        failed: set[int] = set()
        missing = {seq: len(recipients.user_ids) for seq in range(n)}
        slots = trio.Semaphore(window)
        progress = {"t": time.perf_counter()}   # the last arrival or send answer
        sending = {"done": False}

        def arrived(t: str, seq: int) -> None:
            progress["t"] = time.perf_counter()
            if t != tag or seq not in missing:
                return
            missing[seq] -= 1
            if missing[seq] == 0:
                del missing[seq]
                if mode == "closed":
                    slots.release()

        recipients.on_arrival = arrived

        async def send_one(seq: int) -> None:
            started[seq] = time.perf_counter()
            try:
                await sender.send(gid, text_of(tag, seq))
                accepted[seq] = progress["t"] = time.perf_counter()
            except Exception as e:   # noqa: BLE001 - counted and reported, the run goes on
                progress["t"] = time.perf_counter()
                kind = f"{type(e).__name__}: {str(e)[:80]}"
                errors[kind] = errors.get(kind, 0) + 1
                failed.add(seq)
                if mode == "closed" and seq in missing:
                    del missing[seq]
                    slots.release()
            if mode == "open":
                slots.release()

        async with trio.open_nursery() as nursery:
            async def send_all() -> None:
                for seq in range(n):
                    await slots.acquire()
                    nursery.start_soon(send_one, seq)
                sending["done"] = True

            async def watchdog() -> None:
                # a closed loop whose window holds lost messages would wait for ever
                while not sending["done"]:
                    if time.perf_counter() - progress["t"] > self.settle_s:
                        self.out(f"  {tag}: nothing delivered for {self.settle_s:.0f} s; sending stops")
                        nursery.cancel_scope.cancel()
                        return
                    self.hs.check_alive()
                    await trio.sleep(0.05)
            nursery.start_soon(send_all)
            nursery.start_soon(watchdog)
        unanswered = [seq for seq in started if seq not in accepted and seq not in failed]
        if unanswered:     # cut off by the watchdog
            errors["no answer: sending stopped"] = len(unanswered)
        # every send has its answer; now wait for the copies still on their way
        while any(seq in accepted for seq in missing):
            if time.perf_counter() - progress["t"] > self.settle_s:
                break
            self.hs.check_alive()
            await trio.sleep(0.01)
        await trio.sleep(0.3)      # a duplicate would be in by now (the queues are drained)
        recipients.on_arrival = lambda t, seq: None
        return {"started": started, "accepted": accepted, "errors": errors}

    async def scenario(self, s: Scenario) -> Result:
        res = Result(s.key, s.title, s.mode, s.window, s.users, s.n)
        async with trio.open_nursery() as listeners:
            sender, gid, recipients = await self.setup(s, listeners)
            await self.deliver(sender, gid, recipients, f"{s.key}-warmup", WARMUP_MESSAGES, "closed", 1)
            before = await scrape_all(self.hs, self.metrics_http)
            await self.settled(s.key)
            cpu0, client0 = self.hs.cpu_s(), time.process_time() + recipients.cpu_s()
            raw = await self.deliver(sender, gid, recipients, s.key, s.n, s.mode, s.window)
            await self.settled(s.key)
            cpu1, client1 = self.hs.cpu_s(), time.process_time() + recipients.cpu_s()
            after = await scrape_all(self.hs, self.metrics_http)
            await recipients.report()
            listeners.cancel_scope.cancel()
        self.figures(res, s, raw, recipients, before, after,
                     {d: cpu1[d] - cpu0[d] for d in DOMAINS}, client1 - client0)
        return res

    def figures(self, res: Result, s: Scenario, raw: dict[str, Any], recipients: Recipients,
                before: dict[str, Scrape], after: dict[str, Scrape], cpu: dict[str, float],
                client_cpu: float) -> None:
        started, accepted = raw["started"], raw["accepted"]
        res.sent = len(accepted)
        res.send_errors = sum(raw["errors"].values())
        res.send_error_kinds = raw["errors"]
        latencies, last_arrival, complete, crossed = [], 0.0, 0, 0
        for seq in accepted:
            got = 0
            for arrivals in recipients.arrivals:
                copies = arrivals.get((s.key, seq), [])
                if not copies:
                    res.lost += 1
                    continue
                got += 1
                res.duplicates += len(copies) - 1
                latencies.append((copies[0] - started[seq]) * 1000)
                last_arrival = max(last_arrival, copies[0])
            res.user_deliveries += got
            complete += got == len(recipients.arrivals)
            crossed += got > 0
        # a send whose answer never came may still have been delivered: not lost, not counted
        res.delivered_unconfirmed = sum(1 for seq in started if seq not in accepted
                                        and any((s.key, seq) in a for a in recipients.arrivals))
        res.federated_deliveries = crossed         # every recipient is on B: one destination
        res.foreign = sum(recipients.foreign)
        first = min(started.values()) if started else 0.0
        res.wall_s = max(0.0, last_arrival - first)
        res.send_s = max(accepted.values()) - first if accepted else 0.0
        res.msgs_per_s = complete / res.wall_s if res.wall_s else 0.0
        res.user_deliveries_per_s = res.user_deliveries / res.wall_s if res.wall_s else 0.0
        res.cpu_ms = {"A": cpu[A] * 1000, "B": cpu[B] * 1000, "A+B": (cpu[A] + cpu[B]) * 1000}
        if res.federated_deliveries:
            res.cpu_ms_per_fed = {k: v / res.federated_deliveries for k, v in res.cpu_ms.items()}
            res.cpu_per_fed_x_floor = {k: v / self.floor_ms for k, v in res.cpu_ms_per_fed.items()}
        if res.user_deliveries:
            res.cpu_ms_per_user = {k: v / res.user_deliveries for k, v in res.cpu_ms.items()}
            res.cpu_per_user_x_floor = {k: v / self.floor_ms for k, v in res.cpu_ms_per_user.items()}
        res.client_cpu_ms_per_msg = client_cpu * 1000 / max(1, len(started))
        res.all_cpu_ms_per_msg = res.client_cpu_ms_per_msg + res.cpu_ms["A+B"] / max(1, len(started))
        res.requests_served = {k: delta(before, after, d, "phoenix_http_requests_total")
                               for k, d in (("A", A), ("B", B))}
        res.fed_requests = sum(delta(before, after, A, "phoenix_federation_requests_total",
                                     destination=B, endpoint=endpoint) for endpoint in FEDERATION_ENDPOINTS)
        res.fed_requests_all = (delta(before, after, A, "phoenix_federation_requests_total")
                                + delta(before, after, B, "phoenix_federation_requests_total"))
        n_sent = delta(before, after, A, "phoenix_federation_batch_messages_sent_count")
        if n_sent:
            res.batch_sent_mean = delta(before, after, A, "phoenix_federation_batch_messages_sent_sum") / n_sent
        n_received = delta(before, after, B, "phoenix_federation_batch_messages_received_count")
        if n_received:
            res.batch_received_mean = (delta(before, after, B, "phoenix_federation_batch_messages_received_sum")
                                       / n_received)
        if res.fed_requests:
            res.msgs_per_fed_request = res.federated_deliveries / res.fed_requests
        self.requests_at_floor(res)
        res.rate_limited_429 = sum(delta(before, after, d, "phoenix_rate_limit_given_total") for d in DOMAINS)
        res.fed_retries = sum(delta(before, after, d, "phoenix_federation_retries_total") for d in DOMAINS)
        res.dead_letters = sum(delta(before, after, d, "phoenix_federation_dead_letters_total") for d in DOMAINS)
        if latencies:
            res.latency_ms = {"p50": percentile(latencies, 0.5), "p95": percentile(latencies, 0.95),
                              "max": max(latencies)}

    def requests_at_floor(self, res: Result) -> None:
        """What the scenario's requests would cost if each cost no more than an
        empty one (the floor of its protocol): A's requests (the sends, over
        HTTP/2), the federation requests (HTTP/1.1; B serves them, A is their
        client) and B's other requests (the dequeues, over HTTP/2). A send or
        a dequeue carries a body and work, so each costs more than the floor:
        what the stack alone takes, whatever the homeserver does."""
        if not self.floor or not res.sent:
            return
        h2, h1 = self.floor["HTTP/2"], self.floor["HTTP/1.1"]
        sends = res.requests_served.get("A", 0.0)
        fed = res.fed_requests
        dequeues = max(0.0, res.requests_served.get("B", 0.0) - fed)
        servers = (sends * h2["cpu_ms_per_request"][A] + dequeues * h2["cpu_ms_per_request"][B]
                   + fed * (h1["cpu_ms_per_request"][B] + h1["client_cpu_ms_per_request"]))
        clients = (sends + dequeues) * h2["client_cpu_ms_per_request"]
        if res.federated_deliveries:
            res.floor_ms_per_fed = servers / res.federated_deliveries
        res.floor_ms_per_msg_all = (servers + clients) / res.sent

    async def measure_floor(self, n: int) -> dict[str, Any]:
        """``n`` sequential ``GET /.well-known/phoenix`` to each homeserver over
        one kept-alive connection, once over HTTP/2 (what the clients speak)
        and once over HTTP/1.1 (what the federation client speaks): CPU per
        request of each homeserver and of this process, the client; requests
        counted by the homeserver's own metrics. ``floor_ms``, the unit, is
        the homeservers' mean over HTTP/2."""
        out: dict[str, Any] = {"endpoint": "GET /.well-known/phoenix"}
        for protocol, http2 in FLOOR_PROTOCOLS.items():
            transport = https_transport(client_ssl_context(self.hs.ca), self.hs.resolve(), http2=http2)
            served: dict[str, float] = {}
            server_ms: dict[str, float] = {}
            client_s = 0.0
            async with httpx.AsyncClient(transport=transport, trust_env=False, timeout=30.0) as http:
                for d in DOMAINS:
                    url = f"https://{d}/.well-known/phoenix"
                    for _ in range(3):                       # the TLS handshake and first request are not counted
                        (await http.get(url)).raise_for_status()
                    before = await scrape_all(self.hs, self.metrics_http)
                    await self.settled("floor")
                    cpu0, client0 = self.hs.cpu_s()[d], time.process_time()
                    for _ in range(n):
                        response = await http.get(url)
                        response.raise_for_status()
                    client_s += time.process_time() - client0
                    if response.http_version != protocol:
                        raise BenchFailed(f"the floor over {protocol} was answered over {response.http_version}")
                    await self.settled("floor")
                    cpu1 = self.hs.cpu_s()[d]
                    after = await scrape_all(self.hs, self.metrics_http)
                    served[d] = delta(before, after, d, "phoenix_http_requests_total")
                    server_ms[d] = (cpu1 - cpu0) * 1000 / served[d] if served[d] else float("nan")
            out[protocol] = {"requests": served, "cpu_ms_per_request": server_ms,
                             "client_cpu_ms_per_request": client_s * 1000 / (n * len(DOMAINS))}
        out["floor_ms"] = sum(out["HTTP/2"]["cpu_ms_per_request"].values()) / len(DOMAINS)
        return out


# --- the report -------------------------------------------------------------------------------------

def _fmt(v: float | None, spec: str = ".2f") -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _cpu(ms: float | None, floor_ms: float) -> str:
    if ms is None:
        return "—"
    return f"{ms:.2f} ({ms / floor_ms:.1f}×)" if floor_ms else f"{ms:.2f}"


def table(results: list[Result], floor_ms: float) -> list[str]:
    """Figures as rows, scenarios as columns."""
    rows: list[tuple[str, Callable[[Result], str]]] = [
        ("mode (window)", lambda r: f"{r.mode} ({r.window})"),
        ("recipients on B", lambda r: str(r.users)),
        ("messages accepted / to send", lambda r: f"{r.sent} / {r.n}"),
        ("msgs/s (delivered to all)", lambda r: _fmt(r.msgs_per_s, ".1f")),
        ("sends accepted/s", lambda r: _fmt(r.sent / r.send_s if r.send_s else None, ".1f")),
        ("user-deliveries/s", lambda r: _fmt(r.user_deliveries_per_s, ".1f")),
        ("CPU ms/fed. delivery A", lambda r: _cpu(r.cpu_ms_per_fed.get("A"), floor_ms)),
        ("CPU ms/fed. delivery B", lambda r: _cpu(r.cpu_ms_per_fed.get("B"), floor_ms)),
        ("CPU ms/fed. delivery A+B", lambda r: _cpu(r.cpu_ms_per_fed.get("A+B"), floor_ms)),
        ("CPU ms/user-delivery A+B", lambda r: _cpu(r.cpu_ms_per_user.get("A+B"), floor_ms)),
        ("its requests at the floor, A+B", lambda r: _cpu(r.floor_ms_per_fed, floor_ms)),
        ("CPU ms/message, A+B+clients", lambda r: _fmt(r.all_cpu_ms_per_msg)),
        ("its requests at the floor, all", lambda r: _fmt(r.floor_ms_per_msg_all)),
        ("requests served A / B", lambda r: f"{r.requests_served.get('A', 0):.0f} / "
                                            f"{r.requests_served.get('B', 0):.0f}"),
        ("federation requests A→B", lambda r: _fmt(r.fed_requests, ".0f")),
        ("msgs/request (A's histogram)", lambda r: _fmt(r.batch_sent_mean)),
        ("msgs/request (counted)", lambda r: _fmt(r.msgs_per_fed_request)),
        ("latency p50 ms", lambda r: _fmt(r.latency_ms.get("p50"), ".1f")),
        ("latency p95 ms", lambda r: _fmt(r.latency_ms.get("p95"), ".1f")),
        ("lost", lambda r: str(r.lost)),
        ("duplicates / foreign texts", lambda r: f"{r.duplicates} / {r.foreign}"),
        ("send errors", lambda r: str(r.send_errors)),
        ("429 answers", lambda r: _fmt(r.rate_limited_429, ".0f")),
        ("fed. retries / dead letters", lambda r: f"{r.fed_retries:.0f} / {r.dead_letters:.0f}"),
        ("client CPU ms/message", lambda r: _fmt(r.client_cpu_ms_per_msg)),
    ]
    cells = [[label] + [fn(r) for r in results] for label, fn in rows]
    header = ["scenario"] + [r.key for r in results]
    widths = [max(len(row[i]) for row in cells + [header]) for i in range(len(header))]
    line = lambda row: "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i])  # noqa: E731
                                 for i, c in enumerate(row))
    return [line(header), line(["-" * w for w in widths])] + [line(row) for row in cells]


def target_lines(results: dict[str, Result]) -> list[str]:
    """Each target of issue 17 and whether this run met it."""
    out = []

    def say(label: str, value: float | None, ok: bool | None, target: str) -> None:
        verdict = "—" if ok is None else ("met" if ok else "NOT met")
        out.append(f"  {label}: {_fmt(value)} (target {target}) {verdict}")

    a, c, probe = results.get("a"), results.get("c"), results.get("probe")
    if a is not None:
        v = a.cpu_ms_per_fed.get("A+B")
        say("(a) CPU ms per federated delivery, A+B", v, None if v is None else v <= TARGET_FED_CPU_MS,
            f"<= {TARGET_FED_CPU_MS}; Synapse 35-50")
        out.append(f"      of which the least its requests cost (each at the floor of its protocol): "
                   f"{_fmt(a.floor_ms_per_fed)}")
    if c is not None:
        v = c.cpu_ms_per_user.get("A+B")
        say("(c) CPU ms per user-delivery, A+B", v, None if v is None else v <= TARGET_USER_CPU_MS,
            f"<= {TARGET_USER_CPU_MS}")
    for key in ("open-a", "open-c"):
        r = results.get(key)
        if r is not None:
            v = r.batch_sent_mean
            say(f"({key}) messages per federation request, {r.lost} lost", v,
                None if v is None else v >= TARGET_BATCH and r.lost == 0, f">= {TARGET_BATCH:.0f} with 0 lost")
    if probe is not None:
        v = probe.latency_ms.get("p50")
        say("(probe) p50 latency ms", v, None if v is None else v <= TARGET_P50_MS,
            f"<= {TARGET_P50_MS:.0f}; Synapse 37-55")
        out.append(f"      one chain per message; CPU per message of all four processes: "
                   f"{_fmt(probe.all_cpu_ms_per_msg)}, of which the least its requests cost at the floor: "
                   f"{_fmt(probe.floor_ms_per_msg_all)}")
    return out


# --- running it -------------------------------------------------------------------------------------

SCENARIO_KEYS = ("a", "c", "probe", "open-a", "open-c")


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    w = args.in_flight
    every = [
        Scenario("a", "one sender -> one user on B, closed loop", args.n_a, 1, "closed", w),
        Scenario("c", f"one sender -> {args.users} users on B, closed loop", args.n_c, args.users, "closed", w),
        Scenario("probe", "latency probe: one message at a time", args.probe, 1, "closed", 1),
        Scenario("open-a", "as (a), open loop", args.n_a, 1, "open", w),
        Scenario("open-c", "as (c), open loop", args.n_c, args.users, "open", w),
    ]
    by_key = {s.key: s for s in every}
    return [by_key[k] for k in args.scenarios]


async def bench(args: argparse.Namespace, hs: Homeservers, out: Callable[[str], None]) -> dict[str, Any]:
    t_start = time.monotonic()
    transport = https_transport(client_ssl_context(hs.ca), hs.resolve())
    async with httpx.AsyncClient(transport=transport, trust_env=False, timeout=60.0,
                                 headers={"user-agent": "phoenix-ref-delivery-bench"}) as http, \
            httpx.AsyncClient(trust_env=False, timeout=30.0) as metrics_http:
        hs.start()
        await hs.wait_ready(http, metrics_http)
        out(f"homeservers up: {A} pid {hs.procs[A].pid} port {hs.ports[A]}, "
            f"{B} pid {hs.procs[B].pid} port {hs.ports[B]} ({time.monotonic() - t_start:.1f} s)")
        run = Run(hs, http, metrics_http, out, args.settle)
        floor = await run.measure_floor(args.floor_requests)
        run.floor = floor
        for protocol in FLOOR_PROTOCOLS:
            f = floor[protocol]
            out(f"floor over {protocol}: {floor['endpoint']}, {args.floor_requests} one at a time per homeserver: "
                + ", ".join(f"{d} {f['cpu_ms_per_request'][d]:.3f} ms ({f['requests'][d]:.0f} served)"
                            for d in DOMAINS)
                + f", client {f['client_cpu_ms_per_request']:.3f} ms CPU per request")
        out(f"floor = {floor['floor_ms']:.3f} ms CPU per request (the homeservers' mean over HTTP/2)")
        results: list[Result] = []
        for s in scenarios(args):
            if s.n + WARMUP_MESSAGES > QS_CONFIG_LIMIT_PER_MINUTE:
                out(f"note: {s.key} sends more than {QS_CONFIG_LIMIT_PER_MINUTE} messages to each recipient; "
                    "the QS's per-minute rate limit per queue config may answer 429")
            t = time.monotonic()
            r = await run.scenario(s)
            results.append(r)
            out(f"{s.key:>7}: {s.title}: {r.sent} accepted, {r.lost} lost, "
                f"{r.msgs_per_s:.1f} msgs/s ({time.monotonic() - t:.1f} s with set-up)")
        issued = sum(n for n, _ in run.token_issue)
        issue_cpu = sum(c for _, c in run.token_issue)
    return {"floor": floor, "results": results, "wall_s": time.monotonic() - t_start,
            "token_issuance": {"tokens": issued, "cpu_ms_A": issue_cpu * 1000,
                               "cpu_ms_per_token": issue_cpu * 1000 / issued if issued else None}}


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: N 20 and 10, 3 users, probe 5, window 10, 200 floor requests")
    ap.add_argument("--n-a", type=int, help="messages of scenarios a and open-a (default 500)")
    ap.add_argument("--n-c", type=int, help="messages of scenarios c and open-c (default 200)")
    ap.add_argument("--users", type=int, help="recipients on B in c and open-c (default 10)")
    ap.add_argument("--in-flight", type=int, help="closed loop: messages not yet delivered; open loop: "
                    "send requests outstanding (default 50)")
    ap.add_argument("--probe", type=int, help="messages of the latency probe (default 30)")
    ap.add_argument("--scenarios", default=",".join(SCENARIO_KEYS), metavar="LIST",
                    help=f"comma-separated scenarios to run, in this order (default {','.join(SCENARIO_KEYS)})")
    ap.add_argument("--floor-requests", type=int, help="empty requests per homeserver for the floor (default 1000)")
    ap.add_argument("--settle", type=float, default=30.0,
                    help="seconds without a new delivery after which missing copies count as lost (default 30)")
    ap.add_argument("--json", type=Path, metavar="FILE", help="also write every figure to FILE as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the homeservers' folder (configs, keys, logs)")
    ap.add_argument("--lean-a", action="store_true",
                    help="serve A's public listener on benchmarks/lean_server.py instead of anycorn (a measuring "
                         "instrument: what a server of the project's own could win back; B stays on anycorn)")
    args = ap.parse_args(argv)
    quick = {"n_a": 20, "n_c": 10, "users": 3, "in_flight": 10, "probe": 5, "floor_requests": 200}
    full = {"n_a": 500, "n_c": 200, "users": 10, "in_flight": 50, "probe": 30, "floor_requests": 1000}
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    for k in ("n_a", "n_c", "users", "in_flight", "probe", "floor_requests"):
        if getattr(args, k) < 1:
            ap.error(f"--{k.replace('_', '-')} must be at least 1")
    args.scenarios = [k.strip() for k in args.scenarios.split(",") if k.strip()]
    unknown = [k for k in args.scenarios if k not in SCENARIO_KEYS]
    if unknown or not args.scenarios:
        ap.error(f"--scenarios: choose from {', '.join(SCENARIO_KEYS)}")
    return args


def main(argv: list[str]) -> int:
    if argv[:1] == ["--recipients"]:
        trio.run(recipients_process, Path(argv[1]), json.loads(argv[2]), int(argv[3]))
        return 0
    args = parse_args(argv)
    out = lambda line: print(line, flush=True)   # noqa: E731
    root = Path(tempfile.mkdtemp(prefix="phoenix-dbench-"))
    out(f"delivery bench: {A} and {B} in {root}; machine: {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.2f}")
    if args.lean_a:
        out(f"{A} is served by benchmarks/lean_server.py (no timeouts, limits or websockets), not by anycorn")
    hs = Homeservers.create(root, args.lean_a)
    failed = True
    try:
        report = trio.run(bench, args, hs, out)
        failed = False
    except Exception as e:   # noqa: BLE001 - one line why, the folder kept for a look at the logs
        first = _first_leaf(e)
        if not isinstance(first, BenchFailed):
            (root / "bench-error.txt").write_text(traceback.format_exc())
        out(f"delivery bench: FAILED: {type(first).__name__}: {first} (files kept in {root})")
        return 1
    finally:
        hs.stop()
        if not failed and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    floor_ms = report["floor"]["floor_ms"]
    results: list[Result] = report["results"]
    out("")
    out(f"CPU figures in ms of homeserver CPU (utime+stime), and in brackets as a multiple of the floor "
        f"({floor_ms:.3f} ms per empty HTTPS request)")
    for line in table(results, floor_ms):
        out(line)
    ti = report["token_issuance"]
    out("")
    out(f"Privacy Pass issuance before the measured windows: {ti['tokens']} tokens, "
        f"{_fmt(ti['cpu_ms_per_token'], '.3f')} ms of A's CPU per token (not in the figures above)")
    out("targets (issue 17):")
    for line in target_lines({r.key: r for r in results}):
        out(line)
    out(f"full run: {report['wall_s']:.1f} s")
    if args.json is not None:
        doc = {"machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                           "load_average_at_end": os.getloadavg()},
               "settings": {k: getattr(args, k) for k in ("n_a", "n_c", "users", "in_flight", "probe",
                                                           "floor_requests", "settle", "quick", "scenarios", "lean_a")},
               "floor": report["floor"], "token_issuance": ti, "wall_s": report["wall_s"],
               "scenarios": [asdict(r) for r in results],
               "latency_listening": "QS websocket notifications (no polling)"}
        args.json.write_text(json.dumps(_rounded(doc), indent=2) + "\n", encoding="utf-8")
        out(f"figures written to {args.json}")
    wrong = [r.key for r in results if r.lost or r.duplicates or r.foreign]
    if wrong:
        out(f"delivery bench: messages lost, duplicated or garbled in {', '.join(wrong)}")
        return 2
    return 0


def _first_leaf(error: BaseException) -> BaseException:
    """The first exception inside (nested) exception groups."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


def _rounded(value: Any) -> Any:
    """``value`` with every float rounded to 4 decimals (for the JSON file)."""
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    return value


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
