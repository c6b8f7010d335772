"""Re-tag alerts enriched under one ATT&CK version for another, with an official crosswalk.

`retag_alert` rewrites an enriched alert's ECS ``threat.*`` and provenance for the new catalog:

- every technique tag is carried over: kept when still active, its replacement when revoked
  (T1562.001 → T1685), through the crosswalk first and the new catalog's revoked-by chain second;
- the tactics of the techniques attackmap mapped are recomputed from the new catalog (T1548 no
  longer serves Defense Evasion; T1685 serves Defense Impairment); every other tactic tag — an
  analyst's, a rule's — is kept as it is (tactic IDs persist across versions: TA0005 is still TA0005);
- the provenance records the new catalog, what changed, and a new hash.

It only touches alerts attackmap mapped (decision map or extend) under another version, so running it
again changes nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson

from mitre.catalog import Catalog
from mitre.enrich import PROVENANCE_FIELD, build_threat, timestamp
from mitre.features import flatten


def load_crosswalk(path: Path) -> dict[str, tuple[str, ...]]:
    """An ATT&CK crosswalk (``v18_to_v19_crosswalk.jsonl``: ``v18_id`` → ``v19[].id``) as old → new IDs."""
    table: dict[str, tuple[str, ...]] = {}
    for line in path.read_bytes().splitlines():
        if line.strip():
            row = orjson.loads(line)
            table[str(row["v18_id"])] = tuple(str(n["id"]) for n in row.get("v19") or ())
    return table


def _ids(flat: Mapping[str, Any], name: str) -> list[str]:
    value = flat.get(name)
    values = value if isinstance(value, list) else [value]
    return [str(v) for v in values if v]


def _translate(tid: str, crosswalk: Mapping[str, tuple[str, ...]], catalog: Catalog) -> tuple[str, ...]:
    mapped = crosswalk.get(tid)
    if mapped:
        return tuple(t for t in mapped if t in catalog.techniques)
    active = catalog.resolve(tid).active_id
    return (active,) if active else ()


def _tactics_of(catalog: Catalog, techniques: Iterable[str]) -> list[str]:
    return [t.id for tid in techniques for t in catalog.tactics_of(tid)]


def retag_alert(
    alert: Mapping[str, Any], crosswalk: Mapping[str, tuple[str, ...]], catalog: Catalog, *, now: str | None = None
) -> dict[str, Any] | None:
    """The alert re-tagged for ``catalog``, or None when there is nothing to do."""
    provenance = alert.get(PROVENANCE_FIELD)
    if not isinstance(provenance, Mapping) or provenance.get("decision") not in ("map", "extend"):
        return None
    if provenance.get("catalog_version") == catalog.version:
        return None
    flat = flatten({"threat": alert["threat"]}) if isinstance(alert.get("threat"), Mapping) else {}
    flat.update({k: v for k, v in alert.items() if k.startswith("threat.")})
    tagged = _ids(flat, "threat.technique.id") + _ids(flat, "threat.technique.subtechnique.id")
    tactic_tags = _ids(flat, "threat.tactic.id")

    mapped = [t for t in provenance.get("techniques") or () if isinstance(t, Mapping) and t.get("id")]
    our_old_tactics = {str(x) for t in mapped for x in t.get("tactics") or ()}
    changes: dict[str, list[str]] = {}
    techniques: list[str] = []
    for tid in dict.fromkeys(tagged):
        new_ids = _translate(tid, crosswalk, catalog)
        if new_ids != (tid,):
            changes[tid] = list(new_ids)
        techniques.extend(new_ids)
    new_mapped = []
    for entry in mapped:
        for new_id in _translate(str(entry["id"]), crosswalk, catalog):
            tactics = [t.id for t in catalog.tactics_of(new_id)]
            new_mapped.append({**entry, "id": new_id, "name": catalog.techniques[new_id].name, "tactics": tactics})
    tactics_only = [t for t in provenance.get("tactics_only") or () if catalog.tactic(str(t))]
    tactics = [t for t in tactic_tags if t not in our_old_tactics] + [x for e in new_mapped for x in e["tactics"]]
    tactics += tactics_only + _tactics_of(catalog, (t for t in techniques if t not in {e["id"] for e in new_mapped}))

    threat = build_threat(catalog, techniques, tactics)
    stored = alert.get("threat")
    kept: Mapping[str, Any] = stored if isinstance(stored, Mapping) else {}
    retagged = {k: v for k, v in alert.items() if not (k.startswith("threat.") and k.split(".")[1] in threat)}
    retagged["threat"] = {**{k: v for k, v in kept.items() if k not in threat}, **threat}
    digest = hashlib.sha256(
        orjson.dumps([provenance.get("provenance_hash"), catalog.fingerprint, sorted(techniques), sorted(tactics)])
    ).hexdigest()
    retagged[PROVENANCE_FIELD] = {
        **provenance,
        "techniques": new_mapped,
        "tactics_only": tactics_only,
        "catalog_version": catalog.version,
        "catalog_fingerprint": catalog.fingerprint,
        "retagged": {
            "from_version": provenance.get("catalog_version"),
            "to_version": catalog.version,
            "changes": changes,
            "at": now or timestamp(),
        },
        "provenance_hash": digest,
    }
    return retagged
