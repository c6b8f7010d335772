"""Label normalisation across ATT&CK versions, through the loaded catalog.

Revoked IDs follow their replacement, newer (v19) IDs go back through the crosswalk, unknown
sub-techniques fall back to their parent, v19 tactic names (`stealth`, `defense-impairment`)
map to the active tactic. Whatever cannot be mapped is counted; a case that loses all of its
technique labels is excluded from scoring and listed in the report, never silently dropped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from evals.datasets import Case
from mitre.catalog import Catalog


@dataclass
class LabelStats:
    cases_in: int = 0
    cases_scored: int = 0
    redirected: Counter[str] = field(default_factory=Counter)  # "old→new" counts
    unmapped_techniques: Counter[str] = field(default_factory=Counter)
    unmapped_tactics: Counter[str] = field(default_factory=Counter)
    partially_mapped_cases: int = 0
    excluded: Counter[str] = field(default_factory=Counter)  # reason → cases
    excluded_ids: dict[str, list[str]] = field(default_factory=dict)  # reason → first case ids
    tactics_from_catalog: int = 0

    def exclude(self, reason: str, case_id: str) -> None:
        self.excluded[reason] += 1
        ids = self.excluded_ids.setdefault(reason, [])
        if len(ids) < 20:
            ids.append(case_id)

    def as_dict(self) -> dict[str, Any]:
        return {
            "cases_in": self.cases_in,
            "cases_scored": self.cases_scored,
            "redirected": dict(self.redirected.most_common()),
            "unmapped_techniques": dict(self.unmapped_techniques.most_common()),
            "unmapped_tactics": dict(self.unmapped_tactics.most_common()),
            "partially_mapped_cases": self.partially_mapped_cases,
            "excluded": dict(self.excluded),
            "excluded_examples": self.excluded_ids,
            "tactics_from_catalog": self.tactics_from_catalog,
        }


def normalise_techniques(raw: Sequence[str], catalog: Catalog, stats: LabelStats) -> tuple[str, ...]:
    active: list[str] = []
    for tid in raw:
        resolved = catalog.resolve(tid)
        if resolved.active_id is None:
            stats.unmapped_techniques[tid] += 1
            continue
        if resolved.active_id != tid.strip().upper():
            stats.redirected[f"{tid}→{resolved.active_id}"] += 1
        active.append(resolved.active_id)
    # A parent listed beside its own sub-technique adds nothing: keep the most specific label.
    kept = [t for t in dict.fromkeys(active) if not any(o.startswith(t + ".") for o in active)]
    return tuple(kept)


def normalise_tactics(raw: Sequence[str], catalog: Catalog, stats: LabelStats) -> tuple[str, ...]:
    ids = []
    for name in raw:
        tactic = catalog.tactic(name)
        if tactic is None:
            stats.unmapped_tactics[name] += 1
        else:
            ids.append(tactic.id)
    return tuple(dict.fromkeys(ids))


def tactics_of(techniques: Sequence[str], catalog: Catalog) -> tuple[str, ...]:
    return tuple(dict.fromkeys(t.id for tid in techniques for t in catalog.tactics_of(tid)))


def normalise_case(case: Case, catalog: Catalog, stats: LabelStats) -> Case | None:
    """The case with active technique and tactic IDs, or None (counted) when it cannot be scored."""
    stats.cases_in += 1
    techniques = normalise_techniques(case.techniques, catalog, stats)
    tactics = normalise_tactics(case.tactics, catalog, stats)
    if case.hard_negative:
        stats.cases_scored += 1
        return replace(case, techniques=(), tactics=())
    if not case.techniques:
        stats.exclude("no_technique_labels", case.id)
        return None
    if not techniques:
        stats.exclude("no_mappable_technique", case.id)
        return None
    if len(techniques) < len(set(case.techniques)) and any(
        catalog.resolve(t).active_id is None for t in case.techniques
    ):
        stats.partially_mapped_cases += 1
    if not tactics:
        tactics = tactics_of(techniques, catalog)
        stats.tactics_from_catalog += 1
    stats.cases_scored += 1
    return replace(case, techniques=techniques, tactics=tactics)


def normalise_cases(cases: Sequence[Case], catalog: Catalog) -> tuple[list[Case], LabelStats]:
    stats = LabelStats()
    out = [c for case in cases if (c := normalise_case(case, catalog, stats)) is not None]
    return out, stats
