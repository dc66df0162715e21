"""A member's whole MLS state as bytes, to keep it across restarts.

:meth:`Group.to_bytes <phoenix_ref.mls.group.Group.to_bytes>` writes a
:class:`GroupState` and :meth:`Group.from_bytes
<phoenix_ref.mls.group.Group.from_bytes>` reads it back. What it covers is
what the next operation of the member may need (RFC 9420 §8, §9, §12):

* the GroupContext and the public ratchet tree (``ratchet_tree`` wire form);
* the private TreeKEM keys (node index, private and public key);
* the epoch secrets, saved as the three values every other one derives
  from (``joiner_secret``, ``welcome_secret``, ``epoch_secret``, §8);
* the secret tree with every ratchet's position and the keys kept for
  skipped generations (:class:`~phoenix_ref.mls.secret_tree.SecretTreeState`),
  so no generation is served twice after a restart;
* both transcript hashes and the confirmation tag;
* the member's signature key;
* the proposals received this epoch, in arrival order;
* the private keys of our proposed Updates not yet committed;
* resumption PSKs of past epochs and the external PSKs;
* whether the member is still active, and the creator's KeyPackage.

A pending Commit (created, not yet accepted by the DS) is not part of it:
normally the caller saves after the DS answered. A caller that must keep
one across a restart (the DS's answer was lost) saves it apart with
:meth:`Group.pending_to_bytes <phoenix_ref.mls.group.Group.pending_to_bytes>`
— a :class:`PendingCommitState`: the Commit as we signed it and the state
of the epoch it leads to, in this same format — and gives it back with
:meth:`Group.restore_pending <phoenix_ref.mls.group.Group.restore_pending>`
(docs/decisions.md, "Client state on disk").

The format is versioned by its first byte; any other version, trailing
bytes or an inconsistent state (keys that do not match the tree) is refused
with :class:`GroupStateError`. These bytes hold private keys: whoever stores
them must protect them (the client keeps them in a mode-0600 file).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..codec import U8, U32, U64, DecodeError, VarBytes, decode, encode, optional, struct, vec
from ..crypto import HpkeKeyPair, SigningKey
from . import MlsError
from .key_schedule import EpochSecrets
from .messages import AuthenticatedContent, GroupContext, KeyPackage
from .secret_tree import SecretTree, SecretTreeState
from .transcript import TranscriptHashes
from .tree import RatchetTree
from .treekem import PrivateStateError, PrivateTreeKeys

__all__ = ["GroupState", "GroupStateError", "RestoredGroup", "FORMAT_VERSION", "group_to_bytes",
           "group_from_bytes", "PendingCommitState"]

FORMAT_VERSION = 1


class GroupStateError(MlsError):
    """Saved group state that cannot be restored."""


@struct
class KeyPairState:
    node: U32
    private: VarBytes
    public: VarBytes


@struct
class ResumptionPskState:
    group_id: VarBytes
    epoch: U64
    psk: VarBytes


@struct
class ExternalPskState:
    psk_id: VarBytes
    psk: VarBytes


@struct
class GroupState:
    version: U8
    group_context: GroupContext
    ratchet_tree: VarBytes
    leaf_index: U32
    tree_keys: vec(KeyPairState)
    joiner_secret: optional(VarBytes)
    welcome_secret: optional(VarBytes)
    epoch_secret: VarBytes
    confirmed_transcript_hash: VarBytes
    interim_transcript_hash: VarBytes
    confirmation_tag: VarBytes
    signature_private_key: VarBytes
    secret_tree: SecretTreeState
    proposals: vec(AuthenticatedContent)
    pending_update_keys: vec(KeyPairState)
    resumption_psks: vec(ResumptionPskState)
    external_psks: vec(ExternalPskState)
    active: U8
    creator_key_package: optional(KeyPackage)


@struct
class PendingCommitState:
    """Our pending Commit: its AuthenticatedContent (with the confirmation
    tag) and the :class:`GroupState` of the epoch it leads to."""
    content: AuthenticatedContent
    next_epoch: VarBytes


@dataclass
class RestoredGroup:
    """What :func:`group_from_bytes` read back, checked for consistency;
    :meth:`Group.from_bytes <phoenix_ref.mls.group.Group.from_bytes>` puts it together."""
    group_context: GroupContext
    tree: RatchetTree
    keys: PrivateTreeKeys
    secrets: EpochSecrets
    transcript: TranscriptHashes
    confirmation_tag: bytes
    signing_key: SigningKey
    secret_tree: SecretTree
    proposals: list[AuthenticatedContent]
    pending_updates: dict[bytes, HpkeKeyPair]
    resumption_psks: dict[tuple[bytes, int], bytes]
    external_psks: dict[bytes, bytes]
    active: bool
    creator_key_package: KeyPackage | None


def _pairs(keys: dict[Any, HpkeKeyPair], index=lambda k: k) -> list[KeyPairState]:
    return [KeyPairState(index(k), pair.private, pair.public) for k, pair in keys.items()]


def group_to_bytes(group: Any) -> bytes:
    """The :class:`GroupState` of a :class:`~phoenix_ref.mls.group.Group`."""
    st = group._state
    secrets = st.secrets
    return encode(GroupState(
        FORMAT_VERSION, st.group_context, st.tree.to_bytes(), st.keys.leaf_index, _pairs(st.keys.keys),
        secrets.joiner_secret, secrets.welcome_secret, secrets.epoch_secret,
        st.transcript.confirmed, st.transcript.interim, st.confirmation_tag, group.signing_key.private,
        group.secret_tree.snapshot(), group.proposals.contents(),
        _pairs(group._pending_updates, index=lambda _k: 0),
        [ResumptionPskState(gid, epoch, psk) for (gid, epoch), psk in group.resumption_psks.items()],
        [ExternalPskState(pid, psk) for pid, psk in group.external_psks.items()],
        1 if group.active else 0, group.creator_key_package))


def group_from_bytes(data: bytes) -> RestoredGroup:
    try:
        s = decode(GroupState, data)
    except DecodeError as e:
        raise GroupStateError(f"saved group state does not decode: {e}") from None
    if s.version != FORMAT_VERSION:
        raise GroupStateError(f"saved group state has format {s.version}, this code reads {FORMAT_VERSION}")
    tree = RatchetTree.from_bytes(bytes(s.ratchet_tree))
    if tree.tree_hash() != bytes(s.group_context.tree_hash):
        raise GroupStateError("the saved tree does not match the saved GroupContext")
    keys = PrivateTreeKeys(s.leaf_index, {k.node: HpkeKeyPair(bytes(k.private), bytes(k.public))
                                          for k in s.tree_keys})
    try:
        keys.check_consistent(tree)
    except PrivateStateError as e:
        raise GroupStateError(f"saved private keys do not match the tree: {e}") from None
    if s.secret_tree.n_leaves != tree.n_leaves:
        raise GroupStateError("the saved secret tree has another width than the tree")
    return RestoredGroup(
        s.group_context, tree, keys,
        EpochSecrets._derive(_opt(s.joiner_secret), _opt(s.welcome_secret), bytes(s.epoch_secret)),
        TranscriptHashes(bytes(s.confirmed_transcript_hash), bytes(s.interim_transcript_hash)),
        bytes(s.confirmation_tag), SigningKey.from_private(bytes(s.signature_private_key)),
        SecretTree.restore(s.secret_tree), list(s.proposals),
        {bytes(k.public): HpkeKeyPair(bytes(k.private), bytes(k.public)) for k in s.pending_update_keys},
        {(bytes(p.group_id), p.epoch): bytes(p.psk) for p in s.resumption_psks},
        {bytes(p.psk_id): bytes(p.psk) for p in s.external_psks},
        bool(s.active), s.creator_key_package)


def _opt(value: bytes | None) -> bytes | None:
    return None if value is None else bytes(value)
