"""ECS `threat.*` entries and the provenance object, built in one place.

Existing tags on the alert (an analyst's, or an earlier run's) are merged, never replaced.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from mitre.catalog import Catalog
from mitre.compliance import ComplianceMap
from mitre.features import flatten
from mitre.fingerprint import execution_fingerprint
from mitre.models import AlertFeatures, Decision, DecisionKind, ValidatedMapping

FRAMEWORK = "MITRE ATT&CK"
PROVENANCE_FIELD = "attackmap"
PROVENANCE_SCHEMA = 1
# The parts of ECS threat.* that hold ATT&CK tags; the rest (indicator, enrichments, feed…) is not ours.
_ATTACK_TAG_KEYS = frozenset({"framework", "tactic", "technique"})


@dataclass(frozen=True)
class WorkflowRef:
    """Which workflows file and workflow an enrichment came from (not part of the provenance hash:
    the same result from a moved file is not rewritten)."""

    file: str
    name: str

    def provenance(self) -> dict[str, str]:
        return {"workflows": self.file, "workflow": self.name}


@dataclass(frozen=True)
class Enrichment:
    """What enrichment adds to an alert, less the per-alert stamps (cache hit, time).
    Shared between alerts: treat both dicts as read-only."""

    threat: dict[str, Any]
    provenance: dict[str, Any]


def _existing_ids(alert: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    flat = flatten({"threat": alert["threat"]}) if isinstance(alert.get("threat"), Mapping) else {}
    for key, value in alert.items():
        if key.startswith("threat."):
            flat[key] = value

    def ids(name: str) -> list[str]:
        value = flat.get(name)
        return [str(v) for v in (value if isinstance(value, list) else [value]) if v]

    techniques = ids("threat.technique.id") + ids("threat.technique.subtechnique.id")
    return techniques, ids("threat.tactic.id")


def build_threat(catalog: Catalog, technique_ids: Iterable[str], tactic_ids: Iterable[str]) -> dict[str, Any]:
    """The ECS threat object with Kibana's array conventions: parallel id/name/reference arrays,
    sub-techniques under technique.subtechnique with their parent listed under technique."""
    parents: dict[str, None] = {}
    subs: dict[str, None] = {}
    for tid in technique_ids:
        active = catalog.resolve(tid).active_id
        if active is None:
            continue
        tech = catalog.techniques[active]
        if tech.parent:
            subs[active] = None
            parents[tech.parent] = None
        else:
            parents[active] = None
    tactics = [t for key in dict.fromkeys(tactic_ids) if (t := catalog.tactic(key)) is not None]
    tactics.sort(key=catalog.tactic_rank)

    def block(ids: Iterable[str]) -> dict[str, list[str]]:
        techs = [catalog.techniques[i] for i in ids]
        return {"id": [t.id for t in techs], "name": [t.name for t in techs], "reference": [t.reference for t in techs]}

    threat: dict[str, Any] = {
        "framework": FRAMEWORK,
        "tactic": {
            "id": [t.id for t in tactics],
            "name": [t.name for t in tactics],
            "reference": [t.reference for t in tactics],
        },
    }
    if parents:
        threat["technique"] = block(sorted(parents))
        if subs:
            threat["technique"]["subtechnique"] = block(sorted(subs))
    return threat


def provenance_hash(catalog: Catalog, mapping: ValidatedMapping, settings_hash: str, decision: Decision) -> str:
    """Identifies the enrichment's content (not its time): an unchanged hash means nothing to rewrite."""
    result = mapping.result
    payload = {
        "schema": PROVENANCE_SCHEMA,
        "catalog": catalog.fingerprint,
        "mapper": result.mapper,
        "model": result.model,
        "prompt": result.prompt_hash,
        "settings": settings_hash,
        "decision": decision.kind.value,
        "techniques": sorted(t.technique_id for t in result.techniques),
        "tactics": sorted(result.tactic_ids),
    }
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


def build_enrichment(
    alert: Mapping[str, Any],
    features: AlertFeatures,
    decision: Decision,
    mapping: ValidatedMapping,
    catalog: Catalog,
    *,
    settings_hash: str,
    compliance: ComplianceMap | None = None,
    mapping_key: str | None = None,
    workflow: WorkflowRef | None = None,
) -> Enrichment:
    """The merged ECS threat object and the provenance for one alert, before its per-run stamps.

    It depends only on the alert's existing tags, the decision and the mapping, so the engine
    reuses it for every alert that shares those."""
    result = mapping.result
    existing_techniques, existing_tactics = _existing_ids(alert)
    techniques = list(existing_techniques)
    tactics = list(existing_tactics)
    if decision.kind is DecisionKind.EXTEND:
        for ref in features.rule_threat:
            if ref.technique_id:
                techniques.append(ref.technique_id)
            if ref.tactic_id:
                tactics.append(ref.tactic_id)
    for t in result.techniques:
        techniques.append(t.technique_id)
        tactics.extend(t.tactic_ids)
    tactics.extend(result.tactic_ids)
    provenance: dict[str, Any] = {
        "schema": PROVENANCE_SCHEMA,
        **(workflow.provenance() if workflow is not None else {}),
        "mapper": result.mapper,
        "model": result.model,
        "prompt_hash": result.prompt_hash or None,
        "catalog_version": catalog.version,
        "catalog_fingerprint": catalog.fingerprint,
        "cache_hit": False,
        "decision": decision.kind.value,
        "reason": decision.reason,
        "detail": decision.detail,
        "techniques": [
            {
                "id": t.technique_id,
                "name": catalog.techniques[t.technique_id].name,
                "tactics": list(t.tactic_ids),
                "confidence": t.confidence,
                "rationale": t.rationale,
                "evidence": [e.model_dump(exclude_none=True) for e in t.evidence],
            }
            for t in result.techniques
        ],
        "tactics_only": list(result.tactic_ids),
        "fallback_reason": result.fallback_reason,
        "prompt_injection_suspected": [f.model_dump() for f in result.prompt_injection_suspected],
        "llm_usage": result.usage.model_dump() if result.usage is not None else None,
        "llm_cost_usd": result.cost_usd,
        "validation": [i.model_dump(exclude_none=True) for i in mapping.issues],
        "enriched_at": "",
        "provenance_hash": provenance_hash(catalog, mapping, settings_hash, decision),
    }
    if features.tenant is not None:
        provenance["tenant"] = features.tenant
    if compliance is not None:
        provenance["compliance"] = compliance.tags(techniques)
    if mapping_key is not None:  # what analysts' feedback names: the cache key
        provenance["mapping_key"] = mapping_key
    return Enrichment(threat=build_threat(catalog, techniques, tactics), provenance=provenance)


def apply_enrichment(alert: Mapping[str, Any], enrichment: Enrichment, *, cache_hit: bool, now: str) -> dict[str, Any]:
    """A copy of the alert carrying the enrichment. Only the ATT&CK tags under threat.* are
    rewritten (they were merged into the enrichment); other threat data, such as an indicator
    match rule's threat.enrichments or threat.indicator, is kept as it was."""
    enriched = _without_attack_tags(alert)
    existing = alert.get("threat")
    threat = dict(enrichment.threat)
    if isinstance(existing, Mapping):
        kept = {k: v for k, v in existing.items() if k.split(".", 1)[0] not in _ATTACK_TAG_KEYS}
        threat = {**kept, **threat}
    enriched["threat"] = threat
    provenance = dict(enrichment.provenance)
    provenance["cache_hit"] = cache_hit
    provenance["enriched_at"] = now
    # Per alert, not per enrichment: the same mapping serves many executions.
    provenance["execution_fingerprint"] = execution_fingerprint(alert)
    enriched[PROVENANCE_FIELD] = provenance
    return enriched


def _without_attack_tags(alert: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the alert less its top-level flat ATT&CK tag keys. Most alerts have no top-level key
    starting with ``threat.`` at all, which one search of their joined keys tells at C speed; testing
    key by key cost about a tenth of a warm alert."""
    try:
        any_flat_threat = "\0threat." in "\0" + "\0".join(alert)
    except TypeError:  # a key that is not text: the key-by-key test says what to do with it
        any_flat_threat = True
    if not any_flat_threat:
        return dict(alert)
    return {k: v for k, v in alert.items() if not _is_attack_tag(k)}


def _is_attack_tag(key: str) -> bool:
    """A top-level flat key holding ATT&CK tags (threat.tactic.id, threat.framework, …)."""
    return key.startswith("threat.") and key.split(".", 2)[1] in _ATTACK_TAG_KEYS


def timestamp(now: datetime | None = None) -> str:
    """The provenance time format: UTC, milliseconds, Z."""
    return (now or datetime.now(UTC)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def enrich_alert(
    alert: Mapping[str, Any],
    features: AlertFeatures,
    decision: Decision,
    mapping: ValidatedMapping,
    catalog: Catalog,
    *,
    cache_hit: bool,
    settings_hash: str,
    now: datetime | None = None,
    compliance: ComplianceMap | None = None,
) -> dict[str, Any]:
    """A copy of the alert with merged ECS threat.* and the `attackmap` provenance object."""
    enrichment = build_enrichment(
        alert, features, decision, mapping, catalog, settings_hash=settings_hash, compliance=compliance
    )
    return apply_enrichment(alert, enrichment, cache_hit=cache_hit, now=timestamp(now))


def skip_provenance(
    decision: Decision, catalog: Catalog, workflow: WorkflowRef | None = None, tenant: str | None = None
) -> dict[str, Any]:
    """Why an alert was skipped; the same for every alert of a tenant with the same decision."""
    provenance = {
        "schema": PROVENANCE_SCHEMA,
        **(workflow.provenance() if workflow is not None else {}),
        "decision": decision.kind.value,
        "reason": decision.reason,
        "detail": decision.detail,
        "catalog_version": catalog.version,
    }
    if tenant is not None:
        provenance["tenant"] = tenant
    return provenance


def mark_skipped(alert: Mapping[str, Any], provenance: Mapping[str, Any]) -> dict[str, Any]:
    """A skipped alert keeps every field; only the provenance says why it was skipped."""
    marked = dict(alert)
    marked[PROVENANCE_FIELD] = dict(provenance)
    return marked
