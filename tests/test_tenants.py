"""Tenant scope: the tenant travels through decision, cache key, outcome memo, budget and outputs, and
one tenant's settings never touch another's alerts."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from mitre.assemble import EngineOptions, build_engine
from mitre.cli import app
from mitre.config import OptOuts, TenantSettings, Workflow, WorkflowsFile
from mitre.engine import Engine
from mitre.features import extract_features
from mitre.models import OutcomeStatus
from tests.helpers import LSASS_COMMAND, kibana_alert


def _engine(tmp_path: Path, **tenants: TenantSettings) -> Engine:
    workflow = Workflow(name="w", tenants=tenants)
    options = EngineOptions(knowledge_base=(), cache_dir=tmp_path / "cache")
    return build_engine(WorkflowsFile(workflows=[workflow]), options=options)


def _alert(space: str) -> dict:
    alert = kibana_alert(rule_name="Dump", command_line=LSASS_COMMAND, process_name="rundll32.exe")
    alert["kibana.space_ids"] = [space]
    return alert


def test_tenant_is_read_from_each_shape_and_an_override_wins() -> None:
    assert extract_features(_alert("red")).tenant == "red"
    assert extract_features({"tenant_id": "acme", "process": {"name": "cmd.exe"}}).tenant == "acme"
    assert extract_features({"tenant": {"id": "acme"}, "process": {"name": "cmd.exe"}}).tenant == "acme"
    stamped = {"attackmap": {"tenant": "blue"}, "kibana.space_ids": ["red"], "process": {"name": "cmd.exe"}}
    assert extract_features(stamped).tenant == "blue"


def test_same_alert_in_two_tenants_shares_nothing(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    red = engine.process(_alert("red"))
    red_again = engine.process(_alert("red"))
    blue = engine.process(_alert("blue"))
    assert red.status is OutcomeStatus.ENRICHED and red_again.cache_hit
    assert not blue.cache_hit, "another tenant's cache entry (its evidence quotes the alert) is not served"
    assert (blue.alert or {})["attackmap"]["tenant"] == "blue"
    assert (red.alert or {})["attackmap"]["tenant"] == "red"
    red_features, blue_features = extract_features(_alert("red")), extract_features(_alert("blue"))
    red_key = engine.mapping_key(red_features, engine.decide(red_features))
    assert red_key != engine.mapping_key(blue_features, engine.decide(blue_features))
    # A caller that knows the tenant (an API key's) overrides what the alert says.
    forced = engine.process(_alert("red"), tenant="green")
    assert (forced.alert or {})["attackmap"]["tenant"] == "green" and not forced.cache_hit


def test_tenant_opt_outs_apply_to_that_tenant_only(tmp_path: Path) -> None:
    engine = _engine(tmp_path, red=TenantSettings(opt_outs=OptOuts(rule_ids=["rule-dump"])))
    red = engine.process(_alert("red"))
    blue = engine.process(_alert("blue"))
    assert red.status is OutcomeStatus.SKIPPED and red.reason == "opted_out"
    assert (red.alert or {})["attackmap"]["tenant"] == "red"
    assert blue.status is OutcomeStatus.ENRICHED
    event = {"event_type": "nmap_scan_completed", "tenant_id": "red", "attributes": {}}
    opted = _engine(tmp_path, red=TenantSettings(opt_outs=OptOuts(rule_ids=["nmap_scan_completed"])))
    assert opted.process(copy.deepcopy(event)).reason == "opted_out"
    assert opted.process({**event, "tenant_id": "blue"}).status is OutcomeStatus.ENRICHED


def test_tenant_budget_is_its_own_ledger_account(tmp_path: Path, monkeypatch) -> None:
    workflow = Workflow.model_validate(
        {"name": "w", "budget": {"daily_usd": 5}, "tenants": {"red": {"budget": {"daily_usd": 1}}, "blue": {}}}
    )
    assert workflow.budget_account("red")[0] == "w@red" and workflow.budget_account("red")[1].daily_usd == 1
    assert workflow.budget_account("blue") == ("w", workflow.budget)
    assert workflow.budget_account(None) == ("w", workflow.budget)
    monkeypatch.setenv("ATTACKMAP_HOME", str(tmp_path))
    config = tmp_path / "workflows.yaml"
    config.write_text(yaml.safe_dump({"workflows": [workflow.model_dump(mode="json")]}))
    result = CliRunner().invoke(app, ["budget", "status", "--workflows", str(config), "--tenant", "red", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["workflow"] == "w@red"
    unknown = CliRunner().invoke(app, ["budget", "status", "--workflows", str(config), "--tenant", "nope"])
    assert unknown.exit_code == 2
