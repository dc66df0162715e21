"""The ``phoenix-ref`` command line: every option documents itself."""

import argparse

from phoenix_ref.cli import build_parser


def test_every_option_of_every_command_has_help_text():
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f"{name} {'/'.join(action.option_strings)}"
               for name, sub in commands.choices.items()
               for action in sub._actions
               if action.option_strings and action.help in (None, "") and action.dest != "help"]
    assert missing == []
    assert {"generate-config", "serve"} <= set(commands.choices)
