"""Eval datasets: hand-written cases and converters from public corpora into the same case shape.

Every converter yields `Case` objects whose `alert` is exactly what the mapper receives, with
no ATT&CK tags on the rule (so the mapper cannot read the answer) and whose `expected` holds
the raw labels of the source (normalised later by `evals.labels`).

- Sigma rules and Atomic Red Team tests → the alerts `mitre.corpora` makes of them, the same
  conversion the knowledge base learns from.
- Elastic detection-rules TOML (`[rule]` + `[[rule.threat]]`) and generic rules JSONL
  (`name`, `description`, `query`, `techniques`) → untagged Kibana-shaped alerts; technique IDs
  written into a rule's name or query (a YARA-L rule called `mitre_attack_T1021_002_…`) are masked.
- Telemetry cases (`telemetry:PATH`, ../shared/data/telemetry-dev): real events in the case format
  with their own `split` (dev / check) and labels under ATT&CK v19.1 beside the v18.1 ones.
"""

from __future__ import annotations

import hashlib
import tomllib
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from mitre.corpora import (
    atomic_alert,
    atomic_prose,
    kibana_alert,
    lolbas_alert,
    lolbas_prose,
    row_kind,
    rules_alert,
    sigma_alert,
    uuid_like,
)

HANDWRITTEN_DIR = Path(__file__).resolve().parent / "cases"
SIGMA_RULE_URL = "https://github.com/SigmaHQ/sigma/blob/master/{path}"
DATASET_KINDS = ("cases", "sigma", "atomic", "elastic", "rules", "telemetry", "lolbas")
SPLITS = ("dev", "holdout")  # the halves a hash of the group makes, for cases without their own split
OWN_SPLITS = ("dev", "check")  # the splits a dataset may carry itself (telemetry-dev)


@dataclass
class Case:
    """One eval case. `techniques`/`tactics` are raw labels until `evals.labels` normalises them."""

    id: str
    alert: dict[str, Any]
    techniques: tuple[str, ...]
    tactics: tuple[str, ...] = ()
    source: str = ""
    group: str | None = None
    platform: str | None = None
    hard_negative: bool = False
    author: str | None = None
    reference: str | None = None
    # Extra keys for near-duplicate grouping (e.g. Sigma `related` ids, the ART technique file).
    related: tuple[str, ...] = ()
    family: str | None = None
    dedup_text: str = ""
    # Labelled text a knowledge base may learn from but the mapper never sees (an ART test's description).
    prose: str = ""
    # Where the row came from ("<file name>:<line>"): how cross-validation finds it in a knowledge base
    # that loads the same file (`mitre.knowledge.load_examples` names id-less rows so).
    origin: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    split: str | None = None  # the dataset's own split, when it has one (telemetry-dev: dev / check)
    # The same labels under ATT&CK v19 when the dataset gives them (scored when a v19 catalog is active).
    techniques_v19: tuple[str, ...] | None = None
    tactics_v19: tuple[str, ...] | None = None

    @property
    def title(self) -> str:
        """What evidence names this case by when it teaches a knowledge base: a rule's title, a test's name."""
        for key in ("title", "test_name", "name"):
            if isinstance(value := self.meta.get(key), str) and value:
                return value
        return self.id


@dataclass
class LoadReport:
    """What a converter read and what it left out (and why): nothing disappears silently."""

    dataset: str
    rows: int = 0
    cases: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "rows": self.rows, "cases": self.cases, "skipped": dict(self.skipped)}


# ---------------------------------------------------------------- helpers


def _jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for index, line in enumerate(path.read_bytes().splitlines(), start=1):
        if line.strip():
            row = orjson.loads(line)
            if isinstance(row, dict):
                yield index, row


# ---------------------------------------------------------------- Sigma


def sigma_case(row: Mapping[str, Any], source: str = "sigma") -> Case:
    alert = sigma_alert(row)
    product = str((row.get("logsource") or {}).get("product") or "").lower()
    author = row.get("author") if isinstance(row.get("author"), str) else None
    related = tuple(str(r.get("id")) for r in row.get("related") or () if isinstance(r, Mapping) and r.get("id"))
    path = row.get("path")
    return Case(
        id=str(row["id"]),
        alert=alert,
        techniques=tuple(row.get("techniques") or ()),
        tactics=tuple(row.get("tactics") or ()),
        source=source,
        platform=product or None,
        author=author,
        reference=SIGMA_RULE_URL.format(path=path) if path else None,
        related=related,
        family=None,
        dedup_text=alert["kibana.alert.rule.query"],
        meta={"title": row.get("title"), "path": path, "license": "DRL-1.1"},
    )


def load_sigma(path: Path) -> tuple[list[Case], LoadReport]:
    report = LoadReport(dataset=f"sigma:{path}")
    cases = []
    for line, row in _jsonl(path):
        report.rows += 1
        if not row.get("detection") or not row.get("id"):
            report.skipped["no_detection"] += 1
            continue
        cases.append(replace(sigma_case(row, source=f"sigma:{path.name}"), origin=f"{path.name}:{line}"))
    report.cases = len(cases)
    return cases, report


# ---------------------------------------------------------------- Atomic Red Team


def atomic_case(row: Mapping[str, Any], source: str = "atomic") -> Case | None:
    alert = atomic_alert(row)
    if alert is None:
        return None
    command = alert["process"]["command_line"]
    os_type = alert.get("host", {}).get("os", {}).get("type")
    platforms = [str(p) for p in row.get("platforms") or ()]
    technique = str(row["technique"])
    return Case(
        id=str(row.get("guid") or uuid_like(command)),
        alert=alert,
        techniques=(technique,),
        tactics=(),
        source=source,
        platform=os_type or (platforms[0] if platforms else None),
        family=str(row.get("path") or technique),
        dedup_text=command,
        prose=atomic_prose(row),
        meta={"test_name": row.get("test_name"), "technique_file": row.get("path"), "executor": str(row["executor"])},
    )


def load_atomic(path: Path) -> tuple[list[Case], LoadReport]:
    report = LoadReport(dataset=f"atomic:{path}")
    cases = []
    for line, row in _jsonl(path):
        report.rows += 1
        if not row.get("technique"):
            report.skipped["no_technique"] += 1
            continue
        case = atomic_case(row, source=f"atomic:{path.name}")
        if case is None:
            reason = "manual_executor" if row.get("executor") == "manual" else "no_command"
            report.skipped[reason] += 1
            continue
        cases.append(replace(case, origin=f"{path.name}:{line}"))
    report.cases = len(cases)
    return cases, report


# ---------------------------------------------------------------- LOLBAS (GPL-3.0: read by path, never copied)


def load_lolbas(path: Path) -> tuple[list[Case], LoadReport]:
    """LOLBAS commands as the process alerts running them raises, labelled with their one technique."""
    report = LoadReport(dataset=f"lolbas:{path}")
    cases = []
    for index, row in _jsonl(path):
        report.rows += 1
        alert = lolbas_alert(row)
        if alert is None or not row.get("mitre_id"):
            report.skipped["no_command_or_technique"] += 1
            continue
        cases.append(
            Case(
                id=f"lolbas-{index}",
                alert=alert,
                techniques=(str(row["mitre_id"]),),
                source=f"lolbas:{path.name}",
                platform="windows",
                family=str(row.get("name") or ""),
                dedup_text=alert["process"]["command_line"],
                prose=lolbas_prose(row),
                meta={"name": row.get("name"), "license": "GPL-3.0"},
            )
        )
    report.cases = len(cases)
    return cases, report


# ---------------------------------------------------------------- Elastic detection-rules TOML


def _threat_labels(threat: Iterable[Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    techniques: list[str] = []
    tactics: list[str] = []
    for entry in threat:
        tactic = entry.get("tactic") or {}
        if tactic.get("id"):
            tactics.append(str(tactic["id"]))
        for technique in entry.get("technique") or ():
            subs = [str(s["id"]) for s in technique.get("subtechnique") or () if s.get("id")]
            if subs:
                techniques.extend(subs)
            elif technique.get("id"):
                techniques.append(str(technique["id"]))
    return list(dict.fromkeys(techniques)), list(dict.fromkeys(tactics))


def elastic_case(doc: Mapping[str, Any], source: str, fallback_id: str) -> Case | None:
    rule = doc.get("rule")
    if not isinstance(rule, Mapping) or not rule.get("name"):
        return None
    techniques, tactics = _threat_labels(rule.get("threat") or ())
    rule_id = str(rule.get("rule_id") or fallback_id)
    query = str(rule.get("query") or "")
    authors = rule.get("author") or []
    author = ", ".join(authors) if isinstance(authors, list) else str(authors)
    alert = kibana_alert(
        rule_id=rule_id,
        name=str(rule["name"]),
        description=str(rule.get("description") or "").strip(),
        query=query,
        language=str(rule.get("language") or "kuery"),
        rule_type=str(rule.get("type") or "query"),
        author=author or None,
    )
    return Case(
        id=rule_id,
        alert=alert,
        techniques=tuple(techniques),
        tactics=tuple(tactics),
        source=source,
        author=author or None,
        dedup_text=query or str(rule["name"]),
        meta={"name": rule["name"]},
    )


def load_elastic(path: Path) -> tuple[list[Case], LoadReport]:
    """A detection-rules TOML file or a folder of them (searched recursively)."""
    report = LoadReport(dataset=f"elastic:{path}")
    files = sorted(path.rglob("*.toml")) if path.is_dir() else [path]
    cases = []
    for file in files:
        report.rows += 1
        try:
            doc = tomllib.loads(file.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError):
            report.skipped["invalid_toml"] += 1
            continue
        case = elastic_case(doc, source=f"elastic:{file.name}", fallback_id=file.stem)
        if case is None:
            report.skipped["no_rule_section"] += 1
            continue
        cases.append(case)
    report.cases = len(cases)
    return cases, report


# ---------------------------------------------------------------- generic rules JSONL


def load_rules(path: Path) -> tuple[list[Case], LoadReport]:
    """JSONL rows with `name`, `description`, `query` and `techniques` (and optional `tactics`)."""
    report = LoadReport(dataset=f"rules:{path}")
    cases = []
    for index, row in _jsonl(path):
        report.rows += 1
        if not row.get("name") and not row.get("description"):
            report.skipped["no_name_or_description"] += 1
            continue
        rule_id = str(row.get("id") or row.get("rule_id") or f"{path.stem}-{index}")
        author = row.get("author") if isinstance(row.get("author"), str) else None
        alert = rules_alert(row, rule_id)
        query = alert["kibana.alert.rule.query"]
        cases.append(
            Case(
                id=rule_id,
                alert=alert,
                techniques=tuple(row.get("techniques") or ()),
                tactics=tuple(row.get("tactics") or ()),
                source=f"rules:{path.name}",
                author=author,
                dedup_text=query or str(row.get("name") or ""),
                origin=f"{path.name}:{index}",
                # Chronicle and Panther rows give their labels under v19.1 too (revoked IDs replaced).
                techniques_v19=tuple(row["techniques_v19_1"])
                if isinstance(row.get("techniques_v19_1"), list)
                else None,
            )
        )
    report.cases = len(cases)
    return cases, report


# ---------------------------------------------------------------- hand-written cases


def case_from_row(row: Mapping[str, Any], source: str) -> Case:
    expected = row.get("expected") or {}
    return Case(
        id=str(row["id"]),
        alert=dict(row["alert"]),
        techniques=tuple(expected.get("techniques") or ()),
        tactics=tuple(expected.get("tactics") or ()),
        source=str(row.get("source") or source),
        group=row.get("group"),
        platform=row.get("platform"),
        hard_negative=bool(row.get("hard_negative")),
        dedup_text="",
        meta={"notes": row.get("notes")} if row.get("notes") else {},
    )


def telemetry_case(row: Mapping[str, Any], source: str) -> Case:
    """A telemetry-dev row: an empty label list marks a benign event (a hard negative), and the row
    carries its split and its v19.1 labels."""
    case = case_from_row(row, source)
    v19 = row.get("expected_v19") or {}
    return replace(
        case,
        hard_negative=case.hard_negative or not case.techniques,
        split=str(row["split"]) if row.get("split") in OWN_SPLITS else None,
        techniques_v19=tuple(v19.get("techniques") or ()) if v19 else None,
        tactics_v19=tuple(v19.get("tactics") or ()) if v19 else None,
    )


def load_telemetry(path: Path) -> tuple[list[Case], LoadReport]:
    """Telemetry cases (../shared/data/telemetry-dev/cases.jsonl): the case format plus `split`,
    `expected_v19` and benign events with empty labels."""
    report = LoadReport(dataset=f"telemetry:{path}")
    cases = []
    for _, row in _jsonl(path):
        report.rows += 1
        if "alert" not in row or "expected" not in row or "id" not in row:
            report.skipped["not_a_case"] += 1
            continue
        cases.append(telemetry_case(row, source=path.name))
    report.cases = len(cases)
    return cases, report


def load_cases(path: Path) -> tuple[list[Case], LoadReport]:
    """Eval cases in the evals/case.schema.json format: one file, or every *.jsonl in a folder."""
    report = LoadReport(dataset=f"cases:{path}")
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    cases = []
    for file in files:
        for line, row in _jsonl(file):
            report.rows += 1
            if "alert" not in row or "expected" not in row or "id" not in row:
                report.skipped["not_a_case"] += 1
                continue
            cases.append(replace(case_from_row(row, source=file.name), origin=f"{file.name}:{line}"))
    report.cases = len(cases)
    return cases, report


# ---------------------------------------------------------------- dispatch


def sniff_kind(path: Path) -> str:
    """Guess the dataset kind of an unprefixed path from its first row."""
    if path.is_dir():
        return "elastic" if any(path.rglob("*.toml")) else "cases"
    if path.suffix == ".toml":
        return "elastic"
    for _, row in _jsonl(path):
        if kind := row_kind(row):
            return kind
        break
    raise ValueError(f"{path}: cannot tell which kind of dataset this is; prefix it with sigma:, atomic:, ...")


def parse_spec(spec: str) -> tuple[str, Path]:
    """`handwritten` | `sigma:PATH` | `atomic:PATH` | `elastic:PATH` | `rules:PATH` | `cases:PATH` | PATH."""
    if spec == "handwritten":
        return "cases", HANDWRITTEN_DIR
    kind, sep, rest = spec.partition(":")
    if sep and kind in DATASET_KINDS:
        return kind, Path(rest)
    path = Path(spec)
    return sniff_kind(path), path


LOADERS = {
    "cases": load_cases,
    "telemetry": load_telemetry,
    "sigma": load_sigma,
    "atomic": load_atomic,
    "elastic": load_elastic,
    "rules": load_rules,
    "lolbas": load_lolbas,
}


def split_of(case: Case) -> str:
    """The dataset's own split when it has one (telemetry-dev: dev / check); else `dev` or `holdout`,
    fixed by a hash of the case's group (its id when it has none): tuning looks at dev only, holdout
    (or check) measures whether the tuning generalises, and near-duplicates never straddle."""
    if case.split is not None:
        return case.split
    key = case.group or case.id
    return SPLITS[hashlib.sha256(key.encode()).digest()[0] % len(SPLITS)]


def select_split(cases: Iterable[Case], split: str | None) -> list[Case]:
    """The cases of one split (all of them for None)."""
    known = tuple(dict.fromkeys((*SPLITS, *OWN_SPLITS)))
    if split is not None and split not in known:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(known)}")
    return [c for c in cases if split is None or split_of(c) == split]


def load_dataset(spec: str) -> tuple[str, list[Case], LoadReport]:
    """(kind, cases, report) for a dataset spec; raises FileNotFoundError / ValueError."""
    kind, path = parse_spec(spec)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    cases, report = LOADERS[kind](path)
    return kind, cases, report
