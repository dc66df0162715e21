"""Scenario tests: whole conversations across homeservers, black-box over
HTTPS through the client library (:class:`~phoenix_ref.client.messenger.Messenger`).

* Named scenarios, each in-process and on real sockets: connecting (by user
  id and by alias), inviting, removing, leaving, and a group spread over
  three homeservers whose operations come from members of each of them.
* A seeded random walk: 100 group operations (join, add, leave, remove,
  update, send, and a few the DS must refuse) over 10 users on three
  homeservers. After every operation every member must be in the epoch the
  walk expects, with one epoch authenticator, the same view of members and
  admins, and every text must have reached every member of its epoch but
  its sender exactly once (and no one else).

The walk runs ``CI_SEEDS`` seeds in-process in one deployment (registering
ten users costs more than a walk) and one seed on sockets; ``--run-slow``
adds ``LONG_SEEDS`` seeds. A failing walk names its seed;
``PHOENIX_WALK_SEED=<n>`` makes every walk test run that seed alone, on a
fresh deployment::

    PHOENIX_WALK_SEED=7 pytest spec_tests/test_scenarios.py -k walk

and ``PHOENIX_WALK_SEEDS=0-20`` walks seeds 0 to 20 among the same users,
as the many-seed runs do (a failure may need what earlier seeds left).

A seed fixes the walk's operations (each seed has its own group and random
generator); in the many-seed run the users carry what earlier seeds left
(used KeyPackages, other groups), a replay starts with fresh users.
"""

from __future__ import annotations

import uuid
import os
import random
import time
from dataclasses import dataclass, field

import pytest
import trio

from phoenix_ref.client.messenger import Messenger
from phoenix_ref.config import Limits
from phoenix_ref.errors import ProtocolError
from phoenix_ref.ids import GroupId
from phoenix_ref.spec_plugin import deployment_modes, spec
from phoenix_ref.testing import TARGET, Deployment
from spec_tests.test_ds_groups import A, B, C, agree, until, users

#: aliases carry this run's mark: a target keeps what earlier runs registered
RUN = uuid.uuid4().hex[:8]

HOMESERVERS = ["hs1", "hs2", "hs3"]


async def registered(d, http, *domains):
    """Users who know their homeservers' AS credentials but no one else."""
    out = [await Messenger.register(http, dom, clock=d.clock) for dom in domains]
    for m in out:
        await m.trust_domains(A, B, C)
    return out


def inbox(m: Messenger, gid: GroupId) -> list[tuple[str, bytes]]:
    return [(str(t.sender), t.body) for t in m.texts.get(gid, [])]


def member_ids(m: Messenger, gid: GroupId) -> set[str]:
    """Who ``m`` believes is in the group (from the credentials it checked)."""
    return {str(info.client_credential.client_id.user_id) for info in m.groups[gid].members.values()}


def admin_ids(m: Messenger, gid: GroupId) -> set[str]:
    member = m.groups[gid]
    return {str(member.members[leaf].client_credential.client_id.user_id) for leaf in member.roles().admins}


async def say(gid, sender: Messenger, body: bytes, *rest: Messenger):
    """``sender`` sends; each of ``rest`` gets it exactly once, as the next text."""
    before = {id(m): inbox(m, gid) for m in rest}
    await sender.send(gid, body)
    await until(lambda: all(len(inbox(m, gid)) > len(before[id(m)]) for m in rest), *rest)
    for m in rest:
        assert inbox(m, gid) == before[id(m)] + [(str(sender.user_id), body)]


async def refused(status: int, code: str, action):
    with pytest.raises(ProtocolError) as e:
        await action
    assert (e.value.status, e.value.code) == (status, code)


# --- named scenarios ---------------------------------------------------------------------------

@spec("spec/authentication_service/connection_establishment.md#connection-group-creation", "MUST")
@spec("spec/delivery_service.md#join-connection-group", "MAY")
@spec("spec/federation/use_cases.md#user-discovery-and-connection-management", "MUST")
async def test_scenario_connect_by_user_id_and_by_alias(deployment_mode):
    async with Deployment(deployment_mode, HOMESERVERS) as d, d.client() as http:
        alice, bob, carol = await registered(d, http, A, B, C)
        await carol.session.register_alias("carol-on-c." + RUN)
        by_id = await alice.connect(bob.user_id)                     # a.example → b.example, by user id
        by_alias = await bob.connect(alias=(C, "carol-on-c." + RUN))         # b.example → c.example, by alias
        assert await bob.accept_connections() == [by_id]
        assert await carol.accept_connections(alias="carol-on-c." + RUN) == [by_alias]
        await until(lambda: bob.user_id in alice.contacts and carol.user_id in bob.contacts, alice, bob)
        await until(lambda: alice.user_id in bob.contacts and bob.user_id in carol.contacts, bob, carol)
        assert carol.contacts[bob.user_id].client_credential == bob.session.credential
        assert alice.user_id not in carol.contacts and carol.user_id not in alice.contacts    # no connection
        agree(alice, bob, group_id=by_id)
        agree(bob, carol, group_id=by_alias)
        assert member_ids(alice, by_id) == member_ids(bob, by_id) == {str(alice.user_id), str(bob.user_id)}
        # a message each way on both connections
        await say(by_id, alice, b"hello bob", bob)
        await say(by_id, bob, b"hello alice", alice)
        await say(by_alias, bob, b"hello carol", carol)
        await say(by_alias, carol, b"hello bob", bob)
        assert alice.texts.get(by_alias) is None                     # alice is in neither's other connection


@spec("spec/clients/group_interactions.md#inviting-other-users", "informative")
@spec("spec/delivery_service.md#adding-new-users-to-the-group", "MUST")
@spec("spec/delivery_service.md#get-welcome-information", "informative")
async def test_scenario_invite(deployment_mode):
    async with Deployment(deployment_mode, HOMESERVERS) as d, d.client() as http:
        alice, bob, carol, dave = await users(d, http, A, B, C, A)
        gid = await alice.create_group()
        await alice.send(gid, b"before anyone")                       # reaches no one
        await alice.invite(gid, [bob.user_id, carol.user_id])         # two homeservers in one commit
        await until(lambda: gid in bob.groups and gid in carol.groups, bob, carol)
        agree(alice, bob, carol, group_id=gid)
        await say(gid, bob, b"bob here", alice, carol)
        await alice.invite(gid, [dave.user_id])                       # a later invitee sees only what follows
        await until(lambda: gid in dave.groups and all(m.groups[gid].group.epoch == 2 for m in (bob, carol)),
                    bob, carol, dave)
        everyone = [alice, bob, carol, dave]
        agree(*everyone, group_id=gid)
        ids = {str(m.user_id) for m in everyone}
        assert all(member_ids(m, gid) == ids for m in everyone)
        await say(gid, dave, b"dave here", alice, bob, carol)
        assert inbox(dave, gid) == []
        assert inbox(bob, gid) == [(str(dave.user_id), b"dave here")]
        assert inbox(alice, gid) == [(str(bob.user_id), b"bob here"), (str(dave.user_id), b"dave here")]


@spec("spec/delivery_service.md#remove-users", "MUST")
@spec("spec/delivery_service.md#message-distribution", "SHOULD")
async def test_scenario_remove(deployment_mode):
    async with Deployment(deployment_mode, HOMESERVERS) as d, d.client() as http:
        alice, bob, carol = await users(d, http, A, B, C)
        gid = await alice.create_group()
        await alice.invite(gid, [bob.user_id, carol.user_id])
        await until(lambda: gid in bob.groups and gid in carol.groups, bob, carol)
        await refused(403, "not_admin", bob.remove(gid, [carol.user_id]))     # only admins remove
        await alice.remove(gid, [carol.user_id])
        await until(lambda: gid not in carol.groups and bob.groups[gid].group.epoch == 2, bob, carol)
        assert ("removed", gid) in carol.events
        agree(alice, bob, group_id=gid)
        assert member_ids(bob, gid) == {str(alice.user_id), str(bob.user_id)}
        await say(gid, bob, b"carol is gone", alice)
        await trio.sleep(0.2)
        await carol.receive()
        assert inbox(carol, gid) == []                                 # nothing after her removal
        await alice.invite(gid, [carol.user_id])                       # and she can be invited back
        await until(lambda: gid in carol.groups and bob.groups[gid].group.epoch == 3, bob, carol)
        agree(alice, bob, carol, group_id=gid)
        await say(gid, carol, b"back again", alice, bob)


@spec("spec/delivery_service.md#user-self-remove", "MUST")
@spec("spec/delivery_service.md#proposal-store", "MUST")
async def test_scenario_leave(deployment_mode):
    async with Deployment(deployment_mode, HOMESERVERS) as d, d.client() as http:
        alice, bob, carol, dave = await users(d, http, A, B, C, C)
        gid = await alice.create_group()
        await alice.invite(gid, [bob.user_id, carol.user_id])
        await until(lambda: gid in bob.groups and gid in carol.groups, bob, carol)
        await say(gid, bob, b"before carol leaves", alice, carol)
        await carol.leave(gid)                                         # a proposal, not yet a commit
        await until(lambda: all(len(m.groups[gid].group.proposals) == 1 for m in (alice, bob)), alice, bob)
        await refused(409, "proposal_store_not_empty", alice.invite(gid, [dave.user_id]))
        await refused(409, "proposal_store_not_empty", alice.remove(gid, [bob.user_id]))
        await bob.update(gid)                                          # a member's next update commits it
        await until(lambda: gid not in carol.groups and alice.groups[gid].group.epoch == 2, alice, carol)
        assert ("removed", gid) in carol.events
        agree(alice, bob, group_id=gid)
        assert member_ids(alice, gid) == member_ids(bob, gid) == {str(alice.user_id), str(bob.user_id)}
        await alice.invite(gid, [dave.user_id])                        # commits are allowed again
        await until(lambda: gid in dave.groups and bob.groups[gid].group.epoch == 3, bob, dave)
        await say(gid, alice, b"after carol", bob, dave)
        await carol.receive()
        assert inbox(carol, gid) == [(str(bob.user_id), b"before carol leaves")]


@spec("spec/federation/use_cases.md#message-distribution", "informative")
@spec("spec/delivery_service.md#adding-new-users-to-the-group", "MUST")
@spec("spec/delivery_service.md#remove-users", "MUST")
@spec("spec/delivery_service.md#updating-the-sending-clients-own-key-material", "MUST")
@spec("spec/delivery_service.md#user-self-remove", "MUST")
@spec("spec/delivery_service.md#delete-group", "MUST")
@spec("spec/glossary.md#rolesextension", "informative")
async def test_scenario_group_operations_across_three_homeservers(deployment_mode):
    """The group lives on a.example's DS; each step is done by a member of
    another homeserver than the step before, where the admin rules allow."""
    async with Deployment(deployment_mode, HOMESERVERS) as d, d.client() as http:
        ann, ben, cat, cy, bo = await users(d, http, A, B, C, C, B)
        gid = await ann.create_group()                                 # a.example creates
        await ann.invite(gid, [ben.user_id, cat.user_id])
        group = [ann, ben, cat]

        async def settled(epoch, *ms):
            await until(lambda: all(gid in m.groups and m.groups[gid].group.epoch == epoch for m in ms), *ms)
            agree(*ms, group_id=gid)
            ids = {str(m.user_id) for m in ms}
            assert all(member_ids(m, gid) == ids for m in ms)

        await settled(1, *group)
        await ann.set_admins(gid, [ann.user_id, ben.user_id])          # a.example makes ben admin
        await settled(2, *group)
        await ben.invite(gid, [cy.user_id, bo.user_id])                # b.example invites c and b users
        group += [cy, bo]
        await settled(3, *group)
        await ben.set_admins(gid, [ann.user_id, ben.user_id, cat.user_id])
        await settled(4, *group)
        assert all(admin_ids(m, gid) == {str(ann.user_id), str(ben.user_id), str(cat.user_id)} for m in group)
        await cat.remove(gid, [bo.user_id])                            # c.example removes a b.example user
        group.remove(bo)
        await settled(5, *group)
        await until(lambda: gid not in bo.groups, bo)
        await cy.update(gid)                                           # c.example updates
        await settled(6, *group)
        await ben.leave(gid)                                           # b.example leaves, an admin ...
        await until(lambda: all(len(m.groups[gid].group.proposals) == 1 for m in (ann, cat, cy)), ann, cat, cy)
        await ann.update(gid)                                          # ... a.example commits it
        group.remove(ben)
        await settled(7, *group)
        await until(lambda: gid not in ben.groups, ben)
        assert all(admin_ids(m, gid) == {str(ann.user_id), str(cat.user_id)} for m in group)
        for m in group:                                                # a text from each homeserver
            await say(gid, m, f"from {m.domain}".encode(), *[o for o in group if o is not m])
        await cat.delete_group(gid)                                    # c.example deletes a.example's group
        await until(lambda: gid not in ann.groups and gid not in cy.groups, ann, cy)
        assert ("removed", gid) in ann.events and ("removed", gid) in cy.events


# --- the random walk ---------------------------------------------------------------------------

WALK_DOMAINS = [A, B, C] * 3 + [A]          # 10 users: 4 on a.example, 3 on b.example, 3 on c.example
WALK_OPS = 100
CI_SEEDS = range(20)
SOCKETS_SEED = 1000
LONG_SEEDS = range(500)
SETTLE_TIMEOUT_S = 20


def walk_seeds(default) -> list[int]:
    """``default``, or the seeds a replay names: ``PHOENIX_WALK_SEED=<n>``
    (that seed alone) or ``PHOENIX_WALK_SEEDS=<first>-<last>`` (those seeds
    one after the other in one deployment, as the many-seed runs walk them,
    for a failure that needs what earlier seeds left behind)."""
    one, run = os.environ.get("PHOENIX_WALK_SEED"), os.environ.get("PHOENIX_WALK_SEEDS")
    if one:
        return [int(one)]
    if run:
        first, _, last = run.partition("-")
        return list(range(int(first), int(last or first) + 1))
    return list(default)


def replaying() -> bool:
    return bool(os.environ.get("PHOENIX_WALK_SEED") or os.environ.get("PHOENIX_WALK_SEEDS"))


@dataclass
class Walk:
    """One group, its expected state and the operations done to it."""
    seed: int
    us: list[Messenger]
    gid: GroupId | None = None
    members: set[int] = field(default_factory=set)
    admins: set[int] = field(default_factory=set)
    #: members whose self-remove waits in the proposal store
    pending: set[int] = field(default_factory=set)
    epoch: int = 0
    inbox: dict[int, list[tuple[str, bytes]]] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        self.rng = random.Random(self.seed)
        self.inbox = {i: [] for i in range(len(self.us))}

    def uid(self, i: int) -> str:
        return str(self.us[i].user_id)

    def name(self, i: int) -> str:
        return f"u{i}@{self.us[i].domain}"

    # --- choosing --------------------------------------------------------------------------------

    def choices(self) -> list[tuple[int, str]]:
        """(weight, operation) of what may come next: mostly legal, some refused."""
        outside = [i for i in range(len(self.us)) if i not in self.members]
        non_admins = self.members - self.admins
        out = []
        if self.pending:
            # the DS takes no commit but an update that commits the store; and
            # whoever saw the proposal commits before sending (RFC 9420 §12.4)
            out += [(7, "commit_pending"), (2, "refused_pending")]
            if (self.admins - self.pending) and (self.members - self.admins - self.pending):
                out.append((2, "promote_pending"))    # an update with a roles change commits it too
        else:
            out += [(30, "send"), (12, "update"), (10, "remove") if len(self.members) > 1 else (0, ""),
                    (14, "join") if outside else (0, ""), (6, "add") if len(outside) >= 2 else (0, ""),
                    (4, "promote") if non_admins else (0, ""), (6, "refused_not_admin") if non_admins else (0, "")]
        if self.leavers():
            out.append((10 if not self.pending else 1, "leave"))
        return [c for c in out if c[0]]

    def leavers(self) -> list[int]:
        """Members who may leave: someone not leaving stays to commit it, and an admin."""
        staying = self.members - self.pending
        out = []
        for i in sorted(staying):
            if len(staying) > 1 and (i not in self.admins or (self.admins & staying) - {i}):
                out.append(i)
        return out

    def pick(self, pool) -> int:
        return self.rng.choice(sorted(pool))

    # --- running ---------------------------------------------------------------------------------

    async def start(self):
        creator = self.rng.randrange(len(self.us))
        self.gid = await self.us[creator].create_group()
        self.members, self.admins = {creator}, {creator}
        self.log.append(f"{self.name(creator)} creates {self.gid}")

    async def step(self, n: int):
        weights, kinds = zip(*self.choices())
        kind = self.rng.choices(kinds, weights)[0]
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        before = set(self.members)
        actor = await getattr(self, f"op_{kind}")(n)
        # who has something new to dequeue: the members of the epoch but the
        # actor, and the invited; a refused request (actor None) sent nothing
        await self.settle((before | self.members) - {actor} if actor is not None else set())

    async def op_send(self, n):
        i = self.pick(self.members)
        body = f"seed {self.seed} step {n}".encode()
        self.log.append(f"{self.name(i)} sends {body!r}")
        await self.us[i].send(self.gid, body)
        for j in self.members - {i}:
            self.inbox[j].append((self.uid(i), body))
        return i

    async def op_update(self, n):
        i = self.pick(self.members)
        self.log.append(f"{self.name(i)} updates")
        await self.us[i].update(self.gid)
        self.epoch += 1
        return i

    async def op_commit_pending(self, n):
        i = self.pick(self.members - self.pending)
        self.log.append(f"{self.name(i)} updates, committing the self-removes of {sorted(self.pending)}")
        await self.us[i].update(self.gid)
        self.epoch += 1
        self.members -= self.pending
        self.admins -= self.pending
        self.pending = set()
        return i

    async def op_promote_pending(self, n):
        i = self.pick(self.admins - self.pending)
        new = self.pick(self.members - self.admins - self.pending)
        self.log.append(f"{self.name(i)} makes {self.name(new)} an admin, committing the self-removes of "
                        f"{sorted(self.pending)}")
        admins = (self.admins - self.pending) | {new}
        await self.us[i].set_admins(self.gid, [self.us[j].user_id for j in sorted(admins)])
        self.epoch += 1
        self.members -= self.pending
        self.admins = admins
        self.pending = set()
        return i

    async def _invite(self, count: int):
        i = self.pick(self.admins)
        new = self.rng.sample(sorted(set(range(len(self.us))) - self.members), count)
        self.log.append(f"{self.name(i)} invites {[self.name(j) for j in new]}")
        await self.us[i].invite(self.gid, [self.us[j].user_id for j in new])
        self.epoch += 1
        self.members |= set(new)
        return i

    async def op_join(self, n):
        return await self._invite(1)

    async def op_add(self, n):
        outside = len(self.us) - len(self.members)
        return await self._invite(self.rng.randint(2, min(3, outside)))

    async def op_remove(self, n):
        i = self.pick(self.admins)
        others = sorted(self.members - {i})
        gone = self.rng.sample(others, self.rng.randint(1, min(2, len(others))))
        self.log.append(f"{self.name(i)} removes {[self.name(j) for j in gone]}")
        await self.us[i].remove(self.gid, [self.us[j].user_id for j in gone])
        self.epoch += 1
        self.members -= set(gone)
        self.admins -= set(gone)
        return i

    async def op_promote(self, n):
        i = self.pick(self.admins)
        new = self.pick(self.members - self.admins)
        self.log.append(f"{self.name(i)} makes {self.name(new)} an admin")
        await self.us[i].set_admins(self.gid, [self.us[j].user_id for j in sorted(self.admins | {new})])
        self.epoch += 1
        self.admins.add(new)
        return i

    async def op_leave(self, n):
        i = self.pick(self.leavers())
        self.log.append(f"{self.name(i)} leaves")
        await self.us[i].leave(self.gid)
        self.pending.add(i)
        return i

    async def op_refused_not_admin(self, n):
        i = self.pick(self.members - self.admins)
        what = self.rng.choice(["invite", "remove", "promote"])
        self.log.append(f"{self.name(i)} (no admin) tries to {what}: refused")
        m = self.us[i]
        if what == "invite":
            outside = sorted(set(range(len(self.us))) - self.members)
            action = m.invite(self.gid, [self.us[self.pick(outside)].user_id]) if outside else \
                m.remove(self.gid, [self.us[self.pick(self.members - {i})].user_id])
        elif what == "remove":
            action = m.remove(self.gid, [self.us[self.pick(self.members - {i})].user_id])
        else:
            action = m.set_admins(self.gid, [self.us[j].user_id for j in sorted(self.admins | {i})])
        await self.expect_refusal(action, 403, "not_admin")

    async def op_refused_pending(self, n):
        i = self.pick(self.members - self.pending)
        m = self.us[i]
        outside = sorted(set(range(len(self.us))) - self.members)
        if outside and self.rng.random() < 0.5:
            self.log.append(f"{self.name(i)} tries to invite with a proposal pending: refused")
            action = m.invite(self.gid, [self.us[self.pick(outside)].user_id])
        else:
            self.log.append(f"{self.name(i)} tries to remove with a proposal pending: refused")
            action = m.remove(self.gid, [self.us[self.pick(self.members - {i})].user_id])
        await self.expect_refusal(action, 409, "proposal_store_not_empty")

    async def expect_refusal(self, action, status: int, code: str):
        try:
            await action
        except ProtocolError as e:
            assert (e.status, e.code) == (status, code), f"refused with {e.status} {e.code}: {e.message}"
        else:
            raise AssertionError(f"the DS took it; expected {status} {code}")

    async def finish(self):
        """Commit what is pending, then an admin deletes the group; nothing
        but the expected texts reached anyone, members or not."""
        if self.pending:
            await self.op_commit_pending(WALK_OPS)
            await self.settle(set(range(len(self.us))))
        i = self.pick(self.admins)
        self.log.append(f"{self.name(i)} deletes the group")
        await self.us[i].delete_group(self.gid)
        self.members, self.admins = set(), set()
        await self.settle(set(range(len(self.us))))
        await trio.sleep(0.05)
        for m in self.us:
            await m.receive()
        assert not self.problems(), self.problems()

    # --- checking --------------------------------------------------------------------------------

    def waiting(self) -> bool:
        """Something expected has not arrived yet at someone."""
        for i in range(len(self.us)):
            m = self.us[i]
            if len(inbox(m, self.gid)) < len(self.inbox[i]):
                return True
            if i in self.members:
                if self.gid not in m.groups:
                    return True
                g = m.groups[self.gid].group
                if g.epoch < self.epoch or (g.epoch == self.epoch and len(g.proposals) < len(self.pending)):
                    return True
            elif self.gid in m.groups:
                return True
        return False

    def names(self, user_ids) -> list[str]:
        by_id = {self.uid(i): self.name(i) for i in range(len(self.us))}
        return sorted(by_id.get(u, u) for u in user_ids)

    def problems(self) -> list[str]:
        """How what every user holds differs from what the walk expects."""
        out = []
        uids = {self.uid(j) for j in self.members}
        admins = {self.uid(j) for j in self.admins}
        authenticators = set()
        for i in range(len(self.us)):
            m, who = self.us[i], self.name(i)
            if inbox(m, self.gid) != self.inbox[i]:
                out.append(f"{who} has texts {inbox(m, self.gid)}, expected {self.inbox[i]}")
            if i not in self.members:
                if self.gid in m.groups:
                    out.append(f"{who} still holds the group")
                continue
            if self.gid not in m.groups:
                out.append(f"{who} is not in the group")
                continue
            g = m.groups[self.gid].group
            if g.epoch != self.epoch:
                out.append(f"{who} is in epoch {g.epoch}, expected {self.epoch}")
            if len(g.proposals) != len(self.pending):
                out.append(f"{who} holds {len(g.proposals)} proposals, expected {len(self.pending)}")
            if member_ids(m, self.gid) != uids:
                out.append(f"{who} sees members {self.names(member_ids(m, self.gid))}, expected {self.names(uids)}")
            if len(list(g.tree.leaves())) != len(self.members):
                out.append(f"{who} has {len(list(g.tree.leaves()))} leaves, expected {len(self.members)}")
            if admin_ids(m, self.gid) != admins:
                out.append(f"{who} sees admins {self.names(admin_ids(m, self.gid))}, expected {self.names(admins)}")
            authenticators.add(g.epoch_authenticator)
        if len(authenticators) > 1:
            out.append(f"{len(authenticators)} different epoch authenticators")
        return out

    async def settle(self, polled: set[int]):
        """Receive at ``polled`` (whoever should have got something) until
        nothing expected is missing, then check every user. What reaches
        someone the walk did not expect shows when that user is polled next,
        at the latest in :meth:`finish`, which polls everyone."""
        ms = [self.us[i] for i in sorted(polled)]
        deadline = trio.current_time() + SETTLE_TIMEOUT_S
        while True:
            async with trio.open_nursery() as nursery:
                for m in ms:
                    nursery.start_soon(m.receive)
            if not self.waiting() or trio.current_time() > deadline:
                break
            await trio.sleep(0.005)
        problems = self.problems()
        assert not problems, "\n".join(problems)


async def run_walk(seed: int, us: list[Messenger], first_seed: int | None = None) -> Walk:
    """One seed's walk; ``first_seed`` is the first seed walked among the
    same users before it (for the replay line of a failure)."""
    walk = Walk(seed, us)
    step = "start"
    try:
        await walk.start()
        await walk.settle(walk.members)
        for step in range(WALK_OPS):
            await walk.step(step)
        step = "finish"
        await walk.finish()
    except Exception as e:
        trail = "\n  ".join(walk.log[-12:])
        message = (f"random walk seed {seed} failed at step {step}: {type(e).__name__}: {e}\n"
                   f"replay with: PHOENIX_WALK_SEED={seed} pytest spec_tests/test_scenarios.py -k walk\n"
                   + ("" if first_seed in (None, seed) else
                      f"or, with what the seeds before it left: PHOENIX_WALK_SEEDS={first_seed}-{seed} "
                      f"pytest spec_tests/test_scenarios.py -k walk_in_process\n") +
                   f"last operations:\n  {trail}")
        print(message)
        raise AssertionError(message) from e
    return walk


#: Each client request spends a Privacy Pass token; a walk spends a few
#: hundred per user, and a long run's clock (below) stays within one day's
#: time frame, so the allowances per client and per other homeserver are
#: raised (their limits are tested elsewhere).
WALK_LIMITS = Limits(token_allowance=1_000_000, token_domain_allowance=10_000_000)

#: How far the shared clock moves after each seed. The clock stands still
#: during a walk, and the QS's rate limits count per minute
#: (``spec/queuing_service.md#rate-limiting``: by default 600 messages a
#: minute per client queue config): without time passing, the 7th or so
#: seed among the same users would meet a 429 whose Retry-After never ends.
#: A minute per seed is about what a seed takes on a real deployment.
CLOCK_PER_SEED_MS = 60_000


async def walk_many(mode: str, seeds: list[int]):
    """Every seed walks its own group, among the same ten users."""
    async with Deployment(mode, HOMESERVERS, limits=WALK_LIMITS) as d, d.client() as http:
        us = await users(d, http, *WALK_DOMAINS)
        kinds: dict[str, int] = {}
        started = time.perf_counter()
        for seed in seeds:
            walk = await run_walk(seed, us, first_seed=seeds[0])
            if d.mode != TARGET:   # a target's clock is the real one, which moves by itself
                d.clock.advance(CLOCK_PER_SEED_MS)
            for k, v in walk.kinds.items():
                kinds[k] = kinds.get(k, 0) + v
            print(f"seed {seed} passed ({time.perf_counter() - started:.0f} s)", flush=True)   # progress under -s
        print(f"{len(seeds)} walks of {WALK_OPS} operations ({mode}) in {time.perf_counter() - started:.1f} s: "
              f"{dict(sorted(kinds.items()))}")
        return kinds


@spec("spec/delivery_service.md#validation", "informative")
@spec("spec/delivery_service.md#message-distribution", "SHOULD")
@spec("spec/delivery_service.md#proposal-store", "MUST")
@spec("spec/delivery_service.md#adding-new-users-to-the-group", "MUST")
@spec("spec/delivery_service.md#remove-users", "MUST")
@spec("spec/delivery_service.md#user-self-remove", "MUST")
@spec("spec/delivery_service.md#updating-the-sending-clients-own-key-material", "MUST")
@spec("spec/delivery_service.md#send-application-message", "informative")
@spec("spec/delivery_service.md#delete-group", "MUST")
@spec("spec/federation/use_cases.md#message-distribution", "informative")
@pytest.mark.needs_control("phoenix_ref homeservers in this process (test_random_walk_over_tls walks a target)")
async def test_random_walk_in_process():
    kinds = await walk_many("in_process", walk_seeds(CI_SEEDS))
    if not replaying():      # the seeds reach every kind of operation
        assert set(kinds) == {"send", "update", "join", "add", "remove", "promote", "leave", "commit_pending",
                              "promote_pending", "refused_not_admin", "refused_pending"}


@spec("spec/delivery_service.md#validation", "informative")
@spec("spec/delivery_service.md#message-distribution", "SHOULD")
@spec("spec/delivery_service.md#proposal-store", "MUST")
@spec("spec/delivery_service.md#adding-new-users-to-the-group", "MUST")
@spec("spec/delivery_service.md#remove-users", "MUST")
@spec("spec/delivery_service.md#user-self-remove", "MUST")
@spec("spec/delivery_service.md#updating-the-sending-clients-own-key-material", "MUST")
@spec("spec/delivery_service.md#send-application-message", "informative")
@spec("spec/delivery_service.md#delete-group", "MUST")
@spec("spec/federation/use_cases.md#message-distribution", "informative")
async def test_random_walk_over_tls(request):
    """One seed over real TLS: phoenix_ref on sockets, or the target in target mode."""
    over = "target" if deployment_modes(request.config) == (TARGET,) else "sockets"
    await walk_many(over, walk_seeds([SOCKETS_SEED]))


@pytest.mark.slow
@pytest.mark.needs_control("phoenix_ref homeservers in this process (test_random_walk_over_tls walks a target)")
@spec("spec/delivery_service.md#validation", "informative")
@spec("spec/delivery_service.md#message-distribution", "SHOULD")
@spec("spec/delivery_service.md#proposal-store", "MUST")
@spec("spec/delivery_service.md#adding-new-users-to-the-group", "MUST")
@spec("spec/delivery_service.md#remove-users", "MUST")
@spec("spec/delivery_service.md#user-self-remove", "MUST")
@spec("spec/delivery_service.md#updating-the-sending-clients-own-key-material", "MUST")
@spec("spec/delivery_service.md#send-application-message", "informative")
@spec("spec/delivery_service.md#delete-group", "MUST")
@spec("spec/federation/use_cases.md#message-distribution", "informative")
async def test_random_walk_long_run():
    await walk_many("in_process", walk_seeds(LONG_SEEDS))
