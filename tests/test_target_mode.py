"""Target mode end to end (issue 16): the conformance suite against
``phoenix-ref serve`` processes started from the command line.

* Three homeservers (``python -m phoenix_ref.target_lab``, which runs
  ``phoenix-ref generate-config`` and ``phoenix-ref serve`` for each), the
  suite run against them with ``--phoenix-target`` in a pytest subprocess:
  it passes, every test marked ``needs_control`` is reported unsupported,
  every other test passed (or was unsupported for a configuration the lab
  does not have), and the JUnit file and the three reports are written.
* The same lab with ``a.example`` served by a deliberately wrong double
  (``spec_tests/doubles/lenient_alias_deletion.py``): exactly the tests
  citing the section it breaks fail, and the matrix shows that section
  failed. With the failure in an expected-failures manifest the run passes
  and the report counts an expected failure; a manifest entry that passes
  fails the (strict) run with "remove it from the manifest".

The in-process run of the same suite is the README's test command itself.
Budget: the target run of the whole suite but its random walk takes about
two minutes on an idle machine; the double's runs cover two test files and
then two tests.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from phoenix_ref.shared import REPO_ROOT
from phoenix_ref.spec_sections import section

DOUBLE = "spec_tests.doubles.lenient_alias_deletion"
BROKEN = "spec/authentication_service.md#delete-alias"
#: what the random walk and the DS garbage test need (the walk's WALK_LIMITS)
LAB_LIMITS = ["--limit", "token_allowance=1000000", "--limit", "token_domain_allowance=10000000"]
RUN_TIMEOUT_S = 900
WALK = "spec_tests/test_scenarios.py::test_random_walk_over_tls"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


class RunningLab:
    """``python -m phoenix_ref.target_lab DIR …`` as a child; ``target`` is its deployment file."""

    def __init__(self, directory: Path, *extra: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "phoenix_ref.target_lab", str(directory), *LAB_LIMITS, *extra,
             "--until-stdin-closes"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
        line = self.proc.stdout.readline()
        if not line.startswith("ready "):
            self.stop()
            pytest.fail(f"the lab did not start: {line}{self.proc.stderr.read()}")
        self.target = Path(line.split(" ", 1)[1].strip())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()      # the lab stops its homeservers and ends
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run_suite(target: Path, out: Path, *paths: str, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """``pytest --phoenix-target target`` over ``paths`` in a subprocess, reports into ``out``."""
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rN",
           f"--phoenix-target={target}", f"--conformance-report={out}", f"--junitxml={out / 'junit.xml'}",
           *extra, *paths]
    return subprocess.run(cmd, cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT_S)


def junit_cases(path: Path) -> dict[str, dict]:
    """Test id → {"outcome": passed/failed/skipped, "props": {name: [values]}, "message": text}."""
    out = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        nodeid = f"{case.get('classname').replace('.', '/')}.py::{case.get('name')}"
        props: dict[str, list[str]] = {}
        for p in case.iter("property"):
            props.setdefault(p.get("name"), []).append(p.get("value"))
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome = "failed" if tag in ("failure", "error") else "skipped"
                message = el.get("message") or ""
        out[nodeid] = {"outcome": outcome, "props": props, "message": message}
    return out


def needs_control_tests() -> set[str]:
    """Test ids (as the target run names them) that carry ``needs_control``, read by collection."""
    listing = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--collect-only",
         "-m", "needs_control", "spec_tests"],
        cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stdout[-3000:]
    ids = {line.strip() for line in listing.stdout.splitlines() if "::" in line}
    # the local run parametrises deployment_mode over two modes; the target run has one
    return {i.replace("[in_process]", "[target]").replace("[sockets]", "[target]") for i in ids}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    running = RunningLab(tmp_path_factory.mktemp("lab") / "lab")
    try:
        yield running
    finally:
        running.stop()


def test_the_suite_against_three_serve_processes(lab, tmp_path):
    # the random walk (a minute of one seed) stays with the local modes, for CI's budget
    done = run_suite(lab.target, tmp_path, "spec_tests", extra=(f"--deselect={WALK}",))
    tail = done.stdout[-6000:] + done.stderr[-2000:]
    assert done.returncode == 0, tail
    assert "unsupported against this target" in done.stdout, tail

    cases = junit_cases(tmp_path / "junit.xml")
    marked = needs_control_tests()
    assert marked, "no test carries needs_control"
    unsupported = {t for t, c in cases.items() if c["props"].get("spec_outcome") == ["unsupported"]}
    # every test that needs control is unsupported, and said so
    for t in marked:
        assert t in cases, f"{t} did not run in target mode"
        assert t in unsupported, (t, cases[t])
        assert "needs control a remote target cannot give" in cases[t]["message"], cases[t]
    # what else is unsupported lacks a configuration the lab does not have (never control)
    for t in unsupported - marked:
        assert "needs a target configured with" in cases[t]["message"], (t, cases[t])
    # and all the others passed
    others = {t: c["outcome"] for t, c in cases.items() if t not in unsupported}
    assert others and set(others.values()) == {"passed"}, {t: o for t, o in others.items() if o != "passed"}
    assert len(others) >= 40, len(others)
    assert not [t for t in cases if re.search(r"[\[-](in_process|sockets)[\]-]", t)]   # no local mode ran

    # kept for a look next to the in-process run's (README: build/conformance-target)
    shutil.copytree(tmp_path, REPO_ROOT / "build" / "conformance-target", dirs_exist_ok=True)
    data = json.loads((tmp_path / "conformance.json").read_text())
    assert data["target"]["mode"] == "target"
    assert data["target"]["homeservers"] == {"hs1": "a.example", "hs2": "b.example", "hs3": "c.example"}
    assert data["totals"]["failed"] == 0 and data["totals"]["unsupported"] > 0 and data["totals"]["passed"] > 0
    assert (tmp_path / "conformance.html").read_text().startswith("<!DOCTYPE html>")
    md = (tmp_path / "conformance.md").read_text()
    assert "| unsupported |" in md and "Target: three phoenix-ref serve processes" in md


@pytest.fixture(scope="module")
def wrong_lab(tmp_path_factory):
    running = RunningLab(tmp_path_factory.mktemp("wrong") / "lab", "--double", f"a.example={DOUBLE}")
    try:
        yield running
    finally:
        running.stop()


def _citing(cases: dict[str, dict], sid: str) -> set[str]:
    return {t for t, c in cases.items() if sid in c["props"].get("spec_section", [])}


def test_a_wrong_target_fails_exactly_the_tests_of_the_broken_section(wrong_lab, tmp_path):
    assert section(BROKEN).title == "Delete alias"
    done = run_suite(wrong_lab.target, tmp_path, "spec_tests/test_as_endpoints.py", "spec_tests/test_as_privacy_pass.py")
    assert done.returncode == 1, done.stdout[-4000:]
    cases = junit_cases(tmp_path / "junit.xml")
    failed = {t for t, c in cases.items() if c["outcome"] == "failed"}
    assert failed and failed == _citing(cases, BROKEN), failed
    # the double's own alias operations still work: the privacy pass test deletes an alias properly
    assert any("test_as_privacy_pass.py" in t and c["outcome"] == "passed" for t, c in cases.items())
    data = json.loads((tmp_path / "conformance.json").read_text())
    rows = {s["section"]: s["counts"] for s in data["sections"]}
    assert rows[BROKEN]["failed"] == len(failed)
    assert [sid for sid, c in rows.items() if c["failed"]] == [BROKEN]
    assert f"<tr class='failed'><td><code>{BROKEN}</code>" in (tmp_path / "conformance.html").read_text()


def test_a_manifest_turns_the_known_failure_into_an_expected_one(wrong_lab, tmp_path):
    failing = "spec_tests/test_as_endpoints.py::test_delete_alias_needs_the_alias_auth_key_and_removes_everything[target]"
    passing = "spec_tests/test_as_endpoints.py::test_fetch_user_profile_needs_no_authentication[target]"
    manifest = tmp_path / "known.toml"
    manifest.write_text(f'[expected_failures]\n"{failing}" = "our AS lets anybody delete an alias"\n')
    out = tmp_path / "known"
    done = run_suite(wrong_lab.target, out, failing.replace("[target]", ""), passing.replace("[target]", ""),
                     extra=(f"--phoenix-expected-failures={manifest}",))
    assert done.returncode == 0, done.stdout[-4000:]
    data = json.loads((out / "conformance.json").read_text())
    row = {s["section"]: s for s in data["sections"]}[BROKEN]
    assert row["counts"]["expected_failure"] == 1 and row["counts"]["failed"] == 0
    assert [t["message"] for t in row["tests"]] == ["expected failure (manifest): our AS lets anybody delete an alias"]

    # an entry that passes: reported, and under --strict (this repository's addopts) a failure of the run
    manifest.write_text(manifest.read_text() + f'"{passing}" = "thought broken"\n')
    out = tmp_path / "stale"
    done = run_suite(wrong_lab.target, out, failing.replace("[target]", ""), passing.replace("[target]", ""),
                     extra=(f"--phoenix-expected-failures={manifest}",))
    assert done.returncode == 1, done.stdout[-4000:]
    assert "UNEXPECTEDLY PASSING" in done.stdout and passing in done.stdout
    assert "remove it from the manifest" in done.stdout
    data = json.loads((out / "conformance.json").read_text())
    assert data["target"]["unexpectedly_passing"] == [passing]
    assert data["totals"]["unexpected_pass"] == 1 and data["totals"]["expected_failure"] == 1
