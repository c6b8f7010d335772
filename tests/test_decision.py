from __future__ import annotations

from pathlib import Path

import pytest

from mitre.catalog import load_catalog
from mitre.config import DecisionSettings, OptOuts
from mitre.decision import decide
from mitre.features import extract_features
from mitre.indicators import Indicator, IndicatorSet, load_indicators
from mitre.models import DecisionKind
from tests.helpers import LSASS_COMMAND, kibana_alert, threat_entry


def run(alert, catalog, indicators, **settings):
    features = extract_features(alert)
    return decide(features, indicators.evaluate(features), DecisionSettings(**settings), catalog)


def test_untagged_rule_is_mapped(catalog, indicators):
    d = run(kibana_alert(), catalog, indicators)
    assert (d.kind, d.reason) == (DecisionKind.MAP, "untagged_rule")


def test_raw_event_without_rule_is_mapped(catalog, indicators):
    d = run({"process": {"command_line": "whoami"}}, catalog, indicators)
    assert (d.kind, d.reason) == (DecisionKind.MAP, "no_rule")


def test_tactic_only_rule_is_mapped(catalog, indicators):
    d = run(kibana_alert(threat=[threat_entry("TA0007", "Discovery")]), catalog, indicators)
    assert (d.kind, d.reason) == (DecisionKind.MAP, "tactic_only_rule")


def test_tagged_rule_without_indicator_is_skipped(catalog, indicators):
    alert = kibana_alert(threat=[threat_entry("TA0002", "Execution", "T1059", "T1059.001")], command_line="hostname")
    d = run(alert, catalog, indicators)
    assert (d.kind, d.reason) == (DecisionKind.SKIP, "rule_tagged_no_indicator")


def test_tagged_rule_is_extended_when_a_strong_indicator_shows_a_new_technique(catalog, indicators):
    alert = kibana_alert(threat=[threat_entry("TA0002", "Execution", "T1059", "T1059.001")], command_line=LSASS_COMMAND)
    d = run(alert, catalog, indicators)
    assert (d.kind, d.reason) == (DecisionKind.EXTEND, "indicator_fired")
    assert any("T1003.001" in h.techniques for h in d.indicators)


def test_indicator_already_covered_by_the_rule_does_not_extend(catalog, indicators):
    alert = kibana_alert(
        threat=[
            threat_entry("TA0006", "Credential Access", "T1003", "T1003.001"),
            threat_entry("TA0005", "Defense Evasion", "T1218", "T1218.011"),
        ],
        command_line=LSASS_COMMAND,
    )
    assert run(alert, catalog, indicators).kind is DecisionKind.SKIP


def test_revoked_rule_tag_counts_as_tagged(catalog, indicators):
    alert = kibana_alert(threat=[threat_entry("TA0002", "Execution", "T1086")], command_line="hostname")
    assert run(alert, catalog, indicators).reason == "rule_tagged_no_indicator"


def test_risk_filter_and_missing_risk(catalog, indicators):
    assert run(kibana_alert(risk=21), catalog, indicators).reason == "below_risk_threshold"
    assert run(kibana_alert(risk=21), catalog, indicators, min_risk_score=20).kind is DecisionKind.MAP


def test_opt_outs_by_rule_id_and_name_pattern(catalog, indicators):
    alert = kibana_alert(rule_name="Noisy Test Rule")
    by_pattern = run(alert, catalog, indicators, opt_outs=OptOuts(rule_name_patterns=["*test rule*"]))
    assert by_pattern.reason == "opted_out"
    by_id = run(alert, catalog, indicators, opt_outs=OptOuts(rule_ids=["rule-noisy-test-rule"]))
    assert by_id.reason == "opted_out"


def test_modes(catalog, indicators):
    tagged = kibana_alert(threat=[threat_entry("TA0002", "Execution", "T1059")], command_line=LSASS_COMMAND)
    assert run(tagged, catalog, indicators, mode="gap-fill").reason == "rule_tagged"
    assert run(tagged, catalog, indicators, mode="always").kind is DecisionKind.MAP


def test_indicator_catalog_is_validated_against_the_attack_catalog(catalog):
    bad = Indicator(
        id="x", name="x", fields=("process.command_line",), confidence=0.9, techniques=("T9999",), pattern="x"
    )
    with pytest.raises(ValueError, match="T9999"):
        IndicatorSet([bad], catalog)


def test_discovery_burst_needs_three_distinct_commands(catalog, indicators):
    two = extract_features(kibana_alert(command_line="cmd /c whoami & ipconfig"))
    three = extract_features(kibana_alert(command_line="cmd /c whoami & ipconfig /all & systeminfo"))
    assert not [h for h in indicators.evaluate(two) if h.indicator_id == "discovery-burst"]
    burst = [h for h in indicators.evaluate(three) if h.indicator_id == "discovery-burst"]
    assert burst and set(burst[0].techniques) == {"T1033", "T1016", "T1082"}


def test_every_bundled_indicator_compiles_and_fits_the_full_bundle(shared_data: Path):
    full = load_catalog(shared_data / "attack" / "enterprise-attack.json")
    assert len(load_indicators(full).indicators) >= 50
