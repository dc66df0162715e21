"""The DS core without IO (``phoenix_ref/delivery/core.py``): state encoding
and encryption at rest, and refusals the black-box tests cannot easily
provoke (a client library builds valid requests)."""

from __future__ import annotations

import dataclasses

import pytest

from phoenix_ref.auth_tokens import DsKeyPackageRef, ScopeMismatch
from phoenix_ref.client.groups import GroupMember, signed_request
from phoenix_ref.client.phoenix_credentials import (
    CredentialInformation, make_add_package, new_leaf_identity, new_symmetric_key,
)
from phoenix_ref.clock import FixedClock
from phoenix_ref.crypto import SigningKey
from phoenix_ref.delivery import messages as m
from phoenix_ref.delivery.core import DsConfig, DsCore, GroupRow
from phoenix_ref.delivery.group_state import WrongEarKey, open_state, seal_state
from phoenix_ref.errors import Forbidden, Malformed, NotFound, ProtocolError
from phoenix_ref.ids import Fqdn, GroupId
from phoenix_ref.mls.extensions import ClientQueueConfig as ExtConfig
from phoenix_ref.mls.extensions import RolesExtension, set_extension
from phoenix_ref.mls.group import Group
from phoenix_ref.mls.keypackage import create_key_package
from phoenix_ref.mls.messages import make_key_package_ref
from phoenix_ref.mls.tree import RatchetTree
from phoenix_ref.queuing.messages import ClientQueueConfig
from phoenix_ref.spec_plugin import spec
from tests.test_credentials import T0, Issuer

A = Fqdn("a.example")
CONFIG = ClientQueueConfig(A, b"sealed config of a client")


@pytest.fixture(scope="module")
def issuer():
    return Issuer.make(A)


class World:
    """One DS, its stored rows, and clients that talk to it through the core."""

    def __init__(self, issuer):
        self.clock = FixedClock(T0)
        self.ds_key = SigningKey.generate()
        self.core = DsCore(DsConfig(A), [self.ds_key])
        self.issuer = issuer
        self.rows: dict[GroupId, GroupRow] = {}

    def client(self):
        key, cred = self.issuer.client()
        return key, cred

    def leaf(self):
        key, cred = self.client()
        return new_leaf_identity(key, cred, self.clock.now_ms()), cred, key

    def store(self, gid, outcome):
        if outcome.delete_group:
            self.rows.pop(gid, None)
        elif outcome.sealed_state is not None:
            old = self.rows.get(gid)
            self.rows[gid] = GroupRow(outcome.sealed_state, outcome.queue_id_key or old.queue_id_key)

    def create(self):
        leaf, cred, _ = self.leaf()
        gid = self.core.request_group_id()
        member = GroupMember.create(gid, leaf, cred, self.ds_key.public, self.clock)
        req = member.create_group_request(CONFIG)
        self.store(gid, self.core.create_group(req.body, True, self.clock.now_ms()))
        return gid, member

    def call(self, member, request):
        handler = getattr(self.core, request.name.removeprefix("ds_"))
        try:
            outcome = handler(request.body, self.rows.get(member.group_id), self.clock.now_ms())
        except ProtocolError:
            member.refused(request)
            raise
        self.store(member.group_id, outcome)
        if outcome.error is not None:
            member.refused(request)
            raise outcome.error
        member.accepted(request)
        return outcome


@pytest.fixture
def world(issuer):
    return World(issuer)


def add_package(world, **kw):
    leaf, cred, _ = world.leaf()
    fkey = new_symmetric_key()
    package, bundle = make_add_package(leaf, cred, fkey, ExtConfig(b"a.example", b"config of the joiner"),
                                       world.clock.now_ms(), **kw)
    return package, CredentialInformation(cred, leaf.signature_encryption_key), fkey, bundle


@spec("spec/delivery_service/group_state_encryption.md#encryption-at-rest-ear", "informative")
def test_state_round_trips_and_opens_only_with_its_key_and_row(world):
    gid, member = world.create()
    row = world.rows[gid]
    st = open_state(gid, row.sealed_state, member.ear_key)
    assert st.to_bytes() == open_state(gid, seal_state(st, member.ear_key), member.ear_key).to_bytes()
    with pytest.raises(WrongEarKey):
        open_state(gid, row.sealed_state, bytes(16))
    with pytest.raises(WrongEarKey):               # sealed for another group's row
        open_state(GroupId.random(A), row.sealed_state, member.ear_key)


@spec("spec/delivery_service/group_state_encryption.md#encryption-at-rest-ear", "informative")
def test_states_in_one_bucket_have_equal_sizes(world):
    gid1, m1 = world.create()
    gid2, m2 = world.create()
    package, info, fkey, _ = add_package(world)
    key, cred = world.client()
    world.call(m2, m2.add_request([(package, info, fkey)], key, cred.client_id))
    assert len(world.rows[gid1].sealed_state) == len(world.rows[gid2].sealed_state) == 12 + 4096 + 16


@spec("spec/delivery_service.md#create-group", "informative")
def test_create_group_refusals(world):
    leaf, cred, _ = world.leaf()
    gid = world.core.request_group_id()
    member = GroupMember.create(gid, leaf, cred, world.ds_key.public, world.clock)
    req = member.create_group_request(CONFIG).body
    now = world.clock.now_ms()
    with pytest.raises(NotFound):                       # no placeholder
        world.core.create_group(req, False, now)
    other = GroupId.random("b.example")
    with pytest.raises(Forbidden):                      # a group of another DS
        world.core.create_group(dataclasses.replace(req, params=dataclasses.replace(req.params, group_id=other)),
                                True, now)
    stranger = SigningKey.generate()                    # the DS is not the external sender
    m2 = GroupMember.create(gid, leaf, cred, stranger.public, world.clock)
    with pytest.raises(Malformed) as e:
        world.core.create_group(m2.create_group_request(CONFIG).body, True, now)
    assert e.value.code == "missing_external_sender"
    roles = set_extension(member.group.group_context.extensions, RolesExtension([0, 1], []))
    g3 = Group.create(leaf.signing_key, leaf.mls_credential, group_id=gid.to_mls(), extensions=roles,
                      clock=world.clock)
    m3 = dataclasses.replace(member, group=g3)
    with pytest.raises(Malformed) as e:
        world.core.create_group(m3.create_group_request(CONFIG).body, True, now)
    assert e.value.code == "bad_roles"
    assert world.core.create_group(req, True, now).sealed_state is not None


@spec("spec/delivery_service.md#adding-new-users-to-the-group", "MUST")
def test_added_key_packages_need_a_queue_config_and_youth(world):
    world.core = DsCore(DsConfig(A, max_key_package_age_days=1), [world.ds_key])
    gid, member = world.create()
    key, cred = world.client()
    package, info, fkey, _ = add_package(world)
    world.clock.advance(2 * 24 * 3600 * 1000)          # older than the maximal KeyPackage age (A9)
    with pytest.raises(Malformed) as e:
        world.call(member, member.add_request([(package, info, fkey)], key, cred.client_id))
    assert e.value.code == "key_package_too_old"
    assert member.group.epoch == 0 and member.group.pending_commit is None
    leaf, cred2, _ = world.leaf()                      # a KeyPackage without a QueueConfig extension
    bare = create_key_package(leaf.signing_key, leaf.mls_credential, now=world.clock.now_ms() // 1000)
    package = dataclasses.replace(package, key_package=bare.key_package)
    with pytest.raises(Malformed) as e:
        world.call(member, member.add_request([(package, CredentialInformation(cred2, leaf.signature_encryption_key),
                                                fkey)], key, cred.client_id))
    assert e.value.code == "missing_queue_config"
    assert open_state(gid, world.rows[gid].sealed_state, member.ear_key).public.epoch == 0


@spec("spec/delivery_service.md#get-welcome-information", "informative")
def test_welcome_information_needs_the_joiners_key_package_ref(world):
    gid, member = world.create()
    key, cred = world.client()
    package, info, fkey, bundle = add_package(world)
    world.call(member, member.add_request([(package, info, fkey)], key, cred.client_id))
    now = world.clock.now_ms()
    params = m.WelcomeInfoParams(gid, member.ear_key, member.group.epoch)
    ok = signed_request("ds_welcome_info", params, gid, bundle.signing_key,
                        DsKeyPackageRef(make_key_package_ref(bundle.key_package)), now)
    answer = world.core.welcome_info(ok.body, world.rows[gid], now)
    assert [c.leaf_index for c in answer.credential_chains] == [0, 1]
    wrong_kind = member._request("ds_welcome_info", params)          # a LeafIndex sender
    with pytest.raises(ScopeMismatch):
        world.core.welcome_info(wrong_kind.body, world.rows[gid], now)
    stale = dataclasses.replace(params, epoch=0)
    req = signed_request("ds_welcome_info", stale, gid, bundle.signing_key, ok.body.auth.sender_id, now)
    with pytest.raises(NotFound):
        world.core.welcome_info(req.body, world.rows[gid], now)


@spec("spec/delivery_service.md#updating-the-sending-clients-own-key-material", "MUST")
@spec("spec/delivery_service.md#ds-state", "informative")
def test_a_joiners_update_drops_its_past_state(world):
    gid, member = world.create()
    key, cred = world.client()
    package, info, fkey, bundle = add_package(world)
    request = member.add_request([(package, info, fkey)], key, cred.client_id)
    welcome = request.body.params.welcome
    world.call(member, request)
    now = world.clock.now_ms()
    ref = DsKeyPackageRef(make_key_package_ref(bundle.key_package))
    params = m.WelcomeInfoParams(gid, member.ear_key, member.group.epoch)
    answer = world.core.welcome_info(signed_request("ds_welcome_info", params, gid, bundle.signing_key, ref,
                                                    now).body, world.rows[gid], now)
    joiner_group = Group.join_from_welcome(welcome, bundle, ratchet_tree=RatchetTree.from_nodes(answer.public_tree),
                                           clock=world.clock)
    leaf_identity = dataclasses.replace(member.leaf, signing_key=bundle.signing_key)
    joiner = GroupMember(gid, joiner_group, leaf_identity, member.ear_key, member.credential_key, world.clock,
                         members=dict(member.members))
    world.call(joiner, joiner.update_request())          # E18: the joiner committed
    with pytest.raises(NotFound):
        world.core.welcome_info(signed_request("ds_welcome_info", params, gid, bundle.signing_key, ref,
                                               now).body, world.rows[gid], now)


@spec("spec/delivery_service.md#ds-induced-removals", "informative")
@spec("spec/federation/use_cases.md#authentication-key-distribution", "informative")
def test_ds_removals_still_work_after_the_ds_key_rotated(world):
    gid, member = world.create()
    key, cred = world.client()
    package, info, fkey, _ = add_package(world)
    world.call(member, member.add_request([(package, info, fkey)], key, cred.client_id))
    old = world.ds_key
    world.core = DsCore(DsConfig(A, max_inactivity_days=1), [SigningKey.generate(), old])   # rotated: new first
    world.clock.advance(3 * 24 * 3600 * 1000)
    outcome = world.call(member, member.send_request(b"anyone?"))
    removals = [fo.message_content for fo in outcome.fan_outs
                if type(fo.message_content).__name__ == "ClientInactivityRemoval"]
    assert len(removals) == 1
    proposal = removals[0].proposals[0]
    assert proposal.public_message.content.sender.sender_index == 0     # the group's one external sender: old key
    member.group.process(proposal)                                       # a member verifies it with that key
    assert len(member.group.proposals) == 1


def group_of(world, n):
    gid, member = world.create()
    key, cred = world.client()
    packages = [add_package(world)[:3] for _ in range(n - 1)]
    world.call(member, member.add_request(packages, key, cred.client_id))
    return gid, member


@spec("spec/delivery_service/group_state_encryption.md#encryption-at-rest-ear", "informative")
@spec("spec/delivery_service.md#ds-configuration-options", "informative")
def test_padding_buckets_follow_the_configured_decile(world):
    small, m3 = group_of(world, 3)
    large, m9 = group_of(world, 9)
    sizes = {g: len(world.rows[g].sealed_state) for g in (small, large)}
    assert sizes[small] < sizes[large]                   # the 4096-byte floor does not hide 9 members
    bucket = world.core.set_bucket(list(sizes.values()))  # decile 8 of two groups: the larger one
    for gid, member in ((small, m3), (large, m9)):
        world.call(member, member.update_request())        # the next write pads to the new bucket
    assert len(world.rows[small].sealed_state) == len(world.rows[large].sealed_state) == bucket + 28
    huge, m20 = group_of(world, 20)                        # past the bucket: the next multiple
    n = len(world.rows[huge].sealed_state) - 28
    assert n % bucket == 0 and n >= 2 * bucket
