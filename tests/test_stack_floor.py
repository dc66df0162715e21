"""``benchmarks/stack_floor.py`` runs end to end: the three servers, both
protocols, every request counted by the server that answered it. Its
figures are not checked against each other (a short run on a shared
machine says nothing about speed), only that they were measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "stack_floor.py"
REQUESTS = 30


def test_a_short_run_measures_every_server_over_both_protocols(tmp_path):
    out_json = tmp_path / "floor.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--requests", str(REQUESTS), "--json", str(out_json)],
                          cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out_json.read_text())["rows"]
    assert [(r["server"], r["protocol"]) for r in rows] == [
        (s, p) for p in ("h2", "http/1.1") for s in ("lean", "raw", "phoenix")]
    for r in rows:
        assert r["requests"] == REQUESTS
        assert r["server_cpu_ms"] >= 0 and r["client_cpu_ms"] > 0, r
    lean_h1 = next(r for r in rows if (r["server"], r["protocol"]) == ("lean", "http/1.1"))
    assert lean_h1["x_lean_h1"] == 1.0 or lean_h1["server_cpu_ms"] == 0
    table = proc.stdout.splitlines()
    assert table[1].split()[:2] == ["server", "protocol"] and len(table) == 2 + len(rows)


def test_the_script_refuses_a_run_of_no_requests():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--requests", "0"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "--requests must be at least 1" in proc.stderr
