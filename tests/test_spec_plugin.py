"""The project's pytest plugin (``phoenix_ref.spec_plugin``): ``--run-slow``,
levels checked against the spec text, soft SHOULD failures and ``--strict``,
the conformance matrix and its reports."""

import json
import xml.etree.ElementTree as ET

import pytest

from phoenix_ref.spec_plugin import check_cite
from phoenix_ref.spec_sections import section

pytest_plugins = ["pytester"]

# sections whose text the tests below rely on (checked in test_the_fixture_sections_say_what_we_think)
NO_REQUIREMENT = "spec/delivery_service.md#validation"                     # descriptive only
SHOULD_ONLY = "spec/delivery_service.md#message-distribution"              # one "should"
HAS_MUST = "spec/delivery_service.md#proposal-store"                       # two "must"
UNCITED_MUST = "spec/delivery_service.md#resync"                           # not cited below

TESTS = f"""
import pytest
from phoenix_ref.spec_plugin import spec

@pytest.mark.slow
def test_long():
    pass

@spec("{HAS_MUST}", "MUST")
@pytest.mark.slow
def test_long_cited():
    pass

def test_quick():
    pass
"""


def test_the_fixture_sections_say_what_we_think():
    assert section(NO_REQUIREMENT).requirements() == []
    assert {lv for lv, _ in section(SHOULD_ONLY).requirements()} == {"SHOULD"}
    assert section(HAS_MUST).level() == "MUST"
    assert section(UNCITED_MUST).level() == "MUST"


def test_slow_tests_are_skipped_without_run_slow(pytester):
    pytester.makepyfile(TESTS)
    result = pytester.runpytest("-rs")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(["*needs --run-slow*"])
    # a skipped cited test is neither a pass nor a failure of its section
    result.stdout.fnmatch_lines([f"{HAS_MUST}*MUST*0*0*0*1*0*0*0"])


def test_run_slow_runs_them(pytester):
    pytester.makepyfile(TESTS)
    result = pytester.runpytest("--run-slow")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines([f"{HAS_MUST}*MUST*1*0*0*0*0*0*0"])


# --- levels against the text --------------------------------------------------------------

def test_must_on_a_section_without_requirement_sentence_fails_collection(pytester):
    pytester.makepyfile(f"""
        from phoenix_ref.spec_plugin import spec

        @spec("{NO_REQUIREMENT}", "MUST")
        def test_overclaims():
            pass

        def test_innocent():
            pass
    """)
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines([
        "*ERROR collecting*",
        f"*test_overclaims: @spec claims MUST for {NO_REQUIREMENT}, but it has no requirement sentence*",
        "*1 error during collection*",
    ])
    # nothing ran, not even the innocent test
    assert "1 passed" not in result.stdout.str()


def test_must_on_a_should_section_names_what_the_text_says(pytester):
    pytester.makepyfile(f"""
        from phoenix_ref.spec_plugin import spec

        @spec("{SHOULD_ONLY}", "MUST")
        def test_overclaims():
            pass
    """)
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines([
        f"*@spec claims MUST for {SHOULD_ONLY}, but its strongest requirement sentence is SHOULD*"
        "*should be removed*cite it as 'SHOULD' or lower*"])


def test_levels_the_text_supports_collect(pytester):
    pytester.makepyfile(f"""
        from phoenix_ref.spec_plugin import spec

        @spec("{HAS_MUST}", "MUST")
        def test_must():
            pass

        @spec("{HAS_MUST}", "SHOULD")      # weaker than the text: allowed
        def test_weaker():
            pass

        @spec("{SHOULD_ONLY}", "SHOULD")
        def test_should():
            pass

        @spec("{NO_REQUIREMENT}")          # informative by default
        def test_informative():
            pass
    """)
    result = pytester.runpytest()
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines([f"{NO_REQUIREMENT}*informative*1*0"])


def test_unknown_sections_and_levels_fail_collection():
    assert "no heading" in check_cite("spec/delivery_service.md#nope", "MUST")
    assert "is not one of" in check_cite(HAS_MUST, "must")
    assert "needs a section" in check_cite(None, "MUST")
    assert check_cite(HAS_MUST, "informative") is None


def test_continue_on_collection_errors_drops_only_the_bad_test(pytester):
    pytester.makepyfile(f"""
        from phoenix_ref.spec_plugin import spec

        @spec("{NO_REQUIREMENT}", "SHOULD")
        def test_overclaims():
            pass

        def test_innocent():
            pass
    """)
    result = pytester.runpytest("--continue-on-collection-errors")
    result.assert_outcomes(passed=1, errors=1)


# --- SHOULD failures and --strict ---------------------------------------------------------

FAILING = f"""
from phoenix_ref.spec_plugin import spec

@spec("{SHOULD_ONLY}", "SHOULD")
def test_should_fails():
    assert 1 == 2, "the member stayed"

@spec("{SHOULD_ONLY}", "SHOULD")
def test_should_passes():
    pass
"""


def test_a_should_failure_is_reported_but_does_not_fail_the_run(pytester):
    pytester.makepyfile(FAILING)
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.OK
    assert result.parseoutcomes() == {"passed": 1, "soft_failed": 1}
    result.stdout.fnmatch_lines([
        "*SHOULD/MAY tests not met*",
        "*test_should_fails*",
        "*the member stayed*",
        f"{SHOULD_ONLY}*SHOULD*1*0*1*0*0*0",
    ])


def test_strict_makes_a_should_failure_fail_the_run(pytester):
    pytester.makepyfile(FAILING)
    result = pytester.runpytest("--strict")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([f"{SHOULD_ONLY}*SHOULD*1*1*0*0*0*0"])


def test_must_and_informative_failures_always_fail_the_run(pytester):
    pytester.makepyfile(f"""
        from phoenix_ref.spec_plugin import spec

        @spec("{HAS_MUST}", "MUST")
        def test_must_fails():
            assert False

        @spec("{NO_REQUIREMENT}")
        def test_informative_fails():
            assert False
    """)
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(failed=2)


# --- reports ------------------------------------------------------------------------------

def test_reports_hold_sections_sentences_outcomes_and_the_uncovered(pytester, tmp_path):
    pytester.makepyfile(f"""
        import pytest
        from phoenix_ref.spec_plugin import spec

        @spec("{HAS_MUST}", "MUST")
        def test_must_passes():
            pass

        @spec("{HAS_MUST}", "MUST")
        @pytest.mark.xfail(reason="known gap")
        def test_must_known_gap():
            assert False

        @spec("{SHOULD_ONLY}", "SHOULD")
        def test_should_fails():
            assert False

        @spec("{SHOULD_ONLY}", "SHOULD")
        @pytest.mark.skip(reason="target cannot do this")
        def test_skipped_for_a_reason():
            pass
    """)
    out = tmp_path / "report"
    junit = tmp_path / "junit.xml"
    result = pytester.runpytest(f"--conformance-report={out}", f"--junitxml={junit}")
    assert result.ret == pytest.ExitCode.OK

    data = json.loads((out / "conformance.json").read_text())
    by_id = {s["section"]: s for s in data["sections"]}
    assert set(by_id) == {HAS_MUST, SHOULD_ONLY}
    must = by_id[HAS_MUST]
    assert must["text_level"] == "MUST" and must["claimed_level"] == "MUST"
    assert {"level": "MUST", "sentence": "The DS must reject all other operations containing commits."} \
        in must["requirements"]
    assert must["counts"] == {"passed": 1, "failed": 0, "soft_failed": 0, "skipped": 0, "unsupported": 0,
                              "expected_failure": 1, "unexpected_pass": 0}
    should = by_id[SHOULD_ONLY]
    assert should["counts"]["soft_failed"] == 1 and should["counts"]["skipped"] == 1
    outcomes = {t["test"].split("::")[-1]: t["outcome"] for t in should["tests"]}
    assert outcomes == {"test_should_fails": "soft_failed", "test_skipped_for_a_reason": "skipped"}
    assert "target cannot do this" in [t["message"] for t in should["tests"]
                                      if t["outcome"] == "skipped"][0]
    assert data["totals"]["passed"] == 1 and data["strict"] is False

    uncovered = {u["section"] for u in data["uncovered"]}
    assert UNCITED_MUST in uncovered                   # has "must", no test here
    assert HAS_MUST not in uncovered and SHOULD_ONLY not in uncovered
    assert NO_REQUIREMENT not in uncovered              # nothing to cover
    assert all(u["requirements"] for u in data["uncovered"])
    assert len(uncovered) < data["chapter_sections_with_requirements"]

    html = (out / "conformance.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "<script" not in html and "http" not in html.split("<body>")[0]
    assert HAS_MUST in html and UNCITED_MUST in html and "must reject all other operations" in html
    md = (out / "conformance.md").read_text()
    assert f"| `{HAS_MUST}` | MUST | MUST | 2 | 1 | 0 | 0 | 0 | 0 | 1 | 0 |" in md
    assert f"| `{UNCITED_MUST}` | MUST |" in md

    props = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        props[case.get("name")] = [(p.get("name"), p.get("value")) for p in case.iter("property")]
    assert props["test_must_passes"] == [("spec_section", HAS_MUST), ("spec_level", "MUST")]
    assert ("spec_outcome", "soft_failed") in props["test_should_fails"]


def test_no_report_without_the_option(pytester):
    pytester.makepyfile(f"""
        from phoenix_ref.spec_plugin import spec

        @spec("{HAS_MUST}", "MUST")
        def test_must():
            pass
    """)
    pytester.runpytest().assert_outcomes(passed=1)
    assert not list(pytester.path.rglob("conformance.*"))
