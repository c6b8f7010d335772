"""Compliance controls: public mappings translated to the active catalog, user-supplied ISO 27001 /
SOC 2 files, nothing invented, and `attackmap coverage --by-control`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mitre.catalog import Catalog, load_catalog
from mitre.cli import app
from mitre.compliance import NO_PUBLIC_MAPPING, control_id, load_compliance


@pytest.fixture(scope="module")
def mappings(shared_data: Path) -> Path:
    return shared_data / "compliance" / "mappings.jsonl"


def test_public_mappings_give_controls_in_the_frameworks_own_spelling(catalog: Catalog, mappings: Path) -> None:
    compliance, warnings = load_compliance(catalog, [mappings])
    assert warnings == []
    tags = compliance.tags(["T1003.001"])
    assert "AC-2" in tags["nist_800_53_controls"] and "AC-02" not in tags["nist_800_53_controls"]
    assert tags["cri_profile_controls"]
    assert compliance.tags(["T1021.001"])["csa_ccm_controls"], "CSA CCM maps cloud-relevant techniques"
    assert tags["soc2_controls"] == [] and tags["iso27001_annex_a_controls"] == []
    assert tags["unavailable"] == {"soc2_controls": NO_PUBLIC_MAPPING, "iso27001_annex_a_controls": NO_PUBLIC_MAPPING}
    # Kibana lists a sub-technique's parent beside it: the parent adds nothing of its own.
    assert compliance.tags(["T1003", "T1003.001"]) == tags
    assert control_id("nist_800_53", "SI-04") == "SI-4" and control_id("csa_ccm", "A&A-01") == "A&A-01"


def test_revoked_ids_of_the_mapping_land_on_the_active_catalogs_replacement(shared_data: Path, mappings: Path) -> None:
    """The NIST mapping names ATT&CK 16.1 ids; on v19.1, T1562.001 was revoked into T1685/T1686."""
    v19 = load_catalog(shared_data / "attack-v19" / "enterprise-attack.json")
    assert v19.resolve("T1562.001").how == "revoked"
    replacement = v19.resolve("T1562.001").active_id
    assert replacement is not None
    compliance, _ = load_compliance(v19, [mappings])
    assert compliance.tags([replacement])["nist_800_53_controls"], "controls of the revoked id carried over"
    assert "T1562.001" not in compliance.controls["nist_800_53"]


def test_user_mapping_file_fills_iso27001_and_nothing_else(catalog: Catalog, tmp_path: Path) -> None:
    path = tmp_path / "iso.yaml"
    path.write_text(
        yaml.safe_dump(
            {"framework": "iso27001", "source": "test", "mappings": [{"control": "A.8.7", "techniques": ["T1204"]}]}
        )
    )
    compliance, warnings = load_compliance(catalog, [tmp_path / "missing.jsonl"], [path])
    assert warnings and "not found" in warnings[0]
    tags = compliance.tags(["T1204.002"])  # a sub-technique takes its parent's controls
    assert tags["iso27001_annex_a_controls"] == ["A.8.7"]
    assert tags["unavailable"] == {"soc2_controls": NO_PUBLIC_MAPPING}
    assert tags["nist_800_53_controls"] == []
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"framework": "soc2", "mappings": [{"control": "CC6.1", "techniques": ["T9999"]}]}))
    with pytest.raises(ValueError, match="T9999"):
        load_compliance(catalog, [], [bad])


def test_enrich_tags_controls_and_coverage_reports_them(mappings: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ATTACKMAP_HOME", str(tmp_path / "home"))
    workflows = tmp_path / "workflows.yaml"
    config = {"compliance": {"mappings": [str(mappings)]}, "workflows": [{"name": "w"}]}
    workflows.write_text(yaml.safe_dump(config))
    alerts = tmp_path / "in.ndjson"
    event = {"event_type": "mythic_task_completed", "attributes": {"task": "mimikatz"}}
    alerts.write_text(json.dumps(event) + "\n")
    out = tmp_path / "out.ndjson"
    runner = CliRunner()
    result = runner.invoke(app, ["enrich", str(alerts), "-o", str(out), "--workflows", str(workflows), "-j", "1"])
    assert result.exit_code == 0, result.output
    enriched = json.loads(out.read_text())
    assert "AC-2" in enriched["attackmap"]["compliance"]["nist_800_53_controls"]
    args = ["coverage", "--by-control", str(out), "--workflows", str(workflows), "--json"]
    result = runner.invoke(app, [*args, "--framework", "nist_800_53"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["alerts"] == 1
    ac2 = next(r for r in report["controls"] if r["control"] == "AC-2")
    assert ac2 == {
        "framework": "nist_800_53",
        "control": "AC-2",
        "name": "Account Management",
        "alerts": 1,
        "techniques": {"T1003.001": 1},
    }
