"""The common event format: one typed record per enriched alert, what every exporter speaks.

An exporter never reads an alert's raw shape (Kibana's flat ``kibana.alert.*`` keys beside nested ECS,
legacy signals, raw ECS events): `from_enriched` reads it once, here, into `CommonEvent`. The JSON
Schema shipped as ``common-event.schema.json`` is generated from these models (`schema_text`), and an
event survives ``model_dump(mode="json")`` → ``model_validate`` unchanged (a test holds it to that).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from mitre.compliance import FIELDS as CONTROL_FIELDS
from mitre.enrich import PROVENANCE_FIELD
from mitre.features import ALERT_ID_FIELDS, TENANT_FIELDS, flatten, parse_rule_threat
from mitre.io.exports.observables import RelatedIndicator, related_indicators

SCHEMA_FILE = "common-event.schema.json"


class EventModel(BaseModel):
    """Strict and immutable, like the engine's stage contracts: an unknown field is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Endpoint(EventModel):
    """ECS ``source`` / ``destination``: the network endpoints of the alert, when it has any."""

    ip: str | None = None
    port: int | None = None
    domain: str | None = None
    address: str | None = None


class Rule(EventModel):
    """The detection rule that raised the alert (none for a raw event)."""

    id: str | None = None
    name: str | None = None


class Provenance(EventModel):
    """Where the ATT&CK tags came from: catalog, mapper, decision (the `attackmap` object, trimmed)."""

    catalog_version: str | None = None
    catalog_fingerprint: str | None = None
    mapper: str | None = None
    model: str | None = None
    decision: str | None = None
    reason: str | None = None
    provenance_hash: str | None = None
    enriched_at: str | None = None
    cache_hit: bool = False


class CommonEvent(EventModel):
    """An ATT&CK-enriched security event, in the shape SIEMs, sharing communities and federation peers
    are sent (a federation request carries these events as its findings)."""

    schema_version: Literal[1] = 1
    id: str = Field(description="the alert's own id (kibana.alert.uuid, event.id) or a content hash")
    timestamp: AwareDatetime
    source: Endpoint | None = None
    destination: Endpoint | None = None
    technique_ids: tuple[str, ...] = Field((), description="techniques and sub-techniques, as tagged (ECS threat.*)")
    tactic_ids: tuple[str, ...] = ()
    confidence: float | None = Field(None, ge=0, le=1, description="highest confidence of a mapped technique")
    technique_confidence: dict[str, float] = Field(default_factory=dict, description="per mapped technique")
    related_indicators: tuple[RelatedIndicator, ...] = ()
    source_service: str | None = Field(None, description="what produced the alert (rule producer, module, product)")
    event_type: str | None = None
    severity: str | None = None
    risk_score: float | None = None
    description: str | None = None
    rule: Rule | None = None
    tenant: str | None = Field(
        None, description="attackmap.tenant (the engine's tenant), tenant_id, tenant.id or the Kibana space"
    )
    execution_fingerprint: str | None = Field(
        None, description="SHA-256 over the execution context (mitre/fingerprint.py), for correlation"
    )
    nist_800_53_controls: tuple[str, ...] = Field((), description="NIST 800-53 rev5 controls mitigating the techniques")
    csa_ccm_controls: tuple[str, ...] = Field((), description="CSA CCM 4.1 controls mitigating the techniques")
    cri_profile_controls: tuple[str, ...] = Field((), description="CRI Profile controls mitigating the techniques")
    soc2_controls: tuple[str, ...] = Field((), description="from a user-supplied mapping only; else empty")
    iso27001_annex_a_controls: tuple[str, ...] = Field((), description="from a user-supplied mapping only; else empty")
    provenance: Provenance = Field(default_factory=Provenance)

    @property
    def key(self) -> str:
        """Identifies this version of the event: the same alert of the same tenant enriched the same way is
        the same event, so a re-delivery can be recognised by any receiver that keeps ids. The tenant
        takes part because alert ids are only unique within a tenant's own systems."""
        digest = hashlib.sha256(f"{self.tenant or ''}\x00{self.id}\x00{self.provenance.provenance_hash or ''}".encode())
        return digest.hexdigest()[:32]

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json", exclude_defaults=True))


class NotAnEnrichedAlert(ValueError):
    """The document is not something `attackmap enrich` wrote (no `attackmap` provenance object)."""


_SERVICE_FIELDS = ("kibana.alert.rule.producer", "event.module", "observer.product", "event.provider", "agent.type")
# ``event_type``: a tool platform's flat payload (nmap_scan_completed, …).
_EVENT_TYPE_FIELDS = (
    "event.category",
    "kibana.alert.rule.type",
    "signal.rule.type",
    "event.type",
    "event.kind",
    "event_type",
)
_SEVERITY_FIELDS = ("kibana.alert.severity", "signal.rule.severity", "event.severity", "log.level")
_RISK_FIELDS = ("kibana.alert.risk_score", "signal.rule.risk_score", "event.risk_score")
_DESCRIPTION_FIELDS = ("kibana.alert.reason", "kibana.alert.rule.description", "signal.rule.description", "message")
_TIME_FIELDS = ("@timestamp", "kibana.alert.original_time", "event.created", "timestamp")
# The engine's own order first (attackmap.tenant holds what it decided), then ECS's organization.
_TENANT_FIELDS = (*TENANT_FIELDS, "organization.id")


def _first(flat: Mapping[str, Any], names: tuple[str, ...]) -> Any:
    for name in names:
        value = flat.get(name)
        if isinstance(value, list):
            value = next((v for v in value if v not in (None, "")), None)
        if value not in (None, "", {}):
            return value
    return None


def _text(flat: Mapping[str, Any], names: tuple[str, ...]) -> str | None:
    value = _first(flat, names)
    return None if value is None else str(value)


def _ids(value: Any) -> list[str]:
    values = value if isinstance(value, list) else [value]
    return [str(v) for v in values if v not in (None, "")]


def _parse_time(raw: Any) -> datetime | None:
    if isinstance(raw, list):
        raw = next((v for v in raw if v not in (None, "")), None)
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        try:
            return datetime.fromtimestamp(raw / 1000 if raw > 1e11 else raw, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if isinstance(raw, str):
        try:
            parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def _timestamp(flat: Mapping[str, Any], provenance: Mapping[str, Any]) -> datetime:
    """The event's own time, the first of `_TIME_FIELDS` that parses; else when attackmap enriched it (a
    sensor's or a tool platform's event posted to the API may carry no time of its own)."""
    for raw in (*(flat.get(name) for name in _TIME_FIELDS), provenance.get("enriched_at")):
        if (parsed := _parse_time(raw)) is not None:
            return parsed
    raise NotAnEnrichedAlert(f"no usable timestamp in {', '.join(_TIME_FIELDS)} or attackmap.enriched_at")


def _endpoint(flat: Mapping[str, Any], side: str) -> Endpoint | None:
    port = flat.get(f"{side}.port")
    endpoint = Endpoint(
        ip=_text(flat, (f"{side}.ip",)),
        port=int(port) if isinstance(port, int | float | str) and str(port).isdigit() else None,
        domain=_text(flat, (f"{side}.domain",)),
        address=_text(flat, (f"{side}.address",)),
    )
    return endpoint if endpoint != Endpoint() else None


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _alert_id(flat: Mapping[str, Any], alert: Mapping[str, Any]) -> str:
    found = _text(flat, ALERT_ID_FIELDS)
    if found:
        return found
    return hashlib.sha256(orjson.dumps(alert, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


def from_enriched(alert: Mapping[str, Any]) -> CommonEvent:
    """The common event for one alert as `attackmap enrich` (or a flow) wrote it.

    Tags are what the user receives: ECS ``threat.*`` (which already merges an analyst's and, on
    extend, the rule's own tags), or, for an alert skipped because its rule is tagged, the rule's tags.
    """
    provenance = alert.get(PROVENANCE_FIELD)
    if not isinstance(provenance, Mapping):
        raise NotAnEnrichedAlert(f"no `{PROVENANCE_FIELD}` provenance object: enrich the alert first")
    flat = flatten(alert)
    techniques = _ids(flat.get("threat.technique.id")) + _ids(flat.get("threat.technique.subtechnique.id"))
    tactics = _ids(flat.get("threat.tactic.id"))
    if not techniques and not tactics:
        for ref in parse_rule_threat(flat.get("kibana.alert.rule.threat") or flat.get("signal.rule.threat")):
            techniques += [ref.technique_id] if ref.technique_id else []
            tactics += [ref.tactic_id] if ref.tactic_id else []
    scores = {
        str(t["id"]): float(t["confidence"])
        for t in provenance.get("techniques") or ()
        if isinstance(t, Mapping) and t.get("id") and isinstance(t.get("confidence"), int | float)
    }
    compliance = provenance.get("compliance")
    controls = compliance if isinstance(compliance, Mapping) else {}
    rule = Rule(
        id=_text(flat, ("kibana.alert.rule.rule_id", "kibana.alert.rule.uuid", "signal.rule.rule_id", "rule.id")),
        name=_text(flat, ("kibana.alert.rule.name", "signal.rule.name", "rule.name")),
    )
    return CommonEvent(
        id=_alert_id(flat, alert),
        timestamp=_timestamp(flat, provenance),
        source=_endpoint(flat, "source"),
        destination=_endpoint(flat, "destination"),
        technique_ids=tuple(dict.fromkeys(techniques)),
        tactic_ids=tuple(dict.fromkeys(tactics)),
        confidence=max(scores.values()) if scores else None,
        technique_confidence=scores,
        related_indicators=related_indicators(flat),
        source_service=_text(flat, _SERVICE_FIELDS),
        event_type=_text(flat, _EVENT_TYPE_FIELDS),
        severity=_text(flat, _SEVERITY_FIELDS),
        risk_score=_float(_first(flat, _RISK_FIELDS)),
        description=_text(flat, _DESCRIPTION_FIELDS) or rule.name,
        rule=rule if rule != Rule() else None,
        tenant=_text(flat, _TENANT_FIELDS),
        execution_fingerprint=_text(provenance, ("execution_fingerprint",)),
        **{name: tuple(_ids(controls.get(name))) for name in CONTROL_FIELDS.values()},
        provenance=Provenance(
            catalog_version=_text(provenance, ("catalog_version",)),
            catalog_fingerprint=_text(provenance, ("catalog_fingerprint",)),
            mapper=_text(provenance, ("mapper",)),
            model=_text(provenance, ("model",)),
            decision=_text(provenance, ("decision",)),
            reason=_text(provenance, ("reason",)),
            provenance_hash=_text(provenance, ("provenance_hash",)),
            enriched_at=_text(provenance, ("enriched_at",)) or None,
            cache_hit=bool(provenance.get("cache_hit")),
        ),
    )


def generate_schema() -> dict[str, Any]:
    schema = CommonEvent.model_json_schema(mode="serialization")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://attackmap.invalid/{SCHEMA_FILE}",
        "title": "attackmap common event",
        **schema,
    }


def schema_text() -> str:
    return orjson.dumps(generate_schema(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode() + "\n"


if __name__ == "__main__":  # python -m mitre.io.exports.event > common-event.schema.json
    print(schema_text(), end="")
