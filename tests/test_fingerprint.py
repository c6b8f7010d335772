"""The execution fingerprint is a value other systems compute and compare (peers, the red-team platform):
made faster, it must stay exactly the documented SHA-256, digit for digit."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from devtools.alertgen import RealisticAlerts
from mitre.assemble import EngineOptions, build_engine
from mitre.config import WorkflowsFile
from mitre.features import valid_text
from mitre.fingerprint import composition, execution_fingerprint
from mitre.models import OutcomeStatus, RawAlert

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = [json.loads(line) for line in (REPO / "examples" / "alerts.ndjson").read_text().splitlines() if line]

# Digests computed by the first implementation (issue #17), before the fingerprint was made faster.
PINNED: list[tuple[dict[str, Any], str]] = [
    (
        {"host": {"name": "WKS-1"}, "process": {"pid": 12, "start": "2026"}, "user": {"name": "Bob", "domain": "ACME"}},
        "d365b015c0540965c9960346c1971aad9608538b131b48f73225cd700a256f9d",
    ),
    (
        {"host.name": ["A", "b"], "process.pid": [None, "", 7], "user.name": "X\ud800"},
        "47f0b7eb9a8deaf00ea1628f7202d0aea361eba4bf76eea8703fdb7007d1c7ea",
    ),
    (
        {
            "attributes": {"host": "h", "pid": 3, "process_start": 5, "command": "c", "operator": "op"},
            "event_type": "nmap",
        },
        "b21e86c0da80c70e6f813dcd3bec4718f5811c6a7a95ae0adf92b4d3c37c7622",
    ),
    (
        {"process": {"parent": {"pid": 1}}, "user": {"id": "S-1", "domain": "D"}},
        "5346325b6c3d9487d653cc477c686e9d7616001754c50498c525d4f8d94aad45",
    ),
    (
        {"process": {"parent": {"executable": "x"}, "entity_id": ""}, "rule": {"id": 5}},
        "5eee5e1b84b0ab32cd721a63c370bec1e79e5e90254ca98f9bb10e68344b64ac",
    ),
    ({"execution_fingerprint": "f" * 64}, "f" * 64),
    ({"attackmap": {"execution_fingerprint": "abc"}}, "abc"),
    (
        {"host": {"id": 12345678901234567890123}, "process": {"command_line": {"a": 1}}, "user.name": True},
        "4f4a86ef7e7cfcd1a3aac788336dcd2f1fe40ebfeedd19a13c6994dec0b02e56",
    ),
    (
        {"host.name": 1.5, "process.executable": [{"a": 1}, "y"], "kibana.alert.rule.uuid": ["u1"]},
        "1462de6dd07d65f2fe29f6b47e2b04f1816e504e5cf7a4d96aaf4a35202367ca",
    ),
    ({}, "86bbb66144739f8e02c82a17ddc76c954ffbf61a229f384cd2801c723de8bd31"),
]


@pytest.mark.parametrize(("doc", "digest"), PINNED)
def test_fingerprint_digits_are_pinned(doc: dict[str, Any], digest: str) -> None:
    assert execution_fingerprint(doc) == digest


def _documented(doc: dict[str, Any]) -> str:
    """The composition as the module documents it: SHA-256 hex of sorted-key, compact JSON."""
    parts = {k: valid_text(v) if isinstance(v, str) else v for k, v in composition(doc).items()}
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def test_fingerprint_is_the_documented_digest_on_a_realistic_stream() -> None:
    stream = RealisticAlerts(EXAMPLES, hosts=300, users=40, distinct_commands=0.1, seed=11)
    for doc in stream.stream(600):
        assert execution_fingerprint(doc) == _documented(doc)


def test_enriched_alerts_carry_the_documented_fingerprint(tmp_path: Path) -> None:
    """Through the engine, outcome memo and all: each enriched alert's fingerprint is its input's own."""
    options = EngineOptions(knowledge_base=(), cache=True, cache_dir=tmp_path / "cache")
    engine = build_engine(WorkflowsFile(), options=options)
    alerts = list(RealisticAlerts(EXAMPLES, hosts=200, users=30, distinct_commands=0.05, seed=12).stream(400))
    items = [RawAlert(line=n, raw=json.dumps(a).encode()) for n, a in enumerate(alerts, start=1)]
    outcomes = engine.process_batch(items)
    enriched = [(a, o) for a, o in zip(alerts, outcomes, strict=True) if o.status is OutcomeStatus.ENRICHED]
    assert len(enriched) > 100 and sum(o.remembered for _, o in enriched) > 50
    for alert, outcome in enriched:
        written: dict[str, Any] = outcome.alert or {}
        assert written["attackmap"]["execution_fingerprint"] == _documented(alert)
