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


# ---------------------------------------------------------------------------
# Section text and requirement sentences
# ---------------------------------------------------------------------------
#
# A section's text runs from its heading to the next heading of the same or a
# higher level (so it holds its subsections); its *own* text stops at the next
# heading of any level. Fenced code blocks are not prose and are left out.

#: Requirement levels from weakest to strongest. "informative" is a test that
#: claims no keyword: the section describes the behaviour it checks.
LEVEL_ORDER = ("informative", "MAY", "SHOULD", "MUST")

# keyword → level; longer phrases first so "MUST NOT" is one hit, not "MUST".
# "may only" restricts ("credentials may only sign …" forbids everything
# else), so it is read as a MUST.
_KEYWORDS = (
    ("may only", "MUST"), ("must not", "MUST"), ("shall not", "MUST"), ("should not", "SHOULD"),
    ("must", "MUST"), ("shall", "MUST"), ("required", "MUST"),
    ("has to", "MUST"), ("have to", "MUST"),
    ("should", "SHOULD"), ("recommended", "SHOULD"),
    ("may", "MAY"), ("optional", "MAY"),
)
_KEYWORD_RE = re.compile(
    r"\b(" + "|".join(re.escape(k).replace(r"\ ", r"\s+") for k, _ in _KEYWORDS) + r")\b",
    re.IGNORECASE)
# Three readings keep prose from counting as a requirement it does not make:
# * "does not have to be unique", "no token is required" release a duty
#   rather than impose one: they read as OPTIONAL, so they count as a MAY;
# * "might have to" is a guess about what may happen, not a rule: dropped;
# * lower-case "required" is RFC 2119's only as a predicate ("X is
#   required"); "the required data", "as required for", "if required"
#   describe, and are dropped. Upper-case REQUIRED always counts.
_RELEASED_RE = re.compile(
    r"\b(?:not|n't|never)\s+(?:has|have)\s+to\b"
    r"|\b(?:not|no)\b(?:\s+[\w-]+){0,4}?\s+required\b", re.IGNORECASE)
_HEDGED_RE = re.compile(r"\b(?:might|may|could|would)\s+(?:also\s+)?(?:has|have)\s+to\b",
                        re.IGNORECASE)
_PREDICATE_REQUIRED_RE = re.compile(
    r"\b(?:is|are|be|been|being|was|were)\s+(?:\w+ly\s+|also\s+|always\s+)?required\b")
_HEADING_RE = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[A-Z`*\"(\[])")
_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "cf.", "vs.")


def strength(level: str) -> int:
    """The rank of a level name: informative 0 < MAY 1 < SHOULD 2 < MUST 3."""
    return LEVEL_ORDER.index(level)


def strongest(levels) -> str:
    return max(levels, key=strength, default="informative")


class Section:
    """One heading of a spec file: its id, depth and the line range of its text."""

    def __init__(self, file: str, slug: str, title: str, depth: int, lines: list[str],
                 start: int, own_end: int, end: int):
        self.id = f"{file}#{slug}"
        self.file, self.slug, self.title, self.depth = file, slug, title, depth
        self._lines, self.start, self.own_end, self.end = lines, start, own_end, end

    def text(self, own: bool = False) -> str:
        """The prose under the heading (fenced code left out); ``own``: without subsections."""
        stop = self.own_end if own else self.end
        out, in_fence = [], False
        for line in self._lines[self.start + 1:stop]:
            if line.lstrip().startswith("```"):
                in_fence = not in_fence
                continue
            if not in_fence:
                out.append(line)
        return "\n".join(out)

    def requirements(self, own: bool = False) -> list[tuple[str, str]]:
        """``(level, sentence)`` for every sentence with a requirement keyword."""
        return requirement_sentences(self.text(own))

    def level(self, own: bool = False) -> str:
        """The strongest level the text supports ("informative" if none)."""
        return strongest(lv for lv, _ in self.requirements(own))


def _units(text: str) -> list[str]:
    """Paragraphs, list items and table rows of markdown, each on one line."""
    units, current = [], []
    for raw in text.splitlines():
        line = raw.strip()
        starts_new = (not line or line.startswith("|") or _HEADING_RE.match(line)
                      or re.match(r"^([-*+]|\d+[.)])\s+", line) or line.startswith(">"))
        if starts_new and current:
            units.append(" ".join(current))
            current = []
        if not line:
            continue
        if line.startswith("|") or _HEADING_RE.match(line):
            units.append(line)
        else:
            current.append(line)
    if current:
        units.append(" ".join(current))
    # the list marker is layout, not part of the sentence
    return [re.sub(r"^(?:[-*+]|\d+[.)]|>)\s+", "", u) for u in units]


def sentences(text: str) -> list[str]:
    out = []
    for unit in _units(text):
        # keep "e.g. X" together: split, then glue back pieces ending in an abbreviation
        pieces = _SENTENCE_END.split(unit)
        merged: list[str] = []
        for p in pieces:
            if merged and merged[-1].lower().endswith(_ABBREVIATIONS):
                merged[-1] += " " + p
            else:
                merged.append(p)
        out.extend(p.strip() for p in merged if p.strip())
    return out


def sentence_level(sentence: str) -> str | None:
    """The strongest requirement keyword of one sentence, or None."""
    released = _HEDGED_RE.sub(" ", _RELEASED_RE.sub(" optional ", sentence))
    # keep a lower-case "required" only where it is a predicate
    kept, last = [], 0
    for m in re.finditer(r"\brequired\b", released):
        if not _PREDICATE_REQUIRED_RE.search(released[max(0, m.start() - 30):m.end()]):
            kept.append(released[last:m.start()] + "(described)")
            last = m.end()
    released = "".join(kept) + released[last:]
    found = [dict(_KEYWORDS)[re.sub(r"\s+", " ", m.group(1).lower())]
             for m in _KEYWORD_RE.finditer(released)]
    return strongest(found) if found else None


def requirement_sentences(text: str) -> list[tuple[str, str]]:
    out = []
    for s in sentences(text):
        lv = sentence_level(s)
        if lv:
            out.append((lv, s))
    return out


def parse_sections(file: str, text: str) -> list[Section]:
    """The sections of one spec file (``file`` relative to the spec root)."""
    lines = text.splitlines()
    found: list[tuple[int, int, str]] = []       # (line index, depth, title)
    in_fence = False
    for i, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
            continue
        m = None if in_fence else _HEADING_RE.match(line)
        if m:
            found.append((i, len(m.group(1)), m.group(2)))
    slugs = headings(text)
    out = []
    for k, ((i, depth, title), slug) in enumerate(zip(found, slugs)):
        own_end = found[k + 1][0] if k + 1 < len(found) else len(lines)
        end = next((j for j, d, _ in found[k + 1:] if d <= depth), len(lines))
        out.append(Section(file, slug, title, depth, lines, i, own_end, end))
    return out


@functools.lru_cache(maxsize=None)
def file_sections(file: str) -> tuple[Section, ...]:
    return tuple(parse_sections(file, (spec_dir() / file).read_text(encoding="utf-8")))


def section(section_id: str) -> Section:
    """The section with this id; ``check_section`` first if it may not exist."""
    file, slug = section_id.split("#", 1)
    for s in file_sections(file):
        if s.slug == slug:
            return s
    raise KeyError(section_id)


def all_sections(patterns: tuple[str, ...]) -> list[Section]:
    """Every section of the spec files matching any glob (relative to the spec root)."""
    root = spec_dir()
    files = sorted({p.relative_to(root).as_posix() for pat in patterns for p in root.glob(pat)})
    return [s for f in files for s in file_sections(f)]
