"""docs/wire.md is generated from the endpoint table and must not go stale."""

import importlib

from phoenix_ref import endpoints
from phoenix_ref.paths import PREFIX
from phoenix_ref.shared import REPO_ROOT
from phoenix_ref.spec_sections import check_section


def test_wire_doc_is_up_to_date():
    path = REPO_ROOT / "docs" / "wire.md"
    assert path.read_text(encoding="utf-8") == endpoints.wire_doc(), (
        "docs/wire.md is stale: run `python -m phoenix_ref.endpoints > docs/wire.md`")


def test_every_endpoint_cites_an_existing_section():
    for ep in endpoints.ENDPOINTS:
        assert check_section(ep.section) is None, ep
        assert ep.path.startswith(PREFIX + "/")
        assert ep.method in ("GET", "POST", "PUT", "DELETE")


def test_endpoint_keys_are_unique():
    keys = [(ep.service, ep.method, ep.path) for ep in endpoints.ENDPOINTS]
    assert len(keys) == len(set(keys))
    assert endpoints.by_name("qs", "qs_verifying_key").service == endpoints.Service.QS


def test_signature_labels_name_existing_structs():
    for label, module, section in endpoints.SIGNATURE_LABELS:
        mod = importlib.import_module(f"phoenix_ref.{module}")
        assert hasattr(mod, label), (label, module)
        assert check_section(section) is None, section
