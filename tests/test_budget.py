"""Prices, the ledger (SQLite, PostgreSQL and Elasticsearch), budget states, the budgeted mapper, the CLI."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from typer.testing import CliRunner

from mitre.budget.budget import Budget
from mitre.budget.ledger import ElasticLedger, LedgerEvent, SQLiteLedger
from mitre.budget.prices import PriceTable
from mitre.budget.report import spend_chart_html, status_report
from mitre.catalog import load_catalog
from mitre.config import BudgetSettings, DecisionSettings, MapperSettings, Workflow, WorkflowsFile
from mitre.engine import Engine
from mitre.indicators import load_indicators
from mitre.mappers.base import MapperContext
from mitre.mappers.budgeted import BudgetedMapper
from mitre.mappers.llm.anthropic import create_anthropic_mapper
from mitre.mappers.local import LocalMapper
from mitre.models import AlertFeatures, Decision, DecisionKind, Usage
from tests.llm_payloads import answer, anthropic_message

T0 = datetime(2026, 3, 14, 10, 0, tzinfo=UTC).timestamp()
URL = "https://api.anthropic.com/v1/messages"


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def message(input_tokens: int = 1000, output_tokens: int = 100) -> dict:
    return anthropic_message(
        answer(("T1059.001", "TA0002", 0.9), quote="powershell"),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read_input_tokens=0,
    )


def test_prices_from_the_table():
    p = PriceTable.load()
    m = 1_000_000
    assert p.cost("claude-haiku-4-5", Usage(input_tokens=m)) == pytest.approx(1.0)
    assert p.cost("claude-haiku-4-5-20251001", Usage(output_tokens=m)) == pytest.approx(5.0)
    assert p.cost("claude-haiku-4-5", Usage(cache_read_tokens=m)) == pytest.approx(0.10)
    assert p.cost("claude-haiku-4-5", Usage(cache_write_tokens=m)) == pytest.approx(1.25)
    assert p.cost("gpt-5-mini", Usage(input_tokens=m, output_tokens=m, cache_read_tokens=m)) == pytest.approx(2.275)
    assert p.cost("gpt-4.1-mini", Usage(input_tokens=m, output_tokens=m, cache_read_tokens=m)) == pytest.approx(2.10)
    assert p.cost("gpt-4o-mini-2024-07-18", Usage(input_tokens=m, output_tokens=m, cache_read_tokens=m)) == (
        pytest.approx(0.825)
    )
    assert p.cost("gpt-4o-mini", Usage(input_tokens=m), batch=True) == pytest.approx(0.075)
    assert p.cost("llama3.1:8b", Usage(input_tokens=m)) is None


def budget(tmp_path: Path, clock: Clock, **limits) -> Budget:
    settings = BudgetSettings(**{"daily_usd": 1.0, "monthly_usd": 10.0, "soft_limit_ratio": 0.8, **limits})
    return Budget(SQLiteLedger(tmp_path / "ledger.sqlite"), settings, "wf", clock=clock, sync_s=0)


def test_soft_limit_hard_trip_and_day_rollover(tmp_path):
    clock = Clock()
    b = budget(tmp_path, clock)
    assert b.check().state == "ok"
    b.record_call("anthropic", "claude-haiku-4-5", Usage(input_tokens=800_000))  # $0.80
    assert b.check().state == "soft"
    b.record_call("anthropic", "claude-haiku-4-5", Usage(input_tokens=200_000))  # $1.00: the daily limit
    state = b.check()
    assert state.state == "killed" and state.reason == "hard_limit"
    trips = b.ledger.events(kinds=["trip"])
    assert len(trips) == 1 and trips[0].detail["period"] == "day"
    assert b.check().state == "killed" and len(b.ledger.events(kinds=["trip"])) == 1  # recorded once
    clock.now += 86_400  # next UTC day: the period rolled over
    assert b.check().state == "ok"


def test_monthly_trip_kill_and_resume(tmp_path):
    clock = Clock()
    b = budget(tmp_path, clock, daily_usd=None, monthly_usd=2.0)
    b.record_call("openai", "gpt-5-mini", Usage(output_tokens=1_000_000))  # $2.00
    assert b.check().state == "killed"
    clock.now += 86_400
    assert b.check().state == "killed"  # still this month
    b.resume()
    assert b.check().state == "soft"  # resumed on the operator's authority: no re-trip, soft throttling
    b.kill("incident 42")
    assert b.check().state == "killed" and b.check().detail == "incident 42"
    b.resume()
    assert [e.kind for e in b.ledger.events(kinds=["trip", "kill", "resume"])] == ["trip", "resume", "kill", "resume"]


def llm(catalog, local, settings: MapperSettings):
    return create_anthropic_mapper(
        MapperContext(catalog=catalog, settings=settings, local=local),
        env={"ANTHROPIC_API_KEY": "sk-ant-test-0000000000"},
        sleep=lambda s: None,
    )


FEATS = AlertFeatures(
    rule_name="Encoded PowerShell", risk_score=60, fields={"process.command_line": "powershell -enc SQBFAFgA"}
)
MAP = Decision(kind=DecisionKind.MAP, reason="untagged_rule", detail="")
EXTEND = Decision(kind=DecisionKind.EXTEND, reason="indicator_fired", detail="")


@respx.mock
def test_budgeted_mapper_prices_calls_throttles_and_kills(tmp_path):
    catalog = load_catalog(None)
    settings = MapperSettings(provider="anthropic", cascade_confidence=None)
    local = LocalMapper(catalog, load_indicators(catalog), settings)
    clock = Clock()
    b = budget(tmp_path, clock, daily_usd=0.01)
    mapper = BudgetedMapper(llm(catalog, local, settings), local, b)
    route = respx.post(URL).mock(return_value=httpx.Response(200, json=message(1000, 100)))  # $0.0015 per call
    assert mapper.map(FEATS, MAP).fallback_reason is None
    calls = b.ledger.events(kinds=["llm_call"])
    assert len(calls) == 1 and calls[0].cost_usd == pytest.approx(0.0015)
    assert calls[0].input_tokens == 1000 and calls[0].model == "claude-haiku-4-5"
    for _ in range(5):
        mapper.map(FEATS, MAP)  # $0.009 total: past the soft limit ($0.008)
    assert b.check().state == "soft"
    assert mapper.map(FEATS, EXTEND).fallback_reason == "budget_soft_limit"  # extend is throttled
    n = route.call_count
    mapper.map(FEATS, MAP)  # untagged still mapped: $0.0105 ≥ $0.01
    assert route.call_count == n + 1
    result = mapper.map(FEATS, MAP)
    assert result.fallback_reason == "budget_exhausted" and result.mapper == "local"
    assert route.call_count == n + 1
    assert mapper.settings_hash() == mapper.inner.settings_hash() and mapper.name == "anthropic"


@respx.mock
def test_engine_telemetry_status_report_and_chart(tmp_path):
    from mitre.cache import MappingCache

    catalog = load_catalog(None)
    indicators = load_indicators(catalog)
    settings = MapperSettings(provider="anthropic", cascade_confidence=None)
    local = LocalMapper(catalog, indicators, settings)
    clock = Clock()
    b = budget(tmp_path, clock)
    mapper = BudgetedMapper(llm(catalog, local, settings), local, b)
    respx.post(URL).mock(return_value=httpx.Response(200, json=message()))
    config = WorkflowsFile(workflows=[Workflow(name="wf", decision=DecisionSettings(mode="hybrid"))])
    engine = Engine(catalog, indicators, config, "wf", mapper, MappingCache(tmp_path / "cache"))
    engine.observers.append(mapper.observe)

    def alert(risk: float, tagged: bool) -> dict:
        threat = (
            [
                {
                    "framework": "MITRE ATT&CK",
                    "tactic": {"id": "TA0002", "name": "Execution"},
                    "technique": [{"id": "T1059", "name": "x"}],
                }
            ]
            if tagged
            else []
        )
        return {
            "kibana.alert.rule.name": "R tagged" if tagged else "R untagged",
            "kibana.alert.risk_score": risk,
            "kibana.alert.rule.threat": threat,
            "process": {"name": "powershell.exe", "command_line": "powershell -enc SQBFAFgA"},
        }

    engine.process_batch([])
    from mitre.models import RawAlert

    engine.process_batch([RawAlert(line=i, alert=alert(73, False)) for i in range(5)])
    engine.process_batch([RawAlert(line=i, alert=alert(73, True)) for i in range(3)])
    engine.process_batch([RawAlert(line=i, alert=alert(10, False)) for i in range(2)])
    clock.now += 3600
    report = status_report(b)
    assert report.llm_calls_month == 1
    assert report.cache_hits == 4 and report.cache_misses == 1 and report.cache_hit_rate == pytest.approx(0.8)
    assert report.avoided_by_rule == 5  # 3 tagged without indicator + 2 below the risk threshold
    assert report.decisions["map:untagged_rule"] == 5
    assert report.state.spend_day == pytest.approx(0.0015)
    assert report.burn_usd_per_hour == pytest.approx(0.0015 / 6, rel=0.01)  # over the last 6 hours
    assert report.projected_month_usd > report.state.spend_month
    rules = {e.detail["rule"] for e in b.ledger.events(kinds=["decision"])}
    assert rules == {"R tagged", "R untagged"}
    html = spend_chart_html(report)
    assert html.startswith("<!doctype html>") and "<svg" in html and "<script" not in html


def test_cli_budget_status_kill_resume(tmp_path, monkeypatch):
    from mitre.cli import app

    (tmp_path / "workflows.yaml").write_text(
        "version: 1\nworkflows:\n  - name: wf\n    budget: {daily_usd: 5, monthly_usd: 100}\n"
    )
    monkeypatch.setenv("ATTACKMAP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ATTACKMAP_WORKFLOWS", str(tmp_path / "workflows.yaml"))
    ledger = SQLiteLedger(tmp_path / "home" / "ledger.sqlite")
    ledger.append(
        [
            LedgerEvent(
                ts=datetime.now(UTC).timestamp(),
                kind="llm_call",
                workflow="wf",
                model="claude-haiku-4-5",
                input_tokens=1000,
                cost_usd=0.25,
            )
        ]
    )
    runner = CliRunner()
    res = runner.invoke(app, ["budget", "status", "--json", "--chart", str(tmp_path / "spend.html")])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["state"] == "ok" and data["spend_today_usd"] == pytest.approx(0.25)
    assert (tmp_path / "spend.html").read_text().count("<rect") >= 1
    assert runner.invoke(app, ["budget", "kill", "--reason", "drill"]).exit_code == 0
    assert json.loads(runner.invoke(app, ["budget", "status", "--json"]).output)["state"] == "killed"
    assert runner.invoke(app, ["budget", "resume"]).exit_code == 0
    assert json.loads(runner.invoke(app, ["budget", "status", "--json"]).output)["state"] == "ok"
    table = runner.invoke(app, ["budget", "status"])
    assert table.exit_code == 0 and "cache hit rate" in table.output


def assert_ledger_trips_and_resumes(ledger: Any) -> None:
    """A shared ledger sums spend, records the trip once and the resume after it, in order."""
    b = Budget(ledger, BudgetSettings(daily_usd=1.0), "wf", clock=Clock(), sync_s=0)
    b.record_call("anthropic", "claude-haiku-4-5", Usage(input_tokens=600_000))
    b.record_call("anthropic", "claude-haiku-4-5", Usage(input_tokens=500_000))
    assert ledger.spend("wf", T0 - 10) == pytest.approx(1.1)
    assert b.check().state == "killed"
    assert ledger.last_control("wf").kind == "trip"
    b.resume()
    assert b.check().state == "soft"
    assert [e.kind for e in ledger.events(kinds=["llm_call", "trip", "resume"])] == [
        "llm_call",
        "llm_call",
        "trip",
        "resume",
    ]


@pytest.mark.elasticsearch
def test_elasticsearch_ledger(es_client, es_index_name):
    assert_ledger_trips_and_resumes(ElasticLedger(es_client, es_index_name))


def test_postgresql_ledger(postgres_url):
    from mitre.budget.ledger_postgres import PostgresLedger

    ledger = PostgresLedger(postgres_url, table=f"ledger_{uuid.uuid4().hex[:8]}")
    assert_ledger_trips_and_resumes(ledger)
    assert ledger.events(kinds=["llm_call"])[0].detail["priced"] is True


def _ledgers(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> list[Any]:
    """Eight workers' own connections to one shared ledger."""
    if kind == "sqlite":
        return [SQLiteLedger(tmp_path / "shared.sqlite") for _ in range(8)]
    if kind == "postgresql":
        from mitre.budget.ledger_postgres import PostgresLedger

        url, table = request.getfixturevalue("postgres_url"), f"ledger_{uuid.uuid4().hex[:8]}"
        return [PostgresLedger(url, table) for _ in range(8)]
    client, index = request.getfixturevalue("es_client"), request.getfixturevalue("es_index_name")
    return [ElasticLedger(client, index) for _ in range(8)]


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "elasticsearch"])
def test_workers_crossing_the_hard_limit_at_once_record_one_trip(kind: str, tmp_path: Path, request):
    ledgers = _ledgers(kind, tmp_path, request)
    ledgers[0].append([LedgerEvent(ts=T0, kind="llm_call", workflow="wf", cost_usd=1.5, model="claude-haiku-4-5")])
    workers = [Budget(ledger, BudgetSettings(daily_usd=1.0), "wf", clock=Clock(), sync_s=0) for ledger in ledgers]
    barrier = threading.Barrier(len(workers))
    states: list[str] = []

    def check(b: Budget) -> None:
        barrier.wait()
        states.append(b.check().state)

    threads = [threading.Thread(target=check, args=(b,)) for b in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert states == ["killed"] * len(workers)
    assert len(ledgers[0].events(kinds=["trip"])) == 1
    assert all(b.check().state == "killed" for b in workers)
    assert len(ledgers[0].events(kinds=["trip"])) == 1
