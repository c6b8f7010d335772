"""ElasticSource / ElasticSink against a real Elasticsearch node (fixtures in tests/es_fixtures.py)."""

from __future__ import annotations

import copy
import uuid
import warnings
from pathlib import Path
from typing import Any

import pytest

from mitre.io.elastic import (
    AlertUpdate,
    Checkpoint,
    ElasticSink,
    ElasticSource,
    SourceAlert,
    _engine_doc,
    alerts_index_mapping,
    get_path,
    kibana_alerts_index,
)

HASH_V1 = "a" * 64
HASH_V2 = "b" * 64


def make_alert(i: int, *, risk: float = 73.0, flat: bool = False, minute: int | None = None) -> dict[str, Any]:
    ts = f"2024-05-01T10:{(i if minute is None else minute) % 60:02d}:00.000Z"
    alert: dict[str, Any] = {
        "@timestamp": ts,
        "host": {"name": f"host-{i}", "os": {"family": "windows"}},
        "process": {"name": "powershell.exe", "command_line": f"powershell -enc {i}"},
        "event": {"kind": "signal"},
        "kibana.alert.workflow_status": "open",
        "kibana.alert.rule.uuid": f"rule-{i % 3}",
        "kibana.alert.rule.name": "Suspicious PowerShell",
    }
    if flat:  # Kibana stores these as flat dotted keys
        alert["kibana.alert.uuid"] = f"alert-{i:04d}"
        alert["kibana.alert.risk_score"] = risk
    else:
        alert["kibana"] = {"alert": {"uuid": f"alert-{i:04d}", "risk_score": risk}}
    return alert


def enriched(alert: dict[str, Any], provenance_hash: str = HASH_V1, technique: str = "T1059") -> dict[str, Any]:
    out = copy.deepcopy(alert)
    out["threat"] = {
        "framework": "MITRE ATT&CK",
        "tactic": {
            "id": ["TA0002"],
            "name": ["Execution"],
            "reference": ["https://attack.mitre.org/tactics/TA0002/"],
        },
        "technique": {
            "id": [technique],
            "name": ["Command and Scripting Interpreter"],
            "reference": [f"https://attack.mitre.org/techniques/{technique}/"],
            "subtechnique": {
                "id": [f"{technique}.001"],
                "name": ["PowerShell"],
                "reference": [f"https://attack.mitre.org/techniques/{technique}/001/"],
            },
        },
    }
    out["attackmap"] = {
        "provenance_hash": provenance_hash,
        "mapper": "local",
        "catalog_version": "18.1",
        "confidence": 0.82,
    }
    return out


def index_alerts(client: Any, index: str, alerts: list[dict[str, Any]]) -> None:
    ops: list[dict[str, Any]] = []
    for alert in alerts:
        ops.append({"index": {"_index": index, "_id": get_path(alert, "kibana.alert.uuid")}})
        ops.append(alert)
    resp = client.bulk(operations=ops, refresh=True)
    assert not resp["errors"], resp


def updates_for(alerts: list[SourceAlert], provenance_hash: str = HASH_V1) -> list[AlertUpdate]:
    return [
        AlertUpdate(a.index, a.doc_id, a.seq_no, a.primary_term, enriched(a.source, provenance_hash)) for a in alerts
    ]


# --------------------------------------------------------------------------- pure helpers (no node)


def test_mapping_shape() -> None:
    mapping = alerts_index_mapping()
    props = mapping["properties"]
    assert props["@timestamp"] == {"type": "date"}
    alert = props["kibana"]["properties"]["alert"]["properties"]
    assert alert["risk_score"] == {"type": "float"}
    assert alert["rule"]["properties"]["uuid"]["type"] == "keyword"
    assert alert["rule"]["properties"]["name"]["type"] == "keyword"
    technique = props["threat"]["properties"]["technique"]["properties"]
    assert technique["id"]["type"] == "keyword"
    assert technique["subtechnique"]["properties"]["name"]["type"] == "keyword"
    assert props["attackmap"]["dynamic"] is False
    assert props["attackmap"]["properties"] == {"provenance_hash": {"type": "keyword", "ignore_above": 1024}}
    assert kibana_alerts_index() == ".alerts-security.alerts-default"


def test_get_path_nested_flat_and_mixed() -> None:
    assert get_path({"kibana.alert.risk_score": 5}, "kibana.alert.risk_score") == 5
    assert get_path({"kibana": {"alert": {"risk_score": 6}}}, "kibana.alert.risk_score") == 6
    assert get_path({"kibana": {"alert.risk_score": 7}}, "kibana.alert.risk_score") == 7
    assert get_path({"kibana": {}}, "kibana.alert.risk_score") is None


def test_engine_doc_nulls_dropped_keys_and_flat_copies() -> None:
    stored = {
        "threat": {"technique": {"id": ["T1"], "subtechnique": {"id": ["T1.001"]}}},
        "threat.tactic.id": ["TA1"],
        "attackmap": {"provenance_hash": "x", "old": 1},
    }
    new = {"threat": {"technique": {"id": ["T2"]}}, "attackmap": {"provenance_hash": "y"}, "host": {"name": "h"}}
    doc = _engine_doc(stored, new)
    assert doc == {
        "threat": {"technique": {"id": ["T2"], "subtechnique": None}},
        "threat.tactic.id": None,
        "attackmap": {"provenance_hash": "y", "old": None},
    }


def test_checkpoint_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "ckpt.json"
    ckpt = Checkpoint.load(path)
    assert ckpt.is_empty
    ckpt.advance(["2024-05-01T10:00:00.000Z", "alert-0001", 17])
    ckpt.save()
    again = Checkpoint.load(path)
    assert (again.timestamp, again.tiebreaker) == ("2024-05-01T10:00:00.000Z", "alert-0001")


# --------------------------------------------------------------------------- real node

pytestmark_es = pytest.mark.elasticsearch


@pytestmark_es
def test_checkpoint_resume_none_lost_none_twice(es_client: Any, es_index: str, tmp_path: Path) -> None:
    # 30 alerts; several share a timestamp so the tiebreaker matters; half use flat dotted keys.
    alerts = [make_alert(i, flat=i % 2 == 0, minute=i // 4) for i in range(30)]
    index_alerts(es_client, es_index, alerts)
    ckpt_path = tmp_path / "checkpoint.json"

    source = ElasticSource(es_client, es_index, page_size=4)
    ckpt = Checkpoint.load(ckpt_path)
    first = list(source.read(ckpt, limit=10))
    ckpt.save()
    assert len(first) == 10
    assert all(isinstance(a, SourceAlert) for a in first)

    ckpt2 = Checkpoint.load(ckpt_path)
    assert ckpt2.tiebreaker == get_path(first[-1].source, "kibana.alert.uuid")
    rest = list(ElasticSource(es_client, es_index, page_size=7).read(ckpt2))
    ckpt2.save()
    ids = [a.doc_id for a in first + rest]
    assert len(ids) == 30
    assert len(set(ids)) == 30
    assert sorted(ids) == sorted(f"alert-{i:04d}" for i in range(30))

    # nothing new: an empty read leaves the checkpoint where it was
    ckpt3 = Checkpoint.load(ckpt_path)
    assert list(source.read(ckpt3)) == []
    assert (ckpt3.timestamp, ckpt3.tiebreaker) == (ckpt2.timestamp, ckpt2.tiebreaker)

    # alerts indexed later are picked up, and only those
    later = [make_alert(i, minute=59) for i in range(30, 35)]
    index_alerts(es_client, es_index, later)
    new = list(source.read(ckpt3))
    assert sorted(a.doc_id for a in new) == [f"alert-{i:04d}" for i in range(30, 35)]
    first_tuple = new[0].as_tuple()
    assert first_tuple[0] == new[0].doc_id and first_tuple[1] == es_index
    assert isinstance(first_tuple[2], int) and isinstance(first_tuple[3], int)


@pytestmark_es
def test_risk_filter_flat_and_nested(es_client: Any, es_index: str) -> None:
    alerts = [
        make_alert(0, risk=21, flat=True),
        make_alert(1, risk=47, flat=False),
        make_alert(2, risk=47, flat=True),
        make_alert(3, risk=73, flat=False),
        make_alert(4, risk=99, flat=True),
    ]
    index_alerts(es_client, es_index, alerts)
    got = {a.doc_id for a in ElasticSource(es_client, es_index, min_risk=47).read()}
    assert got == {"alert-0001", "alert-0002", "alert-0003", "alert-0004"}
    got = {a.doc_id for a in ElasticSource(es_client, es_index, min_risk=73.5).read()}
    assert got == {"alert-0004"}


@pytestmark_es
def test_not_yet_enriched_filter(es_client: Any, es_index: str) -> None:
    alerts = [make_alert(i) for i in range(6)]
    alerts[0] = enriched(alerts[0], HASH_V1)  # current version: skip
    alerts[1] = enriched(alerts[1], HASH_V2)  # older version: re-enrich
    alerts[2]["attackmap.provenance_hash"] = HASH_V1  # flat key, current: skip
    index_alerts(es_client, es_index, alerts)
    got = {a.doc_id for a in ElasticSource(es_client, es_index, provenance_hash=HASH_V1).read()}
    assert got == {"alert-0001", "alert-0003", "alert-0004", "alert-0005"}


@pytestmark_es
def test_sink_writes_only_engine_fields_then_idempotent(es_client: Any, es_index: str) -> None:
    alerts = [make_alert(i, flat=i % 2 == 0) for i in range(8)]
    index_alerts(es_client, es_index, alerts)
    read = list(ElasticSource(es_client, es_index, provenance_hash=HASH_V1).read())
    before = {a.doc_id: a.source for a in read}

    sink = ElasticSink(es_client, batch_size=3, refresh="wait_for")
    summary = sink.write(updates_for(read))
    assert (summary.updated, summary.unchanged, summary.conflicts_retried, summary.failed) == (8, 0, 0, [])

    for doc_id, old in before.items():
        doc = es_client.get(index=es_index, id=doc_id)
        src = doc["_source"]
        assert src["threat"]["technique"]["subtechnique"]["id"] == ["T1059.001"]
        assert src["attackmap"]["provenance_hash"] == HASH_V1
        others = {k: v for k, v in src.items() if k not in ("threat", "attackmap")}
        assert others == old  # nothing else changed, flat keys stay flat

    seq_before = {d: es_client.get(index=es_index, id=d)["_seq_no"] for d in before}
    again = sink.write(updates_for(read))  # stale seq_no, same hash: recognised as unchanged
    assert (again.updated, again.unchanged, again.failed) == (0, 8, [])
    assert {d: es_client.get(index=es_index, id=d)["_seq_no"] for d in before} == seq_before

    # the source no longer returns them for this provenance version
    assert list(ElasticSource(es_client, es_index, provenance_hash=HASH_V1).read()) == []


@pytestmark_es
def test_sink_replaces_threat_object_wholly(es_client: Any, es_index: str) -> None:
    alert = enriched(make_alert(0), HASH_V2, technique="T1003")
    alert["attackmap"]["legacy_key"] = "old"
    index_alerts(es_client, es_index, [alert])
    (read,) = list(ElasticSource(es_client, es_index, provenance_hash=HASH_V1).read())
    new = enriched(read.source, HASH_V1)
    del new["threat"]["technique"]["subtechnique"]
    assert "legacy_key" not in new["attackmap"]  # the engine's provenance object no longer has it
    summary = ElasticSink(es_client, refresh=True).write(
        [(read.index, read.doc_id, read.seq_no, read.primary_term, new)]
    )
    assert summary.updated == 1
    src = es_client.get(index=es_index, id=read.doc_id)["_source"]
    assert src["threat"]["technique"]["id"] == ["T1059"]
    assert src["threat"]["technique"].get("subtechnique") is None
    assert src["attackmap"].get("legacy_key") is None
    hits = es_client.search(index=es_index, query={"term": {"threat.technique.subtechnique.id": "T1003.001"}})
    assert hits["hits"]["total"]["value"] == 0


@pytestmark_es
def test_sink_conflict_retry_keeps_concurrent_change(es_client: Any, es_index: str) -> None:
    alerts = [make_alert(i) for i in range(3)]
    index_alerts(es_client, es_index, alerts)
    read = list(ElasticSource(es_client, es_index).read())
    # an analyst acknowledges one alert between our read and our write
    es_client.update(
        index=es_index, id="alert-0001", doc={"kibana.alert.workflow_status": "acknowledged"}, refresh=True
    )
    summary = ElasticSink(es_client, refresh=True).write(updates_for(read))
    assert summary.updated == 3
    assert summary.conflicts_retried == 1
    assert summary.failed == []
    src = es_client.get(index=es_index, id="alert-0001")["_source"]
    assert src["kibana.alert.workflow_status"] == "acknowledged"
    assert src["attackmap"]["provenance_hash"] == HASH_V1
    assert src["threat"]["tactic"]["id"] == ["TA0002"]


@pytestmark_es
def test_sink_bulk_item_failure_is_isolated(es_client: Any, es_index: str) -> None:
    alerts = [make_alert(i) for i in range(4)]
    index_alerts(es_client, es_index, alerts)
    read = list(ElasticSource(es_client, es_index).read())
    updates = updates_for(read)
    ghost = AlertUpdate(es_index, "no-such-alert", 0, 1, enriched(make_alert(99)))
    # a bad item that only fails inside bulk (mapping conflict: an object where a keyword is mapped)
    bad_alert = enriched(read[0].source)
    bad_alert["threat"]["framework"] = {"not": "a keyword"}
    bad = AlertUpdate(read[0].index, read[0].doc_id, read[0].seq_no, read[0].primary_term, bad_alert)
    no_hash = AlertUpdate(es_index, "update-without-hash", 0, 1, {"threat": {}})

    summary = ElasticSink(es_client, refresh=True).write([bad, *updates[1:], ghost, no_hash])
    assert summary.updated == 3
    failed = dict(summary.failed)
    assert set(failed) == {"no-such-alert", read[0].doc_id, "update-without-hash"}
    assert "document_missing" in failed["no-such-alert"]
    assert "400" in failed[read[0].doc_id]
    assert "provenance_hash" in failed["update-without-hash"]
    assert "attackmap" not in es_client.get(index=es_index, id=read[0].doc_id)["_source"]
    assert es_client.get(index=es_index, id=read[2].doc_id)["_source"]["attackmap"]["provenance_hash"] == HASH_V1


class _FlakyBulk:
    """Wraps a client: the first bulk call answers 429 for every other item (per-item retry path)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.bulk_calls: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def bulk(self, operations: list[dict[str, Any]], **kwargs: Any) -> Any:
        self.bulk_calls.append(len(operations) // 2)
        if len(self.bulk_calls) > 1:
            return self._client.bulk(operations=operations, **kwargs)
        keep = [pair for n, pair in enumerate(zip(operations[::2], operations[1::2], strict=True)) if n % 2 == 0]
        resp = self._client.bulk(operations=[x for pair in keep for x in pair], **kwargs)
        items: list[dict[str, Any]] = []
        real = iter(resp["items"])
        for n in range(len(operations) // 2):
            if n % 2 == 0:
                items.append(next(real))
            else:
                error = {"type": "es_rejected_execution_exception", "reason": "queue full"}
                items.append({"update": {"status": 429, "error": error}})
        return {"errors": True, "items": items}


@pytestmark_es
def test_sink_retries_only_failed_items(es_client: Any, es_index: str) -> None:
    index_alerts(es_client, es_index, [make_alert(i) for i in range(6)])
    read = list(ElasticSource(es_client, es_index).read())
    flaky = _FlakyBulk(es_client)
    summary = ElasticSink(flaky, refresh=True, backoff=0.01).write(updates_for(read))
    assert (summary.updated, summary.failed) == (6, [])
    assert flaky.bulk_calls == [6, 3]  # second call only carries the 3 rejected items
    for a in read:
        assert es_client.get(index=es_index, id=a.doc_id)["_source"]["attackmap"]["provenance_hash"] == HASH_V1


@pytestmark_es
def test_source_reads_kibana_alias_over_hidden_backing_index(es_client: Any) -> None:
    """Kibana's layout: alias .alerts-security.alerts-<space> over a hidden .internal... backing index."""
    space = f"attackmap-test-{uuid.uuid4().hex[:8]}"
    backing = f".internal.alerts-security.alerts-{space}-000001"
    alias = kibana_alerts_index(space)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dot-prefixed index names are deprecated for non-system indices
        es_client.indices.create(
            index=backing,
            mappings=alerts_index_mapping(),
            settings={"number_of_shards": 1, "number_of_replicas": 0, "index.hidden": True},
            aliases={alias: {"is_write_index": True}},
        )
        try:
            index_alerts(es_client, alias, [make_alert(i, flat=True, risk=20 + 20 * i) for i in range(4)])
            got = list(ElasticSource(es_client, alias, min_risk=40, provenance_hash=HASH_V1).read())
            assert sorted(a.doc_id for a in got) == ["alert-0001", "alert-0002", "alert-0003"]
            assert {a.index for a in got} == {backing}
            summary = ElasticSink(es_client, refresh=True).write(updates_for(got))
            assert summary.updated == 3
            assert list(ElasticSource(es_client, alias, min_risk=40, provenance_hash=HASH_V1).read()) == []
        finally:
            es_client.options(ignore_status=404).indices.delete(index=backing)
