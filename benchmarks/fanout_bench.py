"""Cost of one fan-out: a FanOutMessage to n queues spread over K homeservers.

For n = 10, 100, 1000 and K = 1, 3 this runs K homeservers in-process
(``phoenix_ref.testing.Deployment``: real apps, SQLite stores, QS-to-QS
traffic over HTTP through ASGI with emulated TLS), spreads n client records
round-robin over them, and hands messages to the first homeserver's QS the
way its DS does (``hs.qs.local_enqueue``), each message with new config
objects equal to the last ones (the QS remembers repeated config lists by
value, so it gets no help from a DS that hands over the same objects). It
reports, against
``spec/performance_goals.md``:

* **federation requests per message** (target K − 1: one QsToQsMessage per
  remote homeserver, whatever n);
* **asymmetric operations per message at each QS** (signatures, signature
  verifications, HPKE seal/open), for the first message of a group (cold:
  every sealed queue config is opened and verified once) and for later ones
  (warm: configs come from the cache);
* **store reads and writes** per fan-out request at each QS, per delivered
  message, per federated request, and for one client query (a dequeue;
  target ≤ 1 read and ≤ 1 write);
* **CPU time per delivered message** (process time, every thread, from
  ``local_enqueue`` until every remote homeserver has answered and the
  sender has removed the delivered items from its outbound queues) as a
  multiple of the **crypto floor**: the cryptography a delivered message
  cannot avoid, timed in the same run — one queue-encryption step per
  queue (ratchet derivation + AES-GCM seal of the message,
  ``queue_crypto.encrypt_for_queue``) plus, per remote homeserver, one
  QsToQsMessage signature and its verification over a TBS of the real size
  (that homeserver's sealed configs and the content), divided by n. The
  floor is timed with the thread CPU clock of the thread running it, when
  no other work of the deployment is running. These timings come from a
  separate pass with no instrumentation at all (the counting and timing
  wrappers of the other figures cost about a microsecond per queue, on
  both sides of the ratio). Warm messages go out in blocks of three, back
  to back like a stream of messages; the floor is timed before and after
  each block (the machine may be shared) and each message is compared with
  the mean of the two around it. The multiple is the median of the
  per-message ratios, printed with their quartiles. (Timing the floor
  between every two messages made each following message pay for caches
  the floor's tight loop had evicted: about twice the CPU for a fan-out to
  ten queues.) Target ≤ 3×;
* **fixed and marginal cost** per homeserver count: the warm CPU of the
  two largest n split into a fixed cost per fan-out (HTTP, transactions,
  thread hand-offs) and a marginal cost per delivered message, the latter
  as a multiple of the floor. The fit counts CPU in queue-encryption steps
  timed around each message, so a drift of the machine's speed between
  the two cases does not bend it. At small n the fixed cost dominates the
  per-message figure above;
* **where the CPU goes** (warm, median per message, from the instrumented
  pass, so each part includes its share of the wrappers): thread CPU time of
  each QS core call (``local_enqueue``, ``federated_enqueue``,
  ``frame_outbound``), of the store calls inside it (``append_many``
  includes the queue encryption it runs, shown separately), and the rest
  of the process (HTTP, ASGI, emulated TLS, Trio, thread hand-offs). Thread
  CPU is less disturbed by other load than wall time, but on a shared
  machine it still varies by 20% or more between runs.

* **scale** (``--scale``): n = 100, 200, 500, 1000 recipients over K = 10
  homeservers, uninstrumented. For each n, the one-at-a-time CPU per
  delivered message (each message waits for every remote homeserver's
  answer before the next: idle destinations, a lone message per request)
  with its floor multiple, and a **burst**: ``--burst`` messages handed to
  the QS back to back, so a backlog forms behind the first; it reports the
  federation requests they took, messages per request, CPU per delivered
  message and QS-database commits per message delivered to a homeserver.
  Then a **backlog** (``--backlog``): every remote homeserver is
  unreachable to the sender while that many messages are handed over, then
  reachable again; it reports the same figures for the drain.
  Flat means the per-delivered-message cost does not grow with n.

Run: ``python benchmarks/fanout_bench.py [--sizes 10,100,1000] [--homeservers 1,3] [--messages 30]``,
or ``python benchmarks/fanout_bench.py --scale [--sizes 100,200,500,1000] [--homeservers 10] [--burst 50]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import phoenix_ref.auth_tokens as auth_tokens  # noqa: E402
import phoenix_ref.crypto as crypto  # noqa: E402
import phoenix_ref.queue_crypto as qc  # noqa: E402
import phoenix_ref.queuing.core as qs_core  # noqa: E402
import phoenix_ref.queuing.fanout as fanout  # noqa: E402
from phoenix_ref.client.qs_client import QsIdentity  # noqa: E402
from phoenix_ref.codec import encode  # noqa: E402
from phoenix_ref.federation.client import Unreachable  # noqa: E402
from phoenix_ref.federation.outbound import BackoffPolicy  # noqa: E402
from phoenix_ref.ids import GroupId  # noqa: E402
from phoenix_ref.queuing import messages as m  # noqa: E402
from phoenix_ref.queuing.messages import encode_qs_to_qs_tbs  # noqa: E402
from phoenix_ref.testing import Deployment  # noqa: E402
from tests.qs_helpers import application_message  # noqa: E402

NAMES = [f"hs{i}" for i in range(1, 11)]   # hs1..hs3: a/b/c.example; the others hs<i>.example
BLOCK = 3   # warm messages sent back to back between two timings of the floor
INSTRUMENTED_MESSAGES = 6   # warm messages of the instrumented pass (counts and breakdown)
BODY = os.urandom(200)   # an application message of ordinary size

# --- counting asymmetric operations, per QS -------------------------------------------------

_current = threading.local()   # .domain: the QS whose core is running in this thread
asym: Counter[tuple[str, str]] = Counter()
cpu_parts: Counter[tuple[str, str]] = Counter()   # (domain, what) → thread CPU seconds


def _timed(domain_of, what: str, fn):
    """``fn`` with its thread CPU time added to ``cpu_parts[(domain_of(), what)]``."""
    def wrapper(*a, **kw):
        t0 = time.thread_time()
        try:
            return fn(*a, **kw)
        finally:
            cpu_parts[(domain_of(), what)] += time.thread_time() - t0
    return wrapper


def _counted(name: str, fn):
    def wrapper(*a, **kw):
        asym[(getattr(_current, "domain", "-"), name)] += 1
        return fn(*a, **kw)
    return wrapper


def install_crypto_counters():
    """Count every asymmetric operation the QS code paths call, and time the
    queue encryption; returns a function that puts the originals back."""
    saved = []
    for module, names in ((qs_core, ["hs_sign", "hs_verify"]),
                          (fanout, ["hpke_open", "hs_verify"]),
                          (qc, ["hpke_seal", "hpke_open"])):
        for name in names:
            saved.append((module, name, getattr(module, name)))
            setattr(module, name, _counted(name, getattr(module, name)))
    saved += [(auth_tokens, "crypto", auth_tokens.crypto), (qc, "encrypt_for_queue", qc.encrypt_for_queue)]
    auth_tokens.crypto = _CryptoProxy()
    qc.encrypt_for_queue = _timed(lambda: getattr(_current, "domain", "-"), "queue encryption",
                                  qc.encrypt_for_queue)

    def restore() -> None:
        for module, name, original in reversed(saved):
            setattr(module, name, original)
    return restore


class _CryptoProxy:
    """``crypto`` as auth_tokens sees it, with counted signature checks."""
    hs_verify = staticmethod(_counted("hs_verify", crypto.hs_verify))
    hs_sign = staticmethod(_counted("hs_sign", crypto.hs_sign))

    def __getattr__(self, name):
        return getattr(crypto, name)


def tag_core(core, domain: str) -> None:
    """Attribute the crypto of this core's requests to ``domain``."""
    for name in ("local_enqueue", "federated_enqueue", "frame_outbound", "dequeue_messages"):
        fn = getattr(core, name)

        def wrapped(*a, _fn=fn, **kw):
            before = getattr(_current, "domain", "-")
            _current.domain = domain
            try:
                return _fn(*a, **kw)
            finally:
                _current.domain = before
        setattr(core, name, _timed(lambda: domain, f"core {name}", wrapped))


# --- counting store reads and writes ------------------------------------------------------------

READS = {"get_user", "get_client", "client_for_enqueue", "clients_for_enqueue", "info", "head", "destinations"}
io: Counter[tuple[str, str]] = Counter()


class CountingStore:
    """A store proxy that counts each call as one read or one write transaction."""

    def __init__(self, inner, domain: str):
        self._inner, self._domain = inner, domain

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if not callable(attr) or name.startswith("_") or name in ("close", "needs_thread"):
            return attr
        kind = "read" if name in READS else "write"

        def wrapped(*a, **kw):
            io[(self._domain, kind)] += 1
            return attr(*a, **kw)
        return _timed(lambda: self._domain, f"store {name}", wrapped)


def instrument(hs) -> None:
    svc, domain = hs.qs, hs.domain
    svc.core.records = CountingStore(svc.core.records, domain)
    svc.core.queues.store = CountingStore(svc.core.queues.store, domain)
    counted_outbound = CountingStore(svc.core.outbound, domain)
    svc.core.outbound = counted_outbound
    svc.outbound_sender.store = counted_outbound
    tag_core(svc.core, domain)


# --- the crypto floor -------------------------------------------------------------------------------

def crypto_floor_seconds(n: int, k: int, plaintext: bytes, tbs_len: int, repeat: int = 5) -> tuple[float, float]:
    """Seconds of unavoidable crypto per delivered message (see module
    docstring); ``tbs_len`` is the size of the signed QsToQsMessageTBS for
    one remote homeserver (its share of the sealed configs and the content).
    Thread CPU time: a worker thread of the deployment still finishing
    something would otherwise be counted as crypto. Returns the floor and,
    alone, its queue-encryption step (the same unit at every n)."""
    queue_key = crypto.HpkeKeyPair.generate().public
    material = qc.new_queue(queue_key, 0)[1]
    signer = crypto.SigningKey.generate()
    tbs = os.urandom(tbs_len)

    def steps(count: int) -> float:
        mat = material
        t0 = time.thread_time()
        for seq in range(1, count + 1):
            _, mat = qc.encrypt_for_queue(mat, seq, plaintext)
        return time.thread_time() - t0

    def sign_verify(count: int) -> float:
        t0 = time.thread_time()
        for _ in range(count):
            sig = crypto.hs_sign(signer, "QsToQsMessage", tbs)
            crypto.hs_verify(signer.public, "QsToQsMessage", tbs, sig)
        return time.thread_time() - t0

    reps = max(200, n)
    per_step = statistics.median(steps(reps) for _ in range(repeat)) / reps
    per_sign_verify = statistics.median(sign_verify(200) for _ in range(repeat)) / 200
    return per_step + (k - 1) * per_sign_verify / n, per_step


# --- one case ---------------------------------------------------------------------------------------

async def _register(hs, n_here: int) -> list[QsIdentity]:
    """Client records created through the QS core (setup, not measured)."""
    ids = []
    for _ in range(n_here):
        me = QsIdentity.new(hs.domain)
        me.created(await hs.qs.call(hs.qs.core.create_user_record, me.create_user_record_params(),
                                    hs.clock.now_ms()))
        ids.append(me)
    return ids


class _Removals:
    """The sender's outbound store, telling the Trio thread how many
    delivered items it has just removed (the sender's last step for them:
    ``settle`` for a batch's outcomes, ``remove`` for a single item in
    versions of the sender without batches)."""

    def __init__(self, inner, on_removed) -> None:
        self._inner, self._on_removed = inner, on_removed
        self._token = trio.lowlevel.current_trio_token()

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def remove(self, destination: str, seq: int):
        try:
            return self._inner.remove(destination, seq)
        finally:
            self._token.run_sync_soon(self._on_removed, 1)

    def settle(self, destination: str, delivered, rejected, *args):
        try:
            return self._inner.settle(destination, delivered, rejected, *args)
        finally:
            self._token.run_sync_soon(self._on_removed, len(delivered) + len(rejected))


def _requests(stats) -> int:
    """Federation requests the sender made: ``attempts`` where the sender
    counts them, else one per item attempted (a sender without batches)."""
    if "attempts" in stats:
        return stats["attempts"]
    return stats["delivered"] + stats["retried"] + stats["dead_lettered"]


def _commits(nodes) -> int:
    """Commits of every QS database of the deployment (0 where the storage
    layer does not count them)."""
    return sum(getattr(hs.qs_store.connection, "commits", 0) for hs in nodes)


async def run_case(n: int, k: int, messages: int, *, instrumented: bool, burst: int = 0, backlog: int = 0) -> dict:
    """One deployment of ``k`` homeservers and ``n`` queues; a cold message,
    then ``messages`` warm ones. ``instrumented``: count asymmetric
    operations and store calls and time the parts (the counts and the
    breakdown); otherwise nothing is wrapped, and the floor is timed around
    every block of messages (the CPU ratio)."""
    async with Deployment("in_process", NAMES[:k]) as d:
        nodes = [d[name].hs for name in NAMES[:k]]
        clients: list[tuple[object, QsIdentity]] = []
        for i, hs in enumerate(nodes):
            for me in await _register(hs, n // k + (1 if i < n % k else 0)):
                clients.append((hs, me))
        configs = [me.client_queue_config(hs.keystore.qs_queue_config_keys[0].public) for hs, me in clients]
        sender = nodes[0]
        group = GroupId.random(sender.domain)   # a group of the sending homeserver (decision "Fan-out only for the sender's own groups")
        if instrumented:
            for hs in nodes:
                instrument(hs)
        done = trio.Event()
        answers, removed = [0], [0]
        on_delivered = sender.qs.outbound_sender.on_delivered

        def count_answers(item, response):
            on_delivered(item, response)
            answers[0] += 1

        expected = [k - 1]   # removals that complete the current measurement

        def count_removals(count: int):
            removed[0] += count
            if removed[0] >= expected[0]:
                done.set()
        sender.qs.outbound_sender.on_delivered = count_answers
        sender.qs.outbound_sender.store = _Removals(sender.qs.outbound_sender.store, count_removals)

        def set_done(event: trio.Event) -> None:
            nonlocal done
            done = event

        async def one(body: bytes) -> tuple[float, dict, dict, int, dict]:
            nonlocal done
            asym.clear()
            io.clear()
            cpu_parts.clear()
            sent0 = sender.qs.stats["federated_enqueue_sent"]
            done = trio.Event()
            answers[0] = removed[0] = 0
            # New config objects for every message, equal to the last ones: the
            # QS gets no help from a DS that would hand over the same objects.
            msg = m.FanOutMessage([m.ClientQueueConfig(c.client_homeserver_domain, bytes(bytearray(c.sealed_config)))
                                   for c in configs], application_message(group, body))
            t0 = time.process_time()
            result = await sender.qs.local_enqueue(msg)
            if k > 1:
                with trio.fail_after(600):
                    await done.wait()
            cpu = time.process_time() - t0
            assert answers[0] == k - 1, answers   # every remote homeserver accepted it
            assert len(result.enqueued) == len(clients) // k + (1 if n % k else 0) or k == 1
            return (cpu, dict(asym), dict(io), sender.qs.stats["federated_enqueue_sent"] - sent0,
                    dict(cpu_parts))

        plaintext_len = len(encode(application_message(group, BODY), m.MessageContent))
        own = sender.qs.core.config.domain
        remote_tbs = [len(encode_qs_to_qs_tbs(own, domain, 0, bytes(16), encode(part)))
                      for domain, part in fanout.split_by_domain(m.FanOutMessage(configs, application_message(group, BODY))).items()
                      if domain != own]
        tbs_len = round(statistics.mean(remote_tbs)) if remote_tbs else 0

        def floor() -> tuple[float, float]:
            return crypto_floor_seconds(n, k, b"\x00" * plaintext_len, tbs_len, repeat=1)
        cold = await one(BODY)
        # Warm messages go out in blocks of BLOCK, back to back as a stream of
        # messages would; the floor is timed before and after every block and
        # each message is compared with the mean of the two around it.
        warm, timings, floor_of = [], [], []   # timings: (floor, its queue-encryption step)
        if not instrumented:
            timings.append(floor())
        for start in range(0, messages, BLOCK):
            for _ in range(min(BLOCK, messages - start)):
                warm.append(await one(BODY))
                floor_of.append(len(timings) - 1)
            if not instrumented:
                timings.append(floor())
        floors, steps = [f for f, _ in timings], [step for _, step in timings]
        bursts = await _burst(sender, nodes, configs, group, burst, k, expected, removed,
                              set_done) if burst and k > 1 else None
        backlogs = await _backlog(sender, nodes, configs, group, backlog, k, expected, removed,
                                  set_done) if backlog and k > 1 else None
        for hs in nodes:   # every queue got every message exactly once
            core = hs.qs.core
            for owner, me in clients:
                if owner is hs:
                    info = await hs.qs.call(core.queues.info, encode(me.qs_cid))
                    assert info.message_count == 1 + 1 + messages + (burst if bursts else 0) + (
                        backlog if backlogs else 0), info
                    # reset + cold + warm (+ burst)
        # one client query: a dequeue
        io.clear()
        hs, me = clients[0]
        await hs.qs.call(hs.qs.core.dequeue_messages, me.dequeue_request(hs.clock.now_ms()), hs.clock.now_ms())
        dequeue_io = dict(io)
        return {"n": n, "k": k, "domains": [hs.domain for hs in nodes], "cold": cold, "warm": warm,
                "dequeue_io": dequeue_io, "floors": floors, "burst": bursts, "backlog": backlogs,
                "message_floors": [(floors[i] + floors[i + 1]) / 2 for i in floor_of] if floors else [],
                "message_steps": [(steps[i] + steps[i + 1]) / 2 for i in floor_of] if steps else []}


async def _burst(sender, nodes, configs, group, count: int, k: int, expected: list[int], removed: list[int],
                 set_done) -> dict:
    """``count`` messages handed to the QS back to back, as a busy group's
    stream would come: the sender works on the first while the others
    queue up behind it (a backlog). CPU from the first hand-over until the
    sender has removed every delivered item, per delivered message; and the
    federation requests it took."""
    outbound = sender.qs.outbound_sender
    requests0, delivered0, commits0 = _requests(outbound.stats), outbound.stats["delivered"], _commits(nodes)
    removed[0], expected[0] = 0, count * (k - 1)
    event = trio.Event()
    set_done(event)
    t0 = time.process_time()
    for _ in range(count):
        await sender.qs.local_enqueue(m.FanOutMessage(
            [m.ClientQueueConfig(c.client_homeserver_domain, bytes(bytearray(c.sealed_config))) for c in configs],
            application_message(group, BODY)))
    with trio.fail_after(600):
        await event.wait()
    cpu = time.process_time() - t0
    expected[0] = k - 1
    requests = _requests(outbound.stats) - requests0
    delivered = outbound.stats["delivered"] - delivered0
    assert delivered == count * (k - 1), (delivered, count, k)
    return {"count": count, "cpu": cpu, "requests": requests, "delivered": delivered,
            "commits": _commits(nodes) - commits0}


async def _backlog(sender, nodes, configs, group, count: int, k: int, expected: list[int], removed: list[int],
                   set_done) -> dict:
    """The issue's backlog: every remote homeserver is unreachable (to the
    sender: each attempt fails as a refused connection would) while
    ``count`` messages are handed over; then they are reachable again. CPU
    from then until the sender has removed every delivered item, per
    delivered message, and the federation requests that took."""
    outbound = sender.qs.outbound_sender
    send, send_batch, policy = outbound.send, getattr(outbound, "send_batch", None), outbound.policy
    outbound.policy = BackoffPolicy(base_delay=0.05, max_delay=0.2)

    async def down(_):
        raise Unreachable("the bench cut this destination off")
    outbound.send = outbound.send_batch = down
    removed[0], expected[0] = 0, count * (k - 1)
    event = trio.Event()
    set_done(event)
    for _ in range(count):
        await sender.qs.local_enqueue(m.FanOutMessage(
            [m.ClientQueueConfig(c.client_homeserver_domain, bytes(bytearray(c.sealed_config))) for c in configs],
            application_message(group, BODY)))
    requests0, delivered0, commits0 = _requests(outbound.stats), outbound.stats["delivered"], _commits(nodes)
    t0 = time.process_time()
    outbound.send, outbound.send_batch = send, send_batch
    with trio.fail_after(600):
        await event.wait()
    cpu = time.process_time() - t0
    outbound.policy, expected[0] = policy, k - 1
    delivered = outbound.stats["delivered"] - delivered0
    assert delivered == count * (k - 1), (delivered, count, k)
    return {"count": count, "cpu": cpu, "requests": _requests(outbound.stats) - requests0, "delivered": delivered,
            "commits": _commits(nodes) - commits0}


def _per(domain_counts: dict, domain: str) -> str:
    parts = [f"{op} {c}" for (dom, op), c in sorted(domain_counts.items()) if dom == domain]
    return ", ".join(parts) or "none"


def report(inst: dict, timed: dict) -> None:
    """``inst``: the instrumented pass (counts, breakdown); ``timed``: the
    plain pass (CPU and the floor)."""
    n, k = inst["n"], inst["k"]
    _, warm_asym, warm_io, warm_requests, _ = inst["warm"][-1]
    _, cold_asym, _, cold_requests, _ = inst["cold"]
    print(f"\n== n = {n} queues over K = {k} homeserver(s) ==")
    print(f"federation requests per message: {warm_requests} (cold {cold_requests}; target K-1 = {k - 1})")
    for dom in inst["domains"]:
        print(f"  {dom}: asymmetric ops per message warm [{_per(warm_asym, dom)}]; cold [{_per(cold_asym, dom)}]")
        reads, writes = warm_io.get((dom, "read"), 0), warm_io.get((dom, "write"), 0)
        local = n // k + (1 if inst["domains"].index(dom) < n % k else 0)
        print(f"  {dom}: store reads/writes per fan-out request {reads}/{writes} "
              f"= {reads / local:.2f}/{writes / local:.2f} per delivered message here")
    print(f"client query (dequeue): reads {inst['dequeue_io'].get((inst['domains'][0], 'read'), 0)}, "
          f"writes {inst['dequeue_io'].get((inst['domains'][0], 'write'), 0)} (target <= 1/1)")
    warm_cpu = statistics.median(c for c, *_ in timed["warm"])
    floor = statistics.median(timed["floors"])
    ratios = sorted(c / n / f for (c, *_), f in zip(timed["warm"], timed["message_floors"]))
    q1, ratio, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    print(f"CPU per delivered message: {warm_cpu / n * 1e6:.0f} us warm, {timed['cold'][0] / n * 1e6:.0f} us cold; "
          f"crypto floor {floor * 1e6:.1f} us -> {ratio:.1f}x (quartiles {q1:.1f}-{q3:.1f}; target <= 3x)")
    report_cpu(inst)


def report_cpu(r: dict) -> None:
    """Where the warm CPU goes: median ms per message of every (domain, what)."""
    keys = sorted({key for *_, parts in r["warm"] for key in parts})
    med = {key: statistics.median(parts.get(key, 0.0) for *_, parts in r["warm"]) for key in keys}
    total = statistics.median(c for c, *_ in r["warm"])
    cores = statistics.median(sum(v for (_, what), v in parts.items() if what.startswith("core "))
                              for *_, parts in r["warm"])
    print(f"CPU breakdown, warm, instrumented, ms per message (total {total * 1e3:.1f}; outside the QS cores "
          f"{(total - cores) * 1e3:.1f}: HTTP, ASGI, emulated TLS, Trio, thread hand-offs):")
    for dom in r["domains"]:
        parts = [f"{what} {med[(d, what)] * 1e3:.2f}" for d, what in keys if d == dom and med[(d, what)] >= 5e-5]
        print(f"  {dom}: " + ", ".join(parts))


def report_fixed_and_marginal(results: list[dict]) -> None:
    """Split the warm CPU of one homeserver count into a fixed cost per
    fan-out (HTTP requests, transactions, thread hand-offs: independent of
    n) and a marginal cost per delivered message, from the two largest n:
    ``cpu(n) = fixed + n * marginal``. The fit is made in units of the
    floor timed around each message (the two cases run at different
    moments, and a shared machine's speed drifts between them), counted in
    queue-encryption steps, the part of the floor that is the same at every
    n; the fixed cost is also shown in ms at the step of the largest n."""
    if len(results) < 2:
        return
    small, large = sorted(results, key=lambda r: r["n"])[-2:]
    cost = {r["n"]: statistics.median(c / step for (c, *_), step in zip(r["warm"], r["message_steps"]))
            for r in (small, large)}   # a fan-out's CPU, in queue-encryption steps
    marginal = (cost[large["n"]] - cost[small["n"]]) / (large["n"] - small["n"])
    fixed = cost[small["n"]] - small["n"] * marginal
    step = statistics.median(large["message_steps"])
    floor_large = statistics.median(f / s for f, s in zip(large["message_floors"], large["message_steps"]))
    print(f"\n== K = {large['k']}: fixed cost per fan-out {fixed * step * 1e3:.2f} ms ({fixed:.0f} queue-encryption "
          f"steps); marginal CPU per delivered message (n = {small['n']} -> {large['n']}) {marginal:.1f} steps = "
          f"{marginal / floor_large:.1f}x the crypto floor of n = {large['n']} ==")


def report_scale(results: list[dict]) -> None:
    """One line per n of the scale run: the warm CPU per delivered message
    (one message at a time: idle destinations, a lone message per request)
    with its crypto-floor multiple, and the burst (a backlog: messages per
    federation request, CPU and commits per delivered message)."""
    k = results[0]["k"]
    print(f"\n== scale: n recipients over K = {k} homeservers (in-process) ==")
    print("     n | one at a time: us/delivered  x floor  fed. requests/msg | "
          "burst: msgs  fed. requests  msgs/request  us/delivered  commits/delivered-to-HS")
    for r in results:
        n = r["n"]
        warm_cpu = statistics.median(c for c, *_ in r["warm"])
        ratio = statistics.median(c / n / f for (c, *_), f in zip(r["warm"], r["message_floors"]))
        requests = statistics.median(req for _, _, _, req, _ in r["warm"])
        line = f"{n:6d} | {warm_cpu / n * 1e6:27.1f}  {ratio:7.2f}  {requests:17.0f} |"
        b = r["burst"]
        if b:
            line += (f" {b['count']:11d}  {b['requests']:13d}  {b['delivered'] / b['requests']:12.1f}  "
                     f"{b['cpu'] / (b['count'] * n) * 1e6:12.1f}  {b['commits'] / b['delivered']:23.2f}")
        print(line)
    if results[0]["backlog"]:
        print("     n | backlog (destinations unreachable, then back): msgs  fed. requests  msgs/request  "
              "us/delivered  commits/delivered-to-HS")
        for r in results:
            b = r["backlog"]
            print(f"{r['n']:6d} | {b['count']:52d}  {b['requests']:13d}  {b['delivered'] / b['requests']:12.1f}  "
                  f"{b['cpu'] / (b['count'] * r['n']) * 1e6:12.1f}  {b['commits'] / b['delivered']:23.2f}")
    first, last = results[0], results[-1]
    per = [statistics.median(c for c, *_ in r["warm"]) / r["n"] for r in (first, last)]
    print(f"flatness: CPU per delivered message at n = {last['n']} is {per[1] / per[0]:.2f}x that at "
          f"n = {first['n']} (one at a time)", end="")
    if first["burst"] and last["burst"]:
        bper = [r["burst"]["cpu"] / (r["burst"]["count"] * r["n"]) for r in (first, last)]
        print(f", {bper[1] / bper[0]:.2f}x (burst)")
    else:
        print()


async def main_scale(sizes, k, messages, burst, backlog) -> None:
    """Uninstrumented cases over ``k`` homeservers for each n (issue 17:
    n = 100 … 1000 over 10 homeservers, cost per delivered message flat)."""
    results = [await run_case(n, k, messages, instrumented=False, burst=burst, backlog=backlog) for n in sizes]
    report_scale(results)


async def main_async(sizes, homeservers, messages) -> None:
    for k in homeservers:
        results = []
        for n in sizes:
            restore = install_crypto_counters()
            try:
                inst = await run_case(n, k, INSTRUMENTED_MESSAGES, instrumented=True)
            finally:
                restore()
            results.append(await run_case(n, k, messages, instrumented=False))
            report(inst, results[-1])
        report_fixed_and_marginal(results)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10,100,1000")
    p.add_argument("--homeservers", default="1,3")
    p.add_argument("--messages", type=int, default=30, help="warm messages per case (timed pass)")
    p.add_argument("--scale", action="store_true",
                   help="the scale run instead: --sizes (default 100,200,500,1000) over the one homeserver "
                        "count of --homeservers (default 10), one-at-a-time and burst, no instrumentation")
    p.add_argument("--burst", type=int, default=50, help="messages handed over back to back in the scale run")
    p.add_argument("--backlog", type=int, default=100,
                   help="messages queued while the destinations are unreachable, in the scale run")
    a = p.parse_args()
    if a.scale:
        sizes = a.sizes if a.sizes != "10,100,1000" else "100,200,500,1000"
        k = int(a.homeservers) if a.homeservers != "1,3" else 10
        trio.run(main_scale, [int(x) for x in sizes.split(",")], k, a.messages, a.burst, a.backlog)
        return
    trio.run(main_async, [int(x) for x in a.sizes.split(",")], [int(x) for x in a.homeservers.split(",")],
             a.messages)


if __name__ == "__main__":
    main()
