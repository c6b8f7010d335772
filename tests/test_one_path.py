"""`attackmap eval` measures what `attackmap enrich` delivers: one engine, one workflows.yaml.

The hand-written cases go through both commands with the shipped workflows.yaml. The enriched
NDJSON is scored here, independently of the eval harness: the techniques and tactics an analyst
sees on each alert (its `threat.*` plus its rule's own tags) against the cases' labels. The eval
lifts the workflow's risk threshold (it chooses which alerts are enriched, not how well), so the
cases are those the threshold lets through.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from evals.datasets import load_cases
from evals.labels import normalise_cases
from evals.metrics import Prediction, Truth, score
from mitre.catalog import Catalog, load_catalog
from mitre.cli import app
from mitre.config import load_workflows
from mitre.features import extract_features

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "workflows.yaml"
TOLERANCE = 0.005


def _ids(value: Any) -> list[str]:
    return [str(v) for v in (value if isinstance(value, list) else [value]) if v]


def seen_by_analyst(alert: dict[str, Any], catalog: Catalog) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(techniques, tactics) on an enriched alert: its ECS threat.* and its rule's own tags, as active
    IDs; a technique listed as the parent of a listed sub-technique is implied by it."""
    threat = alert.get("threat") or {}
    technique = threat.get("technique") or {}
    techniques = _ids(technique.get("id")) + _ids((technique.get("subtechnique") or {}).get("id"))
    tactics = _ids((threat.get("tactic") or {}).get("id"))
    for ref in extract_features(alert).rule_threat:
        if ref.technique_id:
            techniques.append(ref.technique_id)
        if ref.tactic_id:
            tactics.append(ref.tactic_id)
    active = {a for t in techniques if (a := catalog.resolve(t).active_id)}
    implied = {t for t in active if any(other.startswith(t + ".") for other in active)}
    tactic_ids = {found.id for t in tactics if (found := catalog.tactic(t)) is not None}
    return tuple(sorted(active - implied)), tuple(sorted(tactic_ids))


@pytest.mark.shared_data
def test_eval_and_enrich_give_the_same_figures_on_the_same_alerts(shared_data: Path, tmp_path: Path) -> None:
    threshold = load_workflows(SHIPPED).workflow().decision.min_risk_score
    rows = [
        json.loads(line)
        for path in sorted((REPO / "evals" / "cases").glob("*.jsonl"))
        for line in path.read_text().splitlines()
        if line.strip()
    ]
    kept = [r for r in rows if (extract_features(r["alert"]).risk_score or threshold) >= threshold]
    assert len(kept) > 150
    cases_file = tmp_path / "cases.jsonl"
    cases_file.write_text("".join(json.dumps(r) + "\n" for r in kept))
    alerts_file = tmp_path / "alerts.ndjson"
    alerts_file.write_text("".join(json.dumps(r["alert"]) + "\n" for r in kept))

    cli = CliRunner()
    report_dir = tmp_path / "r"
    workflows = ["--workflows", str(SHIPPED)]
    evaluated = cli.invoke(
        app, ["eval", "--dataset", f"cases:{cases_file}", *workflows, "--report", str(report_dir), "--no-progress"]
    )
    assert evaluated.exit_code == 0, evaluated.output
    (report_path,) = report_dir.glob("*.json")
    report = orjson.loads(report_path.read_bytes())
    assert report["configuration"]["workflows"] == str(SHIPPED)

    out = tmp_path / "enriched.ndjson"
    dead = tmp_path / "dead.ndjson"
    enriched = cli.invoke(
        app, ["enrich", str(alerts_file), "-o", str(out), *workflows, "-j", "1", "--dead-letter", str(dead)]
    )
    assert enriched.exit_code == 0, enriched.output

    catalog = load_catalog(
        shared_data / "attack" / "enterprise-attack.json", [shared_data / "attack" / "v18_to_v19_crosswalk.jsonl"]
    )
    assert report["configuration"]["catalog"]["fingerprint"] == catalog.fingerprint
    cases, _ = normalise_cases(load_cases(cases_file)[0], catalog)
    by_id = {c.id: c for c in cases}
    truths, predictions = [], []
    for row, line in zip(kept, out.read_text().splitlines(), strict=True):
        case = by_id.get(str(row["id"]))
        if case is None:  # a case the labels leave unscorable (excluded by both)
            continue
        techniques, tactics = seen_by_analyst(json.loads(line), catalog)
        truths.append(Truth(case.id, case.techniques, case.tactics, case.hard_negative))
        predictions.append(Prediction(case.id, techniques=techniques, tactics=tactics))
    independent = score(truths, predictions)
    assert independent["cases"] == report["metrics"]["cases"]
    for level in ("technique", "tactic"):
        ours = independent[level]["micro"]["f1"]
        theirs = report["metrics"][level]["micro"]["f1"]
        print(f"{level} micro-F1: eval {theirs:.4f}, enrich scored independently {ours:.4f}")
        assert abs(ours - theirs) <= TOLERANCE, (level, ours, theirs)
