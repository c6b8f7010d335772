"""Feedback records: an analyst's verdict, an item awaiting review, a rule's telemetry."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Verdict = Literal["accept", "reject", "correct"]


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Feedback(Record):
    """An analyst's verdict on one mapping (identified by its cache key, `attackmap.mapping_key`)."""

    mapping_key: str = Field(min_length=16)
    tenant: str | None = None
    verdict: Verdict
    techniques: tuple[str, ...] = Field((), description="correct: the right techniques; accept: the mapped ones")
    analyst: str
    comment: str | None = None
    alert_id: str | None = None
    rule_id: str | None = None
    rule_name: str | None = None
    alert: dict[str, Any] | None = Field(None, description="the alert, for the knowledge base's next build")
    ts: float = 0.0


class OptOut(Record):
    tenant: str | None
    rule_id: str
    opted_out: bool
    by: str
    ts: float = 0.0


class ReviewItem(Record):
    """A mapping worth an analyst's look: low confidence, or disputed by tags already on the alert."""

    mapping_key: str
    tenant: str | None
    ts: float
    alert_id: str | None
    rule_id: str | None
    rule_name: str | None
    confidence: float
    disputed: bool
    techniques: list[dict[str, Any]]
    alert: dict[str, Any]
    verdict: Verdict | None = None


class RuleTelemetry(Record):
    """Per rule: how the hybrid decision went, and how analysts judged the mappings."""

    tenant: str | None
    rule: str
    skip: int = 0
    map: int = 0
    extend: int = 0
    accepted: int = 0
    rejected: int = 0
    corrected: int = 0
    opted_out: bool = False

    @property
    def precision(self) -> float | None:
        judged = self.accepted + self.rejected + self.corrected
        return self.accepted / judged if judged else None
