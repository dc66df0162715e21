"""``phoenix-ref admin``: the operator manages a homeserver's users and keys
locally (``spec/functional_requirements.md#functional-requirements-for-homeserver-operators``:
"Operators MUST be able to configure the homeserver and manage its users
locally").

Every command works on the data and keys directories named by the
homeserver's config, with or without ``phoenix-ref serve`` running on them:

* the databases are SQLite in WAL mode: readers never wait for the writer,
  and a writer waits (busy timeout, :data:`~phoenix_ref.storage.BUSY_TIMEOUT_S`)
  for the other process's write lock, which every transaction of either
  holds for milliseconds;
* each command is one short transaction (``delete-user``: the user's entries
  and queues, all or nothing) followed by a WAL checkpoint that wipes what
  was deleted (:func:`~phoenix_ref.storage.purge_deleted`);
* what a running homeserver keeps in memory follows: its row caches notice
  other writers (:class:`~phoenix_ref.storage.RowCache`), the AS reads a
  client's entry on every authenticated request (a deleted user is refused
  at once), and every ``operator_poll_interval_s`` it reloads changed key
  files and notices revocations (:meth:`Homeserver.watch_operator_changes`).

Commands (``phoenix-ref admin --config FILE <command> --help`` for each):
``count-users``, ``list-users``, ``delete-user``, ``outbound``, ``keys``,
``rotate-key``, ``revoke-intermediate``. Operator mistakes (an unknown user,
a malformed id, a missing database) raise :class:`AdminError`; the CLI
prints it in one line and exits 2.
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from .authentication.accounts import delete_user_entirely
from .authentication.store import AsStore
from .clock import Clock
from .config import Config
from .errors import NotFound
from .federation import outbound_admin
from .ids import InvalidId, UserId
from .keystore import Keystore

__all__ = ["AdminError", "add_parser", "run", "revoke_intermediate", "ROTATABLE"]

#: The AS database in a homeserver's data directory (``homeserver.py``).
AS_DATABASE = "as.sqlite3"


class AdminError(Exception):
    """An operator command cannot be carried out as asked."""


@contextmanager
def _as_store(config: Config) -> Iterator[AsStore]:
    path = config.data_dir / AS_DATABASE
    if not path.exists():
        raise AdminError(f"no AS database {path}: has this homeserver been started once?")
    store = AsStore(path)
    try:
        yield store
    finally:
        store.close()


def _user_id(text: str, config: Config) -> UserId:
    try:
        user_id = UserId.parse(text)
    except InvalidId as e:
        raise AdminError(f"{text!r} is not a user id (UUID@domain): {e}") from None
    if str(user_id.as_domain) != config.domain:
        raise AdminError(f"{user_id} is a user of {user_id.as_domain}, not of this homeserver ({config.domain})")
    return user_id


# --- users -----------------------------------------------------------------------------------

def count_users(config: Config) -> str:
    with _as_store(config) as store:
        return f"{store.accounts.count_users()} users"


def list_users(config: Config, limit: int, after: str | None) -> str:
    """One line per user: its id and its number of clients, in id order."""
    start = _user_id(after, config) if after else None
    with _as_store(config) as store:
        rows = store.accounts.list_users(limit, start)
    if not rows:
        return "no users" + (f" after {after}" if after else "")
    lines = [f"{uid}  {n} client{'s' if n != 1 else ''}" for uid, n in rows]
    if len(rows) == limit:
        lines.append(f"(first {limit}; continue with --after {rows[-1][0]})")
    return "\n".join(lines)


def delete_user(config: Config, user_id_text: str) -> str:
    """What *user account deletion* deletes (``spec/authentication_service.md#user-account-deletion``),
    without the user's 2FA: the user entry, its client entries with their
    credentials and connection packages, and the clients' direct queues;
    then the deleted rows are wiped from the database files. The user's
    clients can no longer authenticate at the AS.

    The QS and DS hold nothing that names the user (QS records are
    pseudonymous, docs/decisions.md "Operator deletes a user"); the
    deleted user's QS client records stop being fetched from and are
    pruned after ``qs_max_client_age_s``."""
    user_id = _user_id(user_id_text, config)
    with _as_store(config) as store:
        try:
            clients = delete_user_entirely(store.accounts, store.queues, user_id)
        except NotFound:
            raise AdminError(f"no user {user_id} on this homeserver") from None
    return f"deleted {user_id} with {len(clients)} client{'s' if len(clients) != 1 else ''} and their direct queues"


# --- keys ------------------------------------------------------------------------------------------

def _keystore(config: Config) -> Keystore:
    return Keystore.load(config.keys_dir, config.domain)


def list_keys(config: Config) -> str:
    ks = _keystore(config)
    with _as_store(config) as store:
        revoked = set(store.revoked_sync())
    lines = []
    for kind, n, current, public, fingerprint in ks.describe():
        flags = ["current" if current else "older, still published"]
        if fingerprint in revoked:
            flags.append("REVOKED")
        lines.append(f"{kind}-{n}: {', '.join(flags)}; {public}")
    return "\n".join(lines)


#: Keys ``rotate-key`` makes anew, with what the new key does (docs/decisions.md,
#: "What rotating each key means").
ROTATABLE: dict[str, tuple[str, Callable[[Keystore, int], object]]] = {
    "as_credential": ("a new AS credential and a new intermediate signed by it; the old AS credential "
                      "stays published, so client credentials chaining to it still verify",
                      lambda ks, now: ks.rotate_as_credential(now)),
    "as_intermediate": ("a new intermediate signs client credentials from now on; the old one stays "
                        "published (its client credentials stay valid unless it is revoked)",
                        lambda ks, now: ks.issue_intermediate(now)),
    "qs_signing": ("a new key signs QS-to-QS messages; the old verifying key stays published",
                   lambda ks, now: ks.rotate_qs_signing_key()),
    "ds_signing": ("a new DS signing key; the old verifying key stays published",
                   lambda ks, now: ks.rotate_ds_signing_key()),
    "qs_queue_config": ("clients seal new queue configs to the new key; configs sealed to the old one "
                        "still open while its file exists",
                        lambda ks, now: ks.rotate_queue_config_key()),
    "qs_outbound": ("new QS-to-QS queue items are sealed at rest with the new secret; older items "
                    "still open while the old file exists",
                    lambda ks, now: ks.rotate_outbound_secret()),
}


def rotate_key(config: Config, kind: str, now_ms: int) -> str:
    ks = _keystore(config)
    what, rotate = ROTATABLE[kind]
    rotate(ks, now_ms)
    return f"rotated {kind}: {what}"


def revoke_intermediate(keystore: Keystore, store: AsStore, fingerprint: bytes | None, now_ms: int) -> bytes:
    """Revoke an AS intermediate credential (default: the current one):
    *Get AS credentials* lists its fingerprint under ``revoked_certs`` from
    now on (``spec/authentication_service.md#get-as-credentials``) and the
    AS no longer accepts client credentials it signed. If it was the current
    one, a fresh intermediate is issued so the AS keeps signing. Returns the
    revoked fingerprint; raises AdminError for an unknown one."""
    current = keystore.as_intermediates[0][0].fingerprint()
    fp = current if fingerprint is None else fingerprint
    if fp not in {c.fingerprint() for c, _ in keystore.as_intermediates}:
        raise AdminError(f"no intermediate credential with fingerprint {fp.hex()} (see `admin keys`)")
    store.revoke_sync(fp, now_ms)
    if fp == current:
        keystore.issue_intermediate(now_ms)
    return fp


def _revoke(config: Config, fingerprint_hex: str | None, now_ms: int) -> str:
    fingerprint = None
    if fingerprint_hex is not None:
        try:
            fingerprint = bytes.fromhex(fingerprint_hex)
        except ValueError:
            raise AdminError(f"{fingerprint_hex!r} is not a fingerprint in hex") from None
    ks = _keystore(config)
    with _as_store(config) as store:
        fp = revoke_intermediate(ks, store, fingerprint, now_ms)
    issued = " and issued a new current intermediate" if ks.as_intermediates[0][0].fingerprint() != fp else ""
    return f"revoked intermediate {fp.hex()}{issued}"


# --- command line ------------------------------------------------------------------------------

_EXAMPLE = "example: phoenix-ref admin --config lab/a/config.toml"


def add_parser(sub) -> argparse.ArgumentParser:
    """``admin`` and its subcommands, on the ``phoenix-ref`` sub-parsers ``sub``."""
    a = sub.add_parser("admin", help="manage users, keys and federation queues of a homeserver (also while "
                                     "it runs)",
                       description="Operator commands on a homeserver's data and keys directories, safe "
                                   "while `phoenix-ref serve` runs on them.",
                       epilog=f"{_EXAMPLE} list-users")
    a.add_argument("--config", required=True, type=Path, help="the homeserver's config.toml")
    cmds = a.add_subparsers(dest="admin_command", required=True, metavar="COMMAND")
    fmt = argparse.RawDescriptionHelpFormatter

    def command(name: str, help_: str, example: str) -> argparse.ArgumentParser:
        return cmds.add_parser(name, help=help_, description=help_, epilog=f"{_EXAMPLE} {example}",
                               formatter_class=fmt)

    command("count-users", "print the number of users", "count-users")
    c = command("list-users", "list users with their number of clients, in id order", "list-users --limit 50")
    c.add_argument("--limit", type=int, default=100, help="at most this many users (default: %(default)s)")
    c.add_argument("--after", metavar="USER_ID", help="start after this user id (to page through)")
    c = command("delete-user", "delete a user: entry, clients, connection packages, direct queues",
                "delete-user 0f8e58e2-5b7e-4c53-9a07-3c1e3f1d2b4a@a.example")
    c.add_argument("user_id", metavar="USER_ID", help="the user id, UUID@domain (see list-users)")
    c = command("outbound", "list outbound federation queues, parked senders and dead letters",
                "outbound --unpark b.example")
    c.add_argument("--unpark", metavar="DOMAIN", help="let the parked sender of DOMAIN go on")
    c.add_argument("--drop-dead-letters", metavar="DOMAIN", help="delete the dead letters of DOMAIN (once read)")
    command("keys", "list the key material: every key, which is current, which are revoked", "keys")
    c = command("rotate-key", "make a new current key of one kind; older keys stay published",
                "rotate-key qs_signing")
    c.add_argument("kind", choices=sorted(ROTATABLE), metavar="KIND",
                   help="one of: " + ", ".join(f"{k} ({v[0]})" for k, v in sorted(ROTATABLE.items())))
    c = command("revoke-intermediate", "revoke an AS intermediate credential (default: the current one, "
                                       "which is then replaced)", "revoke-intermediate")
    c.add_argument("fingerprint", nargs="?", metavar="FINGERPRINT",
                   help="hex fingerprint of the intermediate (see `keys`); default: the current one")
    return a


def run(args: argparse.Namespace, now_ms: int | None = None) -> str:
    """Carry out the parsed ``admin`` command; returns what to print."""
    config = Config.load(args.config)
    now = now_ms if now_ms is not None else Clock().now_ms()
    cmd = args.admin_command
    if cmd == "count-users":
        return count_users(config)
    if cmd == "list-users":
        if args.limit < 1:
            raise AdminError(f"--limit must be at least 1, not {args.limit}")
        return list_users(config, args.limit, args.after)
    if cmd == "delete-user":
        return delete_user(config, args.user_id)
    if cmd == "outbound":
        return outbound_admin.run(config.data_dir, unpark=args.unpark, drop_dead_letters=args.drop_dead_letters)
    if cmd == "keys":
        return list_keys(config)
    if cmd == "rotate-key":
        return rotate_key(config, args.kind, now)
    if cmd == "revoke-intermediate":
        return _revoke(config, args.fingerprint, now)
    raise AssertionError(f"unhandled admin command {cmd}")
