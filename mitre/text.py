"""Turning alerts and labelled examples into text for lexical matching, the same way for both.

Besides the words, an alert's text carries one vocabulary of field semantics (`field_tokens`,
mitre/data/field_semantics.yaml): the process, parent, file, registry key, event id, API action…
that a rule's query tests or an event shows, as tokens such as `f_proc_rundll32_exe`, whatever the
rule language or event shape spelled them in. A Sigma rule, an EQL or KQL query, an SPL search, a
YARA-L rule, a Python detection and a Sysmon event that name the same program then share evidence.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

from mitre.features import event_type
from mitre.models import AlertFeatures

_TOKEN = re.compile(r"[a-z][a-z0-9_]{1,39}|\d{4,5}")
# Identity and address fields say nothing about the technique.
_SKIP_FIELDS = frozenset(
    {
        "user.name",
        "user.domain",
        "user.target.name",
        "host.name",
        "source.ip",
        "source.port",
        "winlog.event_data.SubjectUserName",
        "winlog.event_data.WorkstationName",
    }
)
STOPWORDS = frozenset(
    (
        "the and for with from that this are was were has have via use used using may can not any all its "
        "exe dll com www http https windows system32 program files users appdata local"
    ).split()
)


def tokenize(text: str) -> list[str]:
    return [t for t in _TOKEN.findall(text.lower()) if t not in STOPWORDS]


def _semantics() -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
    """(field name → (meaning, kind), event type → Sigma logsource category) from the data file."""
    text = (resources.files("mitre") / "data" / "field_semantics.yaml").read_text()
    data: dict[str, Any] = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    fields = {
        name.lower(): (meaning, spec["kind"]) for meaning, spec in data["semantics"].items() for name in spec["names"]
    }
    categories = {etype: category for category, etypes in data["categories"].items() for etype in etypes}
    return fields, categories


_FIELDS, _CATEGORIES = _semantics()
_EVENT_DATA = "winlog.event_data."
# `field <op>` in Sigma (as mitre.corpora renders it), KQL, Lucene, EQL, ES|QL, SPL and YARA-L; the value
# after it is read only when the field means something (most identifiers a scan meets do not).
_FIELD_OP = re.compile(
    r"(?P<field>\$?[A-Za-z_@][\w.@$-]*(?:\|[\w|]+)?)\s*(?:==|!=|=~|=|:|\s(?:not\s+)?in\s|\s(?:like|rlike)\s)\s*",
    re.IGNORECASE,
)
_VALUE = (
    r"(?P<value>\((?:[^()]|\([^()]*\))*\)|\[[^\]]*\]|\{[^}]*\}|\"(?:[^\"\\]|\\.)*\"|'(?:[^']|'')*'"
    r"|/(?:[^/\\\n]|\\.)+/|`[^`]*`|[^\s,)\]]+)"
)
_VALUE_AT = re.compile(_VALUE)
# Python detections: event.get("eventName") == "X", deep_get(event, "a", "b") in {"X", "Y"}.
_PY_CLAUSE = re.compile(
    r"(?:get|deep_get|udm|get_value)\(\s*(?:\w+\s*,\s*)?[\"'](?P<field>[\w.@]+)[\"'](?:\s*,\s*[\"'](?P<rest>[\w.]+)[\"'])*"
    rf"\s*(?:,\s*[^)]*)?\)\s*(?:==|!=|\s(?:not\s+)?in\s)\s*{_VALUE}"
)
_QUOTED = re.compile(r"\"((?:[^\"\\]|\\.)*)\"|'((?:[^']|'')*)'|/((?:[^/\\\n]|\\.)+)/|`([^`]*)`")
_LOGSOURCE_CATEGORY = re.compile(r"^logsource:.*\bcategory=(\w+)", re.MULTILINE)
_REGEX_SYNTAX = re.compile(r"\\[dswbDSWB]|\(\?\w+\)|[\^$+?{}()\[\]|]|\.\*|\\(?=[.\\/-])")
MAX_VALUE_CHARS = 30


@lru_cache(maxsize=4096)
def _meaning(field: str) -> tuple[str, str] | None:
    """What a field name means: the whole name, then without a YARA-L event variable (`$e.`) or the
    Windows event-data prefix, then its last dotted part."""
    name = field.split("|", 1)[0].lower().lstrip("$")
    candidates = [name]
    if "." in name:
        candidates.append(name.split(".", 1)[1])
    if name.startswith(_EVENT_DATA.lower()):
        candidates.append(name[len(_EVENT_DATA) :])
    candidates.append(name.rsplit(".", 1)[-1])
    return next((found for c in candidates if (found := _FIELDS.get(c))), None)


def _values(raw: str, regex: bool) -> list[str]:
    """The literal values of one clause (quoted strings, regex literals, or a bare word); regular
    expressions (YARA-L /…/, Sigma |re) lose their syntax."""
    found = [(m.group(3) is not None, next(g for g in m.groups() if g is not None)) for m in _QUOTED.finditer(raw)]
    if not found:
        found = [(False, v) for v in re.split(r"[\s,(){}\[\]]+", raw) if v]
    return [_REGEX_SYNTAX.sub("", v) if regex or literal else v for literal, v in found]


@lru_cache(maxsize=65_536)
def _token(meaning: str, kind: str, value: str) -> str | None:
    value = value.replace("\\\\", "\\").strip().strip("*%").lower()
    if kind == "basename":
        value = re.split(r"[\\/]", value.rstrip("\\/"))[-1]
    slug = re.sub(r"[^a-z0-9]+", "_", value).strip("_")[:MAX_VALUE_CHARS].rstrip("_")
    return f"f_{meaning}_{slug}" if len(slug) >= 2 else None


def query_tokens(query: str) -> Iterator[str]:
    """Field-semantics tokens of a rule query in any of the languages above."""
    clauses: list[tuple[str, str]] = []
    for match in _FIELD_OP.finditer(query):
        field = match.group("field")
        if _meaning(field) is not None and (after := _VALUE_AT.match(query, match.end())) is not None:
            clauses.append((field, after.group("value")))
    for match in _PY_CLAUSE.finditer(query):
        clauses.append((match.group("rest") or match.group("field"), match.group("value")))
    for field, raw in clauses:
        found = _meaning(field)
        if found is None:
            continue
        meaning, kind = found
        for literal in _values(raw, regex="|re" in field.lower()):
            if (token := _token(meaning, kind, literal)) is not None:
                yield token
    for category in _LOGSOURCE_CATEGORY.findall(query):
        yield f"f_cat_{category.lower()}"


def event_tokens(fields: Mapping[str, str]) -> Iterator[str]:
    """Field-semantics tokens of an alert's own observables (and its event type's Sigma category)."""
    for name, value in fields.items():
        found = _meaning(name)
        if found is not None and (token := _token(*found, value)) is not None:
            yield token
    etype = event_type(fields)
    if etype is not None and (category := _CATEGORIES.get(etype)):
        yield f"f_cat_{category}"


def field_tokens(features: AlertFeatures) -> list[str]:
    """The alert's field-semantics tokens: from its rule's query and from its own fields, once each."""
    tokens: Iterable[str] = event_tokens(features.fields)
    if features.rule_query:
        tokens = [*query_tokens(features.rule_query), *tokens]
    return list(dict.fromkeys(tokens))


def alert_text(features: AlertFeatures) -> str:
    """Rule text plus the observable field values that can show a technique, plus their field semantics."""
    parts = [features.rule_name or "", features.rule_description or "", features.rule_query or ""]
    parts += [value for name, value in features.fields.items() if name not in _SKIP_FIELDS]
    parts.append(" ".join(field_tokens(features)))
    return "\n".join(p for p in parts if p)
