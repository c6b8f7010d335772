"""Offensive-tool telemetry through the engine: the table's baselines, refinements by module, command
and task, the operator's own tags, unknown events, and the execution fingerprint."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from mitre.assemble import EngineOptions, build_engine
from mitre.catalog import Catalog
from mitre.config import ToolEventSettings, Workflow, WorkflowsFile
from mitre.engine import Engine
from mitre.fingerprint import composition, execution_fingerprint
from mitre.models import OutcomeStatus
from mitre.tool_events import ToolEventTable, ToolEventType
from tests.helpers import LSASS_COMMAND, kibana_alert


def _engine(tmp_path: Path, **tool_events: Any) -> Engine:
    workflow = Workflow(name="tools", tool_events=ToolEventSettings(**tool_events))
    options = EngineOptions(knowledge_base=(), cache_dir=tmp_path / "cache")
    return build_engine(WorkflowsFile(workflows=[workflow]), options=options)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return _engine(tmp_path_factory.mktemp("tools"))


def _tags(alert: dict[str, Any]) -> tuple[list[str], list[str]]:
    threat = alert["threat"]
    technique = threat.get("technique", {})
    ids = technique.get("subtechnique", {}).get("id") or technique.get("id", [])
    return ids, threat["tactic"]["id"]


def _flat(event_type: str, **attributes: Any) -> dict[str, Any]:
    return {
        "event_type": event_type,
        "tenant_id": "acme",
        "timestamp": "2026-12-01T10:00:00Z",
        "attributes": {"host": "kali-07", "operator": "red1", **attributes},
    }


@pytest.mark.parametrize(
    ("event", "techniques", "tactics"),
    [
        (_flat("nmap_scan_completed", arguments="-sS -p 1-1024 10.1.0.0/24"), ["T1595"], ["TA0043"]),
        (_flat("nmap_scan_completed", arguments="-sV --script vuln 10.1.0.5"), ["T1595.002"], ["TA0043"]),
        (_flat("metasploit_exploit_completed", module="exploit/multi/handler"), ["T1059"], ["TA0002"]),
        (_flat("metasploit_exploit_completed", module="exploit/windows/smb/ms17_010_eternalblue"), ["T1210"], None),
        (_flat("metasploit_exploit_completed", module="exploit/linux/http/apache_normalize_path"), ["T1190"], None),
        (_flat("sliver_command_completed", command="portscan"), ["T1105"], ["TA0011"]),
        (_flat("sliver_command_completed", command="upload /tmp/beacon.exe C:/Windows/Temp/b.exe"), ["T1105"], None),
        (_flat("sliver_command_completed", command="download C:/Users/x/secrets.kdbx"), ["T1041"], ["TA0010"]),
        (_flat("mythic_task_completed", task="screenshot"), ["T1113"], ["TA0009"]),
        (_flat("mythic_task_completed", task="dcsync -Domain corp.local"), ["T1003.006"], ["TA0006"]),
    ],
)
def test_tool_event_baselines(engine: Engine, event: dict[str, Any], techniques: list[str], tactics: Any) -> None:
    outcome = engine.process(event)
    assert outcome.status is OutcomeStatus.ENRICHED, outcome.reason
    ids, tactic_ids = _tags(outcome.alert or {})
    assert ids == techniques
    if tactics is not None:
        assert tactic_ids == tactics
    provenance = (outcome.alert or {})["attackmap"]
    assert provenance["mapper"] == "tool-table"
    assert provenance["tenant"] == "acme"
    assert provenance["validation"] == []
    assert (outcome.alert or {})["attributes"] == event["attributes"], "the event's own data is kept"


def test_ecs_tool_event_by_product_and_action(engine: Engine) -> None:
    event = {
        "@timestamp": "2026-12-01T10:00:00Z",
        "event": {"module": "mythic", "action": "task_completed"},
        "mythic": {"task": "powershell Get-Process"},
        "host": {"name": "WKS-12"},
    }
    outcome = engine.process(event)
    assert _tags(outcome.alert or {}) == (["T1059.001"], ["TA0002"])
    assert outcome.decision is not None and "mythic" in outcome.decision.detail


def test_operator_tags_win_and_revoked_ids_are_redirected(engine: Engine, catalog: Catalog) -> None:
    # T1574.002 (DLL Side-Loading) was revoked into T1574.001 in ATT&CK v18.
    assert catalog.resolve("T1574.002").how == "revoked"
    event = _flat(
        "PROCESS_ANOMALY",
        mitre_techniques=[{"id": "T1574.002", "tactics": ["TA0005"], "confidence": 0.7}, "T1059.001"],
    )
    outcome = engine.process(event)
    ids, tactics = _tags(outcome.alert or {})
    assert set(ids) == {"T1574.001", "T1059.001"}
    assert "TA0005" in tactics
    provenance = (outcome.alert or {})["attackmap"]
    assert provenance["reason"] == "operator_tags"
    assert {i["code"] for i in provenance["validation"]} == {"redirected_revoked"}
    assert {t["id"]: t["confidence"] for t in provenance["techniques"]}["T1574.001"] == 0.7
    # On a known tool event too: the operator's richer tag replaces the table's T1059 baseline.
    tagged = _flat("metasploit_exploit_completed", module="exploit/multi/handler", mitre_techniques=["T1059.003"])
    assert _tags(engine.process(tagged).alert or {})[0] == ["T1059.003"]


def test_unknown_tool_events_fall_back_to_the_workflow_default(engine: Engine, tmp_path: Path) -> None:
    outcome = engine.process(_flat("cobalt_beacon_checkin"))
    assert outcome.status is OutcomeStatus.ENRICHED and outcome.reason == "unknown_tool_event"
    assert _tags(outcome.alert or {}) == (["T1595"], ["TA0043"])
    # A PROCESS_ANOMALY without tags has nothing of its own: the fallback too.
    assert engine.process(_flat("PROCESS_ANOMALY")).reason == "unknown_tool_event"
    strict = _engine(tmp_path, unknown_techniques=[], unknown_tactics=[])
    skipped = strict.process(_flat("cobalt_beacon_checkin"))
    assert skipped.status is OutcomeStatus.SKIPPED and skipped.reason == "unknown_tool_event"


def test_other_sources_with_an_event_type_are_not_tool_events(engine: Engine) -> None:
    okta_like = {"event_type": "user.session.start", "process": {"name": "sshd"}, "tenant_id": "acme"}
    assert engine.tool_events is not None and engine.tool_events.recognise(okta_like) is None


def test_alerts_are_not_tool_events(engine: Engine) -> None:
    alert = kibana_alert(command_line=LSASS_COMMAND, process_name="rundll32.exe")
    alert["event_type"] = "nmap_scan_completed"  # a rule makes it an alert, whatever else it carries
    outcome = engine.process(alert)
    assert (outcome.alert or {})["attackmap"]["mapper"] == "local"


def test_table_is_validated_against_the_catalog(catalog: Catalog) -> None:
    bad = ToolEventType(id="x", name="x", event_types=("x",), techniques=("T9999",))
    with pytest.raises(ValueError, match="T9999 is not a technique"):
        ToolEventTable([bad], catalog)
    with pytest.raises(ValueError, match="baseline needs techniques"):
        ToolEventType(id="y", name="y", event_types=("y",))


def test_execution_fingerprint_is_deterministic_documented_and_kept(engine: Engine) -> None:
    alert = kibana_alert(command_line=LSASS_COMMAND, process_name="rundll32.exe")
    alert["process"].update({"pid": 4242, "executable": r"C:\Windows\System32\rundll32.exe"})
    parts = composition(alert)
    assert parts == {
        "v": 1,
        "host": "wks-0142",
        "process": "4242|",
        "executable": r"C:\Windows\System32\rundll32.exe",
        "command_line": LSASS_COMMAND,
        "parent": "|explorer.exe",
        "user": "jdoe",
        "rule": "rule-custom-rule",
    }
    first = engine.process(copy.deepcopy(alert)).alert or {}
    fingerprint = first["attackmap"]["execution_fingerprint"]
    assert fingerprint == execution_fingerprint(alert)
    # Stable under re-enrichment, and the same in flat spelling.
    assert (engine.process(first).alert or {})["attackmap"]["execution_fingerprint"] == fingerprint
    flat = kibana_alert(command_line=LSASS_COMMAND, process_name="rundll32.exe", flat=True)
    flat.update({"process.pid": 4242, "process.executable": r"C:\Windows\System32\rundll32.exe"})
    assert execution_fingerprint(flat) == fingerprint
    # Another execution (another pid) is another fingerprint; a brought one is kept.
    other = copy.deepcopy(alert)
    other["process"]["pid"] = 4243
    assert execution_fingerprint(other) != fingerprint
    given = _flat("nmap_scan_completed", arguments="-sS")
    given["execution_fingerprint"] = "f" * 64
    assert (engine.process(given).alert or {})["attackmap"]["execution_fingerprint"] == "f" * 64
