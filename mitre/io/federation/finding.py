"""The federation payload: one enriched finding, typed, as peers receive it.

Built from an enriched alert by `finding_from_enriched`: the ATT&CK tags as the user received them,
the confidence per technique, the compliance controls (``nist_800_53_controls``, ``soc2_controls``,
``iso27001_annex_a_controls``, …), the execution fingerprint and the tenant. The fields follow the
common event format of the exports (issue #15); until that module is on main this adapter reads the
enriched alert itself, and it is the one place to switch over.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mitre.enrich import PROVENANCE_FIELD
from mitre.features import ALERT_ID_FIELDS, first_text, flatten

_TIME_FIELDS = ("@timestamp", "kibana.alert.original_time", "event.created", "timestamp")
_RULE_ID = ("kibana.alert.rule.rule_id", "kibana.alert.rule.uuid", "signal.rule.rule_id", "rule.id", "event_type")
_RULE_NAME = ("kibana.alert.rule.name", "signal.rule.name", "rule.name", "event_type")
_SEVERITY = ("kibana.alert.severity", "signal.rule.severity", "event.severity")


class Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Finding(Wire):
    """An ATT&CK-enriched finding as it crosses to a peer."""

    schema_version: Literal[1] = 1
    id: str = Field(description="the alert's own id, or a content hash")
    tenant: str
    timestamp: str | None = None
    rule_id: str | None = None
    rule_name: str | None = None
    severity: str | None = None
    technique_ids: tuple[str, ...] = ()
    tactic_ids: tuple[str, ...] = ()
    technique_confidence: dict[str, float] = Field(default_factory=dict)
    execution_fingerprint: str | None = None
    nist_800_53_controls: tuple[str, ...] = ()
    csa_ccm_controls: tuple[str, ...] = ()
    cri_profile_controls: tuple[str, ...] = ()
    soc2_controls: tuple[str, ...] = ()
    iso27001_annex_a_controls: tuple[str, ...] = ()
    catalog_version: str | None = None
    provenance_hash: str | None = None

    @property
    def key(self) -> str:
        """This version of the finding: the same alert enriched the same way is delivered once."""
        digest = hashlib.sha256(f"{self.tenant}\x00{self.id}\x00{self.provenance_hash or ''}".encode())
        return digest.hexdigest()[:32]


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

    findings: tuple[Finding, ...] = ()
    feedback: tuple[FeedbackItem, ...] = ()


def _ids(value: Any) -> list[str]:
    values = value if isinstance(value, list) else [value]
    return [str(v) for v in values if v not in (None, "")]


def finding_from_enriched(alert: Mapping[str, Any], tenant: str | None = None) -> Finding:
    """The finding for one enriched alert; raises ValueError for an alert attackmap did not enrich."""
    provenance = alert.get(PROVENANCE_FIELD)
    if not isinstance(provenance, Mapping) or "provenance_hash" not in provenance:
        raise ValueError("not an enriched alert (no attackmap provenance)")
    flat = flatten(alert)
    owner = tenant or provenance.get("tenant") or "default"
    alert_id = (
        first_text(flat, ALERT_ID_FIELDS)
        or hashlib.sha256(
            f"{provenance.get('execution_fingerprint')}\x00{provenance.get('provenance_hash')}".encode()
        ).hexdigest()[:32]
    )
    compliance = provenance.get("compliance") if isinstance(provenance.get("compliance"), Mapping) else {}
    assert isinstance(compliance, Mapping)
    return Finding(
        id=alert_id,
        tenant=str(owner),
        timestamp=first_text(flat, _TIME_FIELDS),
        rule_id=first_text(flat, _RULE_ID),
        rule_name=first_text(flat, _RULE_NAME),
        severity=first_text(flat, _SEVERITY),
        technique_ids=tuple(
            dict.fromkeys(_ids(flat.get("threat.technique.subtechnique.id")) + _ids(flat.get("threat.technique.id")))
        ),
        tactic_ids=tuple(_ids(flat.get("threat.tactic.id"))),
        technique_confidence={
            str(t["id"]): float(t["confidence"])
            for t in provenance.get("techniques") or ()
            if isinstance(t, Mapping) and isinstance(t.get("confidence"), int | float)
        },
        execution_fingerprint=provenance.get("execution_fingerprint"),
        **{name: tuple(compliance.get(name) or ()) for name in _CONTROL_FIELDS},
        catalog_version=provenance.get("catalog_version"),
        provenance_hash=provenance.get("provenance_hash"),
    )


_CONTROL_FIELDS = (
    "nist_800_53_controls",
    "csa_ccm_controls",
    "cri_profile_controls",
    "soc2_controls",
    "iso27001_annex_a_controls",
)
