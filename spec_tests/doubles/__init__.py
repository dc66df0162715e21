"""Deliberately wrong homeservers, for showing what target mode reports when
a target breaks a rule (``tests/test_target_mode.py``). Each module is run as
``python -m spec_tests.doubles.<name> serve --config FILE``: phoenix_ref's
own command line with one behaviour changed."""
