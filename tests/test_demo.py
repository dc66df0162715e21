"""``phoenix-ref demo``: three ``phoenix-ref serve`` processes and the whole
story, run as a person runs it (a subprocess, well under a minute); and its
one-line failure."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile

from phoenix_ref import demo

STEPS = ["three homeservers start", "register", "connections", "creates a group", "they chat",
         "removes bob, then adds him back", "c.example is cut off", "keep chatting while c.example is away",
         "c.example comes back", "all three chat again"]


def test_the_demo_runs_and_writes_a_sequence_diagram(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "phoenix_ref.cli", "demo"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=180)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    for n, step in enumerate(STEPS, 1):
        assert re.search(rf"^\[{n}\] .*{re.escape(step)}", out, re.M), step
    # per step, what each homeserver served and the federation between them (from their request logs)
    assert re.search(r"^  \| a\.example served \d+: alice", out, re.M)
    assert re.search(r"^  \| federation a\.example -> c\.example: \d+ failed \(federated_enqueue \(Unreachable\)",
                     out, re.M)
    assert "carol got the 4 group texts sent while she was away, in order, once each" in out
    checks = int(re.search(r"all (\d+) checks held in 10 steps; ([\d.]+) s", out).group(1))
    assert checks == out.count("\n  ok ")
    seconds = float(re.search(r"checks held in 10 steps; ([\d.]+) s", out).group(1))
    assert seconds < 60

    trace = (tmp_path / "demo-trace.mmd").read_text()
    lines = trace.splitlines()
    assert lines[0] == "sequenceDiagram"
    for d in ("a.example", "b.example", "c.example"):
        assert f"    participant {d[0]} as {d}" in lines
    assert sum(re.match(r"    Note over alice,c: \d+\. ", line) is not None for line in lines) == len(STEPS)
    assert "    a-xc: " in trace and "    b-xc: " in trace          # the queues meeting the cut-off c
    assert re.search(r"^    b->>c: .*federated_enqueue", trace, re.M)
    arrow = re.compile(r"^    (\w+)(->>|-x)(\w+): \S")
    body = [line for line in lines[1:] if not line.startswith(("    participant ", "    Note over "))]
    assert body and all(arrow.match(line) for line in body), [x for x in body if not arrow.match(x)]


def test_a_failed_check_is_one_line_and_a_non_zero_exit(tmp_path, monkeypatch, capsys):
    async def failing_story(self):
        async with self.step("something that goes wrong"):
            self.check(False, "the impossible", "as planned")
    monkeypatch.setattr(demo.Story, "run", failing_story)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))     # the kept folder lands in tmp_path
    args = argparse.Namespace(trace=tmp_path / "t.mmd", keep=False)
    assert demo.run(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "FAILED: step 1: the impossible does not hold (as planned)" in err[0]
    assert (tmp_path / "t.mmd").read_text().startswith("sequenceDiagram\n")
    [kept] = tmp_path.glob("phoenix-demo-*")                     # kept for a look at the logs
    assert str(kept) in err[0] and (kept / "a.example" / "config.toml").exists()
