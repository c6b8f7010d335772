"""What one signed federation request carries: findings (common events) and analyst feedback.

A finding is the exports' common event (`mitre.io.exports.event.CommonEvent`): the ATT&CK tags as the
user received them, the confidence per technique, the compliance controls (``nist_800_53_controls``,
``soc2_controls``, ``iso27001_annex_a_controls``, …), the execution fingerprint and the tenant. Peers
and SIEMs read one shape, validated by the same model and described by ``common-event.schema.json``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from mitre.io.exports.event import CommonEvent


class Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FeedbackItem(Wire):
    """An analyst's verdict on a finding, shared with the peer that sent it."""

    tenant: str
    finding_id: str
    verdict: Literal["accept", "reject", "correct"]
    techniques: tuple[str, ...] = ()
    analyst: str | None = None
    comment: str | None = None


class Envelope(Wire):
    """One signed request body: findings, feedback, or both."""

    findings: tuple[CommonEvent, ...] = ()
    feedback: tuple[FeedbackItem, ...] = ()
