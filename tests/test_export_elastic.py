"""Elasticsearch export: common events in bulk under an ECS index template, read back unchanged,
queried by ECS names, never duplicated by a re-delivery (real ES node)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from devtools.receivers import many_alerts
from mitre.io.exports.delivery import Delivery, RetryPolicy
from mitre.io.exports.elastic import ElasticExportSink, from_document
from mitre.io.exports.event import CommonEvent, from_enriched

pytestmark = pytest.mark.elasticsearch
# Data streams cannot be deleted on a node without the data-streams module (the Maven Central
# distribution the tests use), so the data-stream test writes to one fixed stream, run after run.
TEST_STREAM = "logs-attackmap.exporttest-default"


def _deliver_twice(sink: ElasticExportSink, events: list[CommonEvent], tmp_path: Path) -> None:
    for spool in ("first", "again"):  # the second delivery of the same events adds nothing
        delivery = Delivery(sink, tmp_path / spool, policy=RetryPolicy(batch_size=80))
        delivery.offer(events)
        assert delivery.drain(timeout=60) and delivery.stats.delivered == len(events)


def _mine(es_client: Any, target: str, run: str, query: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    must = [{"prefix": {"id": run}}, *([query] if query else [])]
    hits = es_client.search(index=target, query={"bool": {"filter": must}}, size=1000)["hits"]["hits"]
    return [h["_source"] for h in hits]


def test_events_into_an_index_with_ecs_mappings(
    es_client: Any, es_index_name: str, enriched_examples: list[dict[str, Any]], tmp_path: Path
) -> None:
    run = f"run-{uuid.uuid4().hex[:8]}"
    events = [from_enriched(a) for a in many_alerts(enriched_examples, 200, run)]
    sink = ElasticExportSink(es_client, es_index_name, data_stream=False, refresh="wait_for")
    try:
        _deliver_twice(sink, events, tmp_path)
        es_client.indices.refresh(index=es_index_name)
        assert es_client.count(index=es_index_name)["count"] == 200
        mapping = es_client.indices.get_mapping(index=es_index_name)[es_index_name]["mappings"]["properties"]
        assert mapping["threat"]["properties"]["technique"]["properties"]["id"] == {
            "type": "alias",
            "path": "technique_ids",
        }
        assert mapping["source"]["properties"]["ip"]["type"] == "ip"
        found = _mine(es_client, es_index_name, run, {"term": {"threat.technique.id": "T1003.001"}})
        expected = {e.id for e in events if "T1003.001" in e.technique_ids}
        assert {d["id"] for d in found} == expected and expected
        stored = {d["id"]: from_document(d) for d in _mine(es_client, es_index_name, run)}
        assert all(stored[e.id] == e for e in events)  # read back unchanged
        assert _mine(es_client, es_index_name, run, {"exists": {"field": "related.user"}})
    finally:
        es_client.options(ignore_status=404).indices.delete_index_template(name=f"attackmap-events-{es_index_name}")


def test_events_into_a_data_stream(es_client: Any, enriched_examples: list[dict[str, Any]], tmp_path: Path) -> None:
    run = f"run-{uuid.uuid4().hex[:8]}"
    events = [from_enriched(a) for a in many_alerts(enriched_examples, 50, run)]
    _deliver_twice(ElasticExportSink(es_client, TEST_STREAM, refresh="wait_for"), events, tmp_path)
    es_client.indices.refresh(index=TEST_STREAM)
    assert len(_mine(es_client, TEST_STREAM, run)) == 50
    backing = es_client.indices.get(index=TEST_STREAM)
    assert all(name.startswith(f".ds-{TEST_STREAM}-") for name in backing)
