"""workflows.yaml: the shipped schema is in sync; validation points at the right line with a hint."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mitre.cli import app
from mitre.workflows_schema import Problem, check_shipped, generate_schema, schema_text, validate_text

REPO = Path(__file__).resolve().parents[1]

GOOD = """\
version: 1
workflows:
  - name: high-risk
    trigger:
      event: security.alert.high-risk
    decision:
      mode: hybrid
      min_risk_score: 50
"""


def problems(text: str) -> list[Problem]:
    return validate_text(text, "wf.yaml")


def test_shipped_schema_is_in_sync_with_the_models() -> None:
    assert check_shipped(REPO / "workflows.schema.json"), (
        "workflows.schema.json is out of date: run `attackmap workflows schema --write workflows.schema.json`"
    )


def test_schema_describes_the_models() -> None:
    schema = generate_schema()
    assert schema["$schema"].endswith("2020-12/schema")
    assert {"version", "catalog", "cache", "workflows"} <= set(schema["properties"])
    trigger = schema["$defs"]["Trigger"]["properties"]
    assert {"event", "index_pattern", "poll_interval_seconds", "batch_size", "webhook"} <= set(trigger)
    assert schema_text().endswith("\n")


def test_repository_workflows_file_is_valid() -> None:
    assert validate_text((REPO / "workflows.yaml").read_text()) == []


def test_good_file_has_no_problems() -> None:
    assert problems(GOOD) == []


def test_unknown_key_points_at_its_line_with_a_suggestion() -> None:
    text = GOOD.replace("    trigger:\n", "    triger:\n")
    [p] = problems(text)
    assert p.line == 4
    assert "workflows[0].triger: unknown key" in p.message
    assert p.hint == "did you mean 'trigger'?"
    assert str(p).startswith("wf.yaml:4: workflows[0].triger: unknown key (did you mean 'trigger'?)")


def test_bad_enum_points_at_the_value() -> None:
    [p] = problems(GOOD.replace("mode: hybrid", "mode: sometimes"))
    assert p.line == 7
    assert "'sometimes'" in p.message
    assert p.hint is not None and "'gap-fill'" in p.hint and "'always'" in p.hint


def test_wrong_type_and_range() -> None:
    [p] = problems(GOOD.replace("min_risk_score: 50", "min_risk_score: high"))
    assert p.line == 8 and "min_risk_score" in p.message
    [p] = problems(GOOD.replace("min_risk_score: 50", "min_risk_score: 150"))
    assert p.line == 8 and p.hint == "must be <= 100"


def test_removed_settings_say_where_their_meaning_went() -> None:
    [p] = problems(GOOD.replace("      event: security.alert.high-risk\n", "      match: {risk_score_gte: 70}\n"))
    assert p.line == 5 and "unknown key" in p.message and p.hint is not None and "decision.min_risk_score" in p.hint


def test_bad_workflow_name_pattern() -> None:
    [p] = problems(GOOD.replace("name: high-risk", "name: High Risk"))
    assert p.line == 3 and "does not match" in p.message


def test_several_problems_are_all_reported_in_line_order() -> None:
    text = GOOD.replace("version: 1", "version: 2").replace("mode: hybrid", "mode: x")
    found = problems(text)
    assert [p.line for p in found] == [1, 7]


def test_missing_required_key_points_at_the_parent() -> None:
    [p] = problems("workflows:\n  - description: no name\n")
    assert p.line == 2 and "'name' is a required property" in p.message


def test_yaml_syntax_error_has_its_line() -> None:
    [p] = problems("version: 1\nworkflows:\n  - name: a\n    trigger: [unclosed\n")
    assert p.message.startswith("YAML syntax")
    assert p.line >= 4


def test_duplicate_workflow_names() -> None:
    [p] = problems("workflows:\n  - name: a\n  - name: a\n")
    assert p.line == 3 and "duplicate" in p.message and p.hint == "first at line 2"


def test_cli_validate(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("    trigger:\n", "    triger:\n"))
    result = CliRunner().invoke(app, ["workflows", "validate", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}:4: workflows[0].triger: unknown key (did you mean 'trigger'?)" in result.output
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    assert CliRunner().invoke(app, ["workflows", "validate", str(good)]).exit_code == 0


def test_cli_show_and_schema(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    result = CliRunner().invoke(app, ["workflows", "show", "--workflows", str(good)])
    assert result.exit_code == 0 and "high-risk" in result.output
    result = CliRunner().invoke(app, ["workflows", "schema", "--write", str(tmp_path / "s.json")])
    assert result.exit_code == 0
    assert (tmp_path / "s.json").read_text() == schema_text()


def test_cli_deploy_needs_prefect_api_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    result = CliRunner().invoke(app, ["workflows", "deploy", "--workflows", str(good)])
    assert result.exit_code == 2 and "PREFECT_API_URL" in result.output
