"""Spec section ids: ``<file path>#<heading slug>`` as mdbook makes them.

A slug is the heading lower-cased, whitespace turned into ``-``, everything
but letters, digits, ``-`` and ``_`` dropped; a repeated slug within one file
gets ``-1``, ``-2``, … in order of appearance (mdbook's ``normalize_id`` and
its unique-id rule).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from .shared import spec_dir


def slugify(heading: str) -> str:
    out = []
    for ch in heading.strip():
        if ch.isalnum() or ch in "-_":
            out.append(ch.lower())
        elif ch.isspace():
            out.append("-")
    return "".join(out)


def headings(text: str) -> list[str]:
    """The slugs of a markdown file's headings, with mdbook's repeat numbering."""
    seen: dict[str, int] = {}
    slugs = []
    in_fence = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
            continue
        m = None if in_fence else re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slugify(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        slugs.append(base if n == 0 else f"{base}-{n}")
    return slugs


@functools.lru_cache(maxsize=None)
def _slugs_of(path: str) -> frozenset[str]:
    return frozenset(headings(Path(path).read_text(encoding="utf-8")))


def check_section(section: str) -> str | None:
    """None if ``section`` names an existing heading, else why not."""
    if "#" not in section:
        return f"section id {section!r} has no '#<heading slug>'"
    file, slug = section.split("#", 1)
    path = spec_dir() / file
    if not path.is_file():
        return f"section id {section!r}: no spec file {file!r}"
    if slug not in _slugs_of(str(path)):
        return f"section id {section!r}: {file} has no heading with slug {slug!r}"
    return None
