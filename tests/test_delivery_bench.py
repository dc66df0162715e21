"""``benchmarks/delivery_bench.py --quick`` runs end to end: two ``serve``
processes, every scenario, the table, the JSON file, and not one message
lost, duplicated or garbled. Its figures are not checked against targets
(a smoke run on a shared machine says nothing about speed), only that they
were measured and add up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "delivery_bench.py"
SCENARIOS = ["a", "c", "probe", "open-a", "open-c"]
FLOOR_REQUESTS = 50


def test_quick_run_delivers_every_message_once_and_reports_every_figure(tmp_path):
    out_json = tmp_path / "figures.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--floor-requests", str(FLOOR_REQUESTS),
                           "--json", str(out_json)],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    header = next(line for line in lines if line.startswith("scenario "))
    assert header.split() == ["scenario"] + SCENARIOS
    for label in ("CPU ms/fed. delivery A+B", "CPU ms/user-delivery A+B", "its requests at the floor, A+B",
                  "CPU ms/message, A+B+clients", "its requests at the floor, all", "federation requests A→B",
                  "msgs/request (A's histogram)", "latency p50 ms", "latency p95 ms", "lost", "429 answers"):
        assert any(line.startswith(label) for line in lines), label
    assert "targets (issue 17):" in lines

    doc = json.loads(out_json.read_text())
    floor = doc["floor"]
    for protocol in ("HTTP/2", "HTTP/1.1"):
        # the homeservers' own request counters saw exactly the floor's requests
        assert floor[protocol]["requests"] == {"a.example": FLOOR_REQUESTS, "b.example": FLOOR_REQUESTS}
        assert floor[protocol]["client_cpu_ms_per_request"] > 0
    assert floor["floor_ms"] > 0
    assert abs(floor["floor_ms"] - sum(floor["HTTP/2"]["cpu_ms_per_request"].values()) / 2) < 0.001
    assert [s["key"] for s in doc["scenarios"]] == SCENARIOS
    for s in doc["scenarios"]:
        where = s["key"]
        assert s["sent"] == s["n"] > 0 and s["send_errors"] == 0, where
        assert (s["lost"], s["duplicates"], s["foreign"]) == (0, 0, 0), where
        assert s["federated_deliveries"] == s["n"], where
        assert s["user_deliveries"] == s["n"] * s["users"], where
        assert s["fed_requests"] >= 1 and s["batch_sent_mean"] >= 1, where
        assert s["rate_limited_429"] == 0 and s["dead_letters"] == 0, where
        cpu = s["cpu_ms"]
        assert cpu["A"] > 0 and cpu["B"] > 0 and abs(cpu["A+B"] - cpu["A"] - cpu["B"]) < 0.01, where
        assert abs(s["cpu_per_fed_x_floor"]["A+B"] * floor["floor_ms"] - s["cpu_ms_per_fed"]["A+B"]) < 0.01, where
        assert 0 < s["latency_ms"]["p50"] <= s["latency_ms"]["p95"] <= s["latency_ms"]["max"], where
        assert s["msgs_per_s"] > 0, where
        # the requests at the floor are a part of what they cost (a send or a dequeue does more than an empty GET)
        assert 0 < s["floor_ms_per_fed"] < cpu["A+B"] / s["federated_deliveries"], where
        assert 0 < s["floor_ms_per_msg_all"] < s["all_cpu_ms_per_msg"], where
        assert abs(s["all_cpu_ms_per_msg"] - s["client_cpu_ms_per_msg"] - cpu["A+B"] / s["sent"]) < 0.01, where
        assert s["requests_served"]["A"] >= s["n"] and s["requests_served"]["B"] >= s["fed_requests"], where
    probe = next(s for s in doc["scenarios"] if s["key"] == "probe")
    assert probe["window"] == 1 and probe["users"] == 1


def test_a_quick_run_with_a_on_the_lean_server_delivers_every_message(tmp_path):
    """``--lean-a``: A's public listener on ``benchmarks/lean_server.py``; the homeserver's own
    metrics still count every request, and every message still arrives once."""
    out_json = tmp_path / "figures.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--lean-a", "--scenarios", "a,probe",
                           "--floor-requests", str(FLOOR_REQUESTS), "--json", str(out_json)],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "a.example is served by benchmarks/lean_server.py" in proc.stdout
    doc = json.loads(out_json.read_text())
    assert doc["settings"]["lean_a"] is True
    for protocol in ("HTTP/2", "HTTP/1.1"):
        assert doc["floor"][protocol]["requests"]["a.example"] == FLOOR_REQUESTS
    for s in doc["scenarios"]:
        assert s["sent"] == s["n"] and (s["lost"], s["duplicates"], s["foreign"]) == (0, 0, 0), s["key"]
        assert s["requests_served"]["A"] >= s["n"], s["key"]
