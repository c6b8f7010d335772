from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mitre.assemble import EngineOptions, build_engine
from mitre.config import WorkflowsFile
from mitre.models import OutcomeStatus, RawAlert
from tests.helpers import LSASS_COMMAND, kibana_alert, threat_entry

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def engine(tmp_path: Path):
    return build_engine(WorkflowsFile(), options=EngineOptions(knowledge_base=(), cache_dir=tmp_path / "cache"))


def test_every_input_ends_enriched_skipped_or_dead_lettered(engine):
    items = [
        RawAlert(line=1, raw=json.dumps(kibana_alert(command_line=LSASS_COMMAND)).encode()),
        RawAlert(line=2, raw=b"{not json"),
        RawAlert(line=3, raw=b"[1]"),
        RawAlert(line=4, raw=json.dumps(kibana_alert(risk=10)).encode()),
        RawAlert(line=5, raw=b'{"unrelated": {"x": 1}}'),
    ]
    outcomes = engine.process_batch(items)
    assert [o.line for o in outcomes] == [1, 2, 3, 4, 5]
    assert [o.status for o in outcomes] == [
        OutcomeStatus.ENRICHED,
        OutcomeStatus.DEAD_LETTER,
        OutcomeStatus.DEAD_LETTER,
        OutcomeStatus.SKIPPED,
        OutcomeStatus.DEAD_LETTER,
    ]
    assert outcomes[1].raw == "{not json" and outcomes[1].reason.startswith("invalid_json")
    assert outcomes[3].alert["attackmap"]["reason"] == "below_risk_threshold"
    techniques = {t.technique_id for t in outcomes[0].mapping.result.techniques}
    assert "T1003.001" in techniques


def test_repeated_alert_is_served_from_cache(engine):
    first = engine.process(kibana_alert(command_line=LSASS_COMMAND))
    second = engine.process(kibana_alert(command_line=LSASS_COMMAND.replace("624", "9120")))
    assert not first.cache_hit and second.cache_hit
    assert second.alert["attackmap"]["cache_hit"] is True
    assert second.alert["threat"] == first.alert["threat"]


def test_extend_keeps_rule_tags_and_adds_indicator_technique(engine):
    alert = kibana_alert(threat=[threat_entry("TA0002", "Execution", "T1059", "T1059.001")], command_line=LSASS_COMMAND)
    outcome = engine.process(alert)
    assert outcome.decision.kind.value == "extend"
    assert {"T1059", "T1003"} <= set(outcome.alert["threat"]["technique"]["id"])


def test_validated_output_only_holds_catalog_ids(engine):
    alert = kibana_alert(
        command_line="powershell -enc SQBFAFgAIAAoAE4AZQB3AC0ATwBiAGoAZQBjAHQAIABOAGUAdAAuAFcAZQBiAEMAbABpAGUAbgB0ACkA"
    )
    outcome = engine.process(alert)
    for t in outcome.mapping.result.techniques:
        assert t.technique_id in engine.catalog.techniques
        assert set(t.tactic_ids) <= {x.id for x in engine.catalog.tactics_of(t.technique_id)}


def cli(*args: str, stdin: bytes | None = None, cwd: Path, env_extra: dict[str, str] | None = None):
    env = {**os.environ, "ATTACKMAP_HOME": str(cwd / "home"), **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "mitre", *args], input=stdin, capture_output=True, cwd=cwd, env=env, timeout=120
    )


def test_cli_enrich_file_with_dead_letters_exits_3(tmp_path: Path):
    src = tmp_path / "alerts.ndjson"
    src.write_text(
        json.dumps(kibana_alert(command_line=LSASS_COMMAND))
        + "\n\nbroken line\n"
        + json.dumps(kibana_alert(risk=5))
        + "\n"
    )
    result = cli("enrich", str(src), "-o", "out.ndjson", "--dead-letter", "dead.ndjson", cwd=tmp_path)
    assert result.returncode == 3, result.stderr.decode()
    out = [json.loads(line) for line in (tmp_path / "out.ndjson").read_text().splitlines()]
    assert len(out) == 2 and out[0]["attackmap"]["decision"] == "map" and out[1]["attackmap"]["decision"] == "skip"
    dead = [json.loads(line) for line in (tmp_path / "dead.ndjson").read_text().splitlines()]
    assert dead == [{"source": str(src), "line": 3, "reason": dead[0]["reason"], "raw": "broken line"}]
    assert "dead-lettered" in result.stderr.decode()


def test_cli_enrich_stdin_to_stdout_exits_0_and_leaves_no_dead_letter_file(tmp_path: Path):
    result = cli("enrich", "-", cwd=tmp_path, stdin=(json.dumps(kibana_alert()) + "\n").encode())
    assert result.returncode == 0, result.stderr.decode()
    enriched = json.loads(result.stdout.decode().splitlines()[0])
    assert enriched["attackmap"]["mapper"] == "local"
    assert not (tmp_path / "dead-letter.ndjson").exists()


def test_cli_usage_errors_exit_2(tmp_path: Path):
    assert cli("enrich", "missing.ndjson", cwd=tmp_path).returncode == 2
    bad = tmp_path / "workflows.yaml"
    bad.write_text("version: 1\nworkflows:\n  - name: x\n    decision: {mode: sometimes}\n")
    result = cli("enrich", "-", "--workflows", str(bad), cwd=tmp_path, stdin=b"{}\n")
    assert result.returncode == 2 and b"mode" in result.stderr


def test_cli_explain_json(tmp_path: Path):
    path = tmp_path / "alert.json"
    path.write_text(json.dumps(kibana_alert(command_line=LSASS_COMMAND)))
    result = cli("explain", str(path), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    payload = json.loads(result.stdout)
    assert payload["decision"]["kind"] == "map"
    chosen = {t["technique_id"]: t for t in payload["techniques"]}
    assert "T1003.001" in chosen
    assert any(
        e["source"] == "indicator" and e["field"] == "process.command_line" for e in chosen["T1003.001"]["evidence"]
    )


def test_cli_attack_update_installs_the_active_catalog(tmp_path: Path, shared_data: Path):
    result = cli("attack", "update", "--from", str(shared_data / "attack" / "enterprise-attack.json"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    assert (tmp_path / "home" / "catalog.json").is_file()
    info = cli("attack", "info", cwd=tmp_path)
    assert b"stix-2.0" in info.stdout and b"18.1" in info.stdout
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    assert cli("attack", "update", "--from", str(bad), cwd=tmp_path).returncode == 2


def _command_paths(group, prefix=()):
    import typer.main

    click_group = typer.main.get_command(group) if not hasattr(group, "commands") else group
    for name, command in click_group.commands.items():
        yield (*prefix, name)
        if hasattr(command, "commands"):
            yield from _command_paths(command, (*prefix, name))


def test_every_command_has_working_help():
    from typer.testing import CliRunner

    from mitre.cli import app

    paths = list(_command_paths(app))
    assert ("enrich",) in paths and ("attack", "update") in paths and ("budget", "kill") in paths
    for path in paths:
        result = CliRunner().invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output, result.exception)
