"""pytest plugin: ``@spec(section, level)`` markers, levels checked against the
spec's text, the conformance matrix and its reports.

* ``@spec("spec/queuing_service.md#federated-qs-to-qs-communication", "MUST")``
  files a test under a section of ``../shared/spec``. The level is what the
  test claims: ``"MUST"``, ``"SHOULD"``, ``"MAY"`` or ``"informative"`` (the
  default: the section describes the behaviour without a requirement word).
* At collection the plugin reads the section (its text down to the next
  heading of the same or a higher level, code blocks left out), finds its
  requirement sentences (``spec_sections.requirement_sentences``) and rejects
  a claim stronger than the text: such a test is a collection error that
  names the test, the section and what the text says. So is a section that
  does not exist or a level that is not one of the four.
* A failing SHOULD or MAY test is reported as ``soft_failed`` and does not
  fail the run, unless pytest runs with ``--strict``. A failing MUST or
  informative test fails the run as any test does.
* At the end of the run a matrix lists every cited section with its tests'
  outcomes; ``--conformance-report DIR`` writes it as ``conformance.json``,
  ``conformance.html`` and ``conformance.md``, with the requirement sentences
  of each section and the sections of the AS, QS, DS and federation chapters
  that have requirement sentences but no test ("uncovered"). Each test's
  sections and levels are also JUnit properties (``--junitxml``).
* ``@pytest.mark.slow`` tests (long fuzz and soak runs) are skipped with the
  reason "needs --run-slow" unless pytest runs with ``--run-slow``.
* ``--phoenix-target FILE`` runs the suite against a deployment described by
  a deployment file (:mod:`phoenix_ref.target`) instead of phoenix_ref
  homeservers it starts itself: the ``deployment_mode`` fixture then has
  the one value ``"target"``. A test marked ``needs_control(what)`` is not
  run there and is reported **unsupported** (an outcome of its own, as is a
  test that finds the target lacking what it needs, ``Unsupported``). An
  unmarked test that reaches into a homeserver fails with
  :class:`~phoenix_ref.target_deployment.NeedsControl` (:mod:`phoenix_ref.target_run`).
* ``--phoenix-expected-failures FILE`` (or ``expected_failures`` in the
  deployment file): test id → reason; such a test's failure is an expected
  failure, and its passing is reported as "unexpectedly passing" (a failure
  of the run with ``--strict``).

``phoenix_ref.spec_plugin.spec`` is a shorthand for the marker.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from . import conformance_report, target_run
from .target_deployment import Unsupported
from .spec_sections import LEVEL_ORDER, check_section, section, strength

LEVELS = LEVEL_ORDER            # ("informative", "MAY", "SHOULD", "MUST")
SOFT_LEVELS = ("SHOULD", "MAY")  # a failure of these fails the run only with --strict
SOFT_FAILED = "soft_failed"     # outcome word in the summary line and the reports
UNSUPPORTED = "unsupported"     # outcome word: the target cannot give what the test needs


def spec(section: str, level: str = "informative"):
    """Decorator: the spec section a test checks, and the level it claims."""
    return pytest.mark.spec(section, level)


class _Run:
    """What one pytest run (a nested pytester run keeps its own) learns about cited tests."""

    def __init__(self):
        self.cites: dict[str, list[tuple[str, str]]] = {}   # nodeid → [(section, level)]
        self.outcomes: dict[str, str] = {}                  # nodeid → outcome word
        self.messages: dict[str, str] = {}                  # nodeid → failure/skip text
        self.target: target_run.TargetRun | None = None     # with --phoenix-target / a manifest


RUN = pytest.StashKey[_Run]()


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="also run tests marked slow (long fuzz and soak runs)")
    # ``--strict`` is pytest's own option (the ``strict`` ini value, which also
    # turns on strict markers, xfail, config and parametrize ids); this plugin
    # reads it too: with it a failing SHOULD or MAY test fails the run
    group = parser.getgroup("phoenix conformance")
    group.addoption("--conformance-report", metavar="DIR", default=None,
                    help="write conformance.json, conformance.html and conformance.md into DIR")
    group.addoption("--phoenix-target", metavar="FILE", default=None,
                    help="run the conformance suite against the deployment this TOML file describes "
                         "(docs/conformance.md) instead of phoenix_ref homeservers started here")
    group.addoption("--phoenix-expected-failures", metavar="FILE", default=None,
                    help="TOML manifest of known failures (test id = reason): they count as expected "
                         "failures; one that passes is reported (and fails the run under --strict)")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "spec(section, level='informative'): spec section a conformance test checks "
                   "and the level it claims (MUST, SHOULD, MAY, informative)")
    config.addinivalue_line("markers", "slow: long-running test, skipped unless --run-slow")
    config.stash[RUN] = run = _Run()
    run.target = target_run.configure(config)


def pytest_unconfigure(config):
    run = config.stash.get(RUN, None)
    if run is not None and run.target is not None:
        run.target.unconfigure()


def deployment_modes(config) -> tuple[str, ...]:
    """The values of the suite's ``deployment_mode`` fixture in this run:
    ``("target",)`` with ``--phoenix-target``, else phoenix_ref's two local modes."""
    run = config.stash.get(RUN, None)
    if run is not None and run.target is not None and run.target.target is not None:
        return ("target",)
    from .testing import MODES
    return MODES


def strict_levels(config) -> bool:
    """True when SHOULD/MAY failures fail the run (pytest's ``--strict``)."""
    return bool(config.getini("strict"))


def marker_cites(mark) -> tuple[str | None, str]:
    """``(section, level)`` of one ``spec`` marker (section None when missing)."""
    sid = mark.args[0] if mark.args else mark.kwargs.get("section")
    level = mark.args[1] if len(mark.args) > 1 else mark.kwargs.get("level", "informative")
    return sid, level


def check_cite(sid: str | None, level: str) -> str | None:
    """None if a test may cite ``sid`` at ``level``, else why not."""
    if not sid:
        return "@spec needs a section id"
    problem = check_section(sid)
    if problem:
        return problem
    if level not in LEVELS:
        return f"@spec level {level!r} is not one of {LEVELS}"
    sec = section(sid)
    supported = sec.level()
    if strength(level) <= strength(supported):
        return None
    found = sec.requirements()
    if found:
        said = "; ".join(f'{lv}: "{s}"' for lv, s in found)
        what = f"its strongest requirement sentence is {supported} ({said})"
    else:
        what = "it has no requirement sentence (no MUST/SHOULD/MAY/has to/… in either case)"
    return (f"@spec claims {level} for {sid}, but {what}; cite it as "
            f"{supported!r} or lower, or file the test under the section that says so")


def pytest_collection_modifyitems(session, config, items):
    run = config.stash[RUN]
    keep = []
    for item in items:
        problems, cites = [], []
        for mark in item.iter_markers("spec"):
            sid, level = marker_cites(mark)
            problem = check_cite(sid, level)
            if problem:
                problems.append(problem)
            else:
                cites.append((sid, level))
        if problems:
            # a collection error for this test: the run stops before any test
            # runs (unless --continue-on-collection-errors, which drops it)
            report = pytest.CollectReport(
                item.nodeid, "failed",
                f"{item.nodeid}: " + f"\n{item.nodeid}: ".join(problems), [])
            config.hook.pytest_collectreport(report=report)
            continue
        if cites:
            run.cites[item.nodeid] = cites
            for sid, level in cites:
                item.user_properties.append(("spec_section", sid))
                item.user_properties.append(("spec_level", level))
        keep.append(item)
    if len(keep) != len(items):
        items[:] = keep
    if run.target is not None:
        run.target.collected(items)

    if config.getoption("--run-slow"):
        return
    # long fuzz and soak runs stay out of CI (its 20-minute budget); each has
    # a CI-sized twin that always runs, so nothing goes untested by default
    skip = pytest.mark.skip(reason="needs --run-slow")
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip)


def _outcome(report) -> str:
    if getattr(report, "phoenix_unsupported", None) is not None:
        return UNSUPPORTED
    if getattr(report, "phoenix_unexpected_pass", False):
        return "xpassed"    # a manifest entry that passed under --strict: failed, and said why
    xfail = hasattr(report, "wasxfail")
    if report.passed:
        return "xpassed" if xfail else "passed"
    if report.failed:
        return "failed" if report.when == "call" else "error"
    return "xfailed" if xfail else "skipped"


def _message(report) -> str:
    if hasattr(report, "wasxfail") and report.wasxfail:
        return str(report.wasxfail)
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2])
    crash = getattr(getattr(report, "longrepr", None), "reprcrash", None)
    if crash is not None:
        return crash.message
    return str(report.longrepr) if report.longrepr else ""


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    run = item.config.stash[RUN]
    if run.target is not None:
        run.target.before_setup(item)   # raises Unsupported for a needs_control test


def _unsupported_reason(excinfo) -> str | None:
    """The message of the :class:`Unsupported` a setup or call ended with, else None.

    pytest-trio hands a test's error over inside an exception group; a group
    that holds only Unsupported counts (anything else in it is a failure)."""
    if excinfo is None:
        return None
    exc = excinfo.value
    if isinstance(exc, BaseExceptionGroup):
        match, rest = exc.split(Unsupported)
        if match is None or rest is not None:
            return None
        while isinstance(match, BaseExceptionGroup):
            match = match.exceptions[0]
        exc = match
    return str(exc) if isinstance(exc, Unsupported) else None


def _as_unsupported(item, reason: str, report) -> None:
    """Turn a setup or call that raised :class:`Unsupported` into an unsupported report."""
    report.outcome = "skipped"
    report.longrepr = (str(item.path), (item.location[1] or 0) + 1, f"unsupported: {reason}")
    report.phoenix_unsupported = reason
    if hasattr(report, "wasxfail"):   # a manifest entry does not make it an expected failure
        del report.wasxfail
    item.user_properties.append(("spec_outcome", UNSUPPORTED))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    run = item.config.stash[RUN]
    reason = _unsupported_reason(call.excinfo) if report.when in ("setup", "call") else None
    if reason is not None:
        _as_unsupported(item, reason, report)
    elif run.target is not None:
        run.target.after_report(item, report)   # the manifest's strict XPASS is an unexpected pass
    cites = run.cites.get(item.nodeid)
    if not cites:
        return
    level = max((lv for _, lv in cites), key=strength)
    if (report.when == "call" and report.failed and not hasattr(report, "wasxfail")
            and level in SOFT_LEVELS and not strict_levels(item.config)):
        # a SHOULD/MAY that the implementation does not meet: reported (with
        # its traceback in the summary and the reports) but the run passes
        run.messages[item.nodeid] = _message(report)
        report.phoenix_soft_failure = report.longrepr
        report.outcome = "skipped"
        report.wasxfail = f"{level} not met (fails the run with --strict)"
        run.outcomes[item.nodeid] = SOFT_FAILED
        item.user_properties.append(("spec_outcome", SOFT_FAILED))
        return
    word = _outcome(report)
    if report.when in ("setup", "call"):
        run.outcomes[item.nodeid] = word        # the call's outcome replaces setup's "passed"
    elif word == "error" and run.outcomes.get(item.nodeid) in ("passed", "xpassed"):
        run.outcomes[item.nodeid] = word        # a teardown error spoils a pass
    if word != "passed":
        run.messages.setdefault(item.nodeid, _message(report))


def pytest_report_teststatus(report, config):
    if getattr(report, "phoenix_soft_failure", None) is not None:
        return SOFT_FAILED, "w", ("SOFT-FAILED", {"yellow": True})
    if getattr(report, "phoenix_unsupported", None) is not None:
        return UNSUPPORTED, "u", ("UNSUPPORTED", {"yellow": True})
    return None


def _matrix(config) -> dict[tuple[str, str], dict[str, int]]:
    run = config.stash[RUN]
    rows: dict[tuple[str, str], dict[str, int]] = {}
    for nodeid, cites in run.cites.items():
        word = run.outcomes.get(nodeid)
        if word is None:        # deselected or never run
            continue
        for key in cites:
            counts = rows.setdefault(key, dict.fromkeys(conformance_report.COLUMNS, 0))
            counts[conformance_report.column(word)] += 1
    return rows


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    tr = terminalreporter
    soft = tr.stats.get(SOFT_FAILED, [])
    if soft:
        tr.section("SHOULD/MAY tests not met (the run fails on them only with --strict)")
        for rep in soft:
            tr.write_sep("_", rep.nodeid)
            tr.write_line(str(rep.phoenix_soft_failure))
    run = config.stash[RUN]
    if run.target is not None:
        run.target.summary(tr)
    rows = _matrix(config)
    if not rows:
        return
    tr.section("spec conformance matrix")
    width = max(len(s) for s, _ in rows)
    heads = "  ".join(f"{h:>5}" for h in conformance_report.SHORT)
    tr.write_line(f"{'section'.ljust(width)}  {'level':<11} {heads}")
    for (sid, level), counts in sorted(rows.items()):
        cells = "  ".join(f"{counts[c]:>5}" for c in conformance_report.COLUMNS)
        tr.write_line(f"{sid.ljust(width)}  {level:<11} {cells}")


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    out = config.getoption("--conformance-report")
    if not out or RUN not in config.stash:
        return
    run = config.stash[RUN]
    data = conformance_report.build(
        run.cites, run.outcomes, run.messages,
        strict=strict_levels(config),
        target=run.target.describe() if run.target is not None else None,
        generated=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    conformance_report.write(Path(out), data)
