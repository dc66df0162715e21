"""``benchmarks/ds_bench.py`` cannot rot: its smallest configuration runs,
and the reads and writes it reports are what the store did (counted from
the SQL statements SQLite ran, not from the store's own counters)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from phoenix_ref.codec import U32, U64, VarBytes, encode, struct, vec
from phoenix_ref.delivery.group_state import open_state
from phoenix_ref.delivery.messages import LeafCredentialInformation
from phoenix_ref.mls.tree import RatchetTree, RatchetTreeWire

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("ds_bench", ROOT / "benchmarks" / "ds_bench.py")
ds_bench = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("ds_bench", ds_bench)   # its dataclasses look their module up
_spec.loader.exec_module(ds_bench)


def test_smallest_configuration_runs():
    lines: list[str] = []
    results = ds_bench.run([16], repeats=1, profile=False, out=lines.append)
    r = results["rows"][16]
    assert set(r["rows"]) == {(s, k) for s in ("fresh", "settled") for k in ("send", "commit")}
    for m in r["rows"].values():
        assert (m.reads, m.writes, m.handover_writes) == (1, 1, 0)
        assert (m.fan_outs, m.recipients) == (1, 15)
        assert m.cpu > 0
    assert r["past_states"] == 1 and r["settled_state"] < r["fresh_state"]
    assert results["ratios"]["settled", "commit"] == 1.0
    assert any("n=16 : n=16" in line for line in lines)


def test_reported_counts_are_the_store_statements(tmp_path):
    bench = ds_bench.build(16, tmp_path)
    statements: list[str] = []
    bench.store.conn.set_trace_callback(statements.append)
    try:
        for kind in ("send", "commit"):
            statements.clear()
            epoch = bench.creator.group.epoch
            m = ds_bench.measure(bench, kind)
            begins = [s for s in statements if s.startswith("BEGIN")]
            group_reads = [s for s in statements if s.startswith("SELECT state")]
            assert len(begins) == m.writes + m.handover_writes == 1
            assert len(group_reads) == m.reads == 1
            assert bench.creator.group.epoch == epoch + (kind == "commit")
            # the entry just handed over waits; the one before went with this request's write
            assert [e.seq for e in bench.store.outbox()] == bench.done and len(bench.done) == 1
    finally:
        bench.store.conn.set_trace_callback(None)
    gid = bench.creator.group_id
    st = open_state(gid, bench.store.read_group(gid).sealed_state, bench.creator.ear_key)
    assert st.public.tree.tree_hash() == bench.creator.group.tree.tree_hash()
    bench.store.close()


@struct
class _DecodedPastGroupState:
    """``PastGroupState`` with its tree and chains as decoded structs."""
    epoch: U64
    public_tree: RatchetTreeWire
    credential_chains: vec(LeafCredentialInformation)
    joiner_refs: vec(VarBytes)
    joiner_leaves: vec(U32)
    joiner_not_after: vec(U64)


def test_stored_state_caches_are_faithful(tmp_path):
    bench = ds_bench.build(5, tmp_path)
    gid = bench.creator.group_id
    st = open_state(gid, bench.store.read_group(gid).sealed_state, bench.creator.ear_key)
    # the cached node hashes are those of the stored tree
    fresh = RatchetTree.from_nodes(st.public.tree.to_nodes())
    assert st.public.tree.node_hashes() == fresh.node_hashes()
    assert not fresh.restore_node_hashes(b"\0" * 32)
    # the past state keeps the bytes of the decoded form (no storage format change)
    (past,) = st.past_states
    full = _DecodedPastGroupState(past.epoch, past.tree_nodes(), past.chains(),
                                  *map(list, zip(*((j.key_package_ref, j.leaf_index, j.not_after) for j in past.joiners))))
    assert len(past.joiners) == 4
    assert encode(full) == encode(past)
    assert past.tree() == RatchetTree.from_nodes(past.tree_nodes())
    bench.store.close()
