"""pytest plugin: ``@pytest.mark.spec(section, level)`` and the conformance matrix.

* A test marked ``spec("spec/queuing_service.md#federated-qs-to-qs-communication", "MUST")``
  fails if that section does not exist in ``../shared/spec`` or the level is
  not MUST, SHOULD or MAY.
* At the end of the run, a matrix lists every cited section with the number
  of its tests that passed and failed.
* ``@pytest.mark.slow`` tests (long fuzz and soak runs) are skipped with the
  reason "needs --run-slow" unless pytest runs with ``--run-slow``.

``phoenix_ref.spec_plugin.spec`` is a shorthand for the marker.
"""

from __future__ import annotations

from collections import defaultdict

import pytest

from .spec_sections import check_section

LEVELS = ("MUST", "SHOULD", "MAY")


def spec(section: str, level: str = "MUST"):
    """Decorator: the spec section a test checks, and the requirement level."""
    return pytest.mark.spec(section, level)


#: Per pytest run (a nested run, as in pytester, keeps its own): (section, level) → [passed, failed].
RESULTS = pytest.StashKey[dict]()


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="also run tests marked slow (long fuzz and soak runs)")


def pytest_configure(config):
    config.addinivalue_line("markers", "spec(section, level): spec section checked by a conformance test")
    config.addinivalue_line("markers", "slow: long-running test, skipped unless --run-slow")
    config.stash[RESULTS] = defaultdict(lambda: [0, 0])


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    # long fuzz and soak runs stay out of CI (its 20-minute budget); each has
    # a CI-sized twin that always runs, so nothing goes untested by default
    skip = pytest.mark.skip(reason="needs --run-slow")
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip)


def _marks(item):
    return [m for m in item.iter_markers("spec")]


def pytest_runtest_setup(item):
    for m in _marks(item):
        if not m.args:
            pytest.fail("@spec needs a section id", pytrace=False)
        section = m.args[0]
        level = m.args[1] if len(m.args) > 1 else m.kwargs.get("level", "MUST")
        problem = check_section(section)
        if problem:
            pytest.fail(problem, pytrace=False)
        if level not in LEVELS:
            pytest.fail(f"@spec level {level!r} is not one of {LEVELS}", pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    marks = _marks(item)
    if not marks or report.skipped:   # a skipped test neither passed nor failed
        return
    if report.when == "call" or (report.when == "setup" and not report.passed):
        for m in marks:
            level = m.args[1] if len(m.args) > 1 else m.kwargs.get("level", "MUST")
            key = (m.args[0] if m.args else "?", level)
            item.config.stash[RESULTS][key][0 if report.passed else 1] += 1


def pytest_terminal_summary(terminalreporter):
    tr = terminalreporter
    results = tr.config.stash[RESULTS]
    if not results:
        return
    tr.section("spec conformance matrix")
    width = max(len(s) for s, _ in results)
    tr.write_line(f"{'section'.ljust(width)}  level   pass  fail")
    for (section, level), (ok, bad) in sorted(results.items()):
        tr.write_line(f"{section.ljust(width)}  {level:<6} {ok:>5} {bad:>5}")
