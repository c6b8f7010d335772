"""Label normalisation across ATT&CK versions, through the loaded catalog.

Revoked IDs follow their replacement, newer (v19) IDs go back through the crosswalk, unknown
sub-techniques fall back to their parent, v19 tactic names (`stealth`, `defense-impairment`)
map to the active tactic. Whatever cannot be mapped is counted; a case that loses all of its
technique labels is excluded from scoring and listed in the report, never silently dropped.

Tactics follow their techniques across versions: under ATT&CK v19 a v18 label T1562.001 (Defense
Evasion) becomes T1685, whose tactic is Defense Impairment (TA0112), not TA0005 (now Stealth). A
labelled tactic that none of the case's techniques has in the active catalog is replaced by the
catalog tactics of the techniques it left uncovered. A dataset that gives v19 labels of its own
(telemetry-dev's `expected_v19`) is scored with those when a v19 catalog is active.
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
    tactics_followed_techniques: int = 0  # cases whose tactics moved with their techniques (v18 → v19)
    own_v19_labels: int = 0  # cases scored with the dataset's own v19 labels

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
            "tactics_followed_techniques": self.tactics_followed_techniques,
            "own_v19_labels": self.own_v19_labels,
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


def major_version(catalog: Catalog) -> int:
    """The ATT&CK major version of a catalog (0 when it does not say)."""
    head = catalog.version.split(".")[0]
    return int(head) if head.isdigit() else 0


def follow_techniques(tactics: Sequence[str], techniques: Sequence[str], catalog: Catalog) -> tuple[str, ...]:
    """Labelled tactics, where each still belongs to one of the techniques; a tactic that belongs to
    none (it moved in a newer ATT&CK) gives way to the tactics of the techniques left uncovered."""
    own = {t: {x.id for x in catalog.tactics_of(t)} for t in techniques}
    kept = [t for t in tactics if any(t in ids for ids in own.values())]
    if len(kept) == len(tactics):
        return tuple(tactics)
    added = [x for t, ids in own.items() if not ids & set(kept) for x in sorted(ids, key=_rank(catalog))]
    return tuple(dict.fromkeys([*kept, *added]))


def _rank(catalog: Catalog) -> Any:
    order = {t.id: i for i, t in enumerate(catalog.tactics)}
    return lambda tactic_id: order.get(tactic_id, len(order))


def normalise_case(case: Case, catalog: Catalog, stats: LabelStats) -> Case | None:
    """The case with active technique and tactic IDs, or None (counted) when it cannot be scored."""
    stats.cases_in += 1
    raw_techniques, raw_tactics = case.techniques, case.tactics
    if case.techniques_v19 is not None and major_version(catalog) >= 19:
        raw_techniques = case.techniques_v19
        raw_tactics = case.tactics_v19 if case.tactics_v19 is not None else case.tactics
        stats.own_v19_labels += 1
    techniques = normalise_techniques(raw_techniques, catalog, stats)
    tactics = normalise_tactics(raw_tactics, catalog, stats)
    if tactics and techniques:
        followed = follow_techniques(tactics, techniques, catalog)
        if followed != tactics:
            stats.tactics_followed_techniques += 1
            tactics = followed
    if case.hard_negative:
        stats.cases_scored += 1
        return replace(case, techniques=(), tactics=())
    if not raw_techniques:
        stats.exclude("no_technique_labels", case.id)
        return None
    if not techniques:
        stats.exclude("no_mappable_technique", case.id)
        return None
    if len(techniques) < len(set(raw_techniques)) and any(catalog.resolve(t).active_id is None for t in raw_techniques):
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
