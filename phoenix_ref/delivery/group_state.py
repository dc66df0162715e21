"""The DS's state of one group and its encryption at rest
(``spec/delivery_service.md#ds-state``,
``spec/delivery_service/group_state_encryption.md``).

One encoding, :class:`GroupStateWire`, holds everything the spec lists in
the encrypted group state: the public view of the MLS group (GroupInfo with
its GroupContext, ratchet tree, interim transcript hash, proposal store),
the client and user profiles, the past group states kept for joiners, the
Queue ID decryption key and the digests of the last commits the DS applied
(so that a client whose answer was lost can learn that its commit went
through: docs/decisions.md, "A commit whose answer was lost").
:class:`GroupState` is the working form the core changes.

At rest (:func:`seal_state` / :func:`open_state`) the encoding is prefixed
with its length, padded with zeros to a multiple of the bucket size
(docs/decisions.md, A19) and sealed with AES-128-GCM (the ciphersuite's
AEAD) under the group's EAR key, with a fresh random nonce and the encoded
GroupId as additional data, so a ciphertext copied onto another group's row
does not open. Only the group id, the month of last activity, the Queue ID
encryption key and the deleted-queue rows stay in plaintext (the store).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..codec import U32, U64, DecodeError, VarBytes, decode, encode, optional, struct, vec
from ..crypto import NN, CryptoError, aead_open, aead_seal, random_bytes
from ..ids import GroupId
from ..mls.messages import AuthenticatedContent, GroupInfo
from ..mls.public_group import PublicGroup
from ..mls.transcript import TranscriptHashes
from ..mls.tree import RatchetTree, RatchetTreeWire
from ..queuing.messages import ClientQueueConfig
from .messages import EAR_KEY_LEN, LeafCredentialInformation

__all__ = ["ClientProfile", "Joiner", "PastGroupState", "GroupState", "seal_state", "open_state",
           "WrongEarKey", "DEFAULT_BUCKET_BYTES", "SEAL_OVERHEAD", "RECENT_COMMITS"]

#: The smallest padding bucket (docs/decisions.md, A19).
DEFAULT_BUCKET_BYTES = 4096
#: What sealing adds to the padded plaintext: the nonce and the AEAD tag.
SEAL_OVERHEAD = NN + 16
#: How many applied commits the state remembers by digest.
RECENT_COMMITS = 16


class WrongEarKey(CryptoError):
    """The EAR key given does not open the stored group state."""


@dataclass(frozen=True)
class ClientProfile:
    """``#ds-state`` client profile. ``activity_day`` is in UTC days since
    the Unix epoch (docs/decisions.md, A18). Stored as a row of the client
    columns of :class:`GroupStateWire`."""
    leaf_index: int
    encrypted_credential_information: bytes
    client_queue_config: ClientQueueConfig
    activity_day: int
    activity_epoch: int


@dataclass(frozen=True)
class Joiner:
    """A client expected to pick up a past group state: its KeyPackageRef,
    its leaf and the end of its KeyPackage's lifetime (seconds). Stored as
    a row of the joiner columns of :class:`PastGroupState`."""
    key_package_ref: bytes
    leaf_index: int
    not_after: int


@struct
class PastGroupState:
    """A copy kept for joiners (``#ds-state``, A24): the tree and the
    credential information of the epoch a Welcome joins.

    ``public_tree`` and ``credential_chains`` hold the items of a
    ``RatchetTreeWire`` and of a ``vec(LeafCredentialInformation)``, kept
    encoded: a vector and an ``opaque<V>`` have the same length prefix, so
    the stored bytes are those of the decoded vectors, but a request that
    opens the state skips each copy instead of decoding a whole tree; only
    *get Welcome information* decodes one (:meth:`tree_nodes`, :meth:`chains`).

    The joiners are three columns (a joiner is the items at one position),
    read and written a vector at a time: after an add of a thousand members
    every request reads and keeps a thousand joiners."""
    epoch: U64
    public_tree: VarBytes
    credential_chains: VarBytes
    joiner_refs: vec(VarBytes)
    joiner_leaves: vec(U32)
    joiner_not_after: vec(U64)

    @classmethod
    def of(cls, epoch: int, tree: RatchetTree, chains: list[LeafCredentialInformation],
           joiners: list[Joiner]) -> "PastGroupState":
        # the items of the RatchetTreeWire, an ``optional<Node>`` each (a
        # presence byte, then the Node), from the nodes' kept encodings
        nodes = b"".join(b"\x00" if e is None else b"\x01" + e for e in tree.to_encoded())
        return cls(epoch, nodes, _items(encode(chains, _CHAINS)), [j.key_package_ref for j in joiners],
                   [j.leaf_index for j in joiners], [j.not_after for j in joiners])

    @property
    def joiners(self) -> list[Joiner]:
        return [Joiner(*row) for row in zip(self.joiner_refs, self.joiner_leaves, self.joiner_not_after)]

    def keeping(self, leaf_index: int | None, now_s: int | None) -> "PastGroupState | None":
        """This copy without the joiner at ``leaf_index`` and without joiners
        whose KeyPackage ended before ``now_s``; None if no joiner is left
        (itself if nothing changes)."""
        rows = list(zip(self.joiner_refs, self.joiner_leaves, self.joiner_not_after))
        kept = [r for r in rows if r[1] != leaf_index and (now_s is None or r[2] >= now_s)]
        if len(kept) == len(rows):
            return self
        if not kept:
            return None
        refs, leaves, not_after = (list(c) for c in zip(*kept))
        return replace(self, joiner_refs=refs, joiner_leaves=leaves, joiner_not_after=not_after)

    def tree_nodes(self) -> list:
        return decode(RatchetTreeWire, encode(self.public_tree, VarBytes))

    def tree(self) -> RatchetTree:
        return RatchetTree.from_nodes(self.tree_nodes())

    def chains(self) -> list[LeafCredentialInformation]:
        return decode(_CHAINS, encode(self.credential_chains, VarBytes))


_CHAINS = vec(LeafCredentialInformation)


def _items(encoded_vector: bytes) -> bytes:
    """An encoded vector without its varint length prefix (RFC 9420 §2.1.2:
    the top two bits of the first byte give the prefix's length)."""
    return encoded_vector[1 << (encoded_vector[0] >> 6):]


@struct
class GroupStateWire:
    """The state at rest. The tree's nodes, most of the bytes, are stored
    as one encoded entry each (an ``opaque<V>`` holding a ``Node``, absent
    for a blank node), so that writing the state back re-encodes only the
    nodes a request changed (:meth:`RatchetTree.to_encoded`), and opening
    it decodes a node only when a request reads it
    (:meth:`RatchetTree.from_encoded`).

    The client profiles are stored as columns, in leaf order: a profile's
    fields are the items at one position of the five ``client_*`` vectors.
    Every request reads every member's activity day and queue config (the
    DS's removals, the fan-out), so the profiles are all read on open; as
    columns the integers come out in one unpack each, the credential
    information stays bytes and a queue config keeps the bytes it was read
    from (:func:`~phoenix_ref.codec.keep_encoding`), so that writing them
    into a fan-out or back into the state copies them."""
    group_info: GroupInfo
    public_tree: vec(optional(VarBytes))
    interim_transcript_hash: VarBytes
    proposals: vec(AuthenticatedContent)
    client_leaves: vec(U32)
    client_credentials: vec(VarBytes)
    client_queue_configs: vec(ClientQueueConfig)
    client_activity_days: vec(U32)
    client_activity_epochs: vec(U64)
    #: the user profiles (``#ds-state``: the leaves of each user, one, A6)
    #: as two integer vectors, each read in one go: how many leaves each
    #: user has, and their leaves, user after user (a vector of per-user
    #: structs cost ~6 ms to decode at n = 1024)
    user_sizes: vec(U32)
    user_leaves: vec(U32)
    past_states: vec(PastGroupState)
    queue_id_decryption_key: VarBytes
    #: the tree hash of every node of ``public_tree`` (``RatchetTree.node_hashes``):
    #: a cache, so that a commit rehashes only its direct path instead of the
    #: whole tree after every load (the parent hashes of an UpdatePath need
    #: the hashes of all its copath subtrees)
    tree_hashes: VarBytes
    recent_commits: vec(VarBytes)


@dataclass
class GroupState:
    """The decrypted state of one group."""
    group_id: GroupId
    public: PublicGroup
    clients: dict[int, ClientProfile]
    users: list[list[int]]
    past_states: list[PastGroupState] = field(default_factory=list)
    queue_id_decryption_key: bytes = b""
    #: digests of the last RECENT_COMMITS commits applied, oldest first
    recent_commits: list[bytes] = field(default_factory=list)
    #: the EAR key the state was opened with (never encoded)
    ear_key: bytes = field(default=b"", repr=False)

    # --- members ---------------------------------------------------------------------------

    def queue_configs(self, exclude: set[int] = frozenset()) -> list[ClientQueueConfig]:
        """The queue configs of the clients, in leaf order, but those in ``exclude``."""
        return [p.client_queue_config for i, p in sorted(self.clients.items()) if i not in exclude]

    def credential_chains(self) -> list[LeafCredentialInformation]:
        return [LeafCredentialInformation(i, p.encrypted_credential_information)
                for i, p in sorted(self.clients.items())]

    def add_client(self, profile: ClientProfile) -> None:
        self.clients[profile.leaf_index] = profile
        self.users.append([profile.leaf_index])

    def remove_client(self, leaf_index: int) -> None:
        """Drop the client's profile, its user profile if it was the user's
        last client, and its joiner entries (``#remove-users``)."""
        self.clients.pop(leaf_index, None)
        self.users = [u for u in ([i for i in user if i != leaf_index] for user in self.users) if u]
        self.drop_joiner(leaf_index)

    def touch(self, leaf_index: int, day: int) -> None:
        """``#activity-times``: the client committed now."""
        p = self.clients[leaf_index]
        self.clients[leaf_index] = replace(p, activity_day=day, activity_epoch=self.public.epoch)

    def remember_commit(self, digest: bytes) -> None:
        self.recent_commits = (self.recent_commits + [digest])[-RECENT_COMMITS:]

    # --- past states (#ds-state, A24) ----------------------------------------------------------

    def drop_joiner(self, leaf_index: int) -> None:
        """The client at ``leaf_index`` no longer needs a past state (it
        committed or left)."""
        self._keep_joiners(leaf_index, None)

    def drop_expired_joiners(self, now_s: int) -> None:
        """Joiners whose KeyPackage lifetime ended will never fetch their past state."""
        self._keep_joiners(None, now_s)

    def _keep_joiners(self, leaf_index: int | None, now_s: int | None) -> None:
        """Drop the joiner at ``leaf_index`` and the expired ones; copies left
        without joiners go (A24)."""
        kept = (past.keeping(leaf_index, now_s) for past in self.past_states)
        self.past_states = [past for past in kept if past is not None]

    # --- encoding -----------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        pg = self.public
        profiles = [p for _, p in sorted(self.clients.items())]
        wire = GroupStateWire(pg.group_info, pg.tree.to_encoded(),
                              pg.transcript.interim, pg.proposals.contents(),
                              [p.leaf_index for p in profiles],
                              [p.encrypted_credential_information for p in profiles],
                              [p.client_queue_config for p in profiles],
                              [p.activity_day for p in profiles], [p.activity_epoch for p in profiles],
                              [len(u) for u in self.users], [i for u in self.users for i in u],
                              self.past_states, self.queue_id_decryption_key, pg.tree.node_hashes(),
                              self.recent_commits)
        return encode(wire)

    @classmethod
    def from_bytes(cls, group_id: GroupId, data: bytes) -> "GroupState":
        """Rebuild a state :meth:`to_bytes` wrote. The bytes come out of an
        authenticated decryption under the group's EAR key, so they are what
        the DS itself validated and wrote; they are not validated again (nor
        are the cached tree hashes recomputed)."""
        wire = decode(GroupStateWire, data)
        gi = wire.group_info
        ctx = gi.group_context
        tree = RatchetTree.from_encoded(wire.public_tree, wire.tree_hashes)
        public = PublicGroup(ctx, tree,
                             TranscriptHashes(ctx.confirmed_transcript_hash, wire.interim_transcript_hash), gi)
        for content in wire.proposals:
            public.proposals.add(content)
        columns = (wire.client_leaves, wire.client_credentials, wire.client_queue_configs,
                   wire.client_activity_days, wire.client_activity_epochs)
        if len({len(c) for c in columns}) != 1:
            raise DecodeError("stored group state: client columns of different lengths")
        clients = {row[0]: ClientProfile(*row) for row in zip(*columns)}
        users, at = [], 0
        for size in wire.user_sizes:
            users.append(wire.user_leaves[at:at + size])
            at += size
        return cls(group_id, public, clients, users,
                   list(wire.past_states), wire.queue_id_decryption_key,
                   [bytes(d) for d in wire.recent_commits])


# --- encryption at rest ---------------------------------------------------------------------------

def _check_key(ear_key: bytes) -> None:
    if len(ear_key) != EAR_KEY_LEN:
        raise WrongEarKey(f"a GroupStateEarKey has {EAR_KEY_LEN} bytes, not {len(ear_key)}")


def seal_state(state: GroupState, ear_key: bytes, bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> bytes:
    """``nonce || AES-128-GCM(ear_key, nonce, encode(group id), padded state)``."""
    _check_key(ear_key)
    body = state.to_bytes()
    plain = len(body).to_bytes(4, "big") + body
    plain += bytes(-len(plain) % bucket_bytes)
    nonce = random_bytes(NN)
    return nonce + aead_seal(ear_key, nonce, encode(state.group_id), plain)


def open_state(group_id: GroupId, sealed: bytes, ear_key: bytes) -> GroupState:
    """The state :func:`seal_state` sealed; :class:`WrongEarKey` if ``ear_key``
    does not open it."""
    _check_key(ear_key)
    try:
        plain = aead_open(ear_key, sealed[:NN], encode(group_id), sealed[NN:])
    except CryptoError:
        raise WrongEarKey("the EAR key does not open this group's state") from None
    n = int.from_bytes(plain[:4], "big")
    if 4 + n > len(plain) or any(plain[4 + n:]):
        raise DecodeError("stored group state: bad length or padding")
    state = GroupState.from_bytes(group_id, plain[4:4 + n])
    state.ear_key = bytes(ear_key)
    return state
