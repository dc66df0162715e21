"""The secret tree and the per-sender hash ratchets (RFC 9420 §9, §9.1, §9.2,
§15.3), and the sender-data key and nonce (§6.3.2).

The ``encryption_secret`` of an epoch sits at the root of a binary tree with
the shape of the ratchet tree. Children are derived from their parent with
``ExpandWithLabel(parent, "tree", "left" | "right", Nh)``; each leaf secret
starts two hash ratchets, ``handshake`` (proposals and commits) and
``application`` (§9). Generation ``j`` of a ratchet yields a key, a nonce and
the next ratchet secret through ``DeriveTreeSecret`` (§9.1).

Deletion schedule (§9.2). A parent secret is dropped as soon as both of its
children have been derived; a leaf secret as soon as its two ratchets exist;
a ratchet secret as soon as the next one has been derived; a key/nonce pair
as soon as it has been handed out. (Python cannot wipe ``bytes``; dropping
every reference is the best it offers.)

Out-of-order delivery (§15.4). A receiver may be asked for a generation
ahead of its ratchet: the skipped generations' keys are kept so that late
messages can still be decrypted. Two limits, both per ratchet and both
configurable on :class:`SecretTree`, bound the work and memory an
adversarial sender can cause (the RFC leaves the policy to the application,
docs/decisions.md):

* ``max_forward`` (default :data:`DEFAULT_MAX_FORWARD` = 1000): a message
  may be at most this many generations ahead of the next unused one;
* ``max_skipped`` (default :data:`DEFAULT_MAX_SKIPPED` = 1000): at most this
  many keys of skipped generations are kept; the oldest go first.

A generation that was already used, or whose key was dropped, raises
:class:`GenerationUnavailable` — this is also what stops a replayed message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..codec import U8, U32, U64, VarBytes, optional, struct, vec
from ..crypto import NH, NK, NN, derive_tree_secret, expand_with_label
from . import MlsError
from . import tree_math as tm

__all__ = [
    "DEFAULT_MAX_FORWARD", "DEFAULT_MAX_SKIPPED", "MAX_GENERATION", "RatchetKind",
    "RatchetKey", "HashRatchet", "SecretTree", "SecretTreeError", "UnknownLeaf",
    "GenerationUnavailable", "sender_data_key_nonce", "SecretTreeState",
]

DEFAULT_MAX_FORWARD = 1000
DEFAULT_MAX_SKIPPED = 1000
MAX_GENERATION = 0xFFFFFFFF  # generations are uint32 (SenderData, §6.3.2)

RatchetKind = Literal["handshake", "application"]


class SecretTreeError(MlsError):
    """No key can be produced for the requested sender and generation."""


class UnknownLeaf(SecretTreeError):
    """The leaf index lies outside the tree."""


class GenerationUnavailable(SecretTreeError):
    """The generation was already used, its key was dropped, or it lies
    further ahead than the configured ``max_forward``."""


@dataclass(frozen=True)
class RatchetKey:
    """``ratchet_key_[N]_[j]`` and ``ratchet_nonce_[N]_[j]`` (§9.1) for ``j = generation``."""
    generation: int
    key: bytes
    nonce: bytes


# --- saved form (a member's state on disk, :meth:`SecretTree.snapshot`) ------------------

@struct
class SkippedKeyState:
    generation: U32
    key: VarBytes
    nonce: VarBytes


@struct
class RatchetState:
    """One ratchet: its current secret (absent once exhausted), the next
    generation and the keys kept for skipped generations."""
    leaf: U32
    kind: U8            # 0 handshake, 1 application
    secret: optional(VarBytes)
    generation: U64
    skipped: vec(SkippedKeyState)


@struct
class NodeSecretState:
    node: U32
    secret: VarBytes


@struct
class SecretTreeState:
    """Where a secret tree stands: the node secrets not yet consumed and
    every ratchet derived so far, with its position (§9.2's deletion
    schedule survives a save: consumed secrets are not in it)."""
    n_leaves: U32
    max_forward: U32
    max_skipped: U32
    nodes: vec(NodeSecretState)
    ratchets: vec(RatchetState)


_KINDS = ("handshake", "application")


class HashRatchet:
    """One sender ratchet (§9.1) starting at ``ratchet_secret_[N]_[0]``.

    ``next()`` serves the owner when sending; ``get(generation)`` serves a
    receiver and may skip ahead (keeping the skipped keys) within the limits.
    """

    def __init__(self, secret: bytes, *, max_forward: int = DEFAULT_MAX_FORWARD,
                 max_skipped: int = DEFAULT_MAX_SKIPPED):
        self._secret: bytes | None = secret
        self.generation = 0  # the next generation not yet derived
        self._skipped: dict[int, RatchetKey] = {}
        self.max_forward = max_forward
        self.max_skipped = max_skipped

    def _step(self) -> RatchetKey:
        """Derive key and nonce of the current generation, then replace the
        ratchet secret by the next one (the old one is consumed)."""
        if self._secret is None or self.generation > MAX_GENERATION:
            raise GenerationUnavailable("the ratchet is exhausted (generation is a uint32)")
        j, secret = self.generation, self._secret
        out = RatchetKey(j, derive_tree_secret(secret, "key", j, NK),
                         derive_tree_secret(secret, "nonce", j, NN))
        self._secret = derive_tree_secret(secret, "secret", j, NH) if j < MAX_GENERATION else None
        self.generation = j + 1
        return out

    def next(self) -> RatchetKey:
        """The next unused key and nonce, for encrypting one message."""
        return self._step()

    def get(self, generation: int) -> RatchetKey:
        """Key and nonce of ``generation`` for decrypting; each is served once.

        Raises :class:`GenerationUnavailable` if it was already served,
        dropped, or is more than ``max_forward`` ahead of the ratchet.
        """
        if generation < self.generation:
            key = self._skipped.pop(generation, None)
            if key is None:
                raise GenerationUnavailable(f"generation {generation} was already used or dropped")
            return key
        if generation - self.generation > self.max_forward:
            raise GenerationUnavailable(
                f"generation {generation} is more than {self.max_forward} ahead of {self.generation}")
        while self.generation < generation:
            skipped = self._step()
            self._skipped[skipped.generation] = skipped
            if len(self._skipped) > self.max_skipped:
                del self._skipped[min(self._skipped)]
        return self._step()

    def put_back(self, key: RatchetKey) -> None:
        """Return a key that :meth:`get` served but that failed to decrypt:
        only a *successful* decryption consumes it (§9.2), so a forged
        message cannot burn a generation."""
        if key.generation < self.generation and len(self._skipped) < self.max_skipped:
            self._skipped[key.generation] = key


    def snapshot(self, leaf: int, kind: RatchetKind) -> RatchetState:
        skipped = [SkippedKeyState(k.generation, k.key, k.nonce) for _, k in sorted(self._skipped.items())]
        return RatchetState(leaf, _KINDS.index(kind), self._secret, self.generation, skipped)

    @classmethod
    def restore(cls, state: RatchetState, *, max_forward: int, max_skipped: int) -> "HashRatchet":
        r = cls(b"", max_forward=max_forward, max_skipped=max_skipped)
        r._secret = None if state.secret is None else bytes(state.secret)
        r.generation = state.generation
        r._skipped = {k.generation: RatchetKey(k.generation, bytes(k.key), bytes(k.nonce)) for k in state.skipped}
        return r


class SecretTree:
    """The secret tree of one epoch over ``n_leaves`` leaves (§9).

    ``encryption_secret`` is the root. The tree is the complete binary tree
    of the smallest power-of-two width that holds ``n_leaves`` — the shape
    of the ratchet tree (§7, Appendix C) — but only leaf indices below
    ``n_leaves`` are served.
    """

    def __init__(self, encryption_secret: bytes, n_leaves: int, *,
                 max_forward: int = DEFAULT_MAX_FORWARD, max_skipped: int = DEFAULT_MAX_SKIPPED):
        if n_leaves < 1:
            raise ValueError("a secret tree has at least one leaf")
        self.n_leaves = n_leaves
        self.max_forward = max_forward
        self.max_skipped = max_skipped
        self._root = tm.root(n_leaves)
        self._nodes: dict[int, bytes] = {self._root: encryption_secret}
        self._ratchets: dict[tuple[int, str], HashRatchet] = {}

    def _leaf_secret(self, leaf: int) -> bytes:
        """Derive the leaf's node secret along the path from the lowest
        ancestor still held, dropping each parent once both children exist."""
        target = 2 * leaf
        path = [self._root]
        while path[-1] != target:  # walk down from the root
            x = path[-1]
            path.append(tm.left(x) if target < x else tm.right(x))
        start = max(i for i, node in enumerate(path) if node in self._nodes)
        for x in path[start:-1]:
            secret = self._nodes.pop(x)
            self._nodes[tm.left(x)] = expand_with_label(secret, "tree", b"left", NH)
            self._nodes[tm.right(x)] = expand_with_label(secret, "tree", b"right", NH)
        return self._nodes.pop(target)

    def ratchet(self, leaf: int, kind: RatchetKind) -> HashRatchet:
        """The ``kind`` ratchet of ``leaf``, created on first use (§9)."""
        if kind not in ("handshake", "application"):
            raise ValueError(f"unknown ratchet kind {kind!r}")
        if not isinstance(leaf, int) or not 0 <= leaf < self.n_leaves:
            raise UnknownLeaf(f"leaf {leaf} is outside a tree of {self.n_leaves} leaves")
        r = self._ratchets.get((leaf, kind))
        if r is None:
            secret = self._leaf_secret(leaf)
            for k in ("handshake", "application"):
                self._ratchets[(leaf, k)] = HashRatchet(
                    expand_with_label(secret, k, b"", NH),
                    max_forward=self.max_forward, max_skipped=self.max_skipped)
            r = self._ratchets[(leaf, kind)]
        return r

    def snapshot(self) -> SecretTreeState:
        """The tree's current state, to save (see :class:`SecretTreeState`)."""
        nodes = [NodeSecretState(x, secret) for x, secret in sorted(self._nodes.items())]
        ratchets = [r.snapshot(leaf, kind) for (leaf, kind), r in sorted(self._ratchets.items())]
        return SecretTreeState(self.n_leaves, self.max_forward, self.max_skipped, nodes, ratchets)

    @classmethod
    def restore(cls, state: SecretTreeState) -> "SecretTree":
        """The tree :meth:`snapshot` saved, at the same ratchet positions."""
        if state.n_leaves < 1 or any(r.kind >= len(_KINDS) or r.leaf >= state.n_leaves for r in state.ratchets):
            raise ValueError("a saved secret tree names a leaf or ratchet kind it cannot have")
        tree = cls(b"", state.n_leaves, max_forward=state.max_forward, max_skipped=state.max_skipped)
        tree._nodes = {n.node: bytes(n.secret) for n in state.nodes}
        tree._ratchets = {(r.leaf, _KINDS[r.kind]): HashRatchet.restore(r, max_forward=state.max_forward,
                                                                         max_skipped=state.max_skipped)
                          for r in state.ratchets}
        return tree

    # Receivers: the key for a given generation (served once).
    def key(self, leaf: int, kind: RatchetKind, generation: int) -> RatchetKey:
        return self.ratchet(leaf, kind).get(generation)

    def handshake_key(self, leaf: int, generation: int) -> RatchetKey:
        return self.key(leaf, "handshake", generation)

    def application_key(self, leaf: int, generation: int) -> RatchetKey:
        return self.key(leaf, "application", generation)

    # Senders: the next unused key of their own leaf.
    def next_key(self, leaf: int, kind: RatchetKind) -> RatchetKey:
        return self.ratchet(leaf, kind).next()

    def next_handshake_key(self, leaf: int) -> RatchetKey:
        return self.next_key(leaf, "handshake")

    def next_application_key(self, leaf: int) -> RatchetKey:
        return self.next_key(leaf, "application")


def sender_data_key_nonce(sender_data_secret: bytes, ciphertext: bytes) -> tuple[bytes, bytes]:
    """(sender_data_key, sender_data_nonce) for a PrivateMessage — §6.3.2.

    The sample is the first KDF.Nh bytes of the content ciphertext, or the
    whole ciphertext if it is shorter.
    """
    sample = ciphertext[:NH]
    return (expand_with_label(sender_data_secret, "key", sample, NK),
            expand_with_label(sender_data_secret, "nonce", sample, NN))
