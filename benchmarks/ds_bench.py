"""Cost of the Delivery Service per request, sans network, as the group grows.

For groups of n = 16, 256, 1024 members this measures, in one run, the DS
itself (``phoenix_ref.delivery``: :class:`DsCore` on a :class:`DsStore` in a
temporary SQLite file) for two requests:

* **send** — *send application message* (``ds_send_message``): a
  PrivateMessage from leaf 0, fanned out to the n − 1 others;
* **commit** — *update client* (``ds_update_client``): an empty Commit with
  UpdatePath from leaf 0 (the group's admin), fanned out to the n − 1 others;

each driven exactly as :meth:`DsService.group_request` drives it — read the
row (``DsStore.read_group``), run the core handler, write the outcome with
its fan-outs as outbox entries (``DsStore.store_outcome``) — and then the
hand-over of :meth:`DsService._hand_over`: the fan-outs go to a
``local_enqueue`` stand-in that only counts (the QS is measured by
``fanout_bench.py``) and the handed-over outbox entries wait to be
deleted in the next request's write, as the service defers them
(``DsStore.store_outcome(outbox_done=…)``). It reports:

* **CPU** per request (``time.process_time`` around the request and its
  hand-over, after a ``gc.collect()``; median over the repeats), in
  milliseconds and as a multiple of **V**, one Ed25519 signature
  verification (:func:`phoenix_ref.crypto.verify`) timed in the same run,
  once per round (median). The sizes are measured **interleaved**: every
  group is built first, then each round makes one send and one commit in
  every group, smallest first, so a machine whose speed drifts during the
  run (a shared host; V was seen to move by half within a minute) slows
  every size alike and the ratio between sizes holds;
* **store reads and writes** per request, as ``DsStore`` counts them
  (read units and write transactions; ``spec/performance_goals.md`` asks
  for at most one of each): the request's own, and the hand-over's own
  write transactions (``DsStore.outbox_done``; 0 since the deletion of
  handed-over entries rides on the next request's write);
* the stored state's size (sealed, padded) and the commit message's size;
* the ratio of a commit's CPU at the largest n to n = 16 (target ≤ 10).

The client side (building the requests: ``GroupMember.send_request`` /
``update_request``, MLS encryption, the sender's path) is not counted.

Building the groups. Everything the DS sees is real: the creator (leaf 0,
a :class:`~phoenix_ref.client.groups.GroupMember` over the MLS member view
:class:`~phoenix_ref.mls.group.Group`) creates the group at the DS
(``ds_create_group``), then adds the n − 1 others, each with its own client
credential, LeafCredential (decision A42) and sealed queue config, from
their AddPackages in a few big ``ds_add_users`` commits (at most
``ADD_CHUNK`` members each). Only the creator holds a member state; the
others never process anything. After the adds the DS keeps one copy of the
tree per add commit for the joiners (decision A24) until each joiner
commits or its KeyPackage expires; the measurements first run on that
state (**fresh**: the group right after the adds), then on the state with
the copies gone (**settled**, as when the joiners have committed: the
benchmark drops them from the state, which it opens and seals with the
DS's own functions). Leaf 0 is the only committer, so its copath stays
blank (every added leaf is an unmerged leaf of leaf 0's path nodes) and an
update commit carries one path secret per other member: the largest
UpdatePath a group of n can send.

A cProfile of one commit at the largest n follows the table (top functions
by cumulative and by own time).

Run: ``python benchmarks/ds_bench.py`` (``--quick`` for n = 16, 64 and
fewer repeats; ``--sizes 16,256`` and ``--repeats 9`` to choose;
``--no-profile`` to skip the profile).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from phoenix_ref import crypto  # noqa: E402
from phoenix_ref.client.groups import GroupMember, PendingRequest  # noqa: E402
from phoenix_ref.client.phoenix_credentials import (  # noqa: E402
    CredentialInformation, make_add_package, new_leaf_identity, new_symmetric_key,
)
from phoenix_ref.clock import FixedClock  # noqa: E402
from phoenix_ref.codec import encode  # noqa: E402
from phoenix_ref.credentials import (  # noqa: E402
    AsCredential, AsIntermediateCredential, ClientCredentialCsr, sign_csr,
)
from phoenix_ref.delivery.core import DsConfig, DsCore, Outcome, group_id_of_request  # noqa: E402
from phoenix_ref.delivery.group_state import open_state, seal_state  # noqa: E402
from phoenix_ref.delivery.service import MESSAGE_ID_LEN  # noqa: E402
from phoenix_ref.delivery.store import DsStore  # noqa: E402
from phoenix_ref.federation.outbound_crypto import OutboundKeys  # noqa: E402
from phoenix_ref.ids import ClientId, Fqdn, QsCid, QsUid, UserId  # noqa: E402
from phoenix_ref.mls.extensions import ClientQueueConfig as ExtClientQueueConfig  # noqa: E402
from phoenix_ref.queuing.fanout import seal_queue_config  # noqa: E402
from phoenix_ref.queuing.messages import ClientQueueConfig, QueueConfig  # noqa: E402

DOMAIN = Fqdn("ds-bench.example")
YEAR_MS = 365 * 24 * 3600 * 1000
#: The most members one add commit adds while building a group.
ADD_CHUNK = 512
BODY = os.urandom(200)   # an application message of ordinary size


# --- the primitive --------------------------------------------------------------------------------

def time_verify(rounds: int = 2000) -> float:
    """CPU seconds of one Ed25519 verification (:func:`crypto.verify`), best of three batches."""
    key = crypto.SigningKey.generate()
    data = os.urandom(200)
    sig = key.sign(data)
    best = float("inf")
    for _ in range(3):
        t = time.process_time()
        for _ in range(rounds):
            crypto.verify(key.public, data, sig)
        best = min(best, (time.process_time() - t) / rounds)
    return best


# --- building a group --------------------------------------------------------------------------------

class Issuer:
    """An AS intermediate credential that signs the members' client credentials."""

    def __init__(self, now_ms: int):
        as_key, self.inter_key = crypto.SigningKey.generate(), crypto.SigningKey.generate()
        as_cred = AsCredential.create(DOMAIN, as_key, now_ms - YEAR_MS, now_ms + 10 * YEAR_MS)
        self.inter = AsIntermediateCredential.create(as_cred, as_key, self.inter_key, now_ms - YEAR_MS,
                                                     now_ms + 5 * YEAR_MS)
        self.now_ms = now_ms

    def client(self):
        """A client's signing key and its client credential."""
        key = crypto.SigningKey.generate()
        cid = ClientId(UserId(DOMAIN, uuid.uuid4()), uuid.uuid4())
        csr = ClientCredentialCsr.create(cid, key, self.inter.fingerprint(), self.now_ms - YEAR_MS,
                                         self.now_ms + YEAR_MS)
        return key, sign_csr(csr, self.inter, self.inter_key, self.now_ms, as_domain=DOMAIN)


class QueueConfigs:
    """Real sealed queue configs (``seal_queue_config``) to one QS key."""

    def __init__(self):
        self.qs_key = crypto.HpkeKeyPair.generate()
        self.qs_uid = QsUid.random()

    def config(self) -> ClientQueueConfig:
        sealed = seal_queue_config(self.qs_key.public, QueueConfig(None, QsCid(self.qs_uid, uuid.uuid4())),
                                   queue_encryption_key=crypto.HpkeKeyPair.generate(),
                                   client_record_key=crypto.SigningKey.generate())
        return ClientQueueConfig(DOMAIN, sealed)


@dataclass
class Bench:
    """A DS with one group of n members and that group's creator."""
    n: int
    core: DsCore
    store: DsStore
    creator: GroupMember
    clock: FixedClock
    enqueued: int = 0           # fan-outs handed to the local_enqueue stand-in
    delivered: int = 0          # queue configs in them
    done: list[int] = field(default_factory=list)   # handed over, rows deleted with the next write

    def local_enqueue(self, message, message_id: bytes):
        """The local QS's entry point, stand-in: count and take."""
        self.enqueued += 1
        self.delivered += len(message.client_queue_configs)

    def request(self, pending: PendingRequest):
        """One request as ``DsService.group_request`` runs it, plus the
        hand-over (``DsService._hand_over``) to the counting QS stand-in."""
        req = pending.body
        gid = group_id_of_request(req)
        handler = getattr(self.core, pending.name.removeprefix("ds_"))
        now = self.clock.now_ms()
        outcome = handler(req, self.store.read_group(gid), now)
        ids = [crypto.random_bytes(MESSAGE_ID_LEN) for _ in outcome.fan_outs]
        seqs = []
        if outcome.sealed_state is not None or outcome.delete_group or outcome.consumed_deleted \
                or outcome.fan_outs:
            seqs = self.store.store_outcome(gid, outcome, ids, now, outbox_done=self.done)
            self.done = []
        if seqs:
            for mid, fo in zip(ids, outcome.fan_outs):
                self.local_enqueue(fo, message_id=mid)
            self.done += seqs
        if outcome.error is not None:
            raise outcome.error
        return outcome

    def submit(self, pending: PendingRequest):
        """A request the creator built: on success its commit becomes the new epoch."""
        try:
            out = self.request(pending)
        except BaseException:
            self.creator.refused(pending)
            raise
        self.creator.accepted(pending)
        return out

    def state_size(self) -> int:
        return len(self.store.read_group(self.creator.group_id).sealed_state)

    def drop_past_states(self) -> int:
        """Forget the tree copies kept for joiners (as when they have all committed); their number."""
        gid = self.creator.group_id
        row = self.store.read_group(gid)
        st = open_state(gid, row.sealed_state, self.creator.ear_key)
        dropped = len(st.past_states)
        st.past_states = []
        sealed = seal_state(st, st.ear_key, self.core.bucket_bytes)
        self.store.store_outcome(gid, Outcome(sealed_state=sealed), [], self.clock.now_ms())
        return dropped


def build(n: int, tmp: Path) -> Bench:
    clock = FixedClock(int(time.time() * 1000))
    now = clock.now_ms()
    ds_key = crypto.SigningKey.generate()
    core = DsCore(DsConfig(DOMAIN), [ds_key])
    store = DsStore(tmp / f"ds-{n}.sqlite3", OutboundKeys([os.urandom(32)]))
    issuer, queues = Issuer(now), QueueConfigs()

    gid = core.request_group_id()
    assert store.add_placeholder(gid, now)
    client_key, client_cred = issuer.client()
    leaf = new_leaf_identity(client_key, client_cred, now)
    creator = GroupMember.create(gid, leaf, client_cred, ds_key.public, clock)
    create = creator.create_group_request(queues.config())
    outcome = core.create_group(create.body, store.has_placeholder(gid), now)
    store.store_outcome(gid, outcome, [], now, created=True)
    creator.accepted(create)
    bench = Bench(n, core, store, creator, clock)

    sender_key, _ = client_key, client_cred
    for start in range(1, n, ADD_CHUNK):
        packages = []
        for _ in range(start, min(n, start + ADD_CHUNK)):
            key, cred = issuer.client()
            member_leaf = new_leaf_identity(key, cred, now)
            cfg = queues.config()
            friendship_key = new_symmetric_key()
            package, _bundle = make_add_package(
                member_leaf, cred, friendship_key,
                ExtClientQueueConfig(str(cfg.client_homeserver_domain).encode(), cfg.sealed_config), now)
            packages.append((package, CredentialInformation(cred, member_leaf.signature_encryption_key),
                             friendship_key))
        bench.submit(creator.add_request(packages, sender_key, client_cred.client_id))
    assert sum(1 for _ in creator.group.tree.leaves()) == n
    return bench


# --- measuring --------------------------------------------------------------------------------------

@dataclass
class Measured:
    cpu: float          # median CPU seconds per request
    reads: float        # store read units per request (the request itself)
    writes: float       # write transactions per request (the request itself)
    handover_writes: float   # write transactions of the hand-over
    fan_outs: float     # fan-outs per request
    recipients: float   # queue configs per request
    message_bytes: int  # the MLS message's size


KINDS = ("send", "commit")


def combined(ms: list[Measured]) -> Measured:
    """One figure from single-request measurements: the median CPU, the mean counts."""
    return Measured(statistics.median(m.cpu for m in ms), statistics.mean(m.reads for m in ms),
                    statistics.mean(m.writes for m in ms), statistics.mean(m.handover_writes for m in ms),
                    statistics.mean(m.fan_outs for m in ms), statistics.mean(m.recipients for m in ms),
                    ms[-1].message_bytes)


def measure(bench: Bench, kind: str) -> Measured:
    """One request of ``kind`` ("send" or "commit") by the creator (:func:`combined` makes a figure of several)."""
    pending = bench.creator.send_request(BODY) if kind == "send" else bench.creator.update_request()
    msg = pending.body.params.application_message if kind == "send" else pending.body.params.commit
    r0, w0, e0, d0 = bench.store.reads, bench.store.writes, bench.enqueued, bench.delivered
    hw = _HandoverWrites(bench.store)
    gc.collect()   # the garbage of building the request is not the DS's
    t0 = time.process_time()
    bench.submit(pending)
    cpu = time.process_time() - t0
    hw.restore()
    return Measured(cpu, bench.store.reads - r0, bench.store.writes - w0 - hw.count, hw.count,
                    bench.enqueued - e0, bench.delivered - d0, len(encode(msg)))


class _HandoverWrites:
    """Counts the write transactions of ``DsStore.outbox_done`` (the hand-over's own)."""

    def __init__(self, store: DsStore):
        self.store, self.count = store, 0
        original = store.outbox_done

        def counted(*a, **kw):
            before = store.writes
            try:
                return original(*a, **kw)
            finally:
                self.count += store.writes - before
        store.outbox_done = counted

    def restore(self) -> None:
        del self.store.outbox_done


def profile_commit(bench: Bench, top: int = 18) -> str:
    pending = bench.creator.update_request()
    prof = cProfile.Profile()
    prof.enable()
    bench.submit(pending)
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


# --- main ----------------------------------------------------------------------------------------------

def run(sizes: list[int], repeats: int, profile: bool = True, out=print) -> dict:
    """Build and measure every size; print the table; return the figures."""
    results: dict = {"sizes": sizes, "verify": [], "rows": {}}
    out(f"machine: {os.cpu_count()} cores (nproc), Python {platform.python_version()}, "
        f"{platform.machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        benches = {}
        for n in sizes:
            t = time.perf_counter()
            benches[n] = build(n, Path(tmp))
            results["rows"][n] = {"rows": {}, "build_s": time.perf_counter() - t}
        for state in ("fresh", "settled"):
            if state == "settled":
                for n in sizes:
                    results["rows"][n]["fresh_state"] = benches[n].state_size()
                    results["rows"][n]["past_states"] = benches[n].drop_past_states()
            samples: dict = {(n, kind): [] for n in sizes for kind in KINDS}
            for _ in range(repeats):
                results["verify"].append(time_verify(rounds=500))
                for n in sizes:
                    for kind in KINDS:
                        samples[n, kind].append(measure(benches[n], kind))
            for (n, kind), ms in samples.items():
                results["rows"][n]["rows"][state, kind] = combined(ms)
        verify = statistics.median(results["verify"])
        for n in sizes:
            results["rows"][n]["verify"] = verify
            results["rows"][n]["settled_state"] = benches[n].state_size()
        for n in sizes[:-1]:
            benches[n].store.close()
        results["V"] = verify
        vs = results["verify"]
        out(f"V = one Ed25519 verification: {verify * 1e6:.1f} µs CPU "
            f"(median of {len(vs)} rounds, {min(vs) * 1e6:.1f} to {max(vs) * 1e6:.1f})")
        out("")
        out(f"{'n':>5} {'state':>8} {'request':>7} {'msg B':>7} {'CPU ms':>8} {'×V':>7} "
            f"{'reads':>5} {'writes':>6} {'+hand-over':>10} {'fan-outs':>8} {'recipients':>10}")
        for n in sizes:
            r = results["rows"][n]
            for state in ("fresh", "settled"):
                for kind in ("send", "commit"):
                    m = r["rows"][state, kind]
                    out(f"{n:>5} {state:>8} {kind:>7} {m.message_bytes:>7} {m.cpu * 1e3:>8.2f} "
                        f"{m.cpu / r['verify']:>7.1f} {m.reads:>5.0f} {m.writes:>6.0f} {m.handover_writes:>10.0f} "
                        f"{m.fan_outs:>8.0f} {m.recipients:>10.0f}")
        out("")
        for n in sizes:
            r = results["rows"][n]
            out(f"n={n}: sealed state {r['fresh_state'] / 1024:.0f} KiB fresh ({r['past_states']} past tree "
                f"copies for joiners), {r['settled_state'] / 1024:.0f} KiB settled; built in {r['build_s']:.1f} s")
        first, last = sizes[0], sizes[-1]
        for state in ("fresh", "settled"):
            for kind in ("send", "commit"):
                a = results["rows"][first]["rows"][state, kind].cpu / results["rows"][first]["verify"]
                b = results["rows"][last]["rows"][state, kind].cpu / results["rows"][last]["verify"]
                results.setdefault("ratios", {})[state, kind] = b / a
                target = " (target <= 10)" if kind == "commit" else ""
                out(f"{state} {kind}: n={last} : n={first} = {b / a:.1f}{target}")
        if profile:
            out("")
            out(f"cProfile of one settled commit at n={last}:")
            out(profile_commit(benches[last]))
        benches[last].store.close()
    return results


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="n = 16, 64 with 3 repeats (a smoke run)")
    ap.add_argument("--sizes", help="comma-separated group sizes (default 16,256,1024)")
    ap.add_argument("--repeats", type=int, help="requests of each kind per size (default 9)")
    ap.add_argument("--no-profile", action="store_true")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else ([16, 64] if args.quick else [16, 256, 1024])
    repeats = args.repeats or (3 if args.quick else 9)
    run(sizes, repeats, profile=not args.no_profile)


if __name__ == "__main__":
    main(sys.argv[1:])
