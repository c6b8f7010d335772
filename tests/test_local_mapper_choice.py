"""How the local mapper chooses its final techniques from the ranked candidates (synthetic evidence)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from mitre.catalog import Catalog
from mitre.config import MapperSettings
from mitre.features import extract_features
from mitre.indicators import IndicatorSet
from mitre.mappers.local import LocalMapper, LocalWeights
from mitre.models import Decision, DecisionKind, IndicatorHit, MappingResult
from tests.helpers import kibana_alert, threat_entry

W = LocalWeights()


def margin_for(p: float) -> float:
    """The classifier margin the local mapper turns into confidence `p`."""
    return -math.log(W.classifier_weight / p - 1.0) / W.classifier_scale - W.classifier_shift


class StubKnowledge:
    """A knowledge base whose classifiers propose fixed techniques and tactic margins (no neighbours)."""

    def __init__(self, classified: list[tuple[str, float]], tactics: dict[str, float] | None = None) -> None:
        self.classified = classified
        self.tactics = tactics or {}

    def with_catalog(self, catalog: Catalog) -> StubKnowledge:
        return self

    def neighbours_many(self, texts: Sequence[str], k: int) -> list[list[Any]]:
        return [[] for _ in texts]

    def classify_many(self, texts: Sequence[str], top: int) -> list[list[tuple[str, float]]]:
        return [list(self.classified) for _ in texts]

    def classify_tactics_many(self, texts: Sequence[str]) -> list[dict[str, float]]:
        return [dict(self.tactics) for _ in texts]


class NoRetrieval:
    def search(self, text: str, top: int) -> list[tuple[str, float]]:
        return []


def hit(technique: str, confidence: float) -> IndicatorHit:
    return IndicatorHit(
        indicator_id=f"test-{technique}",
        techniques=(technique,),
        field="process.command_line",
        matched="x",
        confidence=confidence,
    )


def run(
    catalog: Catalog,
    classified: list[tuple[str, float]],
    decision: Decision,
    threat: list[dict[str, Any]] | None = None,
    tactics: dict[str, float] | None = None,
) -> MappingResult:
    mapper = LocalMapper(
        catalog,
        IndicatorSet([], catalog),
        MapperSettings(),
        knowledge=StubKnowledge([(t, margin_for(p)) for t, p in classified], tactics),  # type: ignore[arg-type]
        retriever=NoRetrieval(),  # type: ignore[arg-type]
    )
    return mapper.map(extract_features(kibana_alert(threat=threat)), decision)


def chosen(result: MappingResult) -> list[str]:
    return [t.technique_id for t in result.techniques]


def test_the_technique_an_extending_indicator_names_is_kept(catalog: Catalog) -> None:
    # The rule carries T1003.003, which the knowledge base also finds at 0.94; the indicator that
    # extended the alert shows T1047 at 0.82, below keep_ratio × 0.94: it must still be kept.
    decision = Decision(kind=DecisionKind.EXTEND, reason="indicator_fired", detail="", indicators=(hit("T1047", 0.82),))
    result = run(
        catalog,
        [("T1003.003", 0.94)],
        decision,
        threat=[threat_entry("TA0006", "Credential Access", "T1003", "T1003.003")],
    )
    assert "T1047" in chosen(result)
    # The rule's own technique (and its parent) is on the alert already: it takes no slot.
    assert not {"T1003", "T1003.003"} & set(chosen(result))


def test_the_rules_techniques_compete_when_the_alert_is_mapped(catalog: Catalog) -> None:
    decision = Decision(kind=DecisionKind.MAP, reason="untagged_rule", detail="", indicators=(hit("T1047", 0.82),))
    assert chosen(run(catalog, [("T1003.003", 0.94)], decision)) == ["T1047", "T1003.003"]


def test_weak_knowledge_base_candidates_are_not_padded_next_to_an_indicator_hit(catalog: Catalog) -> None:
    decision = Decision(kind=DecisionKind.MAP, reason="untagged_rule", detail="", indicators=(hit("T1059.001", 0.98),))
    result = run(catalog, [("T1105", 0.52)], decision)
    assert chosen(result) == ["T1059.001"]
    assert "T1105" in {c.technique_id for c in result.candidates}  # still a candidate, just not chosen


def test_a_confident_knowledge_base_candidate_still_joins_an_indicator_hit(catalog: Catalog) -> None:
    decision = Decision(kind=DecisionKind.MAP, reason="untagged_rule", detail="", indicators=(hit("T1059.001", 0.98),))
    assert chosen(run(catalog, [("T1105", 0.9)], decision)) == ["T1059.001", "T1105"]


def test_without_an_indicator_the_relative_cut_alone_applies(catalog: Catalog) -> None:
    decision = Decision(kind=DecisionKind.MAP, reason="untagged_rule", detail="")
    assert chosen(run(catalog, [("T1105", 0.55), ("T1082", 0.52)], decision)) == ["T1105", "T1082"]


def test_a_sub_technique_an_indicator_names_beats_its_parent_found_by_neighbours(catalog: Catalog) -> None:
    # T1496 gets 0.94 from the knowledge base plus a share of its sub-technique's indicator hit;
    # the hit (0.85, above the extend bar) falls below keep_ratio × that, yet it is the precise answer.
    decision = Decision(kind=DecisionKind.MAP, reason="untagged_rule", detail="", indicators=(hit("T1496.001", 0.85),))
    assert chosen(run(catalog, [("T1496", 0.94)], decision)) == ["T1496.001"]


def test_the_tactic_classifier_breaks_a_near_tie_between_techniques(catalog: Catalog) -> None:
    decision = Decision(kind=DecisionKind.MAP, reason="untagged_rule", detail="")
    close = [("T1082", 0.62), ("T1105", 0.60)]  # System Information Discovery vs Ingress Tool Transfer
    assert chosen(run(catalog, close, decision))[0] == "T1082"  # no tactic scores: confidence order
    tactics = {"TA0011": 0.8, "TA0007": -0.9}  # the alert serves Command and Control, not Discovery
    result = run(catalog, close, decision, tactics=tactics)
    assert chosen(result)[0] == "T1105"
    (agreement,) = [e for e in result.techniques[0].evidence if e.detail.startswith("tactic classifier")]
    assert "TA0011" in agreement.detail and agreement.score == round(W.tactic_agreement * 0.8, 4)


def parent_hit(technique: str, confidence: float) -> IndicatorHit:
    return IndicatorHit(
        indicator_id=f"parent-{technique}",
        techniques=(technique,),
        field="process.parent.command_line",
        matched="powershell -enc ...",
        confidence=confidence,
    )


def test_a_parents_indicator_never_hands_the_child_its_technique(catalog: Catalog) -> None:
    """Context from an ancestor's command line supports the child's own candidates only."""
    decision = Decision(kind=DecisionKind.MAP, reason="no_rule", detail="", indicators=(parent_hit("T1027", 0.48),))
    assert "T1027" not in chosen(run(catalog, [("T1548.002", 0.6)], decision))
    supported = Decision(
        kind=DecisionKind.MAP, reason="no_rule", detail="", indicators=(parent_hit("T1548.002", 0.48),)
    )
    with_context = next(t for t in run(catalog, [("T1548.002", 0.6)], supported).techniques)
    without = next(
        t
        for t in run(
            catalog, [("T1548.002", 0.6)], Decision(kind=DecisionKind.MAP, reason="no_rule", detail="")
        ).techniques
    )
    assert with_context.technique_id == "T1548.002" and with_context.confidence > without.confidence


def test_evidence_scores_are_never_negative(catalog: Catalog) -> None:
    """A tactic margin that lowers a candidate is said in words; the score stays a magnitude."""
    decision = Decision(kind=DecisionKind.MAP, reason="untagged_rule", detail="")
    result = run(catalog, [("T1105", 0.7)], decision, tactics={"TA0011": -0.8})
    scores = [e.score for t in result.candidates for e in t.evidence]
    assert scores and min(scores) >= 0.0
    assert any("lowered" in e.detail for t in result.candidates for e in t.evidence)


def test_candidates_fit_the_alerts_platform(catalog: Catalog) -> None:
    """A Linux-only technique is not proposed for a cloud (Office 365) alert."""
    mapper = LocalMapper(
        catalog,
        IndicatorSet([], catalog),
        MapperSettings(),
        knowledge=StubKnowledge([("T1037.004", margin_for(0.9)), ("T1114.003", margin_for(0.6))]),  # type: ignore[arg-type]
        retriever=NoRetrieval(),  # type: ignore[arg-type]
    )
    alert = {"event": {"module": "o365", "action": "Set-Mailbox"}, "cloud": {"provider": "microsoft"}}
    result = mapper.map(extract_features(alert), Decision(kind=DecisionKind.MAP, reason="no_rule", detail=""))
    assert {c.technique_id for c in result.candidates} == {"T1114.003", "T1114"}  # the parent shares its evidence
