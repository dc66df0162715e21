"""Cost of Privacy Pass token type 0x0005 issuance and redemption.

For batch sizes 1, 10 and 100 this measures, in one run:

* client ``begin_issuance`` (hash-to-group and blind each token input),
* issuer ``issue`` (evaluate each element, one batched DLEQ proof),
* client ``finalize`` (verify the batched proof once, unblind each element),
* issuer ``redeem`` of every token (in-memory and SQLite spent stores),

and states each time both in milliseconds and as a multiple of one
ristretto255 scalar multiplication (libsodium via ``rbcl``) measured in the
same process, so that the figures compare across machines. The draft
(``#issuer-to-client-response``) expects batching to bring the per-token
issuance cost towards half that of single issuance as the batch grows.

Run: ``python benchmarks/privacy_pass_bench.py [--repeat N]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import rbcl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from phoenix_ref import privacy_pass as pp  # noqa: E402
from phoenix_ref.privacy_pass_store import PrivacyPassStore  # noqa: E402

CHALLENGE = pp.homeserver_challenge("a.example")


def _median_time(fn, repeat: int, setup=lambda: None) -> float:
    """Median wall time of ``fn(setup())``; ``setup`` runs untimed."""
    samples = []
    for _ in range(repeat):
        arg = setup()
        t0 = time.perf_counter()
        fn() if arg is None else fn(arg)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def scalar_mult_seconds(repeat: int) -> float:
    """Median time of one ``crypto_scalarmult_ristretto255`` (batches of 200)."""
    s = rbcl.crypto_core_ristretto255_scalar_random()
    p = rbcl.crypto_core_ristretto255_random()

    def batch():
        for _ in range(200):
            rbcl.crypto_scalarmult_ristretto255(s, p)

    return _median_time(batch, max(repeat, 5)) / 200


def bench_batch(n: int, repeat: int, tmp: Path) -> dict[str, float]:
    keys = pp.IssuerKeys.generate(0)
    pk = keys.current.public_key
    out: dict[str, float] = {}

    out["client blind"] = _median_time(lambda: pp.begin_issuance(pk, CHALLENGE, n), repeat)
    state, request = pp.begin_issuance(pk, CHALLENGE, n)
    out["issuer issue"] = _median_time(lambda: pp.issue(request, keys, max_batch=n), repeat)
    response = pp.issue(request, keys, max_batch=n)
    out["client finalize"] = _median_time(lambda: pp.finalize(state, response), repeat)
    tokens = pp.finalize(state, response)

    def redeem_all(store):
        for t in tokens:
            pp.redeem(t, keys, store, challenge=CHALLENGE, now_ms=0)

    out["redeem (memory store)"] = _median_time(redeem_all, repeat, pp.MemorySpentTokenStore)
    counter = iter(range(10**9))

    def sqlite_store():  # a fresh file each time, opened before the clock starts
        return PrivacyPassStore(tmp / f"spent-{n}-{next(counter)}.sqlite")

    out["redeem (sqlite store)"] = _median_time(redeem_all, max(1, repeat // 2), sqlite_store)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7, help="repetitions per measurement (median is kept)")
    args = ap.parse_args(argv)

    smult = scalar_mult_seconds(args.repeat)
    print(f"one ristretto255 scalar multiplication: {smult * 1e6:.1f} µs (median)\n")
    header = f"{'batch':>5}  {'operation':<22} {'total ms':>9} {'ms/token':>9} {'smults':>8} {'smults/token':>13}"
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as d:
        for n in (1, 10, 100):
            rows = bench_batch(n, args.repeat, Path(d))
            issuance = rows["client blind"] + rows["issuer issue"] + rows["client finalize"]
            rows["issuance total"] = issuance
            for name, secs in rows.items():
                print(f"{n:>5}  {name:<22} {secs * 1e3:>9.2f} {secs * 1e3 / n:>9.3f} "
                      f"{secs / smult:>8.1f} {secs / smult / n:>13.2f}")
            print()


if __name__ == "__main__":
    main()
