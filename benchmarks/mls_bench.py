"""Cost of a Commit with UpdatePath as the group grows (RFC 9420 §12.4).

For n = 16, 256, 4096 members this measures, in the same run:

* create — a member creates an empty Commit with UpdatePath
  (:meth:`Group.commit`: proposal validation, fresh path, HPKE encryption
  to the copath resolutions, key schedule, GroupInfo signature);
* process — another member processes it (:meth:`Group.process`);
* public — the DS validates and applies it
  (:meth:`PublicGroup.validate_commit` + :meth:`PublicGroup.merge_commit`);

each as a median over several epochs, in milliseconds and as a multiple of
one Ed25519 signature verification, and prints the public-view ratio
n=4096 : n=16 (target ≤ 10: tree hashes are cached per node, so a Commit
rehashes only its direct path).

Building the groups. Adding 4095 members by real Commits one at a time is
slow, so the tree is built directly: every leaf gets a signed LeafNode, then
the public halves of UpdatePaths from every even leaf (highest first) are
merged into the tree with :func:`treekem.create_update_path`, exactly as
those members' Commits would leave it — every parent node set, every parent
hash valid (the script checks the whole tree with ``RatchetTree.validate``
for n ≤ 256; that check costs n leaf-signature verifications). Leaf 0 goes
last, so it holds the private keys of its whole direct path and can decrypt
the Commits of the last leaf, the committer in the measurements. The two
members and the DS then start from a common epoch made with a random epoch
secret (the key schedule is the same at every n).

Run: ``python benchmarks/mls_bench.py`` (add ``--quick`` for n = 16, 256).
"""

from __future__ import annotations

import statistics
import sys
import time

from phoenix_ref import crypto
from phoenix_ref.clock import Clock
from phoenix_ref.mls.group import Group, _EpochState
from phoenix_ref.mls.key_schedule import EpochSecrets
from phoenix_ref.mls.keypackage import make_leaf_node
from phoenix_ref.mls.messages import CIPHER_SUITE_1, Credential, GroupContext, LeafNodeSource, Lifetime, ProtocolVersion
from phoenix_ref.mls.public_group import PublicGroup
from phoenix_ref.mls.transcript import TranscriptHashes, confirmation_tag
from phoenix_ref.mls.tree import RatchetTree
from phoenix_ref.mls.treekem import PrivateTreeKeys, create_update_path

ROUNDS = 7


def build(n: int, group_id: bytes):
    """(committer Group, receiver Group, PublicGroup) over an n-leaf tree."""
    now = Clock().now_ms() // 1000
    signers = [crypto.SigningKey.generate() for _ in range(n)]
    enc = [crypto.HpkeKeyPair.generate() for _ in range(n)]
    leaves = [make_leaf_node(signers[i], Credential.basic(b"member-%d" % i), enc[i].public,
                             LeafNodeSource.key_package, lifetime=Lifetime(now - 3600, now + 86400))
              for i in range(n)]
    nodes = [None] * (2 * n - 1)
    nodes[::2] = leaves
    tree = RatchetTree.from_nodes(nodes)
    receiver_keys = None
    for i in range(n - 2 if n > 1 else 0, -1, -2):
        own = create_update_path(tree, i, tree.leaf(i), signers[i], group_id)
        if i == 0:
            receiver_keys = own.keys
    if n <= 256:
        tree.validate(group_id)
    committer = n - 1
    ctx = GroupContext(ProtocolVersion.mls10, CIPHER_SUITE_1, group_id, 1, tree.tree_hash(),
                       crypto.random_bytes(32), [])
    secrets = EpochSecrets.from_epoch_secret(crypto.random_bytes(32))
    tag = confirmation_tag(secrets.confirmation_key, ctx.confirmed_transcript_hash)
    transcript = TranscriptHashes.from_group_info(ctx.confirmed_transcript_hash, tag)

    def member(keys, signer):
        return Group(_EpochState(ctx, tree.copy(), keys, secrets, transcript, tag), signer)

    c = member(PrivateTreeKeys.for_leaf(committer, enc[committer].private), signers[committer])
    r = member(receiver_keys, signers[0])
    ds = PublicGroup(ctx, tree.copy(), transcript)
    return c, r, ds


def time_verify(rounds: int = 2000) -> float:
    key = crypto.SigningKey.generate()
    data = b"x" * 200
    sig = key.sign(data)
    t = time.perf_counter()
    for _ in range(rounds):
        crypto.verify(key.public, data, sig)
    return (time.perf_counter() - t) / rounds


def measure(n: int) -> dict[str, float]:
    c, r, ds = build(n, b"bench-%d" % n)
    create, process, public = [], [], []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        res = c.commit()
        t1 = time.perf_counter()
        staged = ds.validate_commit(res.message)
        ds.merge_commit(staged, res.group_info.signature, res.group_info.extensions)
        t2 = time.perf_counter()
        r.process(res.message)
        t3 = time.perf_counter()
        c.merge_pending_commit()
        create.append(t1 - t0)
        public.append(t2 - t1)
        process.append(t3 - t2)
        assert c.epoch_authenticator == r.epoch_authenticator
        assert ds.tree.tree_hash() == c.tree.tree_hash() == r.tree.tree_hash()
    return {"create": statistics.median(create), "process": statistics.median(process),
            "public": statistics.median(public)}


def main(argv: list[str]) -> None:
    sizes = [16, 256] if "--quick" in argv else [16, 256, 4096]
    verify = time_verify()
    print(f"one Ed25519 verification: {verify * 1e6:.1f} µs")
    print(f"{'n':>6} {'create ms':>10} {'(xV)':>7} {'process ms':>11} {'(xV)':>7} {'public ms':>10} {'(xV)':>7}")
    results = {}
    for n in sizes:
        m = measure(n)
        results[n] = m
        print(f"{n:>6} {m['create'] * 1e3:>10.2f} {m['create'] / verify:>7.1f} "
              f"{m['process'] * 1e3:>11.2f} {m['process'] / verify:>7.1f} "
              f"{m['public'] * 1e3:>10.2f} {m['public'] / verify:>7.1f}")
    last = sizes[-1]
    ratio = results[last]["public"] / results[16]["public"]
    print(f"public view n={last} : n=16 = {ratio:.2f} (target <= 10)")


if __name__ == "__main__":
    main(sys.argv[1:])
