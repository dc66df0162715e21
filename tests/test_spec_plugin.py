"""The project's pytest plugin (``phoenix_ref.spec_plugin``): ``--run-slow``
and the conformance matrix."""

pytest_plugins = ["pytester"]

TESTS = """
import pytest
from phoenix_ref.spec_plugin import spec

@pytest.mark.slow
def test_long():
    pass

@spec("spec/federation/use_cases.md#federation-use-cases", "MUST")
@pytest.mark.slow
def test_long_cited():
    pass

def test_quick():
    pass
"""


def test_slow_tests_are_skipped_without_run_slow(pytester):
    pytester.makepyfile(TESTS)
    result = pytester.runpytest("-rs")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(["*needs --run-slow*"])
    # a skipped cited test is neither a pass nor a failure of its section
    assert "federation-use-cases" not in result.stdout.str()


def test_run_slow_runs_them(pytester):
    pytester.makepyfile(TESTS)
    result = pytester.runpytest("--run-slow")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["spec/federation/use_cases.md#federation-use-cases*MUST*1*0"])
