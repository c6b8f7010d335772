"""Extract a normalised AlertFeatures view from a Kibana alert, a legacy signal or a raw ECS event.

Kibana writes `kibana.alert.*` as flat dotted keys beside nested ECS objects, and either
form (or a mix, e.g. `{"process": {"parent.name": ...}}`) may hold any field, so every
lookup goes through one flattened view of the document.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Any

import yaml

from mitre.models import AlertFeatures, ThreatRef

MAX_FIELD_CHARS = 2048
MAX_SCRIPT_CHARS = 8192
TRUNCATION_MARKER = "…[truncated {n} chars]"

# Observable ECS fields, in the order prompts and evidence list them.
OBSERVABLE_FIELDS: tuple[str, ...] = (
    "event.category",
    "event.action",
    "event.code",
    "event.dataset",
    "event.module",
    "event.provider",
    "process.name",
    "process.executable",
    "process.command_line",
    "process.args",
    "process.pe.original_file_name",
    "process.parent.name",
    "process.parent.executable",
    "process.parent.command_line",
    "process.Ext.api.name",
    "file.path",
    "file.name",
    "file.extension",
    "file.target_path",
    "registry.path",
    "registry.value",
    "registry.data.strings",
    "dll.name",
    "dll.path",
    "source.ip",
    "source.port",
    "destination.ip",
    "destination.port",
    "destination.domain",
    "network.protocol",
    "network.transport",
    "network.direction",
    "dns.question.name",
    "url.full",
    "url.original",
    "url.domain",
    "http.request.method",
    "user_agent.original",
    "user.name",
    "user.domain",
    "user.target.name",
    "group.name",
    "host.name",
    "host.os.name",
    "cloud.provider",
    "cloud.service.name",
    "aws.cloudtrail.request_parameters",
    "o365.audit.Parameters",
    "azure.activitylogs.operation_name",
    "gcp.audit.method_name",
    "kubernetes.audit.requestURI",
    "kubernetes.audit.verb",
    "kubernetes.audit.objectRef.resource",
    "kubernetes.audit.objectRef.subresource",
    "kubernetes.audit.requestObject.spec.hostPID",
    "kubernetes.audit.requestObject.spec.hostNetwork",
    "kubernetes.audit.requestObject.spec.hostIPC",
    "kubernetes.audit.requestObject.spec.containers",
    "service.name",
    "winlog.channel",
    "winlog.provider_name",
    "winlog.event_id",
    "winlog.logon.type",
    "powershell.file.script_block_text",
    "powershell.command.name",
    "powershell.command.value",
    "message",
)


def _event_knowledge() -> dict[str, Any]:
    """mitre/data/event_fields.yaml: how Windows event logs arrive and which of their fields are read."""
    text = (resources.files("mitre") / "data" / "event_fields.yaml").read_text()
    data: dict[str, Any] = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return data


_EVENTS = _event_knowledge()
EVENT_DATA_FIELDS: tuple[str, ...] = tuple(f"winlog.event_data.{name}" for name in _EVENTS["event_data"])
OBSERVABLE_FIELDS += EVENT_DATA_FIELDS
_OBSERVABLE_RANK = {name: rank for rank, name in enumerate(OBSERVABLE_FIELDS)}
SCRIPT_FIELDS = frozenset(
    {
        "powershell.file.script_block_text",
        "powershell.command.value",
        "message",
        "winlog.event_data.ScriptBlockText",
        "winlog.event_data.Payload",
    }
)
# (needle, family): the event log an event came from, by the first needle its channel, provider or
# dataset contains.
_FAMILIES: tuple[tuple[str, str], ...] = tuple((needle, family) for family, needle in _EVENTS["families"])
_FAMILY_FIELDS = ("winlog.channel", "winlog.provider_name", "event.provider", "event.dataset", "event.module")
_ALIASES: dict[str, str] = dict(_EVENTS["aliases"])
_VALUE_NAMES: dict[str, dict[str, str]] = {
    field: {str(k).lower(): str(v) for k, v in names.items()} for field, names in _EVENTS["value_names"].items()
}
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")

_RULE_PREFIXES = ("kibana.alert.rule.", "signal.rule.")
# Rule attributes, read under each prefix in turn (Kibana's first, then legacy signal.rule.*).
_RULE_ATTRIBUTES = (
    "threat",
    "parameters.threat",
    "name",
    "rule_id",
    "uuid",
    "id",
    "description",
    "type",
    "query",
    "tags",
    "risk_score",
    "severity",
)
# Where the alert's own identity lives; it names one alert and never changes a mapping.
ALERT_ID_FIELDS = ("kibana.alert.uuid", "_id", "event.id", "id")
_SCORE_FIELDS = ("kibana.alert.risk_score", "event.risk_score", "kibana.alert.severity", "event.severity")
_PLATFORM_FIELDS = ("host.os.type", "host.os.platform", "host.os.family", "host.os.name", "agent.os")
_ECS_THREAT_FIELDS = ("threat.technique.id", "threat.technique.subtechnique.id", "threat.tactic.id")
# Every flattened name extract_features reads (tests hold it to that): what a memo of
# per-alert outcomes must key on.
FEATURE_INPUTS: tuple[str, ...] = tuple(
    dict.fromkeys(
        (
            *OBSERVABLE_FIELDS,
            *(prefix + name for prefix in _RULE_PREFIXES for name in _RULE_ATTRIBUTES),
            *ALERT_ID_FIELDS,
            *_SCORE_FIELDS,
            *_PLATFORM_FIELDS,
            *_ECS_THREAT_FIELDS,
        )
    )
)
# A walk plan over FEATURE_INPUTS: at each level, every key an input can be spelled with there
# (`process`, `process.parent`, `process.parent.name`, …) → (the input it completes, the plan below).
_Plan = dict[str, tuple[str | None, "_Plan | None"]]


def _plan(names: Iterable[str]) -> _Plan:
    plan: _Plan = {}
    for name in names:
        _add_to_plan(plan, name.split("."), name)
    return plan


def _add_to_plan(node: _Plan, parts: list[str], name: str) -> None:
    for i in range(1, len(parts) + 1):
        key = ".".join(parts[:i])
        leaf, below = node.get(key, (None, None))
        if i == len(parts):
            leaf = name
        else:
            below = below if below is not None else {}
            _add_to_plan(below, parts[i:], name)
        node[key] = (leaf, below)


_INPUT_PLAN = _plan(FEATURE_INPUTS)
_PLATFORM_WORDS = {
    "windows": "windows",
    "linux": "linux",
    "ubuntu": "linux",
    "debian": "linux",
    "rhel": "linux",
    "centos": "linux",
    "macos": "macos",
    "darwin": "macos",
    "mac os x": "macos",
    "osx": "macos",
}


def flatten(doc: Mapping[str, Any], prefix: str = "", out: dict[str, Any] | None = None) -> dict[str, Any]:
    """One dotted-key view of a document; flat and nested forms of a key land on the same name."""
    out = {} if out is None else out
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if type(value) is dict and value:  # JSON objects; exact type check is the hot path
            flatten(value, f"{name}.", out)
        elif name not in out or out[name] in (None, "", []):
            out[name] = value
    return out


def _flatten_inputs(doc: Mapping[str, Any], plan: _Plan, out: dict[str, Any]) -> None:
    """flatten, keeping only FEATURE_INPUTS and walking only objects on the way to one: an alert
    carries far more than features read (hashes, PE headers, ancestors…), and this runs per alert."""
    for key, value in doc.items():
        step = plan.get(key)
        if step is None:
            continue
        leaf, below = step
        if type(value) is dict and value:
            if below is not None:
                _flatten_inputs(value, below, out)
        elif leaf is not None and (leaf not in out or out[leaf] in (None, "", [])):
            out[leaf] = value


def _text(value: Any) -> str | None:
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, list | tuple):
        parts = [str(v) for v in value if v not in (None, "")]
        return " ".join(parts) if parts else None
    if isinstance(value, Mapping):
        return None
    return str(value)


def has_text(value: Any) -> bool:
    """Whether a field value counts as present (what makes a document an alert at all)."""
    return _text(value) is not None


def truncate(name: str, value: str) -> tuple[str, bool]:
    limit = MAX_SCRIPT_CHARS if name in SCRIPT_FIELDS else MAX_FIELD_CHARS
    if len(value) <= limit:
        return value, False
    return value[:limit] + TRUNCATION_MARKER.format(n=len(value) - limit), True


def _rule_value(flat: Mapping[str, Any], name: str) -> Any:
    for prefix in _RULE_PREFIXES:
        value = flat.get(prefix + name)
        if value not in (None, "", []):
            return value
    return None


def parse_rule_threat(entries: Any) -> tuple[ThreatRef, ...]:
    """Flatten Kibana's nested tactic → technique → subtechnique mapping; tactic-only entries kept."""
    refs: list[ThreatRef] = []
    if not isinstance(entries, list):
        return ()
    for entry in entries:
        if not isinstance(entry, Mapping):
            continue
        raw_tactic = entry.get("tactic")
        tactic: Mapping[str, Any] = raw_tactic if isinstance(raw_tactic, Mapping) else {}
        tactic_id = _text(tactic.get("id"))
        tactic_name = _text(tactic.get("name"))
        techniques = [t for t in entry.get("technique") or () if isinstance(t, Mapping)]
        if not techniques and (tactic_id or tactic_name):
            refs.append(ThreatRef(tactic_id=tactic_id, tactic_name=tactic_name))
        for technique in techniques:
            subs = [s for s in technique.get("subtechnique") or () if isinstance(s, Mapping) and s.get("id")]
            if technique.get("id"):
                refs.append(ThreatRef(tactic_id=tactic_id, tactic_name=tactic_name, technique_id=str(technique["id"])))
            refs.extend(
                ThreatRef(tactic_id=tactic_id, tactic_name=tactic_name, technique_id=str(s["id"])) for s in subs
            )
    return tuple(dict.fromkeys(refs))


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [str(v) for v in value if v not in (None, "")]
    return [str(value)]


def parse_ecs_threat(flat: Mapping[str, Any]) -> tuple[ThreatRef, ...]:
    """ECS threat.* keyword arrays (already on the alert, e.g. from an analyst or an earlier run)."""
    refs = [ThreatRef(technique_id=t) for t in _as_list(flat.get("threat.technique.id"))]
    refs += [ThreatRef(technique_id=t) for t in _as_list(flat.get("threat.technique.subtechnique.id"))]
    refs += [ThreatRef(tactic_id=t) for t in _as_list(flat.get("threat.tactic.id"))]
    return tuple(dict.fromkeys(refs))


def detect_platform(flat: Mapping[str, Any]) -> str | None:
    for name in _PLATFORM_FIELDS:
        value = _text(flat.get(name))
        if value:
            lowered = value.lower()
            for word, platform in _PLATFORM_WORDS.items():
                if word in lowered:
                    return platform
    if flat.get("cloud.provider") or str(flat.get("event.module", "")).lower() in {
        "aws",
        "azure",
        "gcp",
        "o365",
        "okta",
    }:
        return "cloud"
    if (
        flat.get("network.protocol")
        or flat.get("dns.question.name")
        or str(flat.get("event.category", "")) == "network"
    ):
        return "network"
    return None


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def flatten_alert(alert: Mapping[str, Any]) -> dict[str, Any]:
    """The dotted view of the parts of an alert that features read."""
    if not isinstance(alert, Mapping):
        raise ValueError(f"alert must be a JSON object, got {type(alert).__name__}")
    out: dict[str, Any] = {}
    _flatten_inputs(alert, _INPUT_PLAN, out)
    return out


def extract_features(alert: Mapping[str, Any], fields: Iterable[str] = OBSERVABLE_FIELDS) -> AlertFeatures:
    """Build the typed view. Raises ValueError when the document is not an alert at all."""
    return features_from_flat(flatten_alert(alert), fields)


def features_from_flat(flat: Mapping[str, Any], fields: Iterable[str] = OBSERVABLE_FIELDS) -> AlertFeatures:
    """extract_features on an already flattened alert (see flatten_alert)."""
    observed: dict[str, str] = {}
    truncated: list[str] = []
    if fields is OBSERVABLE_FIELDS:  # an alert holds a few of the ~180 observables: look up only those
        fields = sorted((n for n in flat if n in _OBSERVABLE_RANK), key=_OBSERVABLE_RANK.__getitem__)
    for name in fields:
        raw = flat.get(name)
        if raw is None:
            continue
        text = _text(raw)
        if text is None:
            continue
        text, cut = truncate(name, text)
        observed[name] = text
        if cut:
            truncated.append(name)
    if "winlog.event_id" in observed or "winlog.channel" in observed:
        _complete_windows_event(observed)
    rule_threat = parse_rule_threat(_rule_value(flat, "threat") or _rule_value(flat, "parameters.threat"))
    rule_name = _text(_rule_value(flat, "name"))
    if not observed and rule_name is None:
        raise ValueError("no rule and no observable ECS field: not an alert")
    return AlertFeatures(
        alert_id=_text(flat.get("kibana.alert.uuid") or flat.get("_id") or flat.get("event.id") or flat.get("id")),
        rule_id=_text(_rule_value(flat, "rule_id") or _rule_value(flat, "uuid") or _rule_value(flat, "id")),
        rule_name=rule_name,
        rule_description=_text(_rule_value(flat, "description")),
        rule_type=_text(_rule_value(flat, "type")),
        rule_query=truncate("rule.query", q)[0] if (q := _text(_rule_value(flat, "query"))) else None,
        rule_tags=tuple(_as_list(_rule_value(flat, "tags"))),
        rule_threat=rule_threat,
        existing_threat=parse_ecs_threat(flat),
        risk_score=_float(
            flat.get("kibana.alert.risk_score") or _rule_value(flat, "risk_score") or flat.get("event.risk_score")
        ),
        severity=_text(
            flat.get("kibana.alert.severity") or _rule_value(flat, "severity") or flat.get("event.severity")
        ),
        platform=detect_platform(flat),
        fields=observed,
        truncated_fields=tuple(truncated),
    )


def _basename(path: str) -> str:
    return re.split(r"[\\/]", path.rstrip("\\/"))[-1]


def _complete_windows_event(observed: dict[str, str]) -> None:
    """A Windows event as Winlogbeat without its modules leaves it, read like one its modules map:
    ECS fields filled from the event data where the alert lacks them, process names from their
    executables, and identifiers Windows writes in place of names (extended-right GUIDs, encryption
    and logon types) followed by their names."""
    for source, target in _ALIASES.items():
        if target not in observed and (value := observed.get(source)):
            observed[target] = value
    for path, name in (("process.executable", "process.name"), ("process.parent.executable", "process.parent.name")):
        if name not in observed and (value := observed.get(path)):
            observed[name] = _basename(value)
    for field, names in _VALUE_NAMES.items():
        value = observed.get(field)
        if value is None:
            continue
        keys = _GUID.findall(value) or [value.strip()]
        found = [names[k] for k in dict.fromkeys(k.lower() for k in keys) if k in names]
        if found:
            observed[field] = f"{value} ({', '.join(found)})"


def event_family(fields: Mapping[str, str]) -> str | None:
    """Which Windows event log an event came from (security, sysmon, system, powershell, …), or None."""
    for name in _FAMILY_FIELDS:
        value = fields.get(name)
        if value:
            lowered = value.lower()
            for needle, family in _FAMILIES:
                if needle in lowered:
                    return family
    return None


def event_type(fields: Mapping[str, str]) -> str | None:
    """`<family>:<event id>` (security:4662, sysmon:10, system:7045), or None when the alert is not a
    Windows event. Event-type knowledge (mitre/data/event_indicators.yaml) is keyed on it."""
    code = fields.get("winlog.event_id") or fields.get("event.code")
    if not code or not code.strip().isdigit():
        return None
    family = event_family(fields)
    return f"{family}:{int(code)}" if family else None
