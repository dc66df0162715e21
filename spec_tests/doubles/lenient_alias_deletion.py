"""A homeserver whose AS deletes an alias without checking the alias auth key.

``spec/authentication_service.md#delete-alias``: the request is
authenticated with the alias auth key. This double skips that check for
*Delete alias* only; every other endpoint, the alias auth of the other alias
operations included, is phoenix_ref's. Over HTTPS the difference shows as a
deletion signed with a stranger's key that succeeds, so in target mode the
tests citing that section fail and no other test does.

Run: ``python -m spec_tests.doubles.lenient_alias_deletion serve --config FILE``
(``python -m phoenix_ref.target_lab DIR --double a.example=spec_tests.doubles.lenient_alias_deletion``).
"""

import sys

from phoenix_ref import cli
from phoenix_ref.authentication.core import AuthenticationCore

SECTION = "spec/authentication_service.md#delete-alias"
_checked = AuthenticationCore._alias_auth


def _alias_auth_but_not_for_deletion(self, name, auth, params, alias, now_ms):
    if name == "delete_alias":
        return            # the deliberate defect: anybody may delete an alias
    _checked(self, name, auth, params, alias, now_ms)


AuthenticationCore._alias_auth = _alias_auth_but_not_for_deletion

if __name__ == "__main__":
    sys.exit(cli.main())
