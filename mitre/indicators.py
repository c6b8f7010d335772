"""The indicator catalog: data (YAML) naming observable patterns that imply techniques.

Two files: `indicators.yaml` (patterns in command lines, paths, registry keys, cloud actions…) and
`event_indicators.yaml` (what a Windows event type shows: a Sysmon process access to lsass with a
dumping access mask, a 4662 with the replication rights, a 7045 service running a shell…). An
indicator that names `events` fires only on those event types (mitre.features.event_type); one
with events and no pattern fires on the event type alone.

Evidence belongs to the actor: a pattern found only in a parent's command line (CONTEXT_FIELDS)
describes what the parent did, so its hit is marked as context (its confidence scaled by
CONTEXT_WEIGHT, below the extend bar): mappers may let it support a technique the alert's own
evidence names, never hand the child the parent's techniques.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from importlib import resources
from pathlib import Path

import ahocorasick
import orjson
import yaml
from pydantic import Field, model_validator

from mitre.catalog import Catalog
from mitre.features import event_type
from mitre.models import AlertFeatures, Contract, IndicatorHit
from mitre.prefilter import may_match, required_literals

MATCH_SNIPPET_CHARS = 160
MEMO_ENTRIES = 50_000
INDICATOR_FILES = ("indicators.yaml", "event_indicators.yaml")
# Fields that describe an ancestor of the acting process, not the process itself.
CONTEXT_FIELDS = frozenset({"process.parent.command_line", "process.parent.args"})
CONTEXT_WEIGHT = 0.5
EVENT_FIELD = "winlog.event_id"  # the field an event-type-only hit is reported on
SHORT_MATCH = 12  # an event-field match shorter than this is shown with its event type and field name


def is_context(hit: IndicatorHit) -> bool:
    """Whether a hit describes the alert's ancestor (context) rather than its own action."""
    return hit.field in CONTEXT_FIELDS


class Indicator(Contract):
    id: str
    name: str
    fields: tuple[str, ...] = ()
    confidence: float = Field(ge=0, le=1)
    techniques: tuple[str, ...] = ()
    pattern: str | None = None
    requires: dict[str, str] = Field(default_factory=dict)
    techniques_by_match: dict[str, str] = Field(default_factory=dict)
    min_distinct: int = Field(default=1, ge=1)
    events: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _one_kind(self) -> Indicator:
        if self.pattern and self.techniques_by_match:
            raise ValueError(f"indicator {self.id}: give either pattern+techniques or techniques_by_match")
        if not self.pattern and not self.techniques_by_match and not self.events:
            raise ValueError(f"indicator {self.id}: give a pattern, techniques_by_match or events")
        if not self.techniques_by_match and not self.techniques:
            raise ValueError(f"indicator {self.id}: a pattern or an event type needs techniques")
        return self

    @property
    def event_only(self) -> bool:
        """Fires on the event type alone (a 4720 is an account creation, whatever its fields say)."""
        return bool(self.events) and not self.pattern and not self.techniques_by_match


class _Compiled:
    """An indicator with its regexes compiled once."""

    def __init__(self, spec: Indicator) -> None:
        self.spec = spec
        self.pattern = re.compile(spec.pattern, re.IGNORECASE | re.MULTILINE) if spec.pattern else None
        # Substrings one of which any match contains (mitre.prefilter): most values have none.
        self.literals = required_literals(spec.pattern, re.IGNORECASE | re.MULTILINE) if spec.pattern else None
        self.requires = {f: re.compile(p, re.IGNORECASE) for f, p in spec.requires.items()}
        self.by_match = [
            (re.compile(rf"(?<![\w-])(?:{key})(?![\w-])", re.IGNORECASE), tid)
            for key, tid in spec.techniques_by_match.items()
        ]
        # One pass that matches wherever any key would: most values match none, and then the
        # keys need not be tried one by one.
        alternatives = "|".join(f"(?:{key})" for key in spec.techniques_by_match)
        any_key = rf"(?<![\w-])(?:{alternatives})(?![\w-])"
        self.any_key = re.compile(any_key, re.IGNORECASE) if alternatives else None
        if alternatives:
            self.literals = required_literals(any_key, re.IGNORECASE)

    def match_value(self, value: str, lowered: str | None = None) -> tuple[str, tuple[str, ...]] | None:
        """(matched text, techniques) when this indicator fires on one field value.
        `lowered`: the value lower-cased when it is ASCII, for the literal prefilter."""
        if not may_match(self.literals, lowered):
            return None
        if self.pattern is not None:
            match = self.pattern.search(value)
            return (match.group(0), self.spec.techniques) if match else None
        if self.any_key is None or not self.any_key.search(value):
            return None
        found = [(m.group(0), tid) for rx, tid in self.by_match if (m := rx.search(value))]
        if len(found) < self.spec.min_distinct:
            return None
        return ", ".join(text for text, _ in found), tuple(dict.fromkeys(tid for _, tid in found))

    def required_ok(self, fields: dict[str, str], etype: str | None) -> bool:
        if self.spec.events and etype not in self.spec.events:
            return False
        return all((v := fields.get(f)) is not None and rx.search(v) for f, rx in self.requires.items())


def _automaton(holders: dict[str, list[int]]) -> ahocorasick.Automaton | None:
    """Literal → the indicators holding it, searchable for all literals at once (None: no literals)."""
    if not holders:
        return None
    automaton = ahocorasick.Automaton()
    for literal, indices in holders.items():
        automaton.add_word(literal, tuple(indices))
    automaton.make_automaton()
    return automaton


class IndicatorSet:
    """All indicators, validated against the active catalog when loaded."""

    def __init__(self, indicators: list[Indicator], catalog: Catalog) -> None:
        problems = []
        for ind in indicators:
            for tid in (*ind.techniques, *ind.techniques_by_match.values()):
                if tid not in catalog.techniques:
                    resolved = catalog.resolve(tid)
                    if resolved.active_id is None:
                        problems.append(f"{ind.id}: {tid} is not a technique of ATT&CK {catalog.version}")
        if problems:
            raise ValueError("indicator catalog does not fit the ATT&CK catalog: " + "; ".join(problems))
        self.indicators = indicators
        # Mappings depend on which indicators exist: part of every cache key.
        self.fingerprint = hashlib.sha256(orjson.dumps([i.model_dump() for i in indicators])).hexdigest()[:16]
        self._compiled = [_Compiled(i) for i in indicators]
        self._by_field: dict[str, list[int]] = {}
        self._by_event: dict[str, list[int]] = {}
        for index, ind in enumerate(indicators):
            if ind.event_only:
                for etype in ind.events:
                    self._by_event.setdefault(etype, []).append(index)
                continue
            for name in ind.fields:
                self._by_field.setdefault(name, []).append(index)
        self._memo: OrderedDict[tuple[str, str], dict[int, tuple[str, tuple[str, ...]]]] = OrderedDict()
        # Per field: an automaton over every prefilter literal of its indicators (each literal giving who
        # holds it), and who has none.
        self._field_literals: dict[str, tuple[ahocorasick.Automaton | None, tuple[int, ...]]] = {}
        for name, indices in self._by_field.items():
            holders: dict[str, list[int]] = {}
            unfiltered = []
            for index in indices:
                literals = self._compiled[index].literals
                if literals is None:
                    unfiltered.append(index)
                for literal in literals or ():
                    holders.setdefault(literal, []).append(index)
            self._field_literals[name] = (_automaton(holders), tuple(unfiltered))
        self._requires_by_field: dict[str, list[tuple[int, re.Pattern[str]]]] = {}
        for index, compiled in enumerate(self._compiled):
            for name, rx in compiled.requires.items():
                self._requires_by_field.setdefault(name, []).append((index, rx))
        # Every field an indicator reads, through its pattern or its `requires`.
        self.fields_read = frozenset(self._by_field) | frozenset(self._requires_by_field)
        self._active = _ActiveIds(catalog)

    def _candidates(self, name: str, lowered: str | None) -> list[int]:
        """The indicators of a field that may fire on a value, in catalog order: those whose literal
        prefilter (mitre.prefilter) finds one of its substrings, and those without one. All the field's
        literals are found in one Aho-Corasick pass (every occurrence, overlapping ones included), rather
        than tested one by one: a command line's 583 literals took 14 us a new value, the pass takes 2."""
        if lowered is None:  # not ASCII: every indicator is searched (see mitre.prefilter)
            return self._by_field.get(name, [])
        automaton, unfiltered = self._field_literals.get(name, (None, ()))
        found = set(unfiltered)
        if automaton is not None:
            for _, holders in automaton.iter(lowered):
                found.update(holders)
        return sorted(found)

    def _field_matches(self, name: str, value: str) -> dict[int, tuple[str, tuple[str, ...]]]:
        """Which indicators fire on this exact field value; remembered, since values recur across alerts."""
        key = (name, value)
        found = self._memo.get(key)
        if found is None:
            found = {}
            lowered = value.lower() if value.isascii() else None
            for index in self._candidates(name, lowered):
                match = self._compiled[index].match_value(value, lowered)
                if match is not None:
                    found[index] = match
            self._memo[key] = found
            if len(self._memo) > MEMO_ENTRIES:
                self._memo.popitem(last=False)
        return found

    def reading(self, name: str, value: str) -> tuple[tuple[tuple[int, tuple[str, ...]], ...], tuple[int, ...]]:
        """What one field value decides in `evaluate`: the indicators that fire on it (with the techniques
        they name) and the `requires` patterns it satisfies. Alerts whose fields read alike get the same
        hits from `evaluate`, but for the quoted text."""
        fired = tuple((index, techniques) for index, (_, techniques) in self._field_matches(name, value).items())
        required = tuple(index for index, rx in self._requires_by_field.get(name, ()) if rx.search(value))
        return fired, required

    def evaluate(self, features: AlertFeatures) -> tuple[IndicatorHit, ...]:
        fields = features.fields
        fired: dict[int, dict[str, tuple[str, tuple[str, ...]]]] = {}
        for name, value in fields.items():
            if name in self._by_field:
                for index, match in self._field_matches(name, value).items():
                    fired.setdefault(index, {})[name] = match
        etype = event_type(fields) if self._by_event or fired else None
        for index in self._by_event.get(etype or "", ()):
            fired[index] = {EVENT_FIELD: (etype or "", self.indicators[index].techniques)}
        hits = []
        for index in sorted(fired):  # catalog order, as written in the YAML
            compiled = self._compiled[index]
            if not compiled.required_ok(fields, etype):
                continue
            by_field = fired[index]
            # The alert's own fields first, in the order the spec lists them; an ancestor's last.
            own = [n for n in compiled.spec.fields if n in by_field and n not in CONTEXT_FIELDS]
            name = own[0] if own else next((n for n in compiled.spec.fields if n in by_field), EVENT_FIELD)
            text, techniques = by_field[name]
            if compiled.spec.events and name != EVENT_FIELD and len(text) < SHORT_MATCH:
                text = f"{etype} {name.rsplit('.', 1)[-1]}={text}"  # "security:4768 PreAuthType=0", not "0"
            confidence = compiled.spec.confidence * (CONTEXT_WEIGHT if name in CONTEXT_FIELDS else 1.0)
            hits.append(
                IndicatorHit(
                    indicator_id=compiled.spec.id,
                    techniques=self._active[techniques],
                    field=name,
                    matched=text[:MATCH_SNIPPET_CHARS],
                    confidence=round(confidence, 4),
                )
            )
        return tuple(hits)


class _ActiveIds(dict[tuple[str, ...], tuple[str, ...]]):
    """Technique tuples resolved to active catalog IDs (revoked/newer redirected), computed once each."""

    def __init__(self, catalog: Catalog) -> None:
        super().__init__()
        self._catalog = catalog

    def __missing__(self, key: tuple[str, ...]) -> tuple[str, ...]:
        value = tuple(dict.fromkeys(a for t in key if (a := self._catalog.resolve(t).active_id) is not None))
        self[key] = value
        return value


def load_indicators(catalog: Catalog, path: Path | None = None) -> IndicatorSet:
    """The packaged indicator files (INDICATOR_FILES), or the one file at `path`."""
    texts = (
        [path.read_text()]
        if path
        else [(resources.files("mitre") / "data" / name).read_text() for name in INDICATOR_FILES]
    )
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present
    rows = [row for text in texts for row in yaml.load(text, Loader=loader) or []]
    return IndicatorSet([Indicator.model_validate(r) for r in rows], catalog)
