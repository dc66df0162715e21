"""Target mode without a target on the network: the deployment file and the
manifest (``phoenix_ref.target``), what ``Deployment("target")`` gives and
refuses (``phoenix_ref.target_deployment``), and how the plugin reports
unsupported tests, reaches into internals and manifest entries
(``phoenix_ref.target_run``). The end-to-end run is ``test_target_mode.py``."""

import json
import textwrap

import pytest

from phoenix_ref.config import Limits
from phoenix_ref.target import TargetFileError, load_manifest, load_target
from phoenix_ref.target_deployment import NeedsControl, TargetDeployment, Unsupported

pytest_plugins = ["pytester"]

TWO = """
[target]
description = "two homeservers"

[limits]
as_max_messages = 2

[[homeserver]]
name = "hs1"
domain = "a.example"
address = "127.0.0.1:9"
ca = "ca.pem"

[[homeserver]]
domain = "b.example"
"""


def write(tmp_path, text: str, name: str = "target.toml"):
    (tmp_path / "ca.pem").write_text("not read here\n")
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_a_deployment_file_names_homeservers_addresses_cas_and_limits(tmp_path):
    t = load_target(write(tmp_path, TWO))
    assert t.description == "two homeservers" and list(t.homeservers) == ["hs1", "hs2"]
    hs1, hs2 = t.homeservers["hs1"], t.homeservers["hs2"]
    assert hs1.address == ("127.0.0.1", 9) and hs1.ca == tmp_path / "ca.pem"
    assert hs2.name == "hs2" and hs2.address is None and hs2.ca is None   # DNS, system store
    assert t.limits == {"as_max_messages": 2} and t.declared_limit("token_allowance") == Limits().token_allowance
    assert t.missing_limits(Limits(as_max_messages=2)) == []
    assert t.missing_limits(Limits(as_max_messages=3, token_allowance=5)) == ["token_allowance=5", "as_max_messages=3"]


@pytest.mark.parametrize("change, complaint", [
    (lambda s: s.replace('name = "hs1"\ndomain = "a.example"', 'name = "hs1"\ndomain = "x.example"'),
     "the suite addresses hs1 as 'a.example'"),
    (lambda s: s.replace('"127.0.0.1:9"', '"127.0.0.1"'), "expected HOST:PORT"),
    (lambda s: s.replace('"127.0.0.1:9"', '"h:99999"'), "expected HOST:PORT"),
    (lambda s: s.replace('ca = "ca.pem"', 'ca = "missing.pem"'), "is not a file"),
    (lambda s: s.replace('domain = "b.example"', 'domain = "c.example"'), "needs at least hs1"),
    (lambda s: s + '\n[[homeserver]]\ndomain = "a.example"\n', "appears twice"),
    (lambda s: s.replace("as_max_messages = 2", "as_max_messages = 0"), "limits.as_max_messages"),
    (lambda s: s.replace("as_max_messages = 2", "no_such_limit = 2"), "unknown key(s) no_such_limit"),
    (lambda s: s.replace('description = "two homeservers"', "colour = 1"), "unknown key(s) colour"),
    (lambda s: s.replace("[[homeserver]]", "[homeserver]", 1), "not valid TOML"),
    (lambda s: "[target]\n", "expected [[homeserver]] tables"),
    (lambda s: "\x00\xff", "not valid TOML"),
], ids=["wrong-domain", "no-port", "port-range", "missing-ca", "no-hs1", "twice", "limit-range", "unknown-limit",
        "unknown-key", "bad-toml", "no-homeserver", "binary"])
def test_a_bad_deployment_file_says_what_is_wrong(tmp_path, change, complaint):
    path = write(tmp_path, change(textwrap.dedent(TWO)))
    with pytest.raises(TargetFileError) as info:
        load_target(path)
    assert complaint in str(info.value) and str(path) in str(info.value)


def test_a_manifest_maps_test_ids_to_reasons(tmp_path):
    good = write(tmp_path, '[expected_failures]\n"spec_tests/t.py::test_x[target]" = "not yet"\n', "m.toml")
    assert load_manifest(good) == {"spec_tests/t.py::test_x[target]": "not yet"}
    for bad in ('[expected_failures]\n"test_x" = "why"\n', '[expected_failures]\n"a.py::t" = 3\n', "x = 1\n"):
        with pytest.raises(TargetFileError):
            load_manifest(write(tmp_path, bad, "bad.toml"))
    with pytest.raises(TargetFileError, match="no such file"):
        load_manifest(tmp_path / "absent.toml")


def test_a_target_deployment_gives_https_and_refuses_control(tmp_path):
    t = load_target(write(tmp_path, TWO))
    d = TargetDeployment(t, ["hs1", "b.example"])
    assert d["hs1"].url("qs", "/p") == "https://qs.a.example/p" and d["b.example"].domain == "b.example"
    assert d.resolve() == {h: "127.0.0.1:9" for h in ("a.example", "as.a.example", "ds.a.example", "qs.a.example")}
    assert d.clock.now_ms() > 1_700_000_000_000
    for reach in (lambda: d["hs1"].hs, lambda: d["hs1"].config, lambda: d.clock.advance(1), lambda: d.tmp,
                  lambda: d.asgi_client("hs1")):
        with pytest.raises(NeedsControl, match="mark it @pytest.mark.needs_control"):
            reach()
    with pytest.raises(NeedsControl, match="wrong_ca"):
        TargetDeployment(t, ["hs1"], wrong_ca=["evil"])
    with pytest.raises(NeedsControl, match="'evil'"):
        TargetDeployment(t, ["evil"])
    with pytest.raises(Unsupported, match="needs hs3"):
        TargetDeployment(t, ["hs1", "hs2", "hs3"])
    with pytest.raises(Unsupported, match="token_allowance=7"):
        TargetDeployment(t, ["hs1"], limits=Limits(token_allowance=7))
    assert TargetDeployment(t, ["hs1"], limits=Limits(as_max_messages=2)).nodes["hs1"].name == "hs1"


async def test_control_of_a_node_is_refused_asynchronously_too(tmp_path):
    d = TargetDeployment(load_target(write(tmp_path, TWO)), ["hs1", "hs2"])
    async with d:
        for reach in (d.set_down("hs2"), d.set_up("hs2"), d.restart("hs1")):
            with pytest.raises(NeedsControl):
                await reach


SUITE = """
import pytest
import trio
from phoenix_ref.homeserver import Homeserver
from phoenix_ref.spec_plugin import spec
from phoenix_ref.target_deployment import Unsupported
from phoenix_ref.testing import Deployment

@spec("spec/delivery_service.md#proposal-store", "MUST")
@pytest.mark.needs_control("the clock")
def test_marked():
    raise AssertionError("never runs against a target")

def test_over_https_only():
    d = Deployment("target", ["hs1", "hs2"])
    assert d["hs2"].url("as", "/x") == "https://as.b.example/x"

def test_unmarked_reaching_into_a_node():
    Deployment("target", ["hs1"])["hs1"].hs

def test_unmarked_starting_homeservers_here():
    Deployment("sockets", ["hs1"])

def test_unmarked_building_a_homeserver():
    Homeserver(None)

@spec("spec/delivery_service.md#proposal-store", "MUST")
def test_needs_a_third():
    Deployment("target", ["hs1", "hs2", "hs3"])

def test_unsupported_inside_a_trio_nursery():
    async def body():
        async with trio.open_nursery() as n:
            n.start_soon(trio.sleep, 0)
            raise Unsupported("lacks it")
    trio.run(body)
"""


def test_target_mode_reports_unsupported_and_catches_unmarked_reaches(pytester, tmp_path):
    target = write(tmp_path, TWO)
    pytester.makepyfile(test_suite=SUITE)
    out = tmp_path / "report"
    junit = tmp_path / "junit.xml"
    result = pytester.runpytest(f"--phoenix-target={target}", f"--conformance-report={out}",
                                f"--junitxml={junit}", "test_suite.py")
    assert result.parseoutcomes() == {"passed": 1, "failed": 3, "unsupported": 3}
    result.stdout.fnmatch_lines([
        "*unsupported against this target (3)*",
        "*test_marked: needs control a remote target cannot give: the clock*",
        "*test_needs_a_third: needs hs3 (c.example)*",
        "*test_unsupported_inside_a_trio_nursery: lacks it*",
        "spec/delivery_service.md#proposal-store*MUST*0*0*0*0*2*0*0",
    ])
    failures = result.stdout.str()
    for reach in ("(node.hs)", "(Deployment('sockets'))", "(Homeserver(...))"):
        assert "NeedsControl: target mode: this test reaches for" in failures and reach in failures
    data = json.loads((out / "conformance.json").read_text())
    assert data["target"]["mode"] == "target" and data["target"]["homeservers"] == {"hs1": "a.example",
                                                                                    "hs2": "b.example"}
    assert data["totals"]["unsupported"] == 2
    assert "| unsupported |" in (out / "conformance.md").read_text()
    assert "unsupported" in (out / "conformance.html").read_text()
    assert 'name="spec_outcome" value="unsupported"' in junit.read_text()


def test_without_a_target_the_marker_changes_nothing(pytester):
    pytester.makepyfile("""
        import pytest
        @pytest.mark.needs_control("the clock")
        def test_marked():
            pass
    """)
    pytester.runpytest().assert_outcomes(passed=1)


def test_target_mode_needs_the_suite_named(pytester, tmp_path):
    pytester.makeini("[pytest]\ntestpaths = .\n")
    result = pytester.runpytest(f"--phoenix-target={write(tmp_path, TWO)}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*name it, e.g. `pytest --phoenix-target FILE spec_tests`*"])


def test_a_bad_deployment_file_is_a_usage_error(pytester, tmp_path):
    pytester.makepyfile("def test_x():\n    pass\n")
    bad = write(tmp_path, "[target]\n")
    result = pytester.runpytest(f"--phoenix-target={bad}", "test_x.py")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "expected [[homeserver]] tables" in result.stderr.str()


MANIFEST_SUITE = """
def test_broken():
    assert False

def test_fixed_meanwhile():
    pass
"""


@pytest.mark.parametrize("strict", [False, True])
def test_the_manifest_makes_expected_failures_and_reports_a_pass(pytester, tmp_path, strict):
    pytester.makepyfile(test_m=MANIFEST_SUITE)
    manifest = write(tmp_path, '[expected_failures]\n"test_m.py::test_broken" = "known"\n'
                               '"test_m.py::test_fixed_meanwhile" = "was broken"\n"test_m.py::test_gone" = "x"\n',
                     "m.toml")
    result = pytester.runpytest(f"--phoenix-expected-failures={manifest}", "test_m.py",
                                *(["--strict"] if strict else []))
    result.stdout.fnmatch_lines([
        "*UNEXPECTEDLY PASSING: remove these from the expected-failures manifest*",
        "test_m.py::test_fixed_meanwhile*",
        "*manifest entries that name no test of this run*",
        "test_m.py::test_gone",
    ])
    if strict:
        assert result.ret == pytest.ExitCode.TESTS_FAILED
        result.assert_outcomes(xfailed=1, failed=1)
        result.stdout.fnmatch_lines(["*remove it from the manifest*"])
    else:
        assert result.ret == pytest.ExitCode.OK
        result.assert_outcomes(xfailed=1, xpassed=1)
