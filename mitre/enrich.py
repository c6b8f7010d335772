"""ECS `threat.*` entries and the provenance object, built in one place.

Existing tags on the alert (an analyst's, or an earlier run's) are merged, never replaced.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from mitre.catalog import Catalog
from mitre.features import flatten
from mitre.models import AlertFeatures, Decision, DecisionKind, ValidatedMapping

FRAMEWORK = "MITRE ATT&CK"
PROVENANCE_FIELD = "attackmap"
PROVENANCE_SCHEMA = 1


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
) -> dict[str, Any]:
    """A copy of the alert with merged ECS threat.* and the `attackmap` provenance object."""
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

    enriched = {k: v for k, v in alert.items() if not k.startswith("threat.")}
    enriched["threat"] = build_threat(catalog, techniques, tactics)
    enriched[PROVENANCE_FIELD] = {
        "schema": PROVENANCE_SCHEMA,
        "mapper": result.mapper,
        "model": result.model,
        "prompt_hash": result.prompt_hash or None,
        "catalog_version": catalog.version,
        "catalog_fingerprint": catalog.fingerprint,
        "cache_hit": cache_hit,
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
        "validation": [i.model_dump(exclude_none=True) for i in mapping.issues],
        "enriched_at": (now or datetime.now(UTC)).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "provenance_hash": provenance_hash(catalog, mapping, settings_hash, decision),
    }
    return enriched


def mark_skipped(alert: Mapping[str, Any], decision: Decision, catalog: Catalog) -> dict[str, Any]:
    """A skipped alert keeps every field; only the provenance says why it was skipped."""
    marked = dict(alert)
    marked[PROVENANCE_FIELD] = {
        "schema": PROVENANCE_SCHEMA,
        "decision": decision.kind.value,
        "reason": decision.reason,
        "detail": decision.detail,
        "catalog_version": catalog.version,
    }
    return marked
