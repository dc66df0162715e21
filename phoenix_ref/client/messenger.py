"""A whole Phoenix client over HTTPS: AS account, QS queue, DS groups.

:class:`Messenger` ties a registered :class:`~.session.ClientSession` (AS,
Privacy Pass wallet), a QS identity with its queue (:mod:`.qs_client`) and
the groups it is in (:class:`~.groups.GroupMember`), and runs the client
flows of ``../shared/ds-inventory.md`` §3 that involve the DS:

* F1 (the QS part): a QS user record, AddPackages published for contacts;
* F6 create a group; F7 invite contacts (their AddPackages fetched with
  their friendship token); F8 join from a WelcomeBundle; F9 send; F10
  receive (dequeue, decrypt, process); F11 update; F12 remove; F13 leave;
  F14 delete; F17 commit pending removals; F15 new queue info.

Contacts: what a connection exchanges (``spec/queuing_service/keypackage_publication.md``:
user id, client credential, friendship token and friendship encryption key)
is a :class:`ContactCard`, sent in the connection group
(:meth:`Messenger.connect`, :meth:`Messenger.accept_connections`); tests
may also hand cards over directly (:meth:`Messenger.add_contact`). The
connection group is the reference for a contact's clients: an invitation
from any other client is declined (:meth:`Messenger._join`).
:meth:`Messenger.remove_contact` ends a connection and rotates the
friendship token.

:meth:`Messenger.receive` handles every dequeued message on its own: one
that cannot be processed becomes a ``message_failed`` event, one that needs
a server which does not answer now waits for it (with its group's later
messages behind it), and a message of a later epoch (a commit never reached
us) makes it resync the group.

A request the DS refuses raises its :class:`~phoenix_ref.errors.ProtocolError`
after the pending commit is dropped (``409 wrong_epoch``: receive, then try
again; :meth:`Messenger.commit_with_retry` does that).

A commit whose answer never came (the connection broke, the DS crashed or
answered 5xx) may or may not have been applied. Its error is raised, but the
commit stays pending as :attr:`GroupMember.unsure`: :meth:`Messenger.settle`
sends the same commit again under a fresh DsAuthToken, and the DS either
applies it now or answers that it already did — success both times, and
the other members get it once (docs/decisions.md, "A commit whose answer
was lost"). Until then messages dequeued for that group are held back;
:meth:`Messenger.receive` and the group flows settle first. The unsure
commit and the held messages are part of the saved state, so a restarted
client settles them the same way (docs/decisions.md, "An unsure commit
survives a restart").

A commit the client refuses (a new member's credential information does not
check out) is not applied at all (:meth:`GroupMember.process`): the client
stays in the old epoch, and since the DS applied it, the group's next
message resyncs the group as for a missed commit.

State on disk: a Messenger made with ``register(..., state_dir=DIR)`` or
:meth:`Messenger.open` keeps its whole state in ``DIR/client.sqlite3``
(:mod:`.state_store`, :mod:`.saved`) and writes it, in one transaction,
at the end of every public operation — also one that failed, since a
refused request may still have spent tokens or moved a ratchet. Without a
state directory everything stays in memory.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

import httpx

from .. import endpoints
from ..codec import U8, DecodeError, VarBytes, decode, encode, struct, variant
from ..credentials import AsCredentialsResponse, ClientCredential, TrustStore, UnknownSigner
from ..crypto import CryptoError
from ..errors import ProtocolError, describe
from ..ids import ClientId, Fqdn, GroupId, UserId
from ..mls import MlsError
from ..mls.framing import WrongEpoch
from ..mls.extensions import ClientQueueConfig as ExtClientQueueConfig
from ..mls.extensions import LastResortExtension, get_extension
from ..mls.keypackage import KeyPackageBundle
from ..mls.messages import make_key_package_ref
from ..delivery import messages as dsm
from ..queuing import messages as qm
from ..queuing.fanout import group_id_of
from .calls import call_endpoint
from .profile import open_profile, seal_profile
from .groups import GroupMember, PendingRequest, UnexpectedContent
from .phoenix_credentials import (
    CredentialError, CredentialInformation, LeafIdentity, make_add_package, new_leaf_identity, new_symmetric_key, open_add_package, open_attribution,
)
from .as_client import AsClient
from .qs_client import QsClient, QsIdentity, new_friendship_token
from .session import ClientSession
from .state_store import ClientStore, StateRows

__all__ = ["Messenger", "ContactCard"]

#: At most this many domains a Welcome's members may bring that we must
#: first fetch AS credentials for.
MAX_NEW_DOMAINS = 8

#: Errors that mean "this dequeued message cannot be processed": its bytes,
#: its MLS content or its keys are bad or from an epoch we cannot read, or a
#: server we asked while handling it refused or could not be reached. They
#: come from input or from the network, so :meth:`Messenger.receive` reports
#: them and goes on with the next message. Anything else (TypeError,
#: KeyError, AssertionError, a plain ValueError, ...) would be a bug of ours
#: and propagates: swallowing it would hide it behind a stream of events.
UNPROCESSABLE: tuple[type[Exception], ...] = (
    MlsError,              # MLS refused it: wrong epoch, signature, decryption, an invalid commit
    DecodeError,           # the MessageContent, the app payload or a commit's AAD does not parse
    CryptoError,           # a key sealed in it does not open (a WelcomeBundle's EAR key)
    CredentialError,       # credential information or an attribution that does not open or match
    UnexpectedContent,     # a Phoenix envelope that does not fit the MLS message inside
    ProtocolError,         # a server refused a request made for it (also credential checks, 5xx)
    httpx.TransportError,  # a server could not be reached for it
)

#: How long a dequeued message may wait for a server it needs (see
#: :meth:`Messenger.receive`) before it is reported as failed: a week, so a
#: homeserver's outage or a laptop's week offline costs no message.
MAX_WAIT_MS = 7 * 24 * 3600 * 1000
#: At most this many messages wait; beyond that the oldest one is reported as failed.
MAX_WAITING = 1000


@dataclass
class Waiting:
    """A dequeued message that waits for a server it needs (:meth:`Messenger.receive`)."""
    message: bytes              # the encoded MessageContent
    group: GroupId | None
    since_ms: int               # when it first could not be processed


class _NotNow(Exception):
    """A server without whose answer a message cannot be processed did not
    answer (unreachable, 5xx, 429): the message waits, nothing was applied."""

    def __init__(self, cause: Exception):
        super().__init__(describe(cause))
        self.cause = cause


def _transient(e: Exception) -> bool:
    """Whether ``e`` says "not now" rather than "no": no answer, a server
    error or a rate limit."""
    return isinstance(e, httpx.TransportError) or (isinstance(e, ProtocolError) and (e.status >= 500 or e.status == 429))


@struct
class ContactCard:
    """What a user hands a contact (``spec/glossary.md#friendship-keys``)."""
    user_id: UserId
    client_credential: ClientCredential
    friendship_token: VarBytes
    friendship_key: VarBytes
    #: decrypts the user's profile at its AS (docs/decisions.md, "Client payloads")
    profile_key: VarBytes


@struct
class TextMessage:
    body: VarBytes


#: What the application data of an MLS message holds (a client-level
#: format; the spec leaves it to clients, docs/decisions.md "Client payloads"):
#: a text, or a contact card that the two users of a connection group swap.
AppPayload = variant(U8, {1: TextMessage, 2: ContactCard}, "AppPayload")


def _saves(method: Callable) -> Callable:
    """Write the state after ``method`` (the outermost such call only)."""
    @functools.wraps(method)
    async def wrapper(self: "Messenger", *args: Any, **kwargs: Any) -> Any:
        self._depth += 1
        try:
            return await method(self, *args, **kwargs)
        finally:
            self._depth -= 1
            if self._depth == 0:
                self.save()
    return wrapper


@dataclass(frozen=True)
class Text:
    """A text as a member saw it."""
    sender: UserId | None
    body: bytes


@dataclass
class Messenger:
    session: ClientSession
    qs: QsClient
    me: QsIdentity
    friendship_key: bytes
    base_url: Callable[[str, Fqdn], str]
    contacts: dict[UserId, ContactCard] = field(default_factory=dict)
    groups: dict[GroupId, GroupMember] = field(default_factory=dict)
    #: published KeyPackages by ref: their private keys and leaf identity
    key_packages: dict[bytes, tuple[KeyPackageBundle, LeafIdentity]] = field(default_factory=dict)
    trust: TrustStore | None = None
    #: what happened to groups and dequeued messages, for the caller:
    #: ``(kind, group)`` with kind ``joined``, ``removed``, ``declined``,
    #: ``commit_refused``, ``resynced``; ``("message_failed", group or None,
    #: reason)``, ``("message_waiting", group, reason)`` and
    #: ``("resync_failed", group, reason)`` (:meth:`receive`)
    events: list[tuple] = field(default_factory=list)
    #: dequeued messages waiting for a server they need, in dequeue order (:meth:`receive`)
    waiting: list[Waiting] = field(default_factory=list)
    #: texts received per group, in order
    texts: dict[GroupId, list[Text]] = field(default_factory=dict)
    #: connection groups we created, by the user we asked (connection establishment)
    connection_groups: dict[GroupId, UserId | None] = field(default_factory=dict)
    #: each contact's connection group, whoever created it: which clients are
    #: the contact's (``spec/authentication_service/security_guarantees.md``)
    connections: dict[UserId, GroupId] = field(default_factory=dict)
    #: encrypts our user profile at the AS (``spec/glossary.md#user-profile-encryption-key``)
    profile_key: bytes = field(default_factory=new_symmetric_key)
    #: the AS credentials answers behind ``trust``, per domain
    trusted: dict[Fqdn, AsCredentialsResponse] = field(default_factory=dict)
    #: where the state is kept (None: in memory only)
    store: ClientStore | None = None
    _depth: int = 0
    _saved_texts: dict[GroupId, int] = field(default_factory=dict)

    # --- setting up ----------------------------------------------------------------------------

    @classmethod
    async def register(cls, http: Any, domain: Fqdn | str, *, clock: Any, add_packages: int = 3,
                       base_url: Callable[[str, Fqdn], str] | None = None,
                       state_dir: Path | str | None = None, password: bytes | None = None) -> "Messenger":
        """A new user at ``domain``: AS registration, QS user record,
        ``add_packages`` AddPackages (the last one of last resort). With
        ``state_dir`` the state is kept there (``spec/clients/creation.md``:
        the client stores its ids and keys); a directory that already holds a
        client is refused before anything is sent."""
        base_url = base_url or _default_base_url
        store = ClientStore.create(state_dir) if state_dir is not None else None
        try:
            session = await (ClientSession.register(http, domain, clock=clock) if password is None else
                             ClientSession.register(http, domain, password, clock=clock))
            qs = QsClient(http, base_url=lambda d: base_url("qs", d), privacy_pass=session.token,
                          now_ms=clock.now_ms)
            me = await qs.register(domain)
            out = cls(session, qs, me, new_symmetric_key(), base_url, store=store)
            await out.publish_add_packages(add_packages)
        except BaseException:
            if store is not None:     # nothing worth keeping: the account is unusable without its keys
                store.close()
                store.path.unlink(missing_ok=True)
            raise
        return out

    @classmethod
    def open(cls, state_dir: Path | str, http: Any, *, clock: Any,
             base_url: Callable[[str, Fqdn], str] | None = None) -> "Messenger":
        """The client saved in ``state_dir``, as it was after its last
        operation (raises :class:`~.state_store.StateDirError`)."""
        from . import saved as sv
        from ..codec import DecodeError
        from ..mls import MlsError
        base_url = base_url or _default_base_url
        store = ClientStore.open(state_dir)
        try:
            saved_account = decode(sv.SavedAccount, store.account())
            account = sv.restore_account(saved_account)
            session = ClientSession(AsClient(http), account["identity"], clock=clock)
            session.wallet = account["wallet"]
            session.aliases = account["aliases"]
            qs = QsClient(http, base_url=lambda d: base_url("qs", d), privacy_pass=session.token,
                          now_ms=clock.now_ms)
            out = cls(session, qs, account["qs"], account["friendship_key"], base_url, store=store)
            out.trusted = account["trusted"]
            out.profile_key = account["profile_key"]
            out.trust = TrustStore.of(out.trusted) if out.trusted else None
            for _, card in store.rows("contacts"):
                contact = decode(ContactCard, bytes(card))
                out.contacts[contact.user_id] = contact
            for ref, bundle in store.rows("key_packages"):
                out.key_packages[bytes(ref)] = sv.restore_key_package(decode(sv.SavedKeyPackage, bytes(bundle)))
            for _, member in store.rows("groups"):
                m = sv.restore_member(sv.read_member(bytes(member), saved_account.version), clock)
                out.groups[m.group_id] = m
            for gid, user in store.rows("connection_groups"):
                out.connection_groups[GroupId.parse(gid)] = UserId.parse(user) if user else None
            for user, gid in store.rows("connections"):
                out.connections[UserId.parse(user)] = GroupId.parse(gid)
            for gid, _seq, sender, body in store.texts():
                group_id = GroupId.parse(gid)
                out.texts.setdefault(group_id, []).append(Text(UserId.parse(sender) if sender else None, body))
            out._saved_texts = {g: len(t) for g, t in out.texts.items()}
            for since, message in store.waiting():
                out.waiting.append(Waiting(message, _group_of(decode(qm.MessageContent, message)), since))
        except (DecodeError, ValueError, MlsError, ProtocolError) as e:
            store.close()
            from .state_store import StateDirError
            raise StateDirError(f"{store.path} cannot be read: {e}") from None
        return out

    def save(self) -> None:
        """Write the whole state to the state directory, in one transaction
        (nothing to do without one). Every public operation calls it."""
        if self.store is None:
            return
        from . import saved as sv
        account = sv.save_account(self.session.identity, self.session.aliases, self.session.wallet, self.me,
                                  self.friendship_key, self.profile_key, self.trusted)
        rows = StateRows(encode(account))
        rows.contacts = {str(uid): encode(card) for uid, card in self.contacts.items()}
        rows.key_packages = {ref: encode(sv.save_key_package(*kp)) for ref, kp in self.key_packages.items()}
        rows.groups = {str(gid): encode(sv.save_member(m)) for gid, m in self.groups.items()}
        rows.connection_groups = {str(gid): (str(u) if u else None) for gid, u in self.connection_groups.items()}
        rows.connections = {str(u): str(gid) for u, gid in self.connections.items()}
        for gid, texts in self.texts.items():
            done = self._saved_texts.get(gid, 0)
            rows.new_texts += [(str(gid), i, str(t.sender) if t.sender else None, t.body)
                               for i, t in enumerate(texts[done:], start=done)]
        rows.waiting = [(w.since_ms, w.message) for w in self.waiting]
        self.store.write(rows)
        self._saved_texts = {gid: len(texts) for gid, texts in self.texts.items()}

    def close(self) -> None:
        """Release the state directory (after a last write)."""
        if self.store is not None:
            self.save()
            self.store.close()
            self.store = None

    @property
    def user_id(self) -> UserId:
        return self.session.user_id

    @property
    def client_id(self) -> ClientId:
        return self.session.client_id

    @property
    def domain(self) -> Fqdn:
        return self.session.domain

    def now(self) -> int:
        return self.session.now()

    def card(self) -> ContactCard:
        return ContactCard(self.user_id, self.session.credential, self.me.friendship_token, self.friendship_key,
                           self.profile_key)

    def add_contact(self, card: ContactCard) -> None:
        self.contacts[card.user_id] = card
        if self._depth == 0:
            self.save()

    @_saves
    async def trust_domains(self, *domains: Fqdn | str) -> None:
        """Check contacts' credential chains against their ASs' credentials
        (fetched now over TLS; domains trusted before stay trusted)."""
        for d in domains:
            domain = Fqdn(str(d))
            self.trusted[domain] = await self.session.as_client.as_credentials(domain)
        self.trust = TrustStore.of(self.trusted)

    async def ensure_trusted(self, domain: Fqdn | str) -> None:
        """Add ``domain``'s AS credentials when credentials are being checked
        and that domain is not trusted yet."""
        domain = Fqdn(str(domain))
        if self.trust is not None and domain not in self.trusted:
            await self.trust_domains(domain)

    # --- the user profile (``spec/authentication_service.md#update-user-profile``) -------------

    async def set_display_name(self, name: str) -> None:
        """Our profile, encrypted under our profile key, stored at our AS."""
        await self.session.update_profile(seal_profile(self.profile_key, self.user_id, name))

    async def display_name(self, user: UserId | None = None) -> str | None:
        """``user``'s display name (default: ours), if they set one; needs
        their profile key, which contacts swap with their cards."""
        user = user or self.user_id
        key = self.profile_key if user == self.user_id else self.contacts[user].profile_key
        sealed = await self.session.profile(user)
        return open_profile(bytes(key), user, sealed) if sealed else None

    async def _queue_config(self) -> qm.ClientQueueConfig:
        return await self.qs.client_queue_config(self.me)

    @_saves
    async def publish_add_packages(self, n: int, lifetime_seconds: int | None = None) -> None:
        """``#publish-keypackages``: ``n`` fresh AddPackages (replacing the
        published ones), the last of last resort; their keys are kept. Their
        KeyPackages live ``lifetime_seconds`` (default: the MLS module's)."""
        qs_key = await self.qs.queue_config_key(self.domain)
        packages = []
        for i in range(n):
            leaf = new_leaf_identity(self.session.identity.signing_key, self.session.credential, self.now())
            config = self.me.client_queue_config(qs_key)
            ext_config = ExtClientQueueConfig(str(config.client_homeserver_domain).encode(), config.sealed_config)
            package, bundle = make_add_package(leaf, self.session.credential, self.friendship_key, ext_config,
                                               self.now(), last_resort=i == n - 1,
                                               lifetime_seconds=lifetime_seconds)
            self.key_packages[make_key_package_ref(bundle.key_package)] = (bundle, leaf)
            packages.append(package)
        await self.qs.send(self.me, "publish_key_packages", qm.PublishKeyPackagesParams(self.me.qs_cid, packages))

    # --- DS calls ------------------------------------------------------------------------------

    async def ds(self, domain: Fqdn | str, name: str, body: Any = None) -> Any:
        """One DS endpoint of ``domain`` with a token of that domain's AS."""
        domain = Fqdn(str(domain))
        return await call_endpoint(self.session.as_client.http, self.base_url("ds", domain),
                                   endpoints.by_name("ds", name), domain, body, self.session.token)

    async def _submit(self, member: GroupMember, request: PendingRequest) -> Any:
        try:
            answer = await self.ds(member.group_id.ds_domain, request.name, request.body)
        except BaseException as e:
            if _answered(e) or member.group.pending_commit is None:
                member.refused(request)
            else:
                member.unsure = request          # outcome unknown: settle() asks again
            raise
        member.accepted(request)
        return answer

    async def settle(self, group_id: GroupId | None = None) -> None:
        """Learn what became of commits whose answer was lost (module
        docstring): send each again, then process what was held back for
        its group (as :meth:`receive` processes messages). A refusal (the
        commit lost to another one) is raised after the commit is dropped;
        if the DS still cannot be reached the error is raised and the commit
        stays unsure."""
        for gid in [group_id] if group_id is not None else list(self.groups):
            await self._settle(gid, set())

    async def _settle(self, gid: GroupId, resynced: set[GroupId]) -> None:
        """:meth:`settle` for one group; ``resynced`` as in :meth:`_process_all`."""
        member = self.groups.get(gid)
        if member is None or member.unsure is None:
            return
        request = member.resigned(member.unsure)
        refusal = None
        try:
            await self.ds(gid.ds_domain, request.name, request.body)
        except ProtocolError as e:
            if not _answered(e):
                raise
            if not (request.name == "ds_delete_group" and e.code == "unknown_group"):
                refusal = e                   # (a deleted group is gone either way)
        member.unsure = None
        if refusal is None:
            member.accepted(request)
        else:
            member.refused(request)
        if member.gone:
            del self.groups[gid]
        else:
            held, member.held = member.held, []
            await self._process_all(held, resynced)
        if refusal is not None:
            raise refusal

    async def _ready(self, group_id: GroupId) -> GroupMember:
        """The group's member view, once no commit of ours is unsure."""
        if self.groups[group_id].unsure is not None:
            await self.settle(group_id)
        return self.groups[group_id]

    async def ds_verifying_key(self, domain: Fqdn | str) -> bytes:
        return (await self.ds(domain, "ds_verifying_key")).verifying_keys[0]

    # --- group flows ------------------------------------------------------------------------------

    @_saves
    async def request_group_id(self) -> GroupId:
        """``#request-group-id`` at our DS: an id for :meth:`create_group`."""
        return (await self.ds(self.domain, "ds_request_group_id")).group_id

    @_saves
    async def create_group(self, group_id: GroupId | None = None) -> GroupId:
        """F6: request a group id (unless ``group_id`` was requested before),
        create the MLS group, register it at our DS."""
        gid = group_id or await self.request_group_id()
        leaf = new_leaf_identity(self.session.identity.signing_key, self.session.credential, self.now())
        member = GroupMember.create(gid, leaf, self.session.credential, await self.ds_verifying_key(self.domain),
                                    self.session.clock)
        await self._submit(member, member.create_group_request(await self._queue_config()))
        self.groups[gid] = member
        return gid

    @_saves
    async def invite(self, group_id: GroupId, users: list[UserId]) -> None:
        """F7: fetch each contact's AddPackage at its QS, check it, add them all in one commit."""
        member = await self._ready(group_id)
        packages = []
        for uid in users:
            card = self.contacts[uid]
            answer = await self.qs.call(uid.as_domain, "get_add_package", qm.AddPackageParams(card.friendship_token))
            for package in answer.add_packages:
                info = open_add_package(package, card.friendship_key, self.trust, self.now())
                packages.append((package, info, card.friendship_key))
        await self._submit(member, member.add_request(packages, self.session.identity.signing_key, self.client_id))

    def leaf_of(self, group_id: GroupId, user: UserId) -> int:
        member = self.groups[group_id]
        for leaf, info in member.members.items():
            if info.client_credential.client_id.user_id == user:
                return leaf
        raise KeyError(f"{user} is not in group {group_id}")

    @_saves
    async def remove(self, group_id: GroupId, users: list[UserId]) -> None:
        """F12 (admins): remove users' clients."""
        member = await self._ready(group_id)
        await self._submit(member, member.remove_request([self.leaf_of(group_id, u) for u in users]))

    @_saves
    async def update(self, group_id: GroupId) -> None:
        """F11 / F17: a commit with a fresh path and every pending proposal."""
        member = await self._ready(group_id)
        await self._submit(member, member.update_request())

    @_saves
    async def set_admins(self, group_id: GroupId, users: list[UserId]) -> None:
        """Make exactly these users the group's admins (we must be one, A7)."""
        member = await self._ready(group_id)
        await self._submit(member, member.roles_request([self.leaf_of(group_id, u) for u in users]))

    @_saves
    async def leave(self, group_id: GroupId) -> None:
        """F13: propose our own removal; a member commits it with its next update."""
        member = await self._ready(group_id)
        await self._submit(member, member.self_remove_request())

    @_saves
    async def send(self, group_id: GroupId, text: bytes) -> None:
        """F9: a text to the group."""
        await self._send_payload(group_id, TextMessage(text))

    async def _send_payload(self, group_id: GroupId, payload: Any) -> None:
        member = await self._ready(group_id)
        await self._submit(member, member.send_request(encode(payload, AppPayload)))

    @_saves
    async def delete_group(self, group_id: GroupId) -> None:
        """F14 (admins): remove everyone else, then the DS deletes the group."""
        member = await self._ready(group_id)
        await self._submit(member, member.delete_request())
        del self.groups[group_id]

    @_saves
    async def update_queue_info(self, group_id: GroupId) -> None:
        """F15: a fresh sealed queue config for this group."""
        member = await self._ready(group_id)
        await self._submit(member, member.queue_info_request(await self._queue_config()))

    @_saves
    async def commit_with_retry(self, group_id: GroupId, action: Callable[[], Awaitable[None]],
                                attempts: int = 5) -> None:
        """Run a committing ``action``; on ``409 wrong_epoch`` receive what
        was missed and run it again."""
        for attempt in range(attempts):
            try:
                return await action()
            except ProtocolError as e:
                if e.code != "wrong_epoch" or attempt == attempts - 1:
                    raise
                await self.receive()

    # --- receiving (F10) --------------------------------------------------------------------------

    @_saves
    async def receive(self) -> int:
        """F10: dequeue everything new and process it in order; returns the
        number of messages dequeued, processed or not.

        Unsure commits are settled first where their DS answers; one that was
        refused is reported as a ``("commit_refused", group)`` event.

        Dequeuing moves our queue ratchet past the whole answer, so every
        message in it is gone from the queue whatever becomes of it here. A
        message that cannot be processed (:data:`UNPROCESSABLE`) is reported
        as ``("message_failed", group or None, "ErrorClass: reason")`` and
        the next one is processed; what the others did is kept and saved.

        A message of a later epoch than the member's shows that a commit
        never reached us. The group is then resynced (F16, ``#resync``) right
        after that message, at most once per group per call, and reported as
        ``("resynced", group)``, or ``("resync_failed", group, reason)`` if
        the DS refused or could not be reached (the group's next message of a
        later epoch tries again). Messages of the epochs we skipped cannot be
        read any more (their keys were never ours): each is a failed message.

        A message that needs a server before anything of it can be applied
        (the AS credentials of a new member's domain, the DS's welcome
        information for a Welcome) and finds it unreachable, failing (5xx)
        or rate limiting (429) is not lost: it waits, saved with the state
        (:attr:`waiting`), reported once as ``("message_waiting", group,
        reason)``, and the later messages of its group wait behind it, in
        order. Every call tries the waiting messages again before it
        dequeues new ones. One that has waited :data:`MAX_WAIT_MS`, or the
        oldest when more than :data:`MAX_WAITING` wait, is reported as
        failed (docs/decisions.md, "A message waits for the server it
        needs"). Any other error (a bug) propagates and the rest of the
        answer is lost; the state written is what was processed before
        (docs/decisions.md, "One unreadable message does not cost the rest
        of a dequeue", "Resync on a message of a later epoch")."""
        resynced: set[GroupId] = set()
        for gid in [g for g, member in self.groups.items() if member.unsure is not None]:
            try:
                await self._settle(gid, resynced)
            except ProtocolError as e:
                if not _answered(e):
                    continue
                self.events.append(("commit_refused", gid))
            except httpx.TransportError:
                continue                          # still unreachable: its messages wait
        again, self.waiting = self.waiting, []
        for w in again:
            await self._process_one(w.message, resynced, since_ms=w.since_ms)
        plaintexts = await self.qs.receive(self.me)
        await self._process_all(plaintexts, resynced)
        return len(plaintexts)

    async def _process_all(self, messages: list[Any], resynced: set[GroupId]) -> None:
        """Process dequeued messages (encoded or decoded MessageContents) in
        order, each on its own (:meth:`receive`); ``resynced`` holds the
        groups resynced during this call, which are not resynced again."""
        for message in messages:
            await self._process_one(message, resynced)

    async def _process_one(self, message: Any, resynced: set[GroupId], since_ms: int | None = None) -> None:
        """Handle one message; if it cannot be processed, report it, and
        resync its group if it shows we missed a commit; if it cannot be
        processed yet, or an earlier message of its group waits, it waits
        (``since_ms``: since when it has been waiting)."""
        content, group_id = message, None
        try:
            if isinstance(message, (bytes, bytearray)):
                content = decode(qm.MessageContent, bytes(message))
            group_id = _group_of(content)
            if any(w.group == group_id for w in self.waiting):
                self._wait(content, group_id, since_ms)   # behind an earlier message of its group
                return
            await self._handle(content)
        except _NotNow as e:
            if since_ms is None:                  # its first try: it starts waiting
                self.events.append(("message_waiting", group_id, str(e)))
                self._wait(content, group_id, None)
            elif self.now() - since_ms >= MAX_WAIT_MS:
                self.events.append(("message_failed", group_id, f"{e} (gave up after waiting a week)"))
            else:
                self._wait(content, group_id, since_ms)
        except UNPROCESSABLE as e:
            self.events.append(("message_failed", group_id, describe(e)))
            if isinstance(e, WrongEpoch) and group_id not in resynced and self._is_behind(group_id, content):
                resynced.add(group_id)
                await self._recover(group_id)

    def _wait(self, content: Any, group_id: GroupId | None, since_ms: int | None) -> None:
        self.waiting.append(Waiting(encode(content, qm.MessageContent), group_id,
                                    self.now() if since_ms is None else since_ms))
        if len(self.waiting) > MAX_WAITING:
            oldest = self.waiting.pop(0)
            self.events.append(("message_failed", oldest.group, f"{MAX_WAITING} messages were waiting"))

    async def _needs(self, call: Awaitable[Any]) -> Any:
        """The answer to a request the message being handled cannot be
        processed without; :class:`_NotNow` if the server could not give it now."""
        try:
            return await call
        except (httpx.TransportError, ProtocolError) as e:
            if _transient(e):
                raise _NotNow(e) from e
            raise

    def _is_behind(self, group_id: GroupId, content: Any) -> bool:
        member = self.groups.get(group_id)
        return member is not None and not member.gone and member.is_behind(content)

    async def _recover(self, group_id: GroupId) -> None:
        """Resync a group that moved on without us; the outcome is an event."""
        try:
            await self.resync(group_id)
        except UNPROCESSABLE as e:
            self.events.append(("resync_failed", group_id, describe(e)))
        else:
            self.events.append(("resynced", group_id))

    async def _handle(self, content: Any) -> None:
        if isinstance(content, qm.WelcomeBundle):
            await self._join(content)
            return
        group_id = _group_of(content)
        member = self.groups.get(group_id)
        if member is None or member.gone:
            return      # a group we left or never joined: nothing to do
        if member.unsure is not None:
            member.held.append(content)           # after our own commit's fate is known
            return
        for domain in member.credential_domains(content):
            await self._needs(self.ensure_trusted(domain))   # new members from a domain not trusted yet
        out = member.process(content, self.trust)
        if isinstance(content, qm.ApplicationContent):
            await self._application(group_id, member, out)
        if member.gone:
            self.events.append(("removed", group_id))
            del self.groups[group_id]

    async def _application(self, group_id: GroupId, member: GroupMember, message: Any) -> None:
        info = member.members.get(message.sender)
        sender = info.client_credential.client_id.user_id if info is not None else None
        payload = decode(AppPayload, message.data)
        if isinstance(payload, TextMessage):
            self.texts.setdefault(group_id, []).append(Text(sender, bytes(payload.body)))
        elif isinstance(payload, ContactCard) and payload.user_id == sender:
            ours = group_id in self.connection_groups and self.connection_groups[group_id] in (None, sender)
            if not ours and self.connections.get(sender) != group_id:
                return                           # cards count only in the sender's connection group
            first = self.connections.get(sender) != group_id
            self.connections[sender] = group_id
            self.add_contact(payload)            # a new contact, or a contact's new card (a rotated token)
            if ours and first:                   # the responder of our connection: answer with our card
                self.connection_groups[group_id] = sender
                await self._send_payload(group_id, self.card())

    def text_bodies(self, group_id: GroupId) -> list[bytes]:
        return [t.body for t in self.texts.get(group_id, [])]

    # --- connections (spec/authentication_service/connection_establishment.md) -----------------------

    @_saves
    async def connect(self, user: UserId | None = None, *, alias: tuple[Fqdn | str, str] | None = None) -> GroupId:
        """F3: create a connection group and send its keys to ``user``'s
        client (by user id) or to an alias ``(domain, alias)``."""
        await self.ensure_trusted(user.as_domain if alias is None else alias[0])
        gid = await self.create_group()
        member = self.groups[gid]
        if alias is None:
            package = await self.session.connection_package(user)
            await self.session.send_connection_establishment(package, gid, member.ear_key, member.credential_key)
        else:
            domain, name = alias
            payload = await self.session.alias_connection_package(domain, name)
            await self.session.send_alias_connection_establishment(domain, name, payload, gid, member.ear_key,
                                                                   member.credential_key)
        self.connection_groups[gid] = user
        return gid

    @_saves
    async def accept_connections(self, *, alias: str | None = None,
                                 decide: Callable[[ClientCredential], bool] = lambda cred: True) -> list[GroupId]:
        """F4: read the direct queue (or an alias queue), and for every
        package ``decide`` accepts, join its connection group and send our
        contact card. A refused package is dropped: the spec has no way to
        tell the initiator (docs/decisions.md, "Connection rejection")."""
        packages = (await self.session.dequeue_connection_messages() if alias is None
                    else await self.session.dequeue_alias_messages(alias))
        joined = []
        for cep in packages:
            if not decide(cep.sender_client_credential):
                continue
            await self.ensure_trusted(cep.sender_client_credential.client_id.as_domain)
            gid = cep.connection_group_id
            ear, cred_key = bytes(cep.connection_group_ear_key), bytes(cep.connection_group_credential_key)
            info = await self.ds(gid.ds_domain, "ds_external_commit_info", dsm.ExternalCommitInfoParams(gid, ear))
            leaf = new_leaf_identity(self.session.identity.signing_key, self.session.credential, self.now())
            own = CredentialInformation(self.session.credential, leaf.signature_encryption_key)
            member, request = GroupMember.join_external(gid, info, leaf, own, ear, cred_key,
                                                        await self._queue_config(), self.trust, self.session.clock)
            await self.ds(gid.ds_domain, request.name, request.body)
            self.groups[gid] = member
            self.connections[cep.sender_client_credential.client_id.user_id] = gid
            self.events.append(("joined", gid))
            await self._send_payload(gid, self.card())
            joined.append(gid)
        return joined

    @_saves
    async def resync(self, group_id: GroupId) -> None:
        """F16: rejoin a group whose MLS state was lost, keeping our leaf credential."""
        old = self.groups[group_id]
        info = await self.ds(group_id.ds_domain, "ds_external_commit_info",
                             dsm.ExternalCommitInfoParams(group_id, old.ear_key))
        member, request = old.resync(info, await self._queue_config(), self.trust)
        await self.ds(group_id.ds_domain, request.name, request.body)
        self.groups[group_id] = member

    async def _join(self, bundle: qm.WelcomeBundle) -> None:
        """F8: open the attribution, the EAR key, fetch the tree, join.

        An invitation whose attribution does not open under our friendship
        key, or was not signed by a client of a contact's connection group
        (``spec/authentication_service/security_guarantees.md#connection-groups-and-multi-client-identity``),
        is declined: nothing is fetched or sent, a ``("declined", group)``
        event tells the caller (docs/decisions.md, "Declined invitations")."""
        welcome_bytes = encode(bundle.welcome)
        try:
            payload, _sender = open_attribution(bytes(bundle.encrypted_welcome_attribution_info),
                                                self.friendship_key, bundle.group_id, welcome_bytes,
                                                self._credential_of)
        except CredentialError:
            self.events.append(("declined", bundle.group_id))
            return
        refs = {bytes(s.new_member) for s in bundle.welcome.secrets}
        ref = next((r for r in self.key_packages if r in refs), None)
        if ref is None:
            raise ProtocolError("a Welcome for none of our KeyPackages", code="unknown_key_package")
        kp_bundle, leaf = self.key_packages[ref]
        ear_key = GroupMember.ear_key_of(bundle, kp_bundle)
        request = GroupMember.welcome_info_request(bundle, kp_bundle, ear_key, self.now())
        info = await self._needs(self.ds(bundle.group_id.ds_domain, request.name, request.body))
        for attempt in range(MAX_NEW_DOMAINS + 1):
            try:
                member = GroupMember.join(bundle, kp_bundle, leaf, ear_key,
                                          bytes(payload.group_credential_encryption_key), info, self.trust,
                                          self.session.clock)
                break
            except UnknownSigner as e:      # a member from a domain we did not trust yet
                if e.domain is None or e.domain in self.trusted or attempt == MAX_NEW_DOMAINS:
                    raise
                await self._needs(self.ensure_trusted(e.domain))
        self.groups[bundle.group_id] = member
        self.events.append(("joined", bundle.group_id))
        if not _is_last_resort(kp_bundle):
            del self.key_packages[ref]

    def _credential_of(self, client_id: ClientId) -> ClientCredential | None:
        """The credential of ``client_id`` if it is a client of one of our
        contacts: a member of our connection group with that contact (the
        reference for which clients are the contact's), or, for a card handed
        over without a connection group (:meth:`add_contact`), the card's client."""
        card = self.contacts.get(client_id.user_id)
        if card is None:
            return None
        gid = self.connections.get(client_id.user_id)
        if gid is None:
            return card.client_credential if card.client_credential.client_id == client_id else None
        member = self.groups.get(gid)
        if member is None:
            return None               # the connection group is gone: no client is the contact's
        for info in member.members.values():
            if info.client_credential.client_id == client_id:
                return info.client_credential
        return None

    @_saves
    async def remove_contact(self, user: UserId) -> list[UserId]:
        """End the connection with ``user``
        (``spec/queuing_service/keypackage_publication.md#friendship-token-rotation``):
        a fresh friendship token replaces ours at our QS, so the copy ``user``
        holds no longer fetches our AddPackages; every other contact gets our
        card with the new token in its connection group; we forget ``user``
        and propose to leave our connection group with them. Returns the
        contacts that have no connection group (cards swapped by hand), who
        must be handed the new card (:meth:`card`) some other way."""
        token = new_friendship_token()
        await self.qs.send(self.me, "update_user_record",
                           qm.UpdateUserRecordParams(self.me.qs_uid, self.me.user_key.public, token))
        self.me.friendship_token = token
        self.contacts.pop(user, None)
        gone = self.connections.pop(user, None)
        for gid, asked in list(self.connection_groups.items()):
            if gid == gone or asked == user:
                del self.connection_groups[gid]
        untold = []
        for other in list(self.contacts):
            gid = self.connections.get(other)
            if gid is None or gid not in self.groups:
                untold.append(other)
                continue
            await self._send_payload(gid, self.card())
        if gone is not None and gone in self.groups:
            await self.leave(gone)
        return untold



def _answered(e: BaseException) -> bool:
    """Whether ``e`` is the DS's answer to a request (a refusal it decided),
    rather than no answer: a transport error, a cancellation or a 5xx."""
    return isinstance(e, ProtocolError) and e.status < 500


def _default_base_url(service: str, domain: Fqdn) -> str:
    return f"https://{service}.{domain}"


def _group_of(content: Any) -> GroupId:
    return group_id_of(qm.FanOutMessage([], content))


def _is_last_resort(bundle: KeyPackageBundle) -> bool:
    return get_extension(bundle.key_package.extensions, LastResortExtension) is not None
