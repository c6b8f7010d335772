"""Faults at the LLM vendor, through the whole engine: the real `anthropic` SDK talks over real sockets
to a local server in the Messages API's exact wire format — the #14 stand-in (tests/llm_standin.py,
grounded answers from its `realistic` brain) for HTTP faults and slowness, and devtools/fault_proxy.py
with a plan and no upstream for bodies no vendor should send. The vendor's HTTP boundary is the one
place a stand-in is allowed.

For each fault — 429 with Retry-After, 500 and 529, a request that times out, a server that hangs,
answers that are not JSON or not an answer — every alert of a batch ends enriched: by the LLM when a
retry gets through, else by the local mapper with the reason in its provenance (`fallback_reason`).
None is lost or dead-lettered, and once the circuit breaker opens, no more calls are made."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from devtools.fault_proxy import FaultProxy, Forward, Request, Response
from mitre.cache import MappingCache
from mitre.catalog import load_catalog
from mitre.config import DecisionSettings, MapperSettings, Workflow, WorkflowsFile
from mitre.engine import Engine
from mitre.indicators import load_indicators
from mitre.mappers.base import MapperContext
from mitre.mappers.llm.anthropic import create_anthropic_mapper
from mitre.mappers.llm.resilience import Resilience
from mitre.mappers.local import LocalMapper
from mitre.models import OutcomeStatus, RawAlert
from tests.llm_payloads import answer, anthropic_message
from tests.llm_standin import Fault, StandIn, realistic
from tests.test_llm_engine import alert

GOOD = json.dumps(anthropic_message(answer(("T1003.001", "TA0006", 0.9)))).encode()
JSON = {"content-type": "application/json", "request-id": "req_011CSHoEeqs5C35K2UUqR7Fy"}
N = 12  # alerts per batch, each with its own cache key


class Vendor:
    """The plan of the stand-in: answers scripted per request (then good answers), every call counted."""

    def __init__(self, script: list[Callable[[], Response]], after: Callable[[], Response] | None = None) -> None:
        self.script = list(script)
        self.after = after or (lambda: Response(200, GOOD, dict(JSON)))
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, request: Request, forward: Forward) -> Response:
        assert request.path.startswith("/v1/messages"), request.path
        with self._lock:
            self.calls += 1
            step = self.script.pop(0) if self.script else self.after
        return step()


@pytest.fixture(scope="module")
def parts() -> tuple[Any, Any, LocalMapper]:
    catalog = load_catalog(None)
    indicators = load_indicators(catalog)
    # No cascade: every alert is asked of the LLM, so the faults meet every alert.
    return catalog, indicators, LocalMapper(catalog, indicators, MapperSettings(cascade_confidence=None))


@pytest.fixture
def engine_at(parts, tmp_path) -> Callable[[str], tuple[Engine, list[float]]]:
    """An engine whose anthropic mapper talks to `url`: 0.5 s timeout, 3 attempts, breaker after 3."""
    catalog, indicators, local = parts

    def build(url: str) -> tuple[Engine, list[float]]:
        sleeps: list[float] = []
        settings = MapperSettings(provider="anthropic", cascade_confidence=None)
        mapper = create_anthropic_mapper(
            MapperContext(catalog=catalog, settings=settings, local=local),
            env={"ANTHROPIC_API_KEY": "sk-ant-test-0000000000", "ANTHROPIC_BASE_URL": url},
            sleep=sleeps.append,
            resilience=Resilience(timeout_s=0.5, max_attempts=3, breaker_threshold=3, breaker_cooldown_s=600),
        )
        config = WorkflowsFile(workflows=[Workflow(name="t", decision=DecisionSettings(mode="always"))])
        return Engine(catalog, indicators, config, "t", mapper, MappingCache(tmp_path / f"cache-{len(url)}")), sleeps

    return build


@pytest.fixture
def brain(parts) -> Any:
    return realistic({t.id: t.shortname for t in parts[0].tactics}, hallucinate=False)


def batch() -> list[RawAlert]:
    """N alerts that map differently (each its own rule name), so each needs its own answer."""
    return [RawAlert(line=i, alert={**alert(i), "kibana.alert.rule.name": f"Untagged rule {i}"}) for i in range(N)]


def run(engine: Engine) -> tuple[list[str | None], float]:
    started = time.monotonic()
    outcomes = engine.process_batch(batch())
    assert [o.status for o in outcomes] == [OutcomeStatus.ENRICHED] * N, [o.reason for o in outcomes]
    reasons = [o.mapping.result.fallback_reason for o in outcomes if o.mapping is not None]
    assert len(reasons) == N
    return reasons, time.monotonic() - started


def test_llm_429_with_retry_after_is_waited_out_and_the_answer_used(engine_at, brain):
    with StandIn(brain, faults=[Fault(429, "rate_limit_error", retry_after="7")]) as vendor:
        engine, sleeps = engine_at(vendor.url)
        reasons, _ = run(engine)
    assert reasons == [None] * N, "every alert answered by the LLM"
    assert sleeps == [7.0] and vendor.count("/v1/messages") == N + 1


def test_llm_500_and_529_fall_back_per_alert_and_open_the_circuit(engine_at, brain):
    errors = [Fault(500, "api_error"), Fault(529, "overloaded_error")] * 50
    with StandIn(brain, faults=errors) as vendor:
        engine, sleeps = engine_at(vendor.url)
        reasons, _ = run(engine)
        calls = vendor.count("/v1/messages")
    assert all(r is not None and r.startswith("provider_error:") for r in reasons[:3]), reasons
    assert reasons[3:] == ["circuit_open"] * (N - 3), "the breaker opened after 3 alerts failed"
    assert calls == 3 * 3, "3 attempts for each of the first 3 alerts, then no call"
    assert len(sleeps) == 3 * 2 and all(s > 0 for s in sleeps), "backoff between attempts"


@pytest.mark.parametrize("delay", [0.8, 30.0], ids=["times_out", "hangs"])
def test_llm_timing_out_or_hanging_falls_back_within_the_timeout(engine_at, brain, delay: float):
    """Answers after 0.8 s (past the 0.5 s timeout), or after 30 s: a hung server."""
    with StandIn(brain, delay_s=delay) as vendor:
        engine, _ = engine_at(vendor.url)
        reasons, seconds = run(engine)
        calls = vendor.count("/v1/messages")
    assert reasons[:3] == ["provider_error:timeout"] * 3 and reasons[3:] == ["circuit_open"] * (N - 3)
    assert calls == 9
    assert seconds < 9 * 0.5 + 3.0, f"{seconds:.1f} s: bounded by the timeout, not by the server"


@pytest.mark.parametrize(
    "garbage",
    [
        Response(200, b"<html><body>502 Bad Gateway</body></html>", {"content-type": "text/html"}),
        Response(200, GOOD[: len(GOOD) // 2], dict(JSON)),  # cut off mid-answer
        Response(200, b"\x00\xff\xfe" * 50, {"content-type": "application/octet-stream"}),
    ],
    ids=["html", "truncated-json", "binary"],
)
def test_llm_answering_garbage_falls_back_per_alert_and_opens_the_circuit(engine_at, garbage: Response):
    """A body that is not JSON at all is a broken endpoint: the alert falls back, the breaker counts it."""
    vendor = Vendor([], after=lambda: garbage)
    with FaultProxy("http://127.0.0.1:9", vendor) as endpoint:
        engine, _ = engine_at(endpoint.url)
        reasons, _ = run(engine)
    assert reasons[:2] == ["invalid_response"] * 2 and reasons[2:] == ["circuit_open"] * (N - 2), reasons
    assert vendor.calls == 4, "an answer and one retry for each of 2 alerts, then no call"


@pytest.mark.parametrize(
    "nonsense",
    [
        Response(200, json.dumps({"id": "msg_x", "type": "message", "content": "nope"}).encode(), dict(JSON)),
        Response(200, json.dumps(anthropic_message({"techniques": "all of them"})).encode(), dict(JSON)),
    ],
    ids=["wrong-shape", "invalid-answer"],
)
def test_llm_answers_that_are_not_a_mapping_fall_back_per_alert(engine_at, nonsense: Response):
    """JSON that is no answer: asked once more with the error, then the local mapper; nothing lost."""
    vendor = Vendor([], after=lambda: nonsense)
    with FaultProxy("http://127.0.0.1:9", vendor) as endpoint:
        engine, _ = engine_at(endpoint.url)
        reasons, _ = run(engine)
    assert reasons == ["invalid_response"] * N, reasons
    assert vendor.calls == 2 * N, "one retry with the error appended, per alert"
