"""The ``phoenix-ref`` command line: every option documents itself, and a
config that asks for less than TLS 1.3 does not start."""

from __future__ import annotations

import re

import pytest

from phoenix_ref.cli import build_parser, generate_config, main
from phoenix_ref.spec_plugin import spec


def _help_of(command: str, capsys, *more: str) -> str:
    with pytest.raises(SystemExit):
        main([command, *more, "--help"])
    return capsys.readouterr().out


def undocumented_options(help_text: str) -> list[str]:
    """Options in an argparse help text with no description: the option's
    line has no text after it and the next line does not continue it."""
    lines = help_text.split("\n")
    missing = []
    for i, line in enumerate(lines):
        m = re.match(r"^  (-\S.*?)(?:\s{2,}(\S.*))?$", line)
        if m is None:
            continue
        continued = i + 1 < len(lines) and re.match(r"^ {3,}\S", lines[i + 1]) is not None \
            and not lines[i + 1].lstrip().startswith("-")
        if m.group(2) is None and not continued:
            missing.append(m.group(1).strip())
    return missing


def test_the_help_check_finds_an_option_without_text():
    text = "options:\n  -h, --help  show this\n  --port PORT\n  --host HOST  where\n  --long-one LONG\n" \
           "                 described below\n"
    assert undocumented_options(text) == ["--port PORT"]


def test_every_option_of_every_command_has_help_text(capsys):
    commands = re.search(r"\{([\w,-]+)\}", build_parser().format_help()).group(1).split(",")
    assert {"generate-config", "serve", "admin"} <= set(commands)
    for command in commands:
        text = _help_of(command, capsys)
        if command != "demo":       # the demo makes its own homeservers
            assert "--config" in text or "--domain" in text
        assert undocumented_options(text) == [], command


def test_every_admin_command_has_help_text_and_an_example(capsys):
    text = _help_of("admin", capsys)
    listed = re.findall(r"^    ([a-z][a-z-]+)\b", text, flags=re.M)
    assert set(listed) == {"count-users", "list-users", "delete-user", "outbound", "keys", "rotate-key",
                           "revoke-intermediate"}
    for command in listed:
        sub = _help_of("admin", capsys, "--config", "c.toml", command)
        assert undocumented_options(sub) == [], command
        assert f"example: phoenix-ref admin --config lab/a/config.toml {command}" in sub, command
        positional = re.search(r"positional arguments:\n(.*?)\n\n", sub, flags=re.S)
        if positional:   # every positional argument is described too
            assert all(re.match(r"^  \S+\s{2,}\S", line) or re.match(r"^ {3,}\S", line)
                       for line in positional.group(1).splitlines()), sub


@spec("threat_model/stride/security_requirements.md#basic-confidentiality-and-authentication", "MUST")
def test_a_configured_tls_minimum_below_13_refuses_to_start(tmp_path, capsys):
    generate_config(tmp_path / "a", "a.example", test_ca=True)
    cfg = tmp_path / "a" / "config.toml"
    cfg.write_text(cfg.read_text().replace("[tls]\n", '[tls]\nmin_version = "1.2"\n'))
    assert main(["serve", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "TLS 1.3" in err and "min_version" in err


def test_a_homeserver_that_cannot_open_its_store_says_why_it_did_not_start(tmp_path, capsys):
    generate_config(tmp_path / "a", "a.example", test_ca=True)
    (tmp_path / "a" / "data" / "qs.sqlite3").write_bytes(b"not a database, but long enough to be read" * 4)
    assert main(["serve", "--config", str(tmp_path / "a" / "config.toml")]) == 1
    err = capsys.readouterr().err
    assert "phoenix-ref: a.example did not start: DatabaseError: file is not a database" in err
