"""A self-contained HTML ATT&CK matrix of coverage: tactics as columns in the catalog's order, every
technique of each tactic as a cell coloured by how many alerts (or rules) name it or its
sub-techniques, with the covered sub-techniques listed under their parent.

One file, no scripts, no fonts or styles fetched: it opens offline and can be attached to a ticket.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from mitre.io.exports.coverage import Coverage

_LOW = (255, 243, 205)
_HIGH = (200, 30, 30)


def colour(count: int, top: int) -> str:
    """Cell colour for a count: none → grey, then light amber → dark red, on a square-root scale so
    a few loud techniques do not wash out the rest."""
    if count <= 0 or top <= 0:
        return "#f2f2f2"
    share = (count / top) ** 0.5
    r, g, b = (round(lo + (hi - lo) * share) for lo, hi in zip(_LOW, _HIGH, strict=True))
    return f"#{r:02x}{g:02x}{b:02x}"


def _text_colour(count: int, top: int) -> str:
    return "#ffffff" if top and count / top > 0.45 else "#1a1a1a"


_STYLE = """
body{font:12px/1.3 system-ui,sans-serif;margin:16px;color:#1a1a1a}
h1{font-size:18px;margin:0 0 4px}
p.meta{color:#555;margin:0 0 12px}
.matrix{display:grid;grid-auto-flow:column;grid-auto-columns:minmax(118px,1fr);gap:6px;overflow-x:auto}
.tactic h2{font-size:13px;margin:0 0 6px;padding:6px;background:#2b3a55;color:#fff;border-radius:3px}
.tactic h2 small{display:block;font-weight:normal;opacity:.8}
.technique{border:1px solid #d0d0d0;border-radius:3px;margin:0 0 3px;padding:3px 5px}
.technique .count{float:right;font-weight:bold}
.technique ul{margin:2px 0 0 10px;padding:0;list-style:none;font-size:11px}
.legend span{display:inline-block;width:28px;height:12px;border:1px solid #ccc;vertical-align:middle}
"""


def render_matrix(coverage: Coverage, *, title: str | None = None) -> str:
    catalog = coverage.catalog
    counts: dict[str, int] = {}
    for tid, entry in coverage.techniques.items():
        parent = catalog.techniques[tid].parent or tid
        counts[parent] = counts.get(parent, 0) + entry.count
    top = max(counts.values(), default=0)
    subs: dict[str, list[str]] = {}
    for tid in sorted(coverage.techniques):
        parent_id = catalog.techniques[tid].parent
        if parent_id:
            subs.setdefault(parent_id, []).append(tid)
    columns = []
    for tactic_id, shortname, name in coverage.tactic_columns():
        parents = sorted(
            (t for t in catalog.techniques.values() if t.parent is None and shortname in t.tactics),
            key=lambda t: (-counts.get(t.id, 0), t.name),
        )
        cells = []
        for technique in parents:
            n = counts.get(technique.id, 0)
            sub_items = "".join(
                f'<li data-technique="{s}">{escape(s)} {escape(catalog.techniques[s].name)}: '
                f"{coverage.techniques[s].count}</li>"
                for s in subs.get(technique.id, ())
            )
            cells.append(
                f'<div class="technique" data-technique="{technique.id}" data-count="{n}" '
                f'style="background:{colour(n, top)};color:{_text_colour(n, top)}" '
                f'title="{escape(technique.id)} {escape(technique.name)}">'
                f'<span class="count">{n or ""}</span>{escape(technique.name)}'
                + (f"<ul>{sub_items}</ul>" if sub_items else "")
                + "</div>"
            )
        covered = sum(1 for t in parents if counts.get(t.id))
        columns.append(
            f'<section class="tactic" data-tactic="{tactic_id}"><h2>{escape(name)}'
            f"<small>{tactic_id} · {covered}/{len(parents)} covered</small></h2>{''.join(cells)}</section>"
        )
    heading = escape(title or coverage.title)
    legend = "".join(
        f'<span style="background:{colour(v, top)}"></span>' for v in sorted({0, 1, top // 4, top // 2, top})
    )
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{heading}</title><style>{_STYLE}</style></head><body>'
        f"<h1>{heading}</h1>"
        f'<p class="meta">{coverage.total} {escape(coverage.counted)} · {len(coverage.techniques)} techniques · '
        f"ATT&amp;CK {escape(catalog.version)} ({escape(catalog.fingerprint)}) · "
        f'<span class="legend">0 {legend} {top}</span></p>'
        f'<div class="matrix">{"".join(columns)}</div></body></html>\n'
    )


def render_matrices(coverages: Sequence[Coverage]) -> str:
    """Several coverages (alerts, a rule set) as one page: one matrix after the other."""
    if len(coverages) == 1:
        return render_matrix(coverages[0])
    pages = [render_matrix(c) for c in coverages]
    bodies = [page.split("<body>", 1)[1].rsplit("</body>", 1)[0] for page in pages]
    head = pages[0].split("<body>", 1)[0]
    return head + "<body>" + "<hr>".join(bodies) + "</body></html>\n"
