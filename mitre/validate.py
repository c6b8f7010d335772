"""One validator for every mapper: no ID that is not an active technique of the loaded catalog
ever leaves it. Revoked and newer IDs are redirected, foreign tactics dropped, duplicates and
parent+child pairs resolved. Each fix is reported as a typed issue."""

from __future__ import annotations

from mitre.catalog import Catalog, Tactic
from mitre.models import IssueSeverity, MappingResult, TechniqueScore, ValidatedMapping, ValidationIssue


def _issue(severity: IssueSeverity, code: str, message: str, technique_id: str | None = None) -> ValidationIssue:
    return ValidationIssue(severity=severity, code=code, message=message, technique_id=technique_id)


def _fix_technique(score: TechniqueScore, catalog: Catalog, issues: list[ValidationIssue]) -> TechniqueScore | None:
    resolved = catalog.resolve(score.technique_id)
    if resolved.active_id is None:
        issues.append(
            _issue(
                IssueSeverity.ERROR,
                "unknown_technique",
                f"{score.technique_id} is not a technique of ATT&CK {catalog.version}; dropped",
                score.technique_id,
            )
        )
        return None
    if resolved.how != "active":
        issues.append(
            _issue(
                IssueSeverity.WARNING,
                f"redirected_{resolved.how}",
                f"{score.technique_id} → {resolved.active_id} ({resolved.how})",
                score.technique_id,
            )
        )
    own = catalog.tactics_of(resolved.active_id)
    tactics: list[Tactic] = []
    for key in score.tactic_ids:
        tactic = catalog.tactic(key)
        if tactic is None or tactic not in own:
            issues.append(
                _issue(
                    IssueSeverity.WARNING,
                    "tactic_not_of_technique",
                    f"tactic {key} does not belong to {resolved.active_id}; dropped",
                    resolved.active_id,
                )
            )
        else:
            tactics.append(tactic)
    ordered = tuple(t.id for t in sorted(dict.fromkeys(tactics or own), key=catalog.tactic_rank))
    return score.model_copy(update={"technique_id": resolved.active_id, "tactic_ids": ordered})


def _dedupe(scores: list[TechniqueScore], catalog: Catalog, issues: list[ValidationIssue]) -> list[TechniqueScore]:
    best: dict[str, TechniqueScore] = {}
    for s in scores:
        kept = best.get(s.technique_id)
        if kept is None:
            best[s.technique_id] = s
            continue
        issues.append(
            _issue(
                IssueSeverity.INFO,
                "duplicate",
                f"{s.technique_id} listed twice; kept the higher confidence",
                s.technique_id,
            )
        )
        if s.confidence > kept.confidence:
            best[s.technique_id] = s.model_copy(update={"evidence": s.evidence + kept.evidence})
    chosen = list(best.values())
    children_parents = {catalog.techniques[s.technique_id].parent for s in chosen}
    result = []
    for s in chosen:
        if s.technique_id in children_parents:
            issues.append(
                _issue(
                    IssueSeverity.INFO,
                    "parent_of_chosen_child",
                    f"{s.technique_id} dropped: a sub-technique of it is mapped",
                    s.technique_id,
                )
            )
            continue
        result.append(s)
    return result


def validate_mapping(result: MappingResult, catalog: Catalog) -> ValidatedMapping:
    issues: list[ValidationIssue] = list(result.answer_issues)  # what the LLM path dropped from an answer
    fixed = [f for s in result.techniques if (f := _fix_technique(s, catalog, issues)) is not None]
    techniques = _dedupe(fixed, catalog, issues)
    candidate_issues: list[ValidationIssue] = []
    candidates = [f for s in result.candidates if (f := _fix_technique(s, catalog, candidate_issues)) is not None]
    tactic_ids = []
    for key in result.tactic_ids:
        tactic = catalog.tactic(key)
        if tactic is None:
            issues.append(
                _issue(
                    IssueSeverity.ERROR, "unknown_tactic", f"{key} is not a tactic of ATT&CK {catalog.version}; dropped"
                )
            )
        else:
            tactic_ids.append(tactic.id)
    cleaned = result.model_copy(
        update={
            "techniques": tuple(techniques),
            "candidates": tuple(candidates),
            "tactic_ids": tuple(dict.fromkeys(tactic_ids)) if not techniques else (),
        }
    )
    return ValidatedMapping(result=cleaned, issues=tuple(issues))
