"""Black-box: the real anthropic and openai SDKs, over real HTTP, against the local vendor stand-in
(tests/llm_standin.py), through the whole engine. What the issue's "done when" asks:

- answers with tactic names or shortnames are used, and no hallucinated ID reaches an alert;
- 1,000 identical alerts cost at most 2 calls (one retry), in one batch and in concurrent batches;
- a 429 storm and a dead endpoint lose no alert: each ends enriched, with a fallback reason if need be.
"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from mitre.cache import MappingCache
from mitre.config import DecisionSettings, MapperSettings, Workflow, WorkflowsFile
from mitre.engine import Engine
from mitre.mappers.base import MapperContext
from mitre.mappers.llm.anthropic import create_anthropic_mapper
from mitre.mappers.llm.openai import create_openai_mapper
from mitre.mappers.llm.resilience import Resilience
from mitre.mappers.local import LocalMapper
from mitre.models import OutcomeStatus, RawAlert, RunSummary
from tests.llm_standin import Fault, StandIn, realistic

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "alerts.ndjson"
CASES = Path(__file__).resolve().parents[1] / "evals" / "cases"


def alerts() -> list[dict[str, Any]]:
    docs = [json.loads(line) for line in EXAMPLES.read_text().splitlines() if line.strip()]
    for path in sorted(CASES.glob("*.jsonl"))[:3]:
        docs += [json.loads(line)["alert"] for line in path.read_text().splitlines() if line.strip()]
    return [d for d in docs if isinstance(d, dict)]


@pytest.fixture(scope="module")
def local(catalog, indicators):
    return LocalMapper(catalog, indicators, MapperSettings(cascade_confidence=None))


def engine(
    catalog, indicators, local, url: str, tmp_path: Path, *, vendor: str = "anthropic", attempts: int = 3
) -> Engine:
    settings = MapperSettings(provider=vendor, cascade_confidence=None)
    context = MapperContext(catalog=catalog, settings=settings, local=local)
    resilience = Resilience(max_attempts=attempts, breaker_threshold=1000, timeout_s=5)
    if vendor == "anthropic":
        env = {"ANTHROPIC_API_KEY": "sk-ant-test-0000000000", "ANTHROPIC_BASE_URL": url}
        mapper = create_anthropic_mapper(context, env=env, sleep=lambda s: None, resilience=resilience)
    else:
        env = {"OPENAI_API_KEY": "sk-proj-test-0000000000", "OPENAI_BASE_URL": url + "/v1"}
        mapper = create_openai_mapper(context, env=env, sleep=lambda s: None, resilience=resilience)
    config = WorkflowsFile(workflows=[Workflow(name="t", decision=DecisionSettings(mode="always"))])
    return Engine(catalog, indicators, config, "t", mapper, MappingCache(tmp_path / "cache"))


def run(eng: Engine, docs: list[dict[str, Any]]) -> tuple[list, RunSummary]:
    outcomes = eng.process_batch([RawAlert(line=i, alert=d) for i, d in enumerate(docs)])
    summary = RunSummary()
    for o in outcomes:
        summary.add(o)
    return outcomes, summary


def ids_on(alert: dict[str, Any]) -> set[str]:
    technique = alert.get("threat", {}).get("technique", {})
    return set(technique.get("id", [])) | set(technique.get("subtechnique", {}).get("id", []))


@pytest.mark.parametrize("vendor", ["anthropic", "openai"])
def test_real_answers_are_used_and_no_hallucinated_id_reaches_an_alert(catalog, indicators, local, tmp_path, vendor):
    docs = alerts()
    with StandIn(realistic({t.id: t.shortname for t in catalog.tactics})) as standin:
        outcomes, summary = run(engine(catalog, indicators, local, standin.url, tmp_path, vendor=vendor), docs)
    assert len(outcomes) == len(docs) and summary.dead_letter == {}
    enriched = [o for o in outcomes if o.status is OutcomeStatus.ENRICHED]
    answered = [o for o in enriched if o.mapping.result.mapper == vendor]
    assert len(answered) >= 0.9 * len(enriched)  # tactic shortnames and names did not throw answers away
    assert summary.answered_by[vendor] == len(answered)
    for o in enriched:
        assert ids_on(o.alert) <= set(catalog.techniques)
        assert "T1999.999" not in json.dumps(o.alert["threat"])
    dropped = [i for o in answered for i in o.mapping.issues if i.code == "llm_unknown_technique"]
    assert dropped  # the invented ID was dropped with its reason, the rest of the answer kept
    assert all(t.tactic_ids for o in answered for t in o.mapping.result.techniques)
    assert summary.llm["calls"] == standin.count("/v1/messages" if vendor == "anthropic" else "/v1/chat/completions")
    assert summary.llm["cache_read_tokens"] > 0  # the static prefix was read from the vendor's cache


def same_alert(i: int) -> dict[str, Any]:
    return {
        "@timestamp": "2026-11-30T10:00:00.000Z",
        "kibana.alert.uuid": f"00000000-0000-4000-8000-{i:012d}",
        "kibana.alert.rule.name": "Untagged suspicious process",
        "kibana.alert.risk_score": 73,
        "host": {"name": f"wks-{i}", "os": {"type": "windows"}},
        "user": {"name": f"user{i}"},
        "process": {"name": "svchosts.exe", "command_line": r"C:\Users\Public\svchosts.exe -k netsvcs"},
    }


def unusable(alert: dict[str, Any], candidates: list[str]) -> dict[str, Any]:
    return {"techniques": [{"technique_id": "T9999", "tactic": "x", "confidence": 0.9, "evidence": []}]}


def test_1000_identical_alerts_cost_at_most_two_calls_in_one_batch(catalog, indicators, local, tmp_path):
    with StandIn(unusable) as standin:
        outcomes, summary = run(
            engine(catalog, indicators, local, standin.url, tmp_path), [same_alert(i) for i in range(1000)]
        )
    assert standin.count("/v1/messages") == 2  # the answer and its one retry; the fallback is shared
    assert all(o.status is OutcomeStatus.ENRICHED for o in outcomes)
    assert summary.fallbacks == {"unknown_technique_ids": 1000} and summary.llm["calls"] == 2


def test_1000_identical_alerts_cost_at_most_two_calls_across_concurrent_batches(catalog, indicators, local, tmp_path):
    with StandIn(unusable, delay_s=0.3) as standin:
        eng = engine(catalog, indicators, local, standin.url, tmp_path)
        results: list[list] = [[] for _ in range(4)]

        def batch(k: int) -> None:
            results[k] = eng.process_batch([RawAlert(line=i, alert=same_alert(k * 250 + i)) for i in range(250)])

        threads = [threading.Thread(target=batch, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert standin.count("/v1/messages") <= 2
    assert sum(len(r) for r in results) == 1000
    assert all(o.status is OutcomeStatus.ENRICHED for r in results for o in r)


def test_a_429_storm_loses_no_alert(catalog, indicators, local, tmp_path):
    docs = alerts()[:40]
    storm = [Fault(429, "rate_limit_error", retry_after="0")] * 60
    with StandIn(realistic({t.id: t.shortname for t in catalog.tactics}), faults=list(storm)) as standin:
        outcomes, summary = run(engine(catalog, indicators, local, standin.url, tmp_path, attempts=4), docs)
    assert len(outcomes) == len(docs) and summary.dead_letter == {}
    assert summary.enriched + summary.no_technique + sum(summary.skipped.values()) == len(docs)
    assert summary.fallbacks.get("provider_error:rate_limited", 0) > 0  # storm victims fell back, counted
    assert summary.answered_by["anthropic"] > 0  # and the storm passed


def test_a_dead_endpoint_loses_no_alert(catalog, indicators, local, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before use: nothing listens there
    docs = alerts()[:20]
    outcomes, summary = run(engine(catalog, indicators, local, f"http://127.0.0.1:{port}", tmp_path), docs)
    assert len(outcomes) == len(docs) and summary.dead_letter == {}
    assert set(summary.fallbacks) == {"provider_error:connection"}
    assert summary.answered_by == {"local": summary.enriched + summary.no_technique}
