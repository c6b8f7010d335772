from __future__ import annotations

import json
from pathlib import Path

import pytest

from mitre.catalog import CatalogError, compile_catalog, load_catalog


@pytest.fixture(scope="module")
def bundle_catalog(shared_data: Path):
    return load_catalog(shared_data / "attack" / "enterprise-attack.json")


def test_bundle_counts_match_the_derived_tables(bundle_catalog, shared_data: Path):
    techniques = [json.loads(line) for line in (shared_data / "attack" / "techniques.jsonl").open()]
    assert set(bundle_catalog.techniques) == {t["id"] for t in techniques}
    for row in techniques:
        assert bundle_catalog.techniques[row["id"]].tactics == tuple(row["tactics"])
    tactics = [json.loads(line) for line in (shared_data / "attack" / "tactics.jsonl").open()]
    assert [t.id for t in bundle_catalog.tactics] == [t["id"] for t in tactics]
    assert bundle_catalog.version == "18.1"


def test_revoked_ids_follow_chains_to_their_replacement(bundle_catalog, shared_data: Path):
    for line in (shared_data / "attack" / "revoked.jsonl").open():
        row = json.loads(line)
        resolved = bundle_catalog.resolve(row["id"])
        assert resolved.active_id == row["replaced_by"], row
        assert resolved.how == ("revoked" if row["replaced_by"] else "deprecated")


def test_newer_version_ids_and_tactics_map_to_the_loaded_version(bundle_catalog):
    assert bundle_catalog.resolve("T1685").active_id == "T1562.001"
    assert bundle_catalog.resolve("T1685").how == "newer_version"
    assert bundle_catalog.resolve("T1027.018").active_id == "T1027"
    assert bundle_catalog.resolve("T9999").active_id is None
    assert bundle_catalog.tactic("stealth").id == "TA0005"
    assert bundle_catalog.tactic("defense-impairment").id == "TA0005"


def test_offline_package_and_bundle_agree_on_ids_and_tactics(bundle_catalog):
    offline = load_catalog(None)
    assert offline.version == bundle_catalog.version
    assert set(offline.techniques) == set(bundle_catalog.techniques)
    assert [t.id for t in offline.tactics] == [t.id for t in bundle_catalog.tactics]
    for tid, tech in bundle_catalog.techniques.items():
        assert offline.techniques[tid].tactics == tech.tactics
    assert offline.data.redirects == bundle_catalog.data.redirects


def test_compiled_catalog_round_trips(bundle_catalog, tmp_path: Path):
    target = tmp_path / "catalog.json"
    target.write_bytes(compile_catalog(bundle_catalog))
    again = load_catalog(target)
    assert again.fingerprint == bundle_catalog.fingerprint


def test_a_bundle_from_a_newer_version_is_read_from_its_collection_object(tmp_path: Path):
    objects = [
        {"type": "x-mitre-collection", "id": "x-mitre-collection--1", "x_mitre_version": "19.0"},
        {
            "type": "x-mitre-matrix",
            "id": "x-mitre-matrix--1",
            "tactic_refs": ["x-mitre-tactic--b", "x-mitre-tactic--a"],
        },
        {
            "type": "x-mitre-tactic",
            "id": "x-mitre-tactic--a",
            "name": "Stealth",
            "x_mitre_shortname": "stealth",
            "external_references": [{"source_name": "mitre-attack", "external_id": "TA0005"}],
        },
        {
            "type": "x-mitre-tactic",
            "id": "x-mitre-tactic--b",
            "name": "Defense Impairment",
            "x_mitre_shortname": "defense-impairment",
            "external_references": [{"source_name": "mitre-attack", "external_id": "TA0112"}],
        },
        {
            "type": "attack-pattern",
            "id": "attack-pattern--1",
            "name": "Disable or Modify Tools",
            "kill_chain_phases": [{"kill_chain_name": "mitre-attack", "phase_name": "defense-impairment"}],
            "external_references": [{"source_name": "mitre-attack", "external_id": "T1685"}],
        },
        {
            "type": "attack-pattern",
            "id": "attack-pattern--2",
            "name": "Old",
            "revoked": True,
            "external_references": [{"source_name": "mitre-attack", "external_id": "T1562.001"}],
        },
        {
            "type": "relationship",
            "id": "relationship--1",
            "relationship_type": "revoked-by",
            "source_ref": "attack-pattern--2",
            "target_ref": "attack-pattern--1",
        },
    ]
    path = tmp_path / "enterprise-attack.json"
    path.write_text(json.dumps({"type": "bundle", "id": "bundle--1", "spec_version": "2.1", "objects": objects}))
    catalog = load_catalog(path)
    assert catalog.version == "19.0"
    # Tactic order and names come from the data, never from code.
    assert [t.shortname for t in catalog.tactics] == ["defense-impairment", "stealth"]
    assert catalog.tactics_of("T1685")[0].id == "TA0112"
    # The bundled v19 crosswalk never overrides IDs the catalog itself defines.
    assert catalog.resolve("T1685").how == "active"
    assert catalog.resolve("T1562.001").active_id == "T1685"


@pytest.mark.parametrize("content", [b"not json", b'{"type": "x"}', b'{"type": "bundle", "objects": []}'])
def test_bad_bundles_are_rejected_with_a_clear_error(tmp_path: Path, content: bytes):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(CatalogError):
        load_catalog(path)
