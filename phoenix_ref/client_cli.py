"""``phoenix-ref client --state DIR COMMAND``: a person's Phoenix client.

Every command loads the client from ``DIR`` (``DIR/client.sqlite3``, see
:mod:`phoenix_ref.client.state_store`), does one thing, saves and exits;
``listen`` stays until interrupted. ``register`` creates the state and
keeps how to reach homeservers (``--ca``, ``--resolve``) in it, so later
commands need only ``--state``.

Output: results on stdout, one per line (``read`` and ``listen`` print
``GROUP SENDER: TEXT``, and ``* …`` lines for joins, removals and new
contacts); progress and errors on stderr. An error a person can act on is
one line and exit status 1 (2 for wrong usage); ``PHOENIX_DEBUG=1`` adds
the traceback.

Groups are named by their id (``uuid@domain``) or by the short local name
given with ``create-group --name``.
"""

from __future__ import annotations

import argparse
import os
import secrets
import ssl
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import trio

from .clock import Clock
from .errors import Forbidden, NotFound, ProtocolError, RateLimited
from .ids import Fqdn, GroupId, InvalidId, UserId
from .signals import cancel_on_stop_signal

__all__ = ["add_parser", "run", "CliError"]

#: (command, one-line help, example arguments after ``--state DIR``)
COMMANDS: list[tuple[str, str, str]] = [
    ("register", "create a user at a homeserver and keep its state in --state DIR",
     "register --domain a.example --ca lab/ca/ca.pem --resolve a.example=127.0.0.1:8443"),
    ("whoami", "print this client's user id", "whoami"),
    ("alias", "register an alias others can connect to", "alias alice-w"),
    ("connect", "ask a user (by user id, or by alias) to connect",
     "connect 0f1e…@b.example"),
    ("accept", "accept the connection requests that arrived", "accept --wait 30"),
    ("contacts", "list contacts", "contacts"),
    ("groups", "list the groups this client is in", "groups"),
    ("create-group", "create a group (you are its admin)", "create-group --name friends"),
    ("invite", "add contacts to a group", "invite friends 0f1e…@b.example"),
    ("remove", "remove users from a group (admins)", "remove friends 0f1e…@b.example"),
    ("leave", "leave a group (a member commits your removal)", "leave friends"),
    ("delete-group", "remove everyone and delete a group (admins)", "delete-group friends"),
    ("send", "send a text to a group", "send friends 'hello all'"),
    ("read", "fetch what arrived and print the new texts", "read --wait 10"),
    ("listen", "stay connected and print texts as they arrive (Ctrl-C stops)", "listen"),
    ("profile", "show or set a display name", "profile --set 'Alice W.'"),
]


class CliError(Exception):
    """A mistake or refusal to report in one line."""


# --- the parser -----------------------------------------------------------------------------------

def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "client", help="a Phoenix client kept in a state directory (start with register --domain D)",
        description="A Phoenix client whose keys, groups and messages live in --state DIR. "
                    "Start with `register --domain D`; then connect, create-group, invite, send, read.",
        epilog="example: phoenix-ref client --state alice register --domain a.example",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--state", required=True, type=Path,
                   help="the client's state directory (created by register; holds private keys, mode 0700)")
    cmds = p.add_subparsers(dest="client_command", required=True, metavar="COMMAND")
    parsers = {}
    for name, text, example in COMMANDS:
        parsers[name] = cmds.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".",
                                        epilog=f"example: phoenix-ref client --state alice {example}",
                                        formatter_class=argparse.RawDescriptionHelpFormatter)
    r = parsers["register"]
    r.add_argument("--domain", required=True, help="the homeserver's domain D (its services are as.D, ds.D, qs.D)")
    r.add_argument("--ca", type=Path, help="PEM CA certificate(s) to trust instead of the system store (test CA)")
    r.add_argument("--resolve", action="append", default=[], metavar="HOST=IP:PORT",
                   help="reach HOST (and as./ds./qs.HOST) at IP:PORT, like curl --resolve; repeatable")
    r.add_argument("--password", default=None, help="the account's OPAQUE password (default: a random one, kept in the state)")
    parsers["alias"].add_argument("alias", help="the alias to register at your homeserver")
    c = parsers["connect"]
    c.add_argument("user", nargs="?", help="the user id (uuid@domain) to connect to")
    c.add_argument("--alias", nargs=2, metavar=("DOMAIN", "ALIAS"), help="connect to an alias at DOMAIN instead")
    a = parsers["accept"]
    a.add_argument("--alias", help="read the requests sent to this alias of yours")
    a.add_argument("--wait", type=float, default=0, metavar="SECONDS",
                   help="wait up to SECONDS for a request (default: only what is there)")
    parsers["create-group"].add_argument("--name", help="a short local name for the group")
    for name in ("invite", "remove"):
        parsers[name].add_argument("group", help="group id (uuid@domain) or local name")
        parsers[name].add_argument("users", nargs="+", metavar="USER", help="user ids")
    for name in ("leave", "delete-group"):
        parsers[name].add_argument("group", help="group id (uuid@domain) or local name")
    s = parsers["send"]
    s.add_argument("group", help="group id (uuid@domain) or local name")
    s.add_argument("text", help="the text to send")
    rd = parsers["read"]
    rd.add_argument("--wait", type=float, default=0, metavar="SECONDS",
                    help="wait up to SECONDS for something new (default: only what is there)")
    rd.add_argument("--all", metavar="GROUP", help="print the whole saved conversation of GROUP")
    pr = parsers["profile"]
    pr.add_argument("user", nargs="?", help="a contact's user id (default: yourself)")
    pr.add_argument("--set", metavar="NAME", help="set your display name")
    return p


# --- running ----------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> int:
    """Run one client command; the exit status."""
    try:
        return trio.run(_command, args)
    except KeyboardInterrupt:
        return 0 if args.client_command == "listen" else 130
    except BaseException as e:          # noqa: BLE001 - every error ends as one line
        message = describe_error(e)
        if os.environ.get("PHOENIX_DEBUG"):
            traceback.print_exc()
        print(f"phoenix-ref client: {message}", file=sys.stderr)
        return 1


def describe_error(e: BaseException) -> str:
    """One line a person can act on."""
    import httpx
    from .client.state_store import StateDirError
    from .federation.client import _tls_failure
    if isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
        return describe_error(e.exceptions[0])
    if isinstance(e, (CliError, StateDirError)):
        return str(e)
    if isinstance(e, RateLimited):
        return (f"token budget spent ({e.code}): the homeserver refuses more requests for now; "
                f"try again in {e.retry_after} s")
    if isinstance(e, Forbidden) and e.code == "not_admin":
        return "you are not an admin of this group"
    if isinstance(e, ProtocolError):
        return f"the homeserver refused: {e.status} {e.code}: {e}"
    if isinstance(e, httpx.RequestError):
        where = e.request.url.host if e.request is not None else "the homeserver"
        tls = _tls_failure(e)
        if tls is not None:
            return f"cannot reach {where}: {tls} (is --ca right?)"
        return f"cannot reach {where}: {type(e).__name__} {e}".rstrip()
    if isinstance(e, OSError):
        return f"cannot reach the homeserver: {e}"
    if isinstance(e, trio.TooSlowError):
        return "gave up waiting"
    return f"unexpected error: {type(e).__name__}: {e}"


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _out(text: str) -> None:
    print(text, flush=True)


def _ssl_context(ca_pem: str | None) -> ssl.SSLContext:
    """TLS 1.3 only (as every Phoenix client): the given CA, else the system store."""
    ctx = ssl.create_default_context(cadata=ca_pem) if ca_pem else ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def _parse_resolve(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        host, sep, target = item.partition("=")
        ip, colon, port = target.rpartition(":")
        if not sep or not colon or not ip or not port.isdigit():
            raise CliError(f"--resolve expects HOST=IP:PORT, got {item!r}")
        for name in (host, f"as.{host}", f"ds.{host}", f"qs.{host}"):
            out.setdefault(name.lower(), target)
    return out


def _http(settings: dict[str, Any]) -> Any:
    import httpx
    from .federation.client import https_transport
    transport = https_transport(_ssl_context(settings.get("ca")), settings.get("resolve", {}))
    return httpx.AsyncClient(transport=transport, trust_env=False, timeout=15.0)


async def _command(args: argparse.Namespace) -> int:
    from .client.messenger import Messenger
    from .client.state_store import ClientStore
    if args.client_command == "register":
        return await _register(args)
    store = ClientStore.open(args.state)        # StateDirError: the one-line message
    settings = store.settings()
    store.close()
    async with _http(settings) as http:
        m = Messenger.open(args.state, http, clock=Clock())
        try:
            return await HANDLERS[args.client_command](m, settings, args) or 0
        finally:
            m.close()
            _save_settings(args.state, settings)


def _save_settings(state: Path, settings: dict[str, Any]) -> None:
    from .client.state_store import ClientStore
    store = ClientStore.open(state)
    try:
        store.set_settings(settings)
    finally:
        store.close()


async def _register(args: argparse.Namespace) -> int:
    from .client.messenger import Messenger
    from .client.state_store import STATE_FILE, StateDirError
    try:
        domain = Fqdn(args.domain)
    except InvalidId as e:
        raise CliError(f"--domain: {e}") from None
    settings: dict[str, Any] = {"resolve": _parse_resolve(args.resolve), "names": {}, "read": {}}
    if args.ca is not None:
        try:
            settings["ca"] = args.ca.read_text()
        except OSError as e:
            raise CliError(f"--ca: cannot read {args.ca}: {e.strerror}") from None
    if (args.state / STATE_FILE).exists():
        raise StateDirError(f"{args.state} already holds a client's state ({STATE_FILE})")
    async with _http(settings) as http:
        password = (args.password or secrets.token_urlsafe(24)).encode()
        m = await Messenger.register(http, domain, clock=Clock(), state_dir=args.state, password=password)
        try:
            await m.trust_domains(domain)
            _out(str(m.user_id))
        finally:
            m.close()
    _save_settings(args.state, settings)
    return 0


# --- helpers for the commands --------------------------------------------------------------------------

def _user(text: str) -> UserId:
    try:
        return UserId.parse(text)
    except InvalidId as e:
        raise CliError(f"{text!r} is not a user id (uuid@domain): {e}") from None


def _group(m: Any, settings: dict[str, Any], text: str) -> GroupId:
    named = settings.get("names", {}).get(text)
    try:
        gid = GroupId.parse(named or text)
    except InvalidId:
        raise CliError(f"no group named {text!r} (`groups` lists them)") from None
    if gid not in m.groups:
        raise CliError(f"this client is not in group {text} (`groups` lists them)")
    return gid


def _label(settings: dict[str, Any], gid: GroupId) -> str:
    for name, value in settings.get("names", {}).items():
        if value == str(gid):
            return name
    return str(gid)


def _contact(m: Any, text: str) -> UserId:
    uid = _user(text)
    if uid not in m.contacts:
        raise CliError(f"{uid} is not a contact: `connect` to them first")
    return uid


def _require_admin(m: Any, gid: GroupId, text: str) -> None:
    if not m.groups[gid].is_admin():
        raise CliError(f"you are not an admin of group {text}")


async def _committing(m: Any, gid: GroupId, action: Callable[[], Any]) -> None:
    """Catch up with the group first; on a lost race for the epoch, again."""
    await m.receive()
    if gid not in m.groups:
        raise CliError(f"you are no longer in group {gid}")
    await m.commit_with_retry(gid, action)


def _print_new(m: Any, settings: dict[str, Any], contacts_before: set, events_from: int) -> int:
    """Print texts not printed before (by ``read`` or ``listen``), then joins,
    removals and new contacts; the number of lines."""
    marks = settings.setdefault("read", {})
    n = 0
    for event, gid, *reason in m.events[events_from:]:
        where = _label(settings, gid) if gid is not None else "(group unknown)"
        _out(f"* {_EVENTS.get(event, event)} {where}" + "".join(f": {r}" for r in reason))
        n += 1
    for gid, texts in m.texts.items():
        done = marks.get(str(gid), 0)
        for t in texts[done:]:
            _out(f"{_label(settings, gid)} {t.sender or '?'}: {t.body.decode('utf-8', 'replace')}")
            n += 1
        marks[str(gid)] = len(texts)
    for uid in sorted(set(m.contacts) - contacts_before, key=str):
        _out(f"* new contact {uid}")
        n += 1
    return n


_EVENTS = {"joined": "joined group", "removed": "removed from group",
           "declined": "declined an invitation (not from a client of a contact's connection group) to group",
           "commit_refused": "a commit of ours lost to another one in group",
           "message_failed": "a message could not be read in group",
           "message_waiting": "a message waits for a server it needs (tried again at the next receive) in group",
           "resynced": "missed a change and rejoined group",
           "resync_failed": "missed a change and could not yet rejoin group"}


# --- the commands ------------------------------------------------------------------------------------------

async def _whoami(m: Any, settings: dict, args: argparse.Namespace) -> None:
    _out(str(m.user_id))


async def _alias(m: Any, settings: dict, args: argparse.Namespace) -> None:
    try:
        await m.session.register_alias(args.alias)
    finally:
        m.save()
    _out(f"{args.alias}@{m.domain}")


async def _connect(m: Any, settings: dict, args: argparse.Namespace) -> None:
    if (args.user is None) == (args.alias is None):
        raise CliError("connect needs a USER_ID or --alias DOMAIN ALIAS (one of them)")
    try:
        if args.alias is not None:
            gid = await m.connect(alias=(Fqdn(args.alias[0]), args.alias[1]))
        else:
            gid = await m.connect(_user(args.user))
    except NotFound as e:
        target = args.user or f"alias {args.alias[1]} at {args.alias[0]}"
        raise CliError(f"unknown user: {target} ({e.code})") from None
    _progress("request sent; once they `accept`, `read` on both sides swaps the contact cards")
    _out(str(gid))


async def _accept(m: Any, settings: dict, args: argparse.Namespace) -> None:
    joined = await _waiting(args.wait, "connection requests",
                            lambda: m.accept_connections(alias=args.alias))
    for gid in joined:
        sender = next((i.client_credential.client_id.user_id for leaf, i in m.groups[gid].members.items()
                       if leaf != m.groups[gid].group.leaf_index), "?")
        _out(f"connected with {sender} in {gid}")
    if not joined:
        _progress("no connection requests")


async def _waiting(seconds: float, what: str, attempt: Callable[[], Any]) -> Any:
    """``attempt()`` until it gives something or ``seconds`` passed (progress on stderr)."""
    result = await attempt()
    if result or seconds <= 0:
        return result
    _progress(f"waiting up to {seconds:g} s for {what}…")
    start = trio.current_time()
    while not result and trio.current_time() - start < seconds:
        await trio.sleep(0.3)
        result = await attempt()
    return result


async def _contacts(m: Any, settings: dict, args: argparse.Namespace) -> None:
    for uid in sorted(m.contacts, key=str):
        _out(str(uid))


async def _groups(m: Any, settings: dict, args: argparse.Namespace) -> None:
    for gid, member in m.groups.items():
        users = sorted({str(i.client_credential.client_id.user_id) for i in member.members.values()})
        role = "admin" if member.is_admin() else "member"
        name = _label(settings, gid)
        _out(f"{gid}{'' if name == str(gid) else ' (' + name + ')'} {role} epoch={member.group.epoch} "
             f"members={','.join(users)}")


async def _create_group(m: Any, settings: dict, args: argparse.Namespace) -> None:
    names = settings.setdefault("names", {})
    if args.name is not None and args.name in names:
        raise CliError(f"the name {args.name!r} is taken by group {names[args.name]}")
    gid = await m.create_group()
    if args.name is not None:
        names[args.name] = str(gid)
    _out(str(gid))


async def _invite(m: Any, settings: dict, args: argparse.Namespace) -> None:
    gid = _group(m, settings, args.group)
    users = [_contact(m, u) for u in args.users]
    for uid in users:
        await m.ensure_trusted(uid.as_domain)
    await _committing(m, gid, lambda: m.invite(gid, users))


async def _remove(m: Any, settings: dict, args: argparse.Namespace) -> None:
    gid = _group(m, settings, args.group)
    _require_admin(m, gid, args.group)
    users = [_user(u) for u in args.users]
    present = {i.client_credential.client_id.user_id for i in m.groups[gid].members.values()}
    for uid in users:
        if uid not in present:
            raise CliError(f"{uid} is not in group {args.group}")
    await _committing(m, gid, lambda: m.remove(gid, users))


async def _leave(m: Any, settings: dict, args: argparse.Namespace) -> None:
    gid = _group(m, settings, args.group)
    await _committing(m, gid, lambda: m.leave(gid))
    _progress("asked to leave; you are out once another member commits it")


async def _delete_group(m: Any, settings: dict, args: argparse.Namespace) -> None:
    gid = _group(m, settings, args.group)
    _require_admin(m, gid, args.group)
    await _committing(m, gid, lambda: m.delete_group(gid))
    settings["names"] = {k: v for k, v in settings.get("names", {}).items() if v != str(gid)}


async def _send(m: Any, settings: dict, args: argparse.Namespace) -> None:
    gid = _group(m, settings, args.group)
    await _committing(m, gid, lambda: m.send(gid, args.text.encode()))


async def _read(m: Any, settings: dict, args: argparse.Namespace) -> None:
    if args.all is not None:
        gid = _group_any(m, settings, args.all)
        for t in m.texts.get(gid, []):
            _out(f"{_label(settings, gid)} {t.sender or '?'}: {t.body.decode('utf-8', 'replace')}")
        return
    contacts = set(m.contacts)
    events = len(m.events)

    async def attempt() -> int:
        await m.receive()
        return _print_new(m, settings, contacts, events)
    printed = await _waiting(args.wait, "messages", attempt)
    if not printed:
        _progress("nothing new")


def _group_any(m: Any, settings: dict, text: str) -> GroupId:
    """A group by name or id, also one we are no longer in (its log stays)."""
    named = settings.get("names", {}).get(text)
    try:
        gid = GroupId.parse(named or text)
    except InvalidId:
        raise CliError(f"no group named {text!r} (`groups` lists them)") from None
    if gid not in m.texts and gid not in m.groups:
        raise CliError(f"no conversation in group {text}")
    return gid


async def _listen(m: Any, settings: dict, args: argparse.Namespace) -> None:
    """Catch up, then wait on the QS websocket; every notification is a cue
    to fetch. A lost connection is opened again (progress on stderr).
    Ctrl-C or SIGTERM ends it (:mod:`phoenix_ref.signals`)."""
    from .client.qs_client import WebsocketRefused, WsprotoTransport
    from .endpoints import by_name
    host = f"qs.{m.domain}"
    target = settings.get("resolve", {}).get(host)
    if target is not None:
        ip, _, port = target.rpartition(":")
        address = (ip.strip("[]"), int(port))
    else:
        address = (host, 443)
    contacts, events = set(m.contacts), len(m.events)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(cancel_on_stop_signal, nursery.cancel_scope)
        delay = 1.0
        while True:
            await m.receive()
            _print_new(m, settings, contacts, events)
            contacts, events = set(m.contacts), len(m.events)
            m.save()
            ws = WsprotoTransport(host, by_name("qs", "websocket").path)
            try:
                await ws.connect(address, ssl_context=_ssl_context(settings.get("ca")))
                notifications = await m.qs.open_websocket(m.me, ws)
                _progress(f"listening on {host} (Ctrl-C to stop)")
                delay = 1.0
                while True:
                    await notifications.next_event()
                    await m.receive()
                    _print_new(m, settings, contacts, events)
                    contacts, events = set(m.contacts), len(m.events)
                    m.save()
                    _keep_read_marks(m, settings)
            except (WebsocketRefused, OSError, trio.BrokenResourceError) as e:
                _progress(f"connection to {host} lost ({e}); again in {delay:g} s")
            finally:
                await ws.aclose()
            await trio.sleep(delay)
            delay = min(delay * 2, 30.0)


def _keep_read_marks(m: Any, settings: dict) -> None:
    """``listen`` holds the state open: write the read marks through its store."""
    if m.store is not None:
        m.store.set_settings(settings)


async def _profile(m: Any, settings: dict, args: argparse.Namespace) -> None:
    from .client.profile import ProfileError
    if args.set is not None:
        if args.user is not None:
            raise CliError("only your own display name can be set")
        await m.set_display_name(args.set)
        return
    user = _user(args.user) if args.user else m.user_id
    if user != m.user_id and user not in m.contacts:
        raise CliError(f"{user} is not a contact: their profile key comes with their contact card")
    try:
        name = await m.display_name(user)
    except NotFound:
        raise CliError(f"unknown user: {user}") from None
    except ProfileError as e:
        raise CliError(str(e)) from None
    _out(name if name is not None else f"{user} has no display name")


HANDLERS: dict[str, Callable] = {
    "whoami": _whoami, "alias": _alias, "connect": _connect, "accept": _accept, "contacts": _contacts,
    "groups": _groups, "create-group": _create_group, "invite": _invite, "remove": _remove, "leave": _leave,
    "delete-group": _delete_group, "send": _send, "read": _read, "listen": _listen, "profile": _profile,
}
