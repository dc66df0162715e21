"""The conformance reports: ``conformance.json``, ``conformance.html``, ``conformance.md``.

``build`` turns what the pytest plugin saw (which test cites which section at
which level, and how each test ended) into one dict; ``write`` renders it.
The HTML page has its style inline and loads nothing, so it can be published
as a single file.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from .spec_sections import all_sections, section, strength

#: The spec chapters whose requirement sentences should all have a test: the
#: Authentication, Queuing and Delivery Services and federation.
CHAPTERS = (
    "spec/authentication_service.md", "spec/authentication_service/*.md",
    "spec/queuing_service.md", "spec/queuing_service/*.md",
    "spec/delivery_service.md", "spec/delivery_service/*.md",
    "spec/federation/*.md", "spec/general_concepts/federation.md",
)

COLUMNS = ("passed", "failed", "soft_failed", "skipped", "unsupported", "expected_failure",
           "unexpected_pass")
SHORT = ("pass", "fail", "soft", "skip", "unsup", "xfail", "xpass")
LABELS = ("passed", "failed", "SHOULD/MAY not met", "skipped", "unsupported",
          "expected failure", "unexpectedly passed")

_COLUMN_OF = {
    "passed": "passed", "failed": "failed", "error": "failed", "soft_failed": "soft_failed",
    "skipped": "skipped", "unsupported": "unsupported", "xfailed": "expected_failure",
    "xpassed": "unexpected_pass",
}


def column(outcome: str) -> str:
    """The report column of a test outcome word (``error`` counts as failed)."""
    return _COLUMN_OF[outcome]


def _reqs(found):
    return [{"level": lv, "sentence": s} for lv, s in found]


def build(cites: dict[str, list[tuple[str, str]]], outcomes: dict[str, str],
          messages: dict[str, str], *, strict: bool, generated: str,
          chapters: tuple[str, ...] = CHAPTERS, target: dict | None = None) -> dict:
    """The report as plain data.

    ``cites``: test id → its ``(section, level)`` claims; ``outcomes``: test id
    → outcome word (passed, failed, error, soft_failed, skipped, unsupported,
    xfailed, xpassed); tests without an outcome (deselected, not run) are
    left out. ``target``: what the run was pointed at and its manifest
    (``TargetRun.describe``); None for phoenix_ref's own run.
    """
    by_section: dict[str, list[dict]] = {}
    for nodeid, claims in cites.items():
        if nodeid not in outcomes:
            continue
        for sid, level in claims:
            by_section.setdefault(sid, []).append({
                "test": nodeid, "level": level, "outcome": outcomes[nodeid],
                "message": messages.get(nodeid, "")})
    sections = []
    totals = dict.fromkeys(COLUMNS, 0)
    for sid in sorted(by_section):
        sec = section(sid)
        tests = sorted(by_section[sid], key=lambda t: t["test"])
        counts = dict.fromkeys(COLUMNS, 0)
        for t in tests:
            counts[column(t["outcome"])] += 1
        for c in COLUMNS:
            totals[c] += counts[c]
        sections.append({
            "section": sid, "title": sec.title, "text_level": sec.level(),
            "claimed_level": max((t["level"] for t in tests), key=strength),
            "requirements": _reqs(sec.requirements()),
            "tests": tests, "counts": counts,
        })
    cited = set(by_section)
    in_chapters = [s for s in all_sections(chapters) if s.requirements(own=True)]
    uncovered = [{"section": s.id, "title": s.title, "text_level": s.level(own=True),
                  "requirements": _reqs(s.requirements(own=True))}
                 for s in in_chapters if s.id not in cited]
    return {
        "generated": generated,
        "strict": strict,
        "target": target or {"mode": "phoenix_ref"},
        "levels": "informative < MAY < SHOULD < MUST",
        "columns": dict(zip(COLUMNS, LABELS)),
        "totals": totals,
        "sections": sections,
        "chapters": list(chapters),
        "chapter_sections_with_requirements": len(in_chapters),
        "uncovered": uncovered,
    }


def write(out: Path, data: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "conformance.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    (out / "conformance.html").write_text(render_html(data), encoding="utf-8")
    (out / "conformance.md").write_text(render_markdown(data), encoding="utf-8")


# ---------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------

def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _target_lines(target: dict) -> list[str]:
    """What the run was pointed at, and the manifest's unexpected passes (Markdown)."""
    if target.get("mode") != "target" and "expected_failures_manifest" not in target:
        return ["Run against phoenix_ref homeservers started by the suite.", ""]
    out = []
    if target.get("mode") == "target":
        hs = ", ".join(f"{n} = {d}" for n, d in target["homeservers"].items())
        out.append(f"Target: {_md(target['description'])} (`{target['deployment_file']}`; {hs}). "
                   "Tests that need control of a homeserver are reported unsupported.")
    if "expected_failures_manifest" in target:
        out.append(f"Expected failures from `{target['expected_failures_manifest']}`.")
        for t in target["unexpectedly_passing"]:
            out.append(f"* **unexpectedly passing** (remove it from the manifest): `{t}`")
    return out + [""]


def render_markdown(data: dict) -> str:
    lines = [
        "# Phoenix conformance matrix", "",
        f"Generated {data['generated']}; SHOULD/MAY failures "
        + ("fail the run (--strict)." if data["strict"] else "are reported but do not fail the run."),
        "Levels: informative < MAY < SHOULD < MUST. \"text\" is the strongest level the section's "
        "text supports, \"claimed\" the strongest level its tests claim.", "",
        *_target_lines(data.get("target") or {}),
        "| section | text | claimed | tests | " + " | ".join(LABELS) + " |",
        "|---|---|---|---|" + "---:|" * len(COLUMNS),
    ]
    for s in data["sections"]:
        cells = " | ".join(str(s["counts"][c]) for c in COLUMNS)
        lines.append(f"| `{s['section']}` | {s['text_level']} | {s['claimed_level']} | "
                     f"{len(s['tests'])} | {cells} |")
    t = data["totals"]
    lines.append(f"| **total** | | | {sum(t.values())} | " + " | ".join(str(t[c]) for c in COLUMNS) + " |")
    lines += ["", "## Requirement sentences of the cited sections", ""]
    for s in data["sections"]:
        if s["requirements"]:
            lines.append(f"* `{s['section']}`")
            lines += [f"  * {r['level']}: \"{_md(r['sentence'])}\"" for r in s["requirements"]]
    lines += ["", f"## Uncovered sections ({len(data['uncovered'])} of "
                  f"{data['chapter_sections_with_requirements']} with a requirement sentence)", "",
              "Sections of the AS, QS, DS and federation chapters whose own text has a requirement "
              "sentence and that no test of this run cites.", ""]
    if data["uncovered"]:
        lines += ["| section | text | requirement sentences |", "|---|---|---|"]
        for u in data["uncovered"]:
            quotes = "<br>".join(f"{r['level']}: \"{_md(r['sentence'])}\"" for r in u["requirements"])
            lines.append(f"| `{u['section']}` | {u['text_level']} | {quotes} |")
    else:
        lines.append("None.")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}
th,td{border:1px solid #ccc;padding:.25em .5em;vertical-align:top;text-align:left}
td.n{text-align:right}
tr.failed td{background:#fdd} tr.soft td{background:#ffd} tr.ok td{background:#efe}
tr.unsupported td{background:#eee}
.passed{color:#060} .failed,.error,.xpassed{color:#a00;font-weight:bold} .soft_failed{color:#a60}
.skipped,.unsupported,.xfailed{color:#666} q{font-style:italic} code{font-size:.9em}
details{margin:.2em 0}
"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _quotes(reqs) -> str:
    if not reqs:
        return "<em>no requirement sentence</em>"
    return "".join(f"<div><b>{_e(r['level'])}</b>: <q>{_e(r['sentence'])}</q></div>" for r in reqs)


def _target_html(target: dict) -> str:
    """The Markdown lines of :func:`_target_lines` as paragraphs (backticks → ``<code>``)."""
    out = []
    for line in _target_lines(target):
        if line:
            parts = _e(line.lstrip("* ")).split("`")
            out.append("<p>" + "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
                       .replace("**", "") + "</p>")
    return "".join(out)


def render_html(data: dict) -> str:
    t = data["totals"]
    head = "".join(f"<th>{_e(h)}</th>" for h in LABELS)
    rows = []
    for s in data["sections"]:
        c = s["counts"]
        cls = ("failed" if c["failed"] or c["unexpected_pass"] else "soft" if c["soft_failed"]
               else "ok" if c["passed"] else "unsupported" if c["unsupported"] else "")
        tests = "".join(
            f"<div><span class='{_e(x['outcome'])}'>{_e(x['outcome'])}</span> "
            f"<code>{_e(x['test'])}</code> ({_e(x['level'])})"
            + (f" — {_e(x['message'])}" if x["message"] else "") + "</div>"
            for x in s["tests"])
        cells = "".join(f"<td class='n'>{c[k]}</td>" for k in COLUMNS)
        rows.append(
            f"<tr class='{cls}'><td><code>{_e(s['section'])}</code><br>{_e(s['title'])}</td>"
            f"<td>{_e(s['text_level'])}</td><td>{_e(s['claimed_level'])}</td>{cells}"
            f"<td><details><summary>{len(s['requirements'])} sentence(s)</summary>"
            f"{_quotes(s['requirements'])}</details>"
            f"<details><summary>{len(s['tests'])} test(s)</summary>{tests}</details></td></tr>")
    total_cells = "".join(f"<td class='n'><b>{t[k]}</b></td>" for k in COLUMNS)
    unc = "".join(
        f"<tr><td><code>{_e(u['section'])}</code><br>{_e(u['title'])}</td>"
        f"<td>{_e(u['text_level'])}</td><td>{_quotes(u['requirements'])}</td></tr>"
        for u in data["uncovered"])
    mode = ("SHOULD/MAY failures fail the run (--strict)." if data["strict"]
            else "SHOULD/MAY failures are reported but do not fail the run.")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Phoenix conformance matrix</title>
<style>{_STYLE}</style></head><body>
<h1>Phoenix conformance matrix</h1>
<p>Generated {_e(data['generated'])}. {_e(mode)} Levels: informative &lt; MAY &lt; SHOULD &lt; MUST;
<em>text</em> is the strongest level the section's text supports, <em>claimed</em> the strongest
its tests claim.</p>
{_target_html(data.get("target") or {})}
<table><thead><tr><th>section</th><th>text</th><th>claimed</th>{head}<th>requirements and tests</th></tr></thead>
<tbody>{''.join(rows)}
<tr><td><b>total</b></td><td></td><td></td>{total_cells}<td></td></tr></tbody></table>
<h2>Uncovered sections ({len(data['uncovered'])} of {data['chapter_sections_with_requirements']}
with a requirement sentence)</h2>
<p>Sections of the AS, QS, DS and federation chapters whose own text has a requirement sentence
and that no test of this run cites.</p>
{"<table><thead><tr><th>section</th><th>text</th><th>requirement sentences</th></tr></thead><tbody>"
 + unc + "</tbody></table>" if unc else "<p>None.</p>"}
</body></html>
"""
