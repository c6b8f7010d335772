"""The eval's dev/holdout split and its scoring of what the user receives (rule tags on skip/extend)."""

from __future__ import annotations

import pytest

from evals.datasets import SPLITS, Case, select_split, split_of
from evals.metrics import Prediction, Truth, score
from evals.runner import scoring_decision, user_prediction
from mitre.catalog import Catalog
from mitre.config import DecisionSettings, OptOuts
from mitre.enrich import enrich_alert
from mitre.features import extract_features
from mitre.models import Decision, DecisionKind, MappingResult, TechniqueScore, ValidatedMapping


def _case(case_id: str, group: str | None, alert: dict | None = None) -> Case:
    return Case(id=case_id, alert=alert or {"message": case_id}, techniques=("T1059",), group=group)


def test_split_is_deterministic_disjoint_and_keeps_groups_together() -> None:
    cases = [_case(f"c{i}", f"g{i // 3}") for i in range(60)] + [_case("lone", None)]
    dev, holdout = select_split(cases, "dev"), select_split(cases, "holdout")
    assert {c.id for c in dev} | {c.id for c in holdout} == {c.id for c in cases}
    assert not {c.id for c in dev} & {c.id for c in holdout}
    assert dev and holdout
    for group in {c.group for c in cases}:
        assert len({split_of(c) for c in cases if c.group == group}) == 1
    assert [split_of(c) for c in cases] == [split_of(c) for c in cases]  # no hidden state
    assert select_split(cases, None) == cases
    assert set(SPLITS) == {"dev", "holdout"}
    with pytest.raises(ValueError, match="unknown split"):
        select_split(cases, "test")


TAGGED_ALERT = {
    "kibana.alert.rule.name": "LSASS dump",
    "kibana.alert.rule.threat": [
        {
            "framework": "MITRE ATT&CK",
            "tactic": {"id": "TA0006", "name": "Credential Access", "reference": "x"},
            "technique": [{"id": "T1003", "name": "x", "reference": "x", "subtechnique": [{"id": "T1003.001"}]}],
        }
    ],
}


def _mapping(*ids: str) -> ValidatedMapping:
    scores = tuple(TechniqueScore(technique_id=t, confidence=0.9, tactic_ids=("TA0005",)) for t in ids)
    return ValidatedMapping(result=MappingResult(mapper="local", techniques=scores))


def test_skipped_tagged_rule_is_scored_as_its_own_tags(catalog: Catalog) -> None:
    case = _case("t", "g", TAGGED_ALERT)
    feats = extract_features(case.alert)
    skip = Decision(kind=DecisionKind.SKIP, reason="rule_tagged_no_indicator", detail="")
    assert skip.kind is DecisionKind.SKIP  # a skipped alert is not enriched: nothing but its rule's tags
    got = user_prediction(Prediction(case_id="t"), feats, None, catalog)
    assert got.techniques == ("T1003.001",)  # the parent is implied by its sub-technique
    assert got.tactics == ("TA0006",)
    assert got.confidences == {"T1003.001": 1.0}


def test_extended_alert_is_scored_as_rule_tags_plus_mapper_additions(catalog: Catalog) -> None:
    case = _case("t", "g", TAGGED_ALERT)
    feats = extract_features(case.alert)
    extend = Decision(kind=DecisionKind.EXTEND, reason="indicator_fired", detail="")
    base = Prediction(case_id="t", techniques=("T1218.011",), confidences={"T1218.011": 0.9})
    enriched = enrich_alert(
        case.alert, feats, extend, _mapping("T1218.011"), catalog, cache_hit=False, settings_hash=""
    )
    got = user_prediction(base, feats, enriched, catalog)
    assert set(got.techniques) == {"T1003.001", "T1218.011"}
    assert set(got.tactics) == {"TA0005", "TA0006"}
    assert got.confidences == {"T1003.001": 1.0, "T1218.011": 0.9}


def test_scoring_decision_keeps_the_rule_but_drops_the_enrichment_filters() -> None:
    settings = DecisionSettings(min_risk_score=70, opt_outs=OptOuts(rule_ids=["r1"]), mode="gap-fill")
    scored = scoring_decision(settings)
    assert scored.mode == "gap-fill"
    assert scored.min_risk_score == 0 and not scored.opt_outs.rule_ids
    assert scoring_decision(settings, "mapper").mode == "always"  # mapper scoring maps every alert


def test_hard_negative_abstention() -> None:
    truths = [
        Truth("a", (), (), hard_negative=True),
        Truth("b", (), (), hard_negative=True),
        Truth("c", ("T1059",), ()),
    ]
    preds = [Prediction("a"), Prediction("b", techniques=("T1059",)), Prediction("c", techniques=("T1059",))]
    assert score(truths, preds)["hard_negative_abstention"] == pytest.approx(0.5)
    assert score(truths[2:], preds[2:])["hard_negative_abstention"] == 1.0


def test_eval_command_writes_reports_whose_outcomes_match_the_cases(tmp_path, monkeypatch) -> None:
    """`attackmap eval --report` end to end on the hand-written cases (a workflows file with the offline
    catalog and no knowledge base): JSON, Markdown and HTML, with case outcomes that agree with the
    per-case predictions and the configuration measured stated."""
    import orjson
    from typer.testing import CliRunner

    from mitre.cli import app

    monkeypatch.setenv("ATTACKMAP_HOME", str(tmp_path / "home"))
    workflows = tmp_path / "workflows.yaml"
    workflows.write_text("version: 1\nworkflows:\n  - name: offline\n    mapper: {knowledge_base: []}\n")
    result = CliRunner().invoke(
        app,
        ["eval", "--dataset", "handwritten", "--workflows", str(workflows), "--report", str(tmp_path), "--no-progress"],
    )
    assert result.exit_code == 0, result.output
    report = orjson.loads((tmp_path / "cases-no-kb.json").read_bytes())
    conf = report["configuration"]
    assert conf["workflows"] == str(workflows.resolve()) and conf["workflow"] == "offline"
    assert conf["mapper"] == "local" and conf["knowledge_base"]["sources"] == []
    assert conf["catalog"]["fingerprint"] and conf["scoring"].startswith("user")
    outcomes = report["metrics"]["outcomes"]
    counted = {"right_only": 0, "right_plus_extra": 0, "wrong": 0, "none": 0}
    for row in report["per_case"]:
        expected, predicted = set(row["expected"]), set(row["predicted"])
        if expected:
            right = expected & predicted
            kind = (
                "none"
                if not predicted
                else "wrong"
                if not right
                else "right_plus_extra"
                if predicted - right
                else "right_only"
            )
            counted[kind] += 1
    assert {k: outcomes[k] for k in counted} == counted
    assert outcomes["positives"] == sum(counted.values()) > 150
    assert report["headline"]["top1_accuracy"] == outcomes["top1_accuracy"]
    markdown = (tmp_path / "cases-no-kb.md").read_text()
    assert f"| only right techniques | {counted['right_only']} |" in markdown
    page = (tmp_path / "cases-no-kb.html").read_text()
    assert f"<td>only right techniques</td><td>{counted['right_only']}</td>" in page


def test_cross_validation_leaves_each_folds_rows_out_of_the_configured_knowledge_base(tmp_path, monkeypatch) -> None:
    """The evaluated corpus is in the workflow's knowledge base: each fold's engine learns from it less
    that fold's rows, found by id or, for an id-less row, by file and line."""
    import json

    from evals.runner import Runner, prepare
    from mitre.assemble import EngineOptions
    from mitre.config import load_workflows

    rules = tmp_path / "rules.jsonl"
    rows = [
        {"id": f"r{i}", "name": f"{verb} rule {i}", "description": f"{verb} {i}", "techniques": [tid]}
        for i, (verb, tid) in enumerate([("powershell encoded", "T1059.001"), ("lsass dump", "T1003.001")] * 5)
    ]
    rows[3].pop("id")  # an id-less row: the knowledge base names it rules.jsonl:4
    rules.write_text("".join(json.dumps(r) + "\n" for r in rows))
    workflows = tmp_path / "workflows.yaml"
    workflows.write_text("version: 1\nworkflows:\n  - name: w\n    mapper: {knowledge_base: [rules.jsonl]}\n")
    runner = Runner(load_workflows(workflows), options=EngineOptions(cache=False), progress=False)
    seen: list[set[str]] = []
    build = runner.engine

    def engine(knowledge=None):
        seen.append({e.id for e in knowledge.base.examples})
        return build(knowledge)

    monkeypatch.setattr(runner, "engine", engine)
    data = prepare(f"rules:{rules}", runner.catalog)
    result = runner.run(data, cv=2)
    assert result.folds is not None and len(seen) == 2
    ids = [c.id for c in data.cases]
    assert "rules.jsonl:4" not in ids and any(c.origin == "rules.jsonl:4" for c in data.cases)
    for fold, known in enumerate(seen):
        held = {c.id for c, f in zip(data.cases, result.folds, strict=True) if f == fold}
        held |= {c.origin for c, f in zip(data.cases, result.folds, strict=True) if f == fold}
        rest = {c.id for c, f in zip(data.cases, result.folds, strict=True) if f != fold}
        assert not known & held and rest - {"rules-4"} <= known | {"rules.jsonl:4"}
    assert result.configuration["knowledge_base"]["cross_validation"].startswith("2 folds")
