"""Eval reports: JSON (everything), Markdown (summary), and one self-contained HTML file.

The HTML report has no external assets: charts are inline SVG. It shows per-tactic F1, the
most frequent confusions, calibration, and the worst misses with their evidence. Misses on
cases derived from Sigma rules carry the rule author and link (Detection Rule License 1.1).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from evals.datasets import Case
from evals.metrics import Prediction, headline
from evals.runner import RunResult
from mitre.catalog import Catalog
from mitre.features import extract_features
from mitre.text import alert_text

DRL_NOTE = (
    "Cases derived from SigmaHQ rules: rules © their authors, Detection Rule License (DRL) 1.1, "
    "https://github.com/SigmaHQ/Detection-Rule-License"
)
WORST = 25


def _name(catalog: Catalog, tid: str) -> str:
    if tid.startswith("TA"):
        tactic = catalog.tactic(tid)
        return tactic.name if tactic else tid
    tech = catalog.techniques.get(tid)
    return tech.name if tech else tid


def worst_misses(result: RunResult, catalog: Catalog, n: int = WORST) -> list[dict[str, Any]]:
    by_id: dict[str, Case] = {c.id: c for c in result.dataset.cases}
    preds: dict[str, Prediction] = {p.case_id: p for p in result.predictions}
    rows = sorted(result.metrics["per_case"], key=lambda r: (r["hf1"], r["id"]))
    out: list[dict[str, Any]] = []
    for row in rows:
        if len(out) >= n or row["hf1"] >= 1.0:
            break
        case = by_id[row["id"]]
        pred = preds[row["id"]]
        text = alert_text(extract_features(case.alert))
        entry: dict[str, Any] = {
            "id": case.id,
            "hf1": row["hf1"],
            "expected": [f"{t} {_name(catalog, t)}" for t in case.techniques],
            "predicted": [f"{t} {_name(catalog, t)} ({pred.confidences.get(t, 0):.2f})" for t in pred.techniques],
            "evidence": {t: ev for t, ev in pred.evidence.items() if t in pred.techniques},
            "alert_text": text[:600],
        }
        if case.author or case.reference:
            entry["attribution"] = {
                "author": case.author,
                "rule": case.reference,
                "license": case.meta.get("license", ""),
            }
        out.append(entry)
    return out


def report_dict(result: RunResult, catalog: Catalog) -> dict[str, Any]:
    m = result.metrics
    sigma_derived = any(c.meta.get("license") == "DRL-1.1" for c in result.dataset.cases)
    return {
        "dataset": result.dataset.spec,
        "dataset_kind": result.dataset.kind,
        "mode": result.mode,
        "mapper": result.mapper,
        "knowledge_base": result.knowledge,
        "catalog": {"version": catalog.version, "fingerprint": catalog.fingerprint},
        "groups": result.groups,
        "seconds": round(result.seconds, 2),
        "settings": result.settings,
        "configuration": result.configuration,
        "warnings": result.warnings,
        "load": result.dataset.load.as_dict(),
        "labels": result.dataset.labels.as_dict(),
        "headline": headline(m),
        "metrics": {k: v for k, v in m.items() if k != "per_case"},
        "worst_misses": worst_misses(result, catalog),
        "per_case": m["per_case"],
        "attribution": DRL_NOTE if sigma_derived else None,
    }


# ---------------------------------------------------------------- Markdown


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


OUTCOMES = (
    ("right_only", "only right techniques"),
    ("right_plus_extra", "a right technique plus others the labels do not name"),
    ("wrong", "only techniques the labels do not name"),
    ("none", "nothing"),
)


def outcome_rows(outcomes: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(what labelled cases got, count, share) rows of `metrics["outcomes"]`, top-1 accuracy last."""
    positives = outcomes["positives"] or 1
    rows = [(label, str(outcomes[key]), f"{outcomes[key] / positives:.3f}") for key, label in OUTCOMES]
    return [*rows, ("right technique first (top-1 accuracy)", "", f"{outcomes['top1_accuracy']:.3f}")]


def extra_sources_line(outcomes: dict[str, Any]) -> str:
    named = ", ".join(f"{source} {count}" for source, count in outcomes["extra_by_source"].items())
    return f"Unnamed techniques beside a right one, by the evidence that named them: {named or 'none'}."


def configuration_lines(conf: dict[str, Any]) -> list[str]:
    """The engine configuration a report measured, one line per part."""
    if not conf:
        return []
    catalog = conf.get("catalog") or {}
    kb = conf.get("knowledge_base") or {}
    lines = [
        f"workflows: {conf.get('workflows')} (workflow {conf.get('workflow')})",
        f"catalog: ATT&CK {catalog.get('version')} from {catalog.get('source')}, "
        f"fingerprint {catalog.get('fingerprint')}",
        f"knowledge base: {'; '.join(kb.get('sources') or []) or 'none'}, fingerprint {kb.get('fingerprint') or '—'}",
        f"mapper: {conf.get('mapper')}" + (f" ({conf['model']})" if conf.get("model") else ""),
        f"scoring: {conf.get('scoring')}",
    ]
    if kb.get("cross_validation"):
        lines.append(f"cross-validation: {kb['cross_validation']}")
    return lines


def to_markdown(rep: dict[str, Any], catalog: Catalog, gate: list[str] | None = None) -> str:
    h = rep["headline"]
    m = rep["metrics"]
    lines = [
        f"# attackmap eval — {rep['dataset']}",
        "",
        f"- mode: **{rep['mode']}**, mapper: **{rep['mapper']}**, "
        f"knowledge base: {', '.join(rep['knowledge_base']) or '—'}",
        f"- ATT&CK {rep['catalog']['version']}; cases scored: {m['cases']}; groups: {rep['groups'] or '—'}; "
        f"time: {rep['seconds']} s",
        f"- labels: excluded {rep['labels']['excluded'] or 'none'}; unmapped technique labels "
        f"{sum(rep['labels']['unmapped_techniques'].values())}; redirected {sum(rep['labels']['redirected'].values())}",
        "",
        "Configuration measured:",
        "",
        *[f"- {line}" for line in configuration_lines(rep.get("configuration") or {})],
        "",
        "| figure | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.4f} |" for k, v in h.items()]
    lines += [
        "",
        "| level | micro P | micro R | micro F1 | macro F1 |",
        "|---|---|---|---|---|",
    ]
    for level in ("technique", "parent_technique", "tactic"):
        mi, ma = m[level]["micro"], m[level]["macro"]
        lines.append(
            f"| {level} | {_pct(mi['precision'])} | {_pct(mi['recall'])} | {_pct(mi['f1'])} | {_pct(ma['f1'])} |"
        )
    hi = m["hierarchical"]
    lines.append(f"| hierarchical (per case) | {_pct(hi['precision'])} | {_pct(hi['recall'])} | {_pct(hi['f1'])} | |")
    if gate is not None:
        lines += ["", "## Gate", ""] + ([f"- FAIL {g}" for g in gate] or ["- pass"])
    lines += ["", "## Case outcomes", "", "| labelled cases that got | n | share |", "|---|---|---|"]
    lines += [f"| {label} | {n} | {share} |" for label, n, share in outcome_rows(m["outcomes"])]
    lines += ["", extra_sources_line(m["outcomes"])]
    lines += ["", "## Per-tactic F1", "", "| tactic | P | R | F1 | support |", "|---|---|---|---|---|"]
    for tid, s in sorted(m["per_tactic"].items(), key=lambda kv: -kv[1]["support"]):
        lines.append(
            f"| {tid} {_name(catalog, tid)} | {_pct(s['precision'])} | {_pct(s['recall'])} | {_pct(s['f1'])} "
            f"| {int(s['support'])} |"
        )
    lines += ["", "## Top confusions", "", "| expected | predicted | count |", "|---|---|---|"]
    for c in m["confusions"][:15]:
        lines.append(
            f"| {c['expected']} {_name(catalog, c['expected'])} | {c['predicted']} {_name(catalog, c['predicted'])} "
            f"| {c['count']} |"
        )
    lines += [
        "",
        "## Reliability (calibration)",
        "",
        f"Expected calibration error (ECE) over {sum(b['count'] for b in m['calibration'])} predicted techniques: "
        f"**{m['ece']:.3f}** (0 = confidence reads as the probability a technique is right).",
        "",
        "| confidence | n | mean conf | precision |",
        "|---|---|---|---|",
    ]
    for b in m["calibration"]:
        if b["count"]:
            lines.append(f"| {b['bin']} | {b['count']} | {_pct(b['mean_confidence'])} | {_pct(b['precision'])} |")
    lines += ["", "## Worst misses", ""]
    for w in rep["worst_misses"][:10]:
        lines.append(
            f"- `{w['id']}` hF1 {w['hf1']:.2f}: expected {', '.join(w['expected'])}; predicted "
            f"{', '.join(w['predicted']) or '(nothing)'}"
        )
        if "attribution" in w:
            lines.append(f"  - rule author: {w['attribution']['author']} ({w['attribution']['rule']}, DRL 1.1)")
    if rep.get("attribution"):
        lines += ["", f"_{rep['attribution']}_"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- HTML (inline SVG)


def svg_bars(items: Sequence[tuple[str, float]], width: int = 640, bar_h: int = 18, max_value: float = 1.0) -> str:
    label_w = 240
    h = bar_h * len(items) + 10
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" role="img">']
    for i, (label, value) in enumerate(items):
        y = 5 + i * bar_h
        w = max(0.0, min(1.0, value / max_value if max_value else 0.0)) * (width - label_w - 60)
        parts.append(
            f'<text x="{label_w - 6}" y="{y + bar_h * 0.7:.1f}" font-size="11" text-anchor="end">'
            f"{html.escape(label[:40])}</text>"
            f'<rect x="{label_w}" y="{y + 2}" width="{w:.1f}" height="{bar_h - 4}" fill="#3b7dd8"/>'
            f'<text x="{label_w + w + 4:.1f}" y="{y + bar_h * 0.7:.1f}" font-size="11">{value:.2f}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def svg_calibration(bins: Sequence[dict[str, Any]], size: int = 320) -> str:
    pad = 30
    inner = size - 2 * pad
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" role="img">',
        f'<rect x="{pad}" y="{pad}" width="{inner}" height="{inner}" fill="none" stroke="#999"/>',
        f'<line x1="{pad}" y1="{pad + inner}" x2="{pad + inner}" y2="{pad}" stroke="#bbb" stroke-dasharray="4"/>',
        f'<text x="{size / 2}" y="{size - 6}" font-size="11" text-anchor="middle">confidence</text>',
        f'<text x="10" y="{size / 2}" font-size="11" transform="rotate(-90 10 {size / 2})" '
        'text-anchor="middle">precision</text>',
    ]
    total = sum(b["count"] for b in bins) or 1
    for b in bins:
        if not b["count"]:
            continue
        x = pad + b["mean_confidence"] * inner
        y = pad + (1 - b["precision"]) * inner
        r = 3 + 12 * (b["count"] / total) ** 0.5
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" fill="#d8573b" fill-opacity="0.7">'
            f"<title>{b['bin']}: n={b['count']}, precision {b['precision']:.2f}</title></circle>"
        )
    parts.append("</svg>")
    return "".join(parts)


def to_html(rep: dict[str, Any], catalog: Catalog, gate: list[str] | None = None) -> str:
    m = rep["metrics"]
    e = html.escape
    tactic_items = [
        (f"{tid} {_name(catalog, tid)}", s["f1"])
        for tid, s in sorted(m["per_tactic"].items(), key=lambda kv: -kv[1]["support"])
    ]
    confusion_items = [(f"{c['expected']} → {c['predicted']}", float(c["count"])) for c in m["confusions"][:15]]
    max_conf = max((v for _, v in confusion_items), default=1.0)
    head_rows = "".join(f"<tr><td>{e(k)}</td><td>{v:.4f}</td></tr>" for k, v in rep["headline"].items())
    outcome_html = "".join(
        f"<tr><td>{e(label)}</td><td>{n}</td><td>{share}</td></tr>" for label, n, share in outcome_rows(m["outcomes"])
    )
    misses = []
    for w in rep["worst_misses"]:
        ev = "".join(f"<li><b>{e(t)}</b>: {e('; '.join(items))}</li>" for t, items in w["evidence"].items())
        attr = ""
        if "attribution" in w:
            a = w["attribution"]
            attr = (
                f'<p class=attr>Rule by {e(str(a["author"]))} — <a href="{e(str(a["rule"]))}">{e(str(a["rule"]))}</a>'
                " (DRL 1.1)</p>"
            )
        misses.append(
            f"<details><summary><code>{e(w['id'])}</code> hF1 {w['hf1']:.2f} — expected "
            f"{e(', '.join(w['expected']))}; predicted {e(', '.join(w['predicted']) or '(nothing)')}</summary>"
            f"<pre>{e(w['alert_text'])}</pre><ul>{ev}</ul>{attr}</details>"
        )
    conf_html = "".join(f"<li>{e(line)}</li>" for line in configuration_lines(rep.get("configuration") or {}))
    reliability_html = "".join(
        f"<tr><td>{b['bin']}</td><td>{b['count']}</td><td>{_pct(b['mean_confidence'])}</td>"
        f"<td>{_pct(b['precision'])}</td></tr>"
        for b in m["calibration"]
        if b["count"]
    )
    gate_html = ""
    if gate is not None:
        gate_html = "<h2>Gate</h2>" + (
            "<ul>" + "".join(f"<li class=fail>{e(g)}</li>" for g in gate) + "</ul>" if gate else "<p>pass</p>"
        )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>attackmap eval — {e(rep["dataset"])}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em;max-width:1000px}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ddd;padding:2px 8px}} pre{{white-space:pre-wrap;background:#f6f6f6;padding:6px}}
.fail{{color:#b00}} .attr{{font-size:90%;color:#555}}
</style></head><body>
<h1>attackmap eval — {e(rep["dataset"])}</h1>
<p>mode <b>{e(rep["mode"])}</b>, mapper <b>{e(rep["mapper"])}</b>, knowledge base
{e(", ".join(rep["knowledge_base"]) or "—")}, ATT&amp;CK {e(rep["catalog"]["version"])},
{m["cases"]} cases, {rep["seconds"]} s. Excluded: {e(str(rep["labels"]["excluded"] or "none"))}.</p>
<h2>Configuration measured</h2><ul>{conf_html}</ul>
<table><tr><th>figure</th><th>value</th></tr>{head_rows}</table>
{gate_html}
<h2>Case outcomes</h2>
<table><tr><th>labelled cases that got</th><th>n</th><th>share</th></tr>{outcome_html}</table>
<p>{e(extra_sources_line(m["outcomes"]))}</p>
<h2>Per-tactic F1</h2>{svg_bars(tactic_items)}
<h2>Top confusions (expected → predicted)</h2>{svg_bars(confusion_items, max_value=max_conf)}
<h2>Reliability (confidence vs precision)</h2>
<p>Expected calibration error: <b>{m["ece"]:.3f}</b></p>{svg_calibration(m["calibration"])}
<table><tr><th>confidence</th><th>n</th><th>mean conf</th><th>precision</th></tr>{reliability_html}</table>
<h2>Worst misses</h2>{"".join(misses)}
<p class=attr>{e(rep.get("attribution") or "")}</p>
</body></html>
"""


def write_reports(
    result: RunResult, catalog: Catalog, directory: Path, name: str, gate: list[str] | None = None
) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    rep = report_dict(result, catalog)
    if gate is not None:
        rep["gate"] = {"passed": not gate, "failures": gate}
    paths = {
        "json": directory / f"{name}.json",
        "markdown": directory / f"{name}.md",
        "html": directory / f"{name}.html",
    }
    paths["json"].write_bytes(orjson.dumps(rep, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    paths["markdown"].write_text(to_markdown(rep, catalog, gate))
    paths["html"].write_text(to_html(rep, catalog, gate))
    return paths
