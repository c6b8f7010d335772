"""The hybrid rule: skip alerts whose rule is already tagged, map untagged ones, extend tagged
ones when a high-confidence indicator shows a technique the rule does not carry."""

from __future__ import annotations

from collections.abc import Set
from fnmatch import fnmatch

from mitre.catalog import Catalog
from mitre.config import DecisionSettings
from mitre.models import AlertFeatures, Decision, DecisionKind, IndicatorHit

# Stable reason codes (counted in summaries and the ledger).
OPTED_OUT = "opted_out"
BELOW_RISK = "below_risk_threshold"
UNREADABLE_RISK = "unreadable_risk_score"
MODE_ALWAYS = "mode_always"
NO_RULE = "no_rule"
UNTAGGED_RULE = "untagged_rule"
TACTIC_ONLY_RULE = "tactic_only_rule"
RULE_TAGGED = "rule_tagged"
RULE_TAGGED_NO_INDICATOR = "rule_tagged_no_indicator"
INDICATOR_FIRED = "indicator_fired"


def rule_techniques(features: AlertFeatures, catalog: Catalog) -> set[str]:
    """Active technique IDs the rule is tagged with (revoked and newer IDs resolved)."""
    found = set()
    for ref in features.rule_threat:
        if ref.technique_id and (active := catalog.resolve(ref.technique_id).active_id):
            found.add(active)
    return found


def covered(technique_id: str, tagged: Set[str]) -> bool:
    """A technique is covered when tagged exactly, or when it is a parent of a tagged sub-technique."""
    return technique_id in tagged or any(t.startswith(technique_id + ".") for t in tagged)


def is_opted_out(features: AlertFeatures, settings: DecisionSettings) -> str | None:
    opt = settings.opt_outs
    if features.rule_id and features.rule_id in opt.rule_ids:
        return f"rule id {features.rule_id} is opted out"
    name = (features.rule_name or "").lower()
    for pattern in opt.rule_name_patterns:
        if name and fnmatch(name, pattern.lower()):
            return f"rule name matches opt-out pattern {pattern!r}"
    return None


def skip_early(features: AlertFeatures, settings: DecisionSettings) -> Decision | None:
    """The skips that need no indicators (opt-outs, the risk filter): callers check these first
    and evaluate indicators only for alerts that pass."""
    if (why := is_opted_out(features, settings)) is not None:
        return Decision(kind=DecisionKind.SKIP, reason=OPTED_OUT, detail=why)
    if features.risk_score_text is not None and settings.min_risk_score > 0:
        return Decision(
            kind=DecisionKind.SKIP,
            reason=UNREADABLE_RISK,
            detail=f"risk score {features.risk_score_text!r} is neither a number nor a severity "
            f"(low, medium, high, critical): the threshold {settings.min_risk_score:g} cannot be applied",
        )
    if features.risk_score is not None and features.risk_score < settings.min_risk_score:
        return Decision(
            kind=DecisionKind.SKIP,
            reason=BELOW_RISK,
            detail=f"risk score {features.risk_score:g} < {settings.min_risk_score:g}",
        )
    return None


def decide(
    features: AlertFeatures, hits: tuple[IndicatorHit, ...], settings: DecisionSettings, catalog: Catalog
) -> Decision:
    if (early := skip_early(features, settings)) is not None:
        return early
    if settings.mode == "always":
        return Decision(kind=DecisionKind.MAP, reason=MODE_ALWAYS, detail="workflow maps every alert", indicators=hits)
    tagged = rule_techniques(features, catalog)
    if not tagged:
        if features.rule_name is None:
            reason, detail = NO_RULE, "raw event without a detection rule"
        elif features.rule_threat:
            reason, detail = TACTIC_ONLY_RULE, "rule is tagged with tactics only"
        else:
            reason, detail = UNTAGGED_RULE, "rule carries no ATT&CK techniques"
        return Decision(kind=DecisionKind.MAP, reason=reason, detail=detail, indicators=hits)
    if settings.mode == "gap-fill":
        return Decision(kind=DecisionKind.SKIP, reason=RULE_TAGGED, detail=f"rule already tagged: {sorted(tagged)}")
    strong = tuple(
        h
        for h in hits
        if h.confidence >= settings.extend_min_confidence and any(not covered(t, tagged) for t in h.techniques)
    )
    if strong:
        new = sorted({t for h in strong for t in h.techniques if not covered(t, tagged)})
        return Decision(
            kind=DecisionKind.EXTEND,
            reason=INDICATOR_FIRED,
            detail=f"rule tagged {sorted(tagged)}; indicators {[h.indicator_id for h in strong]} show {new}",
            indicators=strong,
        )
    return Decision(
        kind=DecisionKind.SKIP,
        reason=RULE_TAGGED_NO_INDICATOR,
        detail=f"rule already tagged {sorted(tagged)} and no extra indicator fired",
        indicators=hits,
    )
