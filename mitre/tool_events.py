"""Offensive-tool telemetry (scans, exploits, implant commands, C2 tasks) → an ATT&CK baseline.

A red-team platform's events say what the operator did, so their technique follows from the event
type and a field or two (the Metasploit module, the Sliver command, the Mythic task) rather than from
detection heuristics: `mitre/data/tool_events.yaml` is that table, validated against the active
catalog like the indicators. Two shapes are recognised:

- the flat payload ``{"event_type": "nmap_scan_completed", "tenant_id": …, "execution_fingerprint": …,
  "timestamp": …, "attributes": {…}}`` — a document with no detection rule whose string ``event_type`` is
  in the table, or that has the platform's ``attributes`` object or ``execution_fingerprint``;
- ECS events whose ``event.module`` or ``observer.product`` names a tool of the table (and whose
  ``event.action`` fits the entry, when it lists actions).

An operator's own tags (``attributes.mitre_techniques`` / ``attributes.mitre_tactics``, or ECS
``threat.*`` already on the event) win over the baseline. An event type the table does not know maps to
the workflow's fallback (``tool_events.unknown_techniques``; empty: skipped as ``unknown_tool_event``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import yaml
from pydantic import Field, model_validator

from mitre.catalog import Catalog
from mitre.config import ToolEventSettings
from mitre.features import flatten
from mitre.models import (
    AlertFeatures,
    Contract,
    Decision,
    DecisionKind,
    Evidence,
    MappingResult,
    TechniqueScore,
)

TOOL_MAPPER = "tool-table"
TOOL_EVENT = "tool_event"
OPERATOR_TAGS = "operator_tags"
UNKNOWN_TOOL_EVENT = "unknown_tool_event"
OPERATOR_CONFIDENCE = 1.0
FALLBACK_CONFIDENCE = 0.5
_RULE_KEYS = ("kibana", "signal", "kibana.alert.rule.name", "signal.rule.name")
_MAX_FIELD_CHARS = 2048


class ToolRule(Contract):
    """A refinement of an entry's baseline: when `match` is found in one of the entry's fields."""

    match: str
    techniques: tuple[str, ...]
    tactics: tuple[str, ...] = ()


class ToolEventType(Contract):
    """One row of the table: which events it covers and what they map to."""

    id: str
    name: str
    event_types: tuple[str, ...] = ()
    products: tuple[str, ...] = ()
    actions: tuple[str, ...] = ()
    techniques: tuple[str, ...] = ()
    tactics: tuple[str, ...] = ()
    confidence: float = Field(0.8, ge=0, le=1)
    fields: tuple[str, ...] = ()
    rules: tuple[ToolRule, ...] = ()
    from_attributes: bool = False

    @model_validator(mode="after")
    def _complete(self) -> ToolEventType:
        if not self.event_types and not self.products:
            raise ValueError(f"tool event {self.id}: name event_types or products")
        if not self.techniques and not self.from_attributes:
            raise ValueError(f"tool event {self.id}: a baseline needs techniques (or from_attributes: true)")
        return self


@dataclass(frozen=True)
class ToolEvent:
    """A recognised tool event: its type, the table entry (None: unknown to the table), its fields."""

    event_type: str
    entry: ToolEventType | None
    flat: dict[str, Any]

    def features(self) -> AlertFeatures:
        """The event as the rest of the pipeline sees an alert: the event type stands for the rule."""
        fields = {}
        for name, value in self.flat.items():
            if isinstance(value, str | int | float) and not isinstance(value, bool) and value != "":
                fields[name] = str(value)[:_MAX_FIELD_CHARS]
        return AlertFeatures(
            rule_id=self.event_type,
            rule_name=self.entry.name if self.entry else f"tool event {self.event_type}",
            tenant=_first(self.flat, ("attackmap.tenant", "tenant_id", "tenant.id", "kibana.space_ids")),
            fields=fields,
        )


def _first(flat: Mapping[str, Any], names: Sequence[str]) -> str | None:
    for name in names:
        value = flat.get(name)
        if isinstance(value, list):
            value = next((v for v in value if v not in (None, "")), None)
        if value not in (None, "", {}):
            return str(value)
    return None


def _ids(value: Any) -> list[Any]:
    if value in (None, ""):
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


class ToolEventTable:
    """The tool-event table, every technique and tactic checked against the catalog when loaded."""

    def __init__(self, entries: Sequence[ToolEventType], catalog: Catalog) -> None:
        problems = []
        for entry in entries:
            for tid in (*entry.techniques, *(t for r in entry.rules for t in r.techniques)):
                if catalog.resolve(tid).active_id is None:
                    problems.append(f"{entry.id}: {tid} is not a technique of ATT&CK {catalog.version}")
            for key in (*entry.tactics, *(t for r in entry.rules for t in r.tactics)):
                if catalog.tactic(key) is None:
                    problems.append(f"{entry.id}: {key} is not a tactic of ATT&CK {catalog.version}")
        if problems:
            raise ValueError("tool-event table does not fit the ATT&CK catalog: " + "; ".join(problems))
        self.catalog = catalog
        self.entries = tuple(entries)
        # Mappings depend on the table: part of the provenance's settings hash.
        self.fingerprint = hashlib.sha256(orjson.dumps([e.model_dump() for e in entries])).hexdigest()[:16]
        self._by_type = {t.lower(): e for e in entries for t in e.event_types}
        self._by_product: dict[str, list[ToolEventType]] = {}
        for e in entries:
            for p in e.products:
                self._by_product.setdefault(p.lower(), []).append(e)
        self._rules = {e.id: [(re.compile(r.match, re.IGNORECASE), r) for r in e.rules] for e in entries}

    # ------------------------------------------------------------ recognising

    def recognise(self, doc: Mapping[str, Any]) -> ToolEvent | None:
        """The tool event this document is, or None (an alert, or an event of no known tool)."""
        if any(key in doc for key in _RULE_KEYS):
            return None
        event_type = doc.get("event_type")
        if isinstance(event_type, str) and event_type:
            entry = self._by_type.get(event_type.lower())
            # An unknown type counts only in the platform's own shape: other sources use `event_type` too.
            if entry is not None or isinstance(doc.get("attributes"), Mapping) or "execution_fingerprint" in doc:
                return ToolEvent(event_type, entry, flatten(doc))
        event = doc.get("event")
        observer = doc.get("observer")
        product = (event.get("module") if isinstance(event, Mapping) else None) or doc.get("event.module")
        product = product or (observer.get("product") if isinstance(observer, Mapping) else None)
        product = product or doc.get("observer.product")
        if not isinstance(product, str) or product.lower() not in self._by_product:
            return None
        flat = flatten(doc)
        action = str(flat.get("event.action") or "")
        for entry in self._by_product[product.lower()]:
            if not entry.actions or action.lower() in (a.lower() for a in entry.actions):
                return ToolEvent(f"{product.lower()}:{action}" if action else product.lower(), entry, flat)
        return None

    # ------------------------------------------------------------ mapping

    def _score(self, tid: str, tactics: Sequence[str], confidence: float, evidence: Evidence) -> TechniqueScore:
        return TechniqueScore(technique_id=tid, confidence=confidence, tactic_ids=tuple(tactics), evidence=(evidence,))

    def _operator_tags(self, event: ToolEvent) -> tuple[TechniqueScore, ...]:
        """The operator's own tags on the event, resolved against the catalog (unknown IDs left out)."""
        flat = event.flat
        raw = _ids(flat.get("attributes.mitre_techniques"))
        shared_tactics = [str(t) for t in _ids(flat.get("attributes.mitre_tactics"))]
        if not raw:
            raw = _ids(flat.get("threat.technique.subtechnique.id")) or _ids(flat.get("threat.technique.id"))
            shared_tactics = shared_tactics or [str(t) for t in _ids(flat.get("threat.tactic.id"))]
        scores = []
        for item in raw:
            if isinstance(item, Mapping):
                tid = item.get("id") or item.get("technique_id")
                tactics = [str(t) for t in _ids(item.get("tactics") or item.get("tactic_ids"))] or shared_tactics
                confidence = item.get("confidence", OPERATOR_CONFIDENCE)
            else:
                tid, tactics, confidence = item, shared_tactics, OPERATOR_CONFIDENCE
            if not isinstance(tid, str) or self.catalog.resolve(tid).active_id is None:
                continue
            value = float(confidence) if isinstance(confidence, int | float) else OPERATOR_CONFIDENCE
            evidence = Evidence(source="tool_event", field="attributes.mitre_techniques", detail="operator", score=1)
            scores.append(self._score(tid, tactics, min(max(value, 0.0), 1.0), evidence))
        return tuple(scores)

    def _baseline(self, event: ToolEvent, entry: ToolEventType) -> tuple[tuple[TechniqueScore, ...], str]:
        for rx, rule in self._rules[entry.id]:
            for name in entry.fields:
                value = event.flat.get(name)
                if isinstance(value, list):
                    value = " ".join(str(v) for v in value)
                if isinstance(value, str | int | float) and (m := rx.search(str(value))):
                    evidence = Evidence(
                        source="tool_event", field=name, detail=f"{entry.id}: {m.group(0).strip()!r}", score=1
                    )
                    # The entry's tactics are its baseline's: a rule's technique carries its own.
                    scores = tuple(self._score(t, rule.tactics, entry.confidence, evidence) for t in rule.techniques)
                    return scores, f"{event.event_type} → {entry.id}, {name} matches {rule.match!r}"
        evidence = Evidence(source="tool_event", field=None, detail=f"{entry.id}: {event.event_type}", score=1)
        scores = tuple(self._score(t, entry.tactics, entry.confidence, evidence) for t in entry.techniques)
        return scores, f"{event.event_type} → {entry.id} baseline"

    def map(self, event: ToolEvent, settings: ToolEventSettings) -> tuple[Decision, MappingResult | None]:
        """The decision and (unless skipped) the mapping for one tool event; validation comes after."""
        operator = self._operator_tags(event)
        if operator:
            detail = f"{event.event_type}: the operator's tags win over the table's baseline"
            decision = Decision(kind=DecisionKind.MAP, reason=OPERATOR_TAGS, detail=detail)
            return decision, MappingResult(mapper=TOOL_MAPPER, techniques=operator)
        entry = event.entry
        if entry is not None and not entry.from_attributes:
            techniques, detail = self._baseline(event, entry)
            decision = Decision(kind=DecisionKind.MAP, reason=TOOL_EVENT, detail=detail)
            return decision, MappingResult(mapper=TOOL_MAPPER, techniques=techniques)
        why = "not in the tool-event table" if entry is None else "carries no attributes.mitre_techniques"
        if not settings.unknown_techniques:
            detail = f"{event.event_type} {why}; the workflow sets no fallback"
            return Decision(kind=DecisionKind.SKIP, reason=UNKNOWN_TOOL_EVENT, detail=detail), None
        evidence = Evidence(source="tool_event", detail=f"workflow fallback for {event.event_type}", score=0.5)
        scores = tuple(
            self._score(t, settings.unknown_tactics, FALLBACK_CONFIDENCE, evidence) for t in settings.unknown_techniques
        )
        detail = f"{event.event_type} {why}: the workflow's fallback {', '.join(settings.unknown_techniques)}"
        decision = Decision(kind=DecisionKind.MAP, reason=UNKNOWN_TOOL_EVENT, detail=detail)
        return decision, MappingResult(mapper=TOOL_MAPPER, techniques=scores)


def load_tool_events(catalog: Catalog, path: Path | None = None) -> ToolEventTable:
    text = path.read_text() if path else (resources.files("mitre") / "data" / "tool_events.yaml").read_text()
    rows = yaml.safe_load(text) or []
    if not isinstance(rows, list):
        raise ValueError(f"{path or 'tool_events.yaml'}: expected a list of tool events")
    return ToolEventTable([ToolEventType.model_validate(r) for r in rows], catalog)
