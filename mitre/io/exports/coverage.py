"""ATT&CK coverage: per technique of the active catalog, how many alerts (or rules) name it, how
confidently, and which rules and alerts they were. What the Navigator layers and the HTML matrix draw.

IDs from another ATT&CK version are resolved through the catalog (a revoked ID counts for its
replacement), so v18.1 alerts draw correctly on a v19.1 matrix.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mitre.catalog import Catalog
from mitre.features import parse_rule_threat
from mitre.io.exports.event import CommonEvent

EXAMPLES_KEPT = 3


@dataclass
class TechniqueCoverage:
    count: int = 0
    max_confidence: float = 0.0
    rules: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)


@dataclass
class Coverage:
    """What one layer shows: a title, what was counted ("alerts" or "rules"), and per technique."""

    catalog: Catalog
    title: str
    counted: str = "alerts"
    techniques: dict[str, TechniqueCoverage] = field(default_factory=dict)
    unresolved: Counter[str] = field(default_factory=Counter)
    total: int = 0

    def _add(self, technique_id: str, *, rule: str | None, example: str | None, confidence: float | None) -> None:
        active = self.catalog.resolve(technique_id).active_id
        if active is None:
            self.unresolved[technique_id] += 1
            return
        entry = self.techniques.setdefault(active, TechniqueCoverage())
        entry.count += 1
        if confidence is not None:
            entry.max_confidence = max(entry.max_confidence, confidence)
        if rule:
            entry.rules[rule] += 1
        if example and len(entry.examples) < EXAMPLES_KEPT:
            entry.examples.append(example)

    def add_event(self, event: CommonEvent) -> None:
        self.total += 1
        rule = event.rule.name if event.rule else None
        for tid in event.technique_ids:
            self._add(tid, rule=rule, example=event.id, confidence=event.technique_confidence.get(tid))

    def add_rule(self, row: Mapping[str, Any]) -> bool:
        """A detection rule (Sigma, generic rules JSONL, Kibana rule export); False if it names no technique."""
        techniques = rule_techniques(row)
        if not techniques:
            return False
        self.total += 1
        name = str(row.get("name") or row.get("title") or row.get("rule_id") or row.get("id") or "unnamed rule")
        if row.get("author"):  # Sigma rules (DRL 1.1): what is derived from a rule names its author
            name = f"{name} (by {row['author']})"
        for tid in techniques:
            self._add(tid, rule=name, example=None, confidence=None)
        return True

    def tactic_columns(self) -> list[tuple[str, str, str]]:
        """(tactic id, shortname, name) in the catalog's matrix order."""
        return [(t.id, t.shortname, t.name) for t in self.catalog.tactics]


def rule_techniques(row: Mapping[str, Any]) -> list[str]:
    threat = row.get("threat")
    if isinstance(threat, list):
        return [r.technique_id for r in parse_rule_threat(threat) if r.technique_id]
    techniques = row.get("techniques")
    if isinstance(techniques, list):
        return [str(t) for t in techniques if t]
    return []


def coverage_of_events(catalog: Catalog, events: Iterable[CommonEvent], title: str) -> Coverage:
    coverage = Coverage(catalog, title)
    for event in events:
        coverage.add_event(event)
    return coverage
