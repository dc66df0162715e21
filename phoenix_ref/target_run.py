"""What the spec plugin does for a target run and an expected-failures manifest (issue 16).

:func:`configure` reads ``--phoenix-target FILE`` (:mod:`phoenix_ref.target`)
and ``--phoenix-expected-failures FILE`` (or the deployment file's
``expected_failures``); without either it returns None and the run is
phoenix_ref's own. A :class:`TargetRun` then

* makes ``Deployment("target", …)`` available (``testing.use_target``) and,
  for the run's length, makes building a phoenix_ref ``Homeserver`` or a
  local ``Deployment`` a :class:`~.target_deployment.NeedsControl` failure:
  a test that does so checks phoenix_ref, not the target, and must say so
  with the ``needs_control`` marker;
* raises :class:`~.target_deployment.Unsupported` before the setup of every
  test marked ``needs_control(what)``, so it is reported unsupported and
  never runs;
* marks each test the manifest lists as ``xfail`` with the manifest's
  reason (strict under pytest's ``--strict``, as any xfail), and tells
  loudly about a listed test that passed and about entries that name no
  collected test;
* adds a section "unsupported against this target" to the terminal summary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .target import Target, TargetFileError, load_manifest, load_target
from .target_deployment import NeedsControl, Unsupported

#: Prefix of an xfail reason that comes from the manifest.
MANIFEST_PREFIX = "expected failure (manifest): "


def configure(config) -> "TargetRun | None":
    """A TargetRun for this pytest run, or None (no target, no manifest).

    A deployment file or manifest that cannot be used is a usage error
    (pytest stops with the file, the key and what is wrong)."""
    target_file = config.getoption("--phoenix-target", None)
    manifest_file = config.getoption("--phoenix-expected-failures", None)
    if not target_file and not manifest_file:
        return None
    try:
        target = load_target(target_file) if target_file else None
        if manifest_file is None and target is not None:
            manifest_file = target.expected_failures
        manifest = load_manifest(manifest_file) if manifest_file else {}
    except TargetFileError as e:
        raise pytest.UsageError(str(e)) from None
    if target is not None and config.args_source == pytest.Config.ArgsSource.TESTPATHS:
        raise pytest.UsageError("--phoenix-target runs the conformance suite: name it, "
                                "e.g. `pytest --phoenix-target FILE spec_tests` (tests/ checks phoenix_ref itself)")
    return TargetRun(target, manifest, Path(manifest_file) if manifest_file else None)


def _refuse_homeserver(self, *args: Any, **kwargs: Any) -> None:
    raise NeedsControl("a phoenix_ref Homeserver of its own (Homeserver(...))")


class TargetRun:
    """State of one run with a target and/or a manifest (module docstring)."""

    def __init__(self, target: Target | None, manifest: dict[str, str], manifest_path: Path | None):
        self.target = target
        self.manifest = manifest
        self.manifest_path = manifest_path
        self.unmatched: list[str] = []           # manifest entries no collected test has
        self.unexpected_passes: list[str] = []   # manifest entries that passed
        self._saved_init = None
        if target is not None:
            from . import homeserver, testing   # (loaded only for a target run)
            testing.use_target(target)
            self._saved_init = homeserver.Homeserver.__init__
            homeserver.Homeserver.__init__ = _refuse_homeserver

    def unconfigure(self) -> None:
        if self.target is not None:
            from . import homeserver, testing
            testing.use_target(None)
            homeserver.Homeserver.__init__ = self._saved_init

    def describe(self) -> dict:
        """What the reports say about the target and the manifest."""
        out: dict[str, Any] = {"mode": "target" if self.target else "phoenix_ref"}
        if self.target is not None:
            out["deployment_file"] = str(self.target.path)
            out["description"] = self.target.description
            out["homeservers"] = {n: hs.domain for n, hs in self.target.homeservers.items()}
        if self.manifest_path is not None:
            out["expected_failures_manifest"] = str(self.manifest_path)
            out["unexpectedly_passing"] = list(self.unexpected_passes)
        return out

    # --- collection and running -----------------------------------------------------------

    def collected(self, items: list[pytest.Item]) -> None:
        ids = {item.nodeid for item in items}
        self.unmatched = sorted(set(self.manifest) - ids)
        for item in items:
            reason = self.manifest.get(item.nodeid)
            if reason is not None:
                item.add_marker(pytest.mark.xfail(reason=MANIFEST_PREFIX + reason))

    def before_setup(self, item: pytest.Item) -> None:
        if self.target is None:
            return
        mark = item.get_closest_marker("needs_control")
        if mark is not None:
            what = mark.args[0] if mark.args else mark.kwargs.get("what", "control of the homeserver")
            raise Unsupported(f"needs control a remote target cannot give: {what}")

    def after_report(self, item: pytest.Item, report: pytest.TestReport) -> None:
        if report.when != "call" or item.nodeid not in self.manifest:
            return
        strict_xpass = report.failed and str(report.longrepr).startswith("[XPASS(strict)]")
        if strict_xpass or (report.passed and hasattr(report, "wasxfail")):
            self.unexpected_passes.append(item.nodeid)
            report.phoenix_unexpected_pass = True
            if strict_xpass:
                report.longrepr = (f"[XPASS(strict)] {item.nodeid} is listed in {self.manifest_path} "
                                   "as an expected failure but passed: remove it from the manifest")

    # --- the terminal summary ----------------------------------------------------------------

    def summary(self, tr) -> None:
        unsupported = tr.stats.get("unsupported", [])
        if unsupported:
            tr.section(f"unsupported against this target ({len(unsupported)})")
            for rep in unsupported:
                tr.write_line(f"{rep.nodeid}: {rep.phoenix_unsupported}")
        if self.unexpected_passes:
            tr.section("UNEXPECTEDLY PASSING: remove these from the expected-failures manifest", red=True)
            for nodeid in self.unexpected_passes:
                tr.write_line(f"{nodeid}  ({self.manifest_path})", red=True)
        if self.unmatched:
            tr.section("expected-failures manifest entries that name no test of this run")
            for nodeid in self.unmatched:
                tr.write_line(nodeid)
