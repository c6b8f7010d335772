"""Typed contracts between the pipeline stages: features → decide → map → validate → enrich.

Every model that crosses a stage boundary forbids unknown fields, so a typo in a
producer fails loudly instead of silently dropping data.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

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
    severity: str | None = None
    platform: str | None = None
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


EvidenceSource = Literal["indicator", "lexical", "knowledge_base", "llm", "rule"]


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
    """The fate of one input alert. Every input ends as exactly one Outcome."""

    status: OutcomeStatus
    reason: str
    alert: dict[str, object] | None = None
    decision: Decision | None = None
    mapping: ValidatedMapping | None = None
    cache_hit: bool = False
    line: int | None = None
    raw: str | None = None
