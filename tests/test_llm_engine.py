"""LLM mappers inside the Engine: single-flight through the cache, fallbacks not cached."""

from __future__ import annotations

import threading
import time

import httpx
import respx

from mitre.cache import MappingCache
from mitre.catalog import load_catalog
from mitre.config import DecisionSettings, MapperSettings, Workflow, WorkflowsFile
from mitre.engine import Engine
from mitre.indicators import load_indicators
from mitre.mappers.base import MapperContext
from mitre.mappers.llm.anthropic import create_anthropic_mapper
from mitre.mappers.llm.resilience import Resilience
from mitre.mappers.local import LocalMapper
from mitre.models import OutcomeStatus
from tests.llm_payloads import answer, anthropic_message

URL = "https://api.anthropic.com/v1/messages"
MESSAGE = anthropic_message(
    answer(("T1003.001", "TA0006", 0.9), quote="comsvcs.dll, MiniDump"),
    input_tokens=900,
    output_tokens=80,
    cache_read_input_tokens=0,
)


def alert(i: int) -> dict:
    return {
        "@timestamp": f"2026-10-03T08:14:{i % 60:02d}.511Z",
        "kibana.alert.uuid": f"5b1c0d9e-2f44-4a8c-9d2e-{i:012d}",
        "kibana.alert.rule.name": "Untagged LSASS access",
        "kibana.alert.rule.type": "query",
        "kibana.alert.risk_score": 73,
        "host": {"name": f"wks-{i:04d}", "os": {"type": "windows"}},
        "user": {"name": f"user{i}"},
        "process": {
            "name": "rundll32.exe",
            "command_line": rf"rundll32.exe C:\Windows\System32\comsvcs.dll, MiniDump {600 + i} "
            rf"C:\Users\user{i}\AppData\Local\Temp\lsass.dmp full",
        },
    }


def engine(tmp_path, resilience: Resilience | None = None) -> Engine:
    catalog = load_catalog(None)
    indicators = load_indicators(catalog)
    settings = MapperSettings(provider="anthropic", cascade_confidence=None)  # every alert reaches the model
    local = LocalMapper(catalog, indicators, settings)
    mapper = create_anthropic_mapper(
        MapperContext(catalog=catalog, settings=settings, local=local),
        env={"ANTHROPIC_API_KEY": "sk-ant-test-0000000000"},
        sleep=lambda s: None,
        resilience=resilience,
    )
    config = WorkflowsFile(workflows=[Workflow(name="t", decision=DecisionSettings(mode="always"))])
    return Engine(catalog, indicators, config, "t", mapper, MappingCache(tmp_path / "cache"))


@respx.mock
def test_1000_concurrent_identical_alerts_make_exactly_one_http_call(tmp_path):
    def slow(request: httpx.Request) -> httpx.Response:
        time.sleep(0.3)  # keep the first call in flight while the others arrive
        return httpx.Response(200, json=MESSAGE)

    route = respx.post(URL).mock(side_effect=slow)
    eng = engine(tmp_path)
    n = 1000
    barrier = threading.Barrier(n)
    outcomes: list = [None] * n

    def worker(i: int) -> None:
        barrier.wait()
        outcomes[i] = eng.process(alert(i))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert route.call_count == 1
    assert all(o.status is OutcomeStatus.ENRICHED for o in outcomes)
    assert {o.mapping.result.techniques[0].technique_id for o in outcomes} == {"T1003.001"}
    assert sum(1 for o in outcomes if not o.cache_hit) == 1


@respx.mock
def test_fallbacks_are_not_cached(tmp_path):
    route = respx.post(URL).mock(
        side_effect=[
            httpx.Response(529, json={"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
            httpx.Response(200, json=MESSAGE),
        ]
    )
    eng = engine(tmp_path, Resilience(max_attempts=1))
    first = eng.process(alert(1))
    assert first.mapping.result.fallback_reason == "provider_error:overloaded"
    second = eng.process(alert(2))
    assert second.mapping.result.fallback_reason is None and not second.cache_hit
    assert route.call_count == 2
    third = eng.process(alert(3))
    assert third.cache_hit and route.call_count == 2
