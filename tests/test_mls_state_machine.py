"""Random sequences of group operations (hypothesis state machine): create,
add, remove, update (by reference), external join, application messages —
every Commit validated and applied by the DS's public view first. After every
step all members and the DS agree on epoch and tree hash, all members on the
epoch authenticator; every member decrypts every application message."""

from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from phoenix_ref.crypto import SigningKey
from phoenix_ref.mls.group import ApplicationMessage, Group, ProposalMessage
from phoenix_ref.mls.messages import Credential
from phoenix_ref.mls.public_group import PublicGroup

MIN_MEMBERS = 3


class GroupMachine(RuleBasedStateMachine):
    counter = 0

    def _identity(self):
        GroupMachine.counter += 1
        return SigningKey.generate(), Credential.basic(b"client-%d" % GroupMachine.counter)

    @initialize(n=st.integers(min_value=MIN_MEMBERS, max_value=5))
    def create(self, n):
        creator = Group.create(*self._identity())
        self.ds = PublicGroup.from_group_info(creator.group_info(), creator.tree)
        self.members = [creator]
        self._commit(creator, adds=[self._new_kp() for _ in range(n - 1)])

    def _new_kp(self):
        b = Group.make_key_package(*self._identity())
        self.waiting = getattr(self, "waiting", []) + [b]
        return b.key_package

    def _commit(self, committer, **kw):
        res = committer.commit(**kw)
        self.ds.process_commit(res.message, res.group_info.signature, res.group_info.extensions)
        committer.merge_pending_commit()
        for g in self.members:
            if g is not committer:
                g.process(res.message)
        self.members = [g for g in self.members if g.active]
        if res.welcome is not None:
            self.members += [Group.join_from_welcome(res.welcome, b, ratchet_tree=self.ds.tree)
                             for b in self.waiting]
        self.waiting = []

    def _pick(self, i):
        return self.members[i % len(self.members)]

    @rule(i=st.integers(0, 100), k=st.integers(1, 2))
    def add(self, i, k):
        self._commit(self._pick(i), adds=[self._new_kp() for _ in range(k)], path=bool(i % 2))

    @precondition(lambda self: len(self.members) > MIN_MEMBERS)
    @rule(i=st.integers(0, 100), j=st.integers(0, 100))
    def remove(self, i, j):
        committer = self._pick(i)
        others = [g for g in self.members if g is not committer]
        victim = others[j % len(others)]
        self._commit(committer, removes=[victim.leaf_index])

    @rule(i=st.integers(0, 100), j=st.integers(0, 100))
    def update(self, i, j):
        updater = self._pick(i)
        committer = self._pick(j)
        if updater is committer:
            self._commit(committer)  # an empty Commit refreshes the committer's path
            return
        # a PublicMessage, so that the DS can keep it in its proposal store
        prop = updater.propose_update()
        self.ds.process_proposal(prop)
        for g in self.members:
            if g is not updater:
                assert isinstance(g.process(prop), ProposalMessage)
        self._commit(committer)

    @rule(i=st.integers(0, 100))
    def external_join(self, i):
        gi = self.ds.group_info
        joiner, msg = Group.join_by_external_commit(gi, *self._identity(), ratchet_tree=self.ds.tree)
        own = joiner.group_info()
        self.ds.process_commit(msg, own.signature, own.extensions)
        for g in self.members:
            g.process(msg)
        self.members.append(joiner)

    @rule(i=st.integers(0, 100), data=st.binary(max_size=64))
    def application_message(self, i, data):
        sender = self._pick(i)
        msg = sender.encrypt(data)
        for g in self.members:
            if g is not sender:
                assert g.process(msg) == ApplicationMessage(sender.leaf_index, data, b"")

    @invariant()
    def agree(self):
        if not hasattr(self, "ds"):
            return
        assert len(self.members) >= MIN_MEMBERS
        assert {g.epoch for g in self.members} == {self.ds.epoch}
        assert {g.tree.tree_hash() for g in self.members} == {self.ds.tree.tree_hash()}
        assert len({g.epoch_authenticator for g in self.members}) == 1
        assert sorted(g.leaf_index for g in self.members) == [i for i, _ in self.ds.tree.leaves()]


GroupMachine.TestCase.settings = settings(max_examples=25, stateful_step_count=12, deadline=None,
                                          suppress_health_check=[HealthCheck.too_slow])
TestGroupStateMachine = GroupMachine.TestCase
