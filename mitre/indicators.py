"""The indicator catalog: data (YAML) naming observable patterns that imply techniques."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import yaml
from pydantic import Field, model_validator

from mitre.catalog import Catalog
from mitre.models import AlertFeatures, Contract, IndicatorHit

MATCH_SNIPPET_CHARS = 160


class Indicator(Contract):
    id: str
    name: str
    fields: tuple[str, ...]
    confidence: float = Field(ge=0, le=1)
    techniques: tuple[str, ...] = ()
    pattern: str | None = None
    requires: dict[str, str] = Field(default_factory=dict)
    techniques_by_match: dict[str, str] = Field(default_factory=dict)
    min_distinct: int = 1

    @model_validator(mode="after")
    def _one_kind(self) -> Indicator:
        if bool(self.pattern) == bool(self.techniques_by_match):
            raise ValueError(f"indicator {self.id}: give either pattern+techniques or techniques_by_match")
        if self.pattern and not self.techniques:
            raise ValueError(f"indicator {self.id}: a pattern needs techniques")
        return self


class _Compiled:
    """An indicator with its regexes compiled once."""

    def __init__(self, spec: Indicator) -> None:
        self.spec = spec
        self.pattern = re.compile(spec.pattern, re.IGNORECASE | re.MULTILINE) if spec.pattern else None
        self.requires = {f: re.compile(p, re.IGNORECASE) for f, p in spec.requires.items()}
        self.by_match = [
            (re.compile(rf"(?<![\w-])(?:{key})(?![\w-])", re.IGNORECASE), tid)
            for key, tid in spec.techniques_by_match.items()
        ]

    def evaluate(self, fields: dict[str, str]) -> IndicatorHit | None:
        for name, required in self.requires.items():
            value = fields.get(name)
            if value is None or not required.search(value):
                return None
        for name in self.spec.fields:
            value = fields.get(name)
            if not value:
                continue
            if self.pattern is not None:
                match = self.pattern.search(value)
                if match:
                    return self._hit(name, match.group(0), self.spec.techniques)
            else:
                found = [(m.group(0), tid) for rx, tid in self.by_match if (m := rx.search(value))]
                if len(found) >= self.spec.min_distinct:
                    techniques = tuple(dict.fromkeys(tid for _, tid in found))
                    return self._hit(name, ", ".join(text for text, _ in found), techniques)
        return None

    def _hit(self, field: str, matched: str, techniques: tuple[str, ...]) -> IndicatorHit:
        return IndicatorHit(
            indicator_id=self.spec.id,
            techniques=techniques,
            field=field,
            matched=matched[:MATCH_SNIPPET_CHARS],
            confidence=self.spec.confidence,
        )


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
        self._compiled = [_Compiled(i) for i in indicators]
        self._catalog = catalog

    def evaluate(self, features: AlertFeatures) -> tuple[IndicatorHit, ...]:
        hits = []
        for compiled in self._compiled:
            hit = compiled.evaluate(features.fields)
            if hit is not None:
                active = tuple(
                    dict.fromkeys(
                        r.active_id for t in hit.techniques if (r := self._catalog.resolve(t)).active_id is not None
                    )
                )
                hits.append(hit.model_copy(update={"techniques": active}))
        return tuple(hits)


def load_indicators(catalog: Catalog, path: Path | None = None) -> IndicatorSet:
    text = path.read_text() if path else (resources.files("mitre") / "data" / "indicators.yaml").read_text()
    rows = yaml.safe_load(text) or []
    return IndicatorSet([Indicator.model_validate(r) for r in rows], catalog)
