"""`attackmap enrich --batch`: a backfill through the vendor batch APIs (the stand-in serves Anthropic
Message Batches and OpenAI Files + Batch in their wire formats), resumable, priced at batch rates."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mitre.backfill import BatchState, prefill
from mitre.cache import MappingCache
from mitre.cli import app
from mitre.config import DecisionSettings, MapperSettings, Workflow, WorkflowsFile
from mitre.engine import Engine
from mitre.mappers.base import MapperContext
from mitre.mappers.llm.anthropic import create_anthropic_mapper
from mitre.mappers.llm.openai import create_openai_mapper
from mitre.mappers.local import LocalMapper
from mitre.models import RawAlert
from tests.llm_standin import StandIn, realistic

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "alerts.ndjson"


def engine(catalog, indicators, vendor: str, url: str, tmp_path: Path) -> Engine:
    settings = MapperSettings(provider=vendor, cascade_confidence=None)
    context = MapperContext(catalog=catalog, settings=settings, local=LocalMapper(catalog, indicators, settings))
    if vendor == "anthropic":
        env = {"ANTHROPIC_API_KEY": "sk-ant-test-0000000000", "ANTHROPIC_BASE_URL": url}
        mapper = create_anthropic_mapper(context, env=env)
    else:
        mapper = create_openai_mapper(
            context, env={"OPENAI_API_KEY": "sk-test-00000000", "OPENAI_BASE_URL": url + "/v1"}
        )
    config = WorkflowsFile(workflows=[Workflow(name="t", decision=DecisionSettings(mode="always"))])
    return Engine(catalog, indicators, config, "t", mapper, MappingCache(tmp_path / "cache"))


@pytest.mark.parametrize("vendor", ["anthropic", "openai"])
def test_an_interrupted_batch_resumes_without_a_second_submission(catalog, indicators, tmp_path, vendor):
    state = tmp_path / "state.json"
    with StandIn(realistic({t.id: t.shortname for t in catalog.tactics}), batch_polls_before_end=3) as standin:
        submit = "/v1/messages/batches" if vendor == "anthropic" else "/v1/batches"
        with pytest.raises(TimeoutError):  # the run is cut off while the batch is still processing
            prefill(
                engine(catalog, indicators, vendor, standin.url, tmp_path),
                EXAMPLES,
                state,
                max_polls=1,
                sleep=lambda s: None,
            )
        first = json.loads(state.read_text())
        assert first["batch_id"] and not first["results"]
        eng = engine(catalog, indicators, vendor, standin.url, tmp_path)
        done = prefill(eng, EXAMPLES, state, poll_interval_s=0, sleep=lambda s: None)
        assert done.batch_id == first["batch_id"] and standin.count(submit) == 1
        realtime = "/v1/messages" if vendor == "anthropic" else "/v1/chat/completions"
        lines = [RawAlert(line=i, raw=raw.encode()) for i, raw in enumerate(EXAMPLES.read_text().splitlines(), 1)]
        outcomes = eng.process_batch(lines)
        assert standin.count(realtime) == 0  # every mapping came from the batch
    answered = [o for o in outcomes if o.mapping is not None and o.mapping.result.mapper == vendor]
    assert answered and len(answered) == len(done.results)
    assert BatchState.load(state, first["identity"]).results.keys() == done.results.keys()


def test_attackmap_enrich_batch_writes_batch_priced_calls_to_the_ledger(catalog, tmp_path, monkeypatch):
    workflows = tmp_path / "workflows.yaml"
    workflows.write_text(
        "version: 1\nworkflows:\n  - name: backfill\n    decision: {mode: always}\n"
        "    mapper: {provider: anthropic, cascade_confidence: null}\n"
    )
    with StandIn(realistic({t.id: t.shortname for t in catalog.tactics})) as standin:
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-0000000000")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", standin.url)
        monkeypatch.setenv("ATTACKMAP_HOME", str(tmp_path / "home"))
        out = tmp_path / "out.ndjson"
        result = CliRunner().invoke(
            app,
            [
                "enrich",
                str(EXAMPLES),
                "-o",
                str(out),
                "--batch",
                "--batch-state",
                str(tmp_path / "state.json"),
                "--poll-interval",
                "0",
                "--workflows",
                str(workflows),
                "-j",
                "1",
            ],
        )
        assert result.exit_code in (0, 3), result.output
        assert standin.count("/v1/messages") == 0 and standin.count("/v1/messages/batches") == 1
    enriched = [json.loads(line) for line in out.read_text().splitlines()]
    assert any(doc["attackmap"].get("mapper") == "anthropic" for doc in enriched)
    with sqlite3.connect(tmp_path / "home" / "ledger.sqlite") as db:
        rows = db.execute("SELECT detail, cost_usd FROM events WHERE kind='llm_call'").fetchall()
    assert rows and all(json.loads(detail)["batch"] for detail, _ in rows)
