"""Typed contracts between the pipeline stages: features → decide → map → validate → enrich.

Every model that crosses a stage boundary forbids unknown fields, so a typo in a
producer fails loudly instead of silently dropping data.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field


class Contract(BaseModel):
    """Base for boundary models: strict, immutable, hashable where possible."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ThreatRef(Contract):
    """One entry of an existing mapping (rule threat or ECS threat.*), flattened.

    Tactic-only entries have no technique_id; technique_id may be a sub-technique.
    """

    tactic_id: str | None = None
    tactic_name: str | None = None
    technique_id: str | None = None


class AlertFeatures(Contract):
    """A normalised view of one alert (Kibana security alert, legacy signal, or raw ECS event).

    `fields` holds observable values under their ECS dotted names (strings, truncated),
    so indicators, retrieval, evidence and prompts all speak the same field names.
    """

    alert_id: str | None = None
    rule_id: str | None = None
    rule_name: str | None = None
    rule_description: str | None = None
    rule_type: str | None = None
    rule_query: str | None = None
    rule_tags: tuple[str, ...] = ()
    rule_threat: tuple[ThreatRef, ...] = ()
    existing_threat: tuple[ThreatRef, ...] = ()
    risk_score: float | None = None
    risk_score_text: str | None = None  # a risk score given that could not be read (neither number nor severity)
    severity: str | None = None
    platform: str | None = None
    tenant: str | None = None
    fields: dict[str, str] = Field(default_factory=dict)
    truncated_fields: tuple[str, ...] = ()

    @property
    def has_rule_mitre_tags(self) -> bool:
        return bool(self.rule_threat)


class DecisionKind(StrEnum):
    SKIP = "skip"
    MAP = "map"
    EXTEND = "extend"


class IndicatorHit(Contract):
    """A high-confidence indicator from the indicator catalog that fired on an alert."""

    indicator_id: str
    techniques: tuple[str, ...]
    field: str
    matched: str
    confidence: float


class Decision(Contract):
    """The hybrid rule's verdict for one alert. `reason` is a stable code for counting."""

    kind: DecisionKind
    reason: str
    detail: str
    indicators: tuple[IndicatorHit, ...] = ()


EvidenceSource = Literal["indicator", "lexical", "knowledge_base", "llm", "rule", "tool_event", "analyst"]


class Evidence(Contract):
    """Why a technique was proposed: which source, which alert field, what matched."""

    source: EvidenceSource
    field: str | None = None
    detail: str
    score: float


class TechniqueScore(Contract):
    """A candidate technique with its calibrated confidence (0..1) and evidence."""

    technique_id: str
    confidence: float = Field(ge=0.0, le=1.0)
    tactic_ids: tuple[str, ...] = ()
    evidence: tuple[Evidence, ...] = ()
    rationale: str | None = None


class Usage(Contract):
    """Token usage of the LLM calls behind one mapping (retries included), as the vendor reported it.
    `input_tokens` are the uncached ones; cache writes and reads are counted apart."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0
    calls: int = 0


class InjectionSuspicion(Contract):
    """Text in an alert field that addresses the model rather than describing activity: instructions,
    role play, answer formats, fake delimiters. Shown to analysts; never accepted as evidence."""

    field: str
    kind: str
    excerpt: str


class IssueSeverity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class ValidationIssue(Contract):
    """A problem the validator found and what it did about it."""

    severity: IssueSeverity
    code: str
    message: str
    technique_id: str | None = None


class MappingResult(Contract):
    """What a mapper returns. Validation turns it into a ValidatedMapping."""

    mapper: str
    model: str | None = None
    prompt_hash: str = ""
    techniques: tuple[TechniqueScore, ...] = ()
    tactic_ids: tuple[str, ...] = ()
    candidates: tuple[TechniqueScore, ...] = ()
    usage: Usage | None = None
    cost_usd: float | None = None
    fallback_reason: str | None = None
    # The LLM path: parts of an answer that were dropped, and text in the alert that addresses the model.
    answer_issues: tuple[ValidationIssue, ...] = ()
    prompt_injection_suspected: tuple[InjectionSuspicion, ...] = ()


class ValidatedMapping(Contract):
    """A mapping whose every ID is an active technique of the loaded catalog."""

    result: MappingResult
    issues: tuple[ValidationIssue, ...] = ()


class OutcomeStatus(StrEnum):
    ENRICHED = "enriched"
    SKIPPED = "skipped"
    DEAD_LETTER = "dead_letter"


class Outcome(Contract):
    """The fate of one input alert. Every input ends as exactly one Outcome.

    A dead letter caused by an unexpected exception carries `error_id`, under which its traceback
    was logged (see mitre.failures)."""

    status: OutcomeStatus
    reason: str
    alert: dict[str, object] | None = None
    decision: Decision | None = None
    mapping: ValidatedMapping | None = None
    cache_hit: bool = False
    remembered: bool = False  # answered by the engine's outcome memo (a copy of an outcome already made)
    line: int | None = None
    raw: str | None = None
    raw_b64: str | None = None  # the input's bytes, when they are not valid UTF-8 (`raw` is then lossy)
    error_id: str | None = None


@dataclass(frozen=True)
class RawAlert:
    """One input record: already-parsed JSON, or raw bytes from a line of NDJSON. `rejected` is a
    reason the reader already has to dead-letter it (a line past the size limit, of which `raw`
    holds only the beginning)."""

    line: int | None
    raw: bytes | None = None
    alert: Any = None
    rejected: str | None = None

    def text(self) -> str:
        """The input as text for a dead letter, whatever it holds (bytes, or a Python object that
        JSON may not take: nested too deep, lone surrogates, integers past 64 bits)."""
        if self.raw is not None:
            return self.raw.decode("utf-8", "replace")
        try:
            return orjson.dumps(self.alert, default=repr).decode()
        except (TypeError, ValueError):
            pass
        try:
            return repr(self.alert)
        except (RecursionError, ValueError):
            return f"<{type(self.alert).__name__} that cannot be shown>"


@dataclass
class RunSummary:
    """Counts for one run; the CLI prints it, batch workers and flows add theirs up with `merge`."""

    enriched: int = 0  # mapped, with at least one technique
    no_technique: int = 0  # mapped, but no technique found (at most a tactic)
    skipped: Counter[str] = field(default_factory=Counter)
    dead_letter: Counter[str] = field(default_factory=Counter)
    decisions: Counter[str] = field(default_factory=Counter)
    tactics: Counter[str] = field(default_factory=Counter)
    techniques: Counter[str] = field(default_factory=Counter)
    cache_hits: int = 0
    cache_misses: int = 0
    remembered: int = 0  # outcomes the engine's memo answered (of any status)
    warnings: list[str] = field(default_factory=list)
    # Who answered each mapped alert (an LLM fallback counts as "local"), fallbacks per reason,
    # alerts holding text that addresses the model, and what the LLM calls behind them cost (each
    # computation counted once: not again for the alerts it was shared with).
    answered_by: Counter[str] = field(default_factory=Counter)
    fallbacks: Counter[str] = field(default_factory=Counter)
    injection_suspected: int = 0
    llm: Counter[str] = field(default_factory=Counter)
    cost_usd: float = 0.0

    def add(self, outcome: Outcome) -> None:
        self.remembered += outcome.remembered
        if outcome.decision is not None:
            self.decisions[f"{outcome.decision.kind.value}:{outcome.decision.reason}"] += 1
        if outcome.status is OutcomeStatus.ENRICHED:
            if outcome.mapping is not None and outcome.mapping.result.techniques:
                self.enriched += 1
            else:
                self.no_technique += 1
            if outcome.cache_hit:
                self.cache_hits += 1
            else:
                self.cache_misses += 1
            if outcome.mapping is not None:
                result = outcome.mapping.result
                for t in result.techniques:
                    self.techniques[t.technique_id] += 1
                    for tactic in t.tactic_ids:
                        self.tactics[tactic] += 1
                self._add_llm(result, outcome.cache_hit)
        elif outcome.status is OutcomeStatus.SKIPPED:
            self.skipped[outcome.reason] += 1
        else:
            self.dead_letter[outcome.reason.split(":")[0]] += 1

    def _add_llm(self, result: MappingResult, shared: bool) -> None:
        self.answered_by[result.mapper] += 1
        if result.fallback_reason:
            self.fallbacks[result.fallback_reason] += 1
        if result.prompt_injection_suspected:
            self.injection_suspected += 1
        if result.usage is not None and not shared:
            self.llm.update({k: v for k, v in result.usage.model_dump().items() if v})
            self.cost_usd += result.cost_usd or 0.0

    def merge(self, other: RunSummary) -> None:
        """Add another run's counts to these (warnings are the run's own: not merged)."""
        self.enriched += other.enriched
        self.no_technique += other.no_technique
        self.skipped.update(other.skipped)
        self.dead_letter.update(other.dead_letter)
        self.decisions.update(other.decisions)
        self.tactics.update(other.tactics)
        self.techniques.update(other.techniques)
        self.cache_hits += other.cache_hits
        self.cache_misses += other.cache_misses
        self.remembered += other.remembered
        self.answered_by.update(other.answered_by)
        self.fallbacks.update(other.fallbacks)
        self.injection_suspected += other.injection_suspected
        self.llm.update(other.llm)
        self.cost_usd += other.cost_usd

    @property
    def total(self) -> int:
        return self.enriched + self.no_technique + sum(self.skipped.values()) + sum(self.dead_letter.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "enriched": self.enriched,
            "no_technique": self.no_technique,
            "skipped": dict(self.skipped),
            "dead_letter": dict(self.dead_letter),
            "decisions": dict(self.decisions),
            "cache": {"hits": self.cache_hits, "misses": self.cache_misses, "remembered": self.remembered},
            "answered_by": dict(self.answered_by),
            "fallbacks": dict(self.fallbacks),
            "prompt_injection_suspected": self.injection_suspected,
            "llm": {**dict(self.llm), "cost_usd": round(self.cost_usd, 6)},
            "tactics": dict(self.tactics),
            "warnings": self.warnings,
        }
