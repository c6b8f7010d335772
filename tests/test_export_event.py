"""The common event format: lossless, in sync with its shipped schema, one event for either alert shape."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from mitre.io.exports.event import CommonEvent, NotAnEnrichedAlert, from_enriched, schema_text
from tests.helpers import kibana_alert

REPO = Path(__file__).resolve().parents[1]
PROVENANCE = {
    "mapper": "local",
    "catalog_version": "18.1",
    "decision": "map",
    "reason": "untagged_rule",
    "techniques": [{"id": "T1003.001", "confidence": 0.91, "tactics": ["TA0006"]}],
    "provenance_hash": "abc123",
    "cache_hit": False,
}
THREAT = {
    "framework": "MITRE ATT&CK",
    "tactic": {"id": ["TA0006"], "name": ["Credential Access"]},
    "technique": {"id": ["T1003"], "subtechnique": {"id": ["T1003.001"]}},
}


def _enriched(flat: bool) -> dict[str, Any]:
    alert = kibana_alert(flat=flat, command_line="rundll32 comsvcs.dll MiniDump 624 lsass.dmp full")
    alert["kibana.space_ids"] = ["soc-emea"]
    if flat:
        alert.update({"source.ip": "203.0.113.7", "source.port": 51544, "destination.domain": "evil.example"})
        alert.update({"threat.tactic.id": ["TA0006"], "threat.technique.id": ["T1003"]})
        alert["threat.technique.subtechnique.id"] = ["T1003.001"]
    else:
        alert["source"] = {"ip": "203.0.113.7", "port": 51544}
        alert["destination"] = {"domain": "evil.example"}
        alert["threat"] = THREAT
    alert["attackmap"] = PROVENANCE
    return alert


def test_shipped_schema_is_in_sync_with_the_model() -> None:
    assert (REPO / "common-event.schema.json").read_text() == schema_text(), (
        "common-event.schema.json is out of date: python -m mitre.io.exports.event > common-event.schema.json"
    )


def test_events_round_trip_losslessly_and_match_the_schema(enriched_examples: list[dict[str, Any]]) -> None:
    schema = json.loads((REPO / "common-event.schema.json").read_text())
    events = [from_enriched(a) for a in enriched_examples]
    assert len(events) == len(enriched_examples) > 30
    for event in events:
        document = json.loads(event.to_json())
        jsonschema.validate(document, schema)
        assert CommonEvent.model_validate_json(event.to_json()) == event
        assert CommonEvent.model_validate(document).to_json() == event.to_json()


def test_flat_and_nested_kibana_alerts_give_the_same_event() -> None:
    flat, nested = from_enriched(_enriched(flat=True)), from_enriched(_enriched(flat=False))
    assert flat == nested
    assert flat.technique_ids == ("T1003", "T1003.001") and flat.tactic_ids == ("TA0006",)
    assert flat.confidence == 0.91 and flat.technique_confidence == {"T1003.001": 0.91}
    assert flat.tenant == "soc-emea" and flat.severity == "high" and flat.risk_score == 73
    assert flat.source is not None and (flat.source.ip, flat.source.port) == ("203.0.113.7", 51544)
    assert flat.rule is not None and flat.rule.name == "Custom rule"
    assert (flat.provenance.catalog_version, flat.provenance.decision) == ("18.1", "map")


def test_related_indicators_are_typed_and_checked() -> None:
    alert = _enriched(flat=False)
    alert["file"] = {
        "path": r"C:\Users\jdoe\AppData\Local\Temp\lsass.dmp",
        "hash": {"sha256": "A" * 64, "md5": "b" * 32, "sha1": "not-a-hash"},
    }
    alert["related"] = {"ip": ["10.1.2.3", "999.1.1.1", "2001:db8::1"]}
    alert["url"] = {"full": "https://evil.example/payload.ps1", "original": "not a url"}
    found = {(i.type, i.value, i.hash_algorithm) for i in from_enriched(alert).related_indicators}
    assert {
        ("ip", "203.0.113.7", None),
        ("ip", "10.1.2.3", None),
        ("ip", "2001:db8::1", None),
        ("domain", "evil.example", None),
        ("url", "https://evil.example/payload.ps1", None),
        ("hash", "a" * 64, "SHA-256"),
        ("hash", "b" * 32, "MD5"),
        ("file_path", r"C:\Users\jdoe\AppData\Local\Temp\lsass.dmp", None),
        ("user", "jdoe", None),
        ("host", "wks-0142", None),
        ("process", "cmd.exe", None),
        ("process", "explorer.exe", None),
    } <= found
    assert not any(value in ("999.1.1.1", "not-a-hash", "not a url") for _, value, _ in found)


def test_tenant_from_a_tenant_id_and_refusal_of_what_is_not_enriched() -> None:
    alert = _enriched(flat=False)
    del alert["kibana.space_ids"]
    alert["tenant_id"] = "acme"
    assert from_enriched(alert).tenant == "acme"
    with pytest.raises(NotAnEnrichedAlert, match="provenance"):
        from_enriched(kibana_alert())


def test_federation_fields_tenant_and_a_tool_event_without_a_time_of_its_own() -> None:
    alert = _enriched(flat=True)
    controls = {"nist_800_53_controls": ["AC-2", "SI-4"], "soc2_controls": [], "iso27001_annex_a_controls": ["A.8.7"]}
    alert["attackmap"] = {**PROVENANCE, "tenant": "acme", "execution_fingerprint": "f" * 64, "compliance": controls}
    event = from_enriched(alert)
    assert event.tenant == "acme", "the engine's tenant (attackmap.tenant) wins over the Kibana space"
    assert event.execution_fingerprint == "f" * 64
    assert (event.nist_800_53_controls, event.soc2_controls, event.iso27001_annex_a_controls) == (
        ("AC-2", "SI-4"),
        (),
        ("A.8.7",),
    )
    assert CommonEvent.model_validate_json(event.to_json()) == event
    assert event.key != from_enriched({**alert, "attackmap": PROVENANCE}).key, "one alert id, two tenants: two events"

    tool = {"event_type": "nmap_scan_completed", "tenant_id": "acme", "attributes": {"target": "10.0.0.0/24"}}
    tool["attackmap"] = {**PROVENANCE, "enriched_at": "2026-12-02T10:00:00.000Z"}
    tool_event = from_enriched(tool)
    assert (
        tool_event.timestamp.isoformat() == "2026-12-02T10:00:00+00:00"
        and tool_event.event_type == "nmap_scan_completed"
    )
    with pytest.raises(NotAnEnrichedAlert, match="timestamp"):
        from_enriched({"@timestamp": "yesterday", "attackmap": PROVENANCE})
