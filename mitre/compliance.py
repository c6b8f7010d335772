"""Compliance controls that mitigate an alert's techniques.

Public mappings (CTID Mappings Explorer, Apache-2.0: NIST SP 800-53 rev5, CSA CCM 4.1, CRI Profile v2.1)
are read by path from their JSONL (``compliance.mappings`` in workflows.yaml) and translated to the active
catalog's IDs: each row's technique is resolved through the catalog (revoked → replacement, newer →
crosswalk), falling back to the row's own v18.1 / v19.1 resolution columns. A sub-technique without
controls of its own takes its parent's.

ISO/IEC 27001 Annex A and SOC 2 have no public ATT&CK mapping, so their controls come only from a file
the user supplies (``compliance.user_mappings``, format below); without one their lists stay empty and
``unavailable`` says why. Nothing is ever inferred::

    framework: iso27001            # iso27001 | soc2
    source: "GRC team mapping, reviewed 2026-10"
    mappings:
      - control: A.8.7
        techniques: [T1204, T1566]
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

import orjson
import yaml
from pydantic import BaseModel, ConfigDict

from mitre.catalog import Catalog
from mitre.features import flatten

# Framework key (as in the public JSONL, or a user file's `framework`) → field of attackmap.compliance.
FIELDS: dict[str, str] = {
    "nist_800_53": "nist_800_53_controls",
    "csa_ccm": "csa_ccm_controls",
    "cri_profile": "cri_profile_controls",
    "soc2": "soc2_controls",
    "iso27001": "iso27001_annex_a_controls",
}
USER_ONLY = ("soc2", "iso27001")
NO_PUBLIC_MAPPING = "no public ATT&CK mapping exists; supply one in compliance.user_mappings"
_NIST_ID = re.compile(r"^([A-Z]{2})-0*(\d+)(.*)$")
_NATURAL = re.compile(r"(\d+)")


class UserMappingRow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    control: str
    techniques: list[str]


class UserMappingFile(BaseModel):
    """A user-supplied control → technique mapping for a framework with no public one."""

    model_config = ConfigDict(extra="forbid")

    framework: Literal["iso27001", "soc2"]
    source: str = ""
    mappings: list[UserMappingRow]


def control_id(framework: str, raw: str) -> str:
    """The framework's own spelling: Mappings Explorer zero-pads NIST numbers (CM-03 is NIST's CM-3)."""
    if framework == "nist_800_53" and (m := _NIST_ID.match(raw)):
        return f"{m.group(1)}-{int(m.group(2))}{m.group(3)}"
    return raw


def _natural(control: str) -> list[object]:
    return [int(p) if p.isdigit() else p for p in _NATURAL.split(control)]


class ComplianceMap:
    """technique (active ID) → controls, per framework; the same object for every alert of a run."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.controls: dict[str, dict[str, set[str]]] = {key: defaultdict(set) for key in FIELDS}
        self.names: dict[tuple[str, str], str] = {}
        self.unavailable: dict[str, str] = {FIELDS[key]: NO_PUBLIC_MAPPING for key in USER_ONLY}
        self.sources: list[str] = []
        self.unresolved = 0

    def _resolve(self, *ids: object) -> str | None:
        for tid in ids:
            if isinstance(tid, str) and (active := self.catalog.resolve(tid).active_id):
                return active
        return None

    def add_public(self, path: Path) -> None:
        """Rows of the Mappings Explorer JSONL (see ../shared/data/compliance/README.md)."""
        with path.open("rb") as handle:
            for line in handle:
                if not line.strip():
                    continue
                row = orjson.loads(line)
                framework = row.get("framework_key")
                if framework not in FIELDS or row.get("mapping_type") != "mitigates" or not row.get("control_id"):
                    continue
                active = self._resolve(
                    row.get("technique_id"), row.get("technique_id_v19_1"), row.get("technique_id_v18_1")
                )
                if active is None:
                    self.unresolved += 1
                    continue
                control = control_id(framework, str(row["control_id"]))
                self.controls[framework][active].add(control)
                if row.get("control_name"):
                    self.names[(framework, control)] = str(row["control_name"])
        self.sources.append(str(path))

    def add_user(self, path: Path) -> None:
        data = UserMappingFile.model_validate(yaml.safe_load(path.read_text()) or {})
        for row in data.mappings:
            for tid in row.techniques:
                active = self._resolve(tid)
                if active is None:
                    raise ValueError(f"{path}: {tid} (control {row.control}) is not a technique of the catalog")
                self.controls[data.framework][active].add(row.control)
        self.unavailable.pop(FIELDS[data.framework], None)
        self.sources.append(str(path))

    def controls_of(self, framework: str, technique_id: str) -> set[str]:
        """A technique's controls; a sub-technique with none of its own takes its parent's."""
        found = self.controls[framework].get(technique_id)
        if not found and (technique := self.catalog.techniques.get(technique_id)) and technique.parent:
            found = self.controls[framework].get(technique.parent)
        return found or set()

    def most_specific(self, technique_ids: Iterable[str]) -> set[str]:
        """Active IDs, less a parent listed beside its own sub-technique (Kibana lists both)."""
        active = {a for t in technique_ids if (a := self.catalog.resolve(t).active_id)}
        parents = {p for t in active if (p := self.catalog.techniques[t].parent)}
        return active - parents

    def tags(self, technique_ids: Iterable[str]) -> dict[str, object]:
        """``attackmap.compliance`` for an alert tagged with these techniques."""
        active = self.most_specific(technique_ids)
        out: dict[str, object] = {}
        for framework, field in FIELDS.items():
            found: set[str] = set()
            for tid in active:
                found |= self.controls_of(framework, tid)
            out[field] = sorted(found, key=_natural)
        if self.unavailable:
            out["unavailable"] = dict(self.unavailable)
        return out


def load_compliance(
    catalog: Catalog, public: Iterable[Path], user: Iterable[Path] = ()
) -> tuple[ComplianceMap, list[str]]:
    """The compliance map and warnings for files that are missing (mapping goes on without them)."""
    result = ComplianceMap(catalog)
    warnings = []
    for path in public:
        if path.is_file():
            result.add_public(path)
        else:
            warnings.append(f"compliance mappings {path} not found: NIST/CSA/CRI controls left empty")
    for path in user:
        result.add_user(path)
    return result, warnings


def technique_ids(alert: Mapping[str, object]) -> list[str]:
    """The techniques an enriched alert is tagged with (ECS threat.*, nested or flat)."""
    flat = flatten({"threat": alert["threat"]}) if isinstance(alert.get("threat"), Mapping) else {}
    for key, value in alert.items():
        if key.startswith("threat."):
            flat[key] = value
    ids: list[str] = []
    for name in ("threat.technique.id", "threat.technique.subtechnique.id"):
        value = flat.get(name)
        ids += [str(v) for v in (value if isinstance(value, list) else [value]) if v]
    return ids


class ControlCoverage(BaseModel):
    """One control's share of what was observed: the techniques it mitigates that alerts showed."""

    model_config = ConfigDict(extra="forbid")

    framework: str
    control: str
    name: str | None
    alerts: int
    techniques: dict[str, int]


def coverage_by_control(
    alerts: Iterable[Mapping[str, object]], compliance: ComplianceMap, frameworks: Iterable[str] = tuple(FIELDS)
) -> tuple[list[ControlCoverage], int]:
    """Per control, the alerts whose techniques it mitigates (most first); and how many alerts were read."""
    wanted = list(frameworks)
    counts: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    per_control_alerts: dict[tuple[str, str], int] = defaultdict(int)
    total = 0
    for alert in alerts:
        total += 1
        active = compliance.most_specific(technique_ids(alert))
        touched: set[tuple[str, str]] = set()
        for framework in wanted:
            for tid in active:
                for control in compliance.controls_of(framework, tid):
                    counts[(framework, control)][tid] += 1
                    touched.add((framework, control))
        for key in touched:
            per_control_alerts[key] += 1
    rows = [
        ControlCoverage(
            framework=framework,
            control=control,
            name=compliance.names.get((framework, control)),
            alerts=per_control_alerts[(framework, control)],
            techniques=dict(sorted(techniques.items())),
        )
        for (framework, control), techniques in counts.items()
    ]
    rows.sort(key=lambda r: (wanted.index(r.framework), -r.alerts, _natural(r.control)))
    return rows, total
