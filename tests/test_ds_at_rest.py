"""The DS keeps a group's state only under the group's EAR key
(``spec/delivery_service/group_state_encryption.md``): after a group's life
on three homeservers, the DS's database files hold none of the group's tree,
GroupInfo or credential bytes — only the plaintext the spec allows (the
group id is found, which shows the scan looks in the right place)."""

from __future__ import annotations

from pathlib import Path

from phoenix_ref.codec import encode
from phoenix_ref.client.phoenix_credentials import leaf_credential_of
from phoenix_ref.spec_plugin import spec
from phoenix_ref.testing import Deployment
from spec_tests.test_ds_groups import A, B, C, chat, trio_of_members


def _ds_files(node) -> list[Path]:
    return sorted(p for p in Path(node.config.data_dir).glob("ds.sqlite3*") if p.is_file())


@spec("spec/delivery_service/group_state_encryption.md#group-state-encryption", "informative")
@spec("threat_model/stride/security_requirements.md#metadata-minimalism", "MUST")
async def test_the_ds_database_holds_no_group_secrets_in_the_clear():
    async with Deployment("in_process", ["hs1", "hs2", "hs3"]) as d, d.client() as http:
        gid, members = await trio_of_members(d, http, (A, B, C))
        await members[1].update(gid)
        for m in members:
            await m.receive()
        await chat(gid, *members)
        group = members[0].groups[gid].group
        needles = {"tree hash": group.group_context.tree_hash,
                   "confirmed transcript hash": group.group_context.confirmed_transcript_hash,
                   "ratchet tree": group.tree.to_bytes()[:64]}
        for i, leaf in group.tree.leaves():
            needles[f"leaf {i} signature key"] = bytes(leaf.signature_key)
            needles[f"leaf {i} encryption key"] = bytes(leaf.encryption_key)
            needles[f"leaf {i} pseudonym"] = bytes(leaf_credential_of(leaf).identity)
        for m in members:
            needles[f"{m.user_id} client credential"] = encode(m.session.credential)
            needles[f"{m.user_id} credential key"] = bytes(m.session.credential.public_key)
        files = _ds_files(d["hs1"])
        assert files, "no DS database files"
        blobs = b"".join(p.read_bytes() for p in files)
        assert gid.group_uuid.bytes in blobs          # plaintext the spec allows: the scan sees the rows
        found = [what for what, needle in needles.items() if needle in blobs]
        assert found == []
