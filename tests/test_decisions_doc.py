"""docs/decisions.md cites spec sections that exist."""

import re

from phoenix_ref.shared import REPO_ROOT
from phoenix_ref.spec_sections import check_section


def test_every_cited_section_exists():
    text = (REPO_ROOT / "docs" / "decisions.md").read_text()
    cited = set(re.findall(r"`((?:spec/|threat_model/)?[\w/]+\.md#[\w-]+)`", text))
    assert len(cited) >= 10
    problems = [p for p in map(check_section, sorted(cited)) if p]
    assert problems == []
