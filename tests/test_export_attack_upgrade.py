"""ATT&CK v18.1 → v19.1 for stored data: `attackmap attack diff`, and re-tagging alerts already enriched
in Elasticsearch through the backfill flow's retag walk (real node), idempotent, analysts' tags kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from mitre.assemble import EngineOptions, build_engine
from mitre.attack_diff import diff_catalogs
from mitre.catalog import Catalog, load_catalog
from mitre.cli import app
from mitre.config import WorkflowsFile
from mitre.io.elastic import Checkpoint, ElasticSink
from mitre.retag import load_crosswalk, retag_alert
from tests.helpers import kibana_alert

DISABLE_DEFENDER = "powershell.exe Set-MpPreference -DisableRealtimeMonitoring $true"
UAC_BYPASS = r"C:\Windows\System32\fodhelper.exe"


@pytest.fixture(scope="module")
def versions(shared_data: Path) -> tuple[Catalog, Catalog, Path]:
    old = load_catalog(shared_data / "attack" / "enterprise-attack.json")
    new = load_catalog(shared_data / "attack-v19" / "enterprise-attack.json")
    return old, new, shared_data / "attack-v19" / "v18_to_v19_crosswalk.jsonl"


def test_diff_agrees_with_the_official_crosswalk(versions: tuple[Catalog, Catalog, Path]) -> None:
    old, new, crosswalk = versions
    result = diff_catalogs(old, new)
    rows = [orjson.loads(line) for line in crosswalk.read_bytes().splitlines() if line.strip()]
    revoked = {r["v18_id"]: r["v19"][0]["id"] for r in rows if "revoked" in r["change"]}
    assert {t.id: t.replaced_by for t in result.revoked} == revoked and len(revoked) == 17
    assert {t.id for t in result.renamed} == {r["v18_id"] for r in rows if "renamed" in r["change"]}
    assert len(result.added) == 23 and [t.id for t in result.tactics_added] == ["TA0112"]
    assert [(t.id, t.new_name) for t in result.tactics_renamed] == [("TA0005", "Stealth")]
    shortnames = {t.shortname: t.id for t in (*old.tactics, *new.tactics)}
    moved = {  # by tactic ID: TA0005 kept its ID through the rename to Stealth
        r["v18_id"] for r in rows
        if "tactics_changed" in r["change"] and "revoked" not in r["change"]
        and {shortnames[s] for s in r["v18_tactics"]} != {shortnames[s] for s in r["v19"][0]["tactics"]}
    }  # fmt: skip
    assert {t.id for t in result.moved} == moved and len(moved) > 50


def test_attack_diff_command(shared_data: Path) -> None:
    old, new = shared_data / "attack" / "enterprise-attack.json", shared_data / "attack-v19" / "enterprise-attack.json"
    result = CliRunner().invoke(app, ["attack", "diff", str(old), str(new), "--json"], catch_exceptions=False)
    assert result.exit_code == 0
    data = orjson.loads(result.output)
    assert (data["old_version"], data["new_version"]) == ("18.1", "19.1")
    assert {"id": "T1562.001", "name": "Disable or Modify Tools", "replaced_by": "T1685",
            "replaced_by_name": "Disable or Modify Tools"} in data["revoked"]  # fmt: skip


def _enriched_v18(shared_data: Path) -> list[dict[str, Any]]:
    v18 = shared_data / "attack" / "enterprise-attack.json"
    engine = build_engine(WorkflowsFile(), options=EngineOptions(knowledge_base=(), cache=False, catalog=v18))
    analysts = kibana_alert(command_line=DISABLE_DEFENDER, rule_name="Defender tampering")
    analysts["threat.technique.id"] = ["T1070.001"]  # an analyst's own tags, flat, as Kibana stores them
    analysts["threat.tactic.id"] = ["TA0040"]
    alerts = [analysts, kibana_alert(command_line=UAC_BYPASS, rule_name="UAC bypass"), kibana_alert(risk=10)]
    out = []
    for i, alert in enumerate(alerts):
        alert["kibana.alert.uuid"] = f"retag-{i}"
        alert["@timestamp"] = f"2026-10-03T08:00:0{i}.000Z"
        out.append(engine.process(alert).alert)
    return out


@pytest.mark.elasticsearch
@pytest.mark.prefect
def test_retag_stored_alerts_from_v18_to_v19(
    versions: tuple[Catalog, Catalog, Path],
    shared_data: Path,
    es_client: Any,
    es_url: str,
    es_index: str,
    prefect_api_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flows.backfill import retag, run_retag

    _, new, crosswalk_path = versions
    alerts = _enriched_v18(shared_data)
    assert "T1562.001" in alerts[0]["threat"]["technique"]["subtechnique"]["id"]
    for alert in alerts:
        es_client.index(index=es_index, id=alert["kibana.alert.uuid"], document=alert)
    es_client.indices.refresh(index=es_index)
    crosswalk = load_crosswalk(crosswalk_path)
    sink = ElasticSink(es_client, refresh="wait_for")

    monkeypatch.setenv("ATTACKMAP_ES_URL", es_url)
    monkeypatch.setenv("ATTACKMAP_HOME", str(tmp_path / "home"))
    result = retag(  # the flow, run by Prefect
        catalog=str(shared_data / "attack-v19" / "enterprise-attack.json"),
        crosswalk=str(crosswalk_path),
        index=es_index,
        checkpoint=str(tmp_path / "cp.json"),
    )
    assert (result["read"], result["retagged"], result["to_version"]) == (3, 2, "19.1")  # the skipped one: not ours
    es_client.indices.refresh(index=es_index)
    docs = {h["_id"]: h["_source"] for h in es_client.search(index=es_index, size=10)["hits"]["hits"]}
    tampering, uac = docs["retag-0"], docs["retag-1"]
    techniques = tampering["threat"]["technique"]["id"] + tampering["threat"]["technique"]["subtechnique"]["id"]
    assert "T1562.001" not in techniques and "T1562" not in techniques
    assert {"T1685", "T1685.005"} <= set(techniques)  # ours, and the analyst's T1070.001, both carried over
    assert {"TA0112", "TA0040"} <= set(tampering["threat"]["tactic"]["id"])  # Defense Impairment; analyst's kept
    assert tampering["attackmap"]["catalog_version"] == "19.1"
    assert tampering["attackmap"]["retagged"]["changes"]["T1562.001"] == ["T1685"]
    assert "TA0005" not in uac["threat"]["tactic"]["id"] and "TA0004" in uac["threat"]["tactic"]["id"]
    names = dict(zip(uac["threat"]["tactic"]["id"], uac["threat"]["tactic"]["name"], strict=True))
    assert names["TA0004"] == "Privilege Escalation"

    seq = {h["_id"]: h["_seq_no"] for h in es_client.search(index=es_index, seq_no_primary_term=True)["hits"]["hits"]}
    again_read, again = run_retag(es_client, sink, es_index, Checkpoint(tmp_path / "cp2.json"), crosswalk, new)
    assert (again_read, again.updated) == (3, 0)  # idempotent
    after = {h["_id"]: h["_seq_no"] for h in es_client.search(index=es_index, seq_no_primary_term=True)["hits"]["hits"]}
    assert after == seq
    assert retag_alert(docs["retag-0"], crosswalk, new) is None
