from __future__ import annotations

from mitre.enrich import build_threat, enrich_alert
from mitre.features import extract_features
from mitre.models import Decision, DecisionKind, MappingResult, TechniqueScore
from mitre.validate import validate_mapping
from tests.helpers import kibana_alert, threat_entry


def score(tid: str, conf: float = 0.9, tactics: tuple[str, ...] = ()) -> TechniqueScore:
    return TechniqueScore(technique_id=tid, confidence=conf, tactic_ids=tactics)


def test_unknown_ids_never_survive_and_revoked_ids_are_redirected(catalog):
    result = MappingResult(mapper="x", techniques=(score("T9999"), score("T1086"), score("TA0001")))
    validated = validate_mapping(result, catalog)
    assert [t.technique_id for t in validated.result.techniques] == ["T1059.001"]
    codes = [i.code for i in validated.issues]
    assert codes.count("unknown_technique") == 2
    assert "redirected_revoked" in codes


def test_foreign_tactics_are_dropped_and_missing_ones_filled(catalog):
    result = MappingResult(mapper="x", techniques=(score("T1003.001", tactics=("TA0002",)),))
    validated = validate_mapping(result, catalog)
    assert validated.result.techniques[0].tactic_ids == ("TA0006",)
    assert any(i.code == "tactic_not_of_technique" for i in validated.issues)
    named = validate_mapping(
        MappingResult(mapper="x", techniques=(score("T1053.005", tactics=("persistence",)),)), catalog
    )
    assert named.result.techniques[0].tactic_ids == ("TA0003",)


def test_duplicates_and_parent_child_pairs_are_resolved(catalog):
    result = MappingResult(
        mapper="x",
        techniques=(score("T1003", 0.9), score("T1003.001", 0.8), score("T1059.001", 0.5), score("T1059.001", 0.7)),
    )
    validated = validate_mapping(result, catalog)
    ids = sorted(t.technique_id for t in validated.result.techniques)
    assert ids == ["T1003.001", "T1059.001"]
    assert next(t for t in validated.result.techniques if t.technique_id == "T1059.001").confidence == 0.7


def test_tactic_only_results_are_kept_only_without_techniques(catalog):
    only = validate_mapping(MappingResult(mapper="x", tactic_ids=("discovery", "TA9999")), catalog)
    assert only.result.tactic_ids == ("TA0007",)
    both = validate_mapping(MappingResult(mapper="x", techniques=(score("T1082"),), tactic_ids=("TA0007",)), catalog)
    assert both.result.tactic_ids == ()


def test_ecs_threat_uses_kibana_array_conventions(catalog):
    threat = build_threat(catalog, ["T1003.001", "T1059"], ["TA0006", "TA0002"])
    assert threat["framework"] == "MITRE ATT&CK"
    assert threat["tactic"]["id"] == ["TA0002", "TA0006"]  # matrix order
    assert threat["technique"]["id"] == ["T1003", "T1059"]
    assert threat["technique"]["subtechnique"]["id"] == ["T1003.001"]
    assert threat["technique"]["subtechnique"]["reference"] == ["https://attack.mitre.org/techniques/T1003/001/"]
    assert len(threat["technique"]["name"]) == len(threat["technique"]["id"])


def test_extend_merges_rule_tags_and_analyst_tags_without_clobbering(catalog):
    alert = kibana_alert(threat=[threat_entry("TA0002", "Execution", "T1059", "T1059.001")])
    alert["threat.technique.id"] = ["T1078"]  # an analyst's tag, flat form
    features = extract_features(alert)
    decision = Decision(kind=DecisionKind.EXTEND, reason="indicator_fired", detail="d")
    mapping = validate_mapping(MappingResult(mapper="local", techniques=(score("T1003.001"),)), catalog)
    enriched = enrich_alert(alert, features, decision, mapping, catalog, cache_hit=False, settings_hash="s")
    assert set(enriched["threat"]["technique"]["id"]) == {"T1059", "T1003", "T1078"}
    assert "threat.technique.id" not in enriched
    assert enriched["kibana.alert.rule.name"] == alert["kibana.alert.rule.name"]
    prov = enriched["attackmap"]
    assert prov["decision"] == "extend" and prov["catalog_version"] == "18.1"
    assert prov["techniques"][0]["id"] == "T1003.001"
    again = enrich_alert(alert, features, decision, mapping, catalog, cache_hit=True, settings_hash="s")
    assert again["attackmap"]["provenance_hash"] == prov["provenance_hash"]
    other = enrich_alert(alert, features, decision, mapping, catalog, cache_hit=False, settings_hash="other")
    assert other["attackmap"]["provenance_hash"] != prov["provenance_hash"]


def test_enrichment_keeps_threat_data_that_is_not_attack_tags(catalog):
    """An indicator match alert carries threat.enrichments / threat.indicator: never ours to drop."""
    alert = kibana_alert()
    alert["threat"] = {
        "enrichments": [{"indicator": {"ip": "203.0.113.9"}, "matched": {"field": "destination.ip"}}],
        "technique": {"id": ["T1078"]},
    }
    alert["threat.feed.name"] = "abuse.ch"
    alert["threat.tactic.id"] = ["TA0001"]
    features = extract_features(alert)
    decision = Decision(kind=DecisionKind.MAP, reason="untagged_rule", detail="d")
    mapping = validate_mapping(MappingResult(mapper="local", techniques=(score("T1003.001"),)), catalog)
    enriched = enrich_alert(alert, features, decision, mapping, catalog, cache_hit=False, settings_hash="s")
    assert enriched["threat"]["enrichments"] == alert["threat"]["enrichments"]
    assert enriched["threat.feed.name"] == "abuse.ch"
    assert "threat.tactic.id" not in enriched
    assert set(enriched["threat"]["technique"]["id"]) == {"T1078", "T1003"}
    assert {"TA0001", "TA0006"} <= set(enriched["threat"]["tactic"]["id"])
