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
# Everything event_type reads (tests hold it to that).
EVENT_TYPE_INPUTS = ("winlog.event_id", "event.code", *_FAMILY_FIELDS)
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
# Everything detect_platform reads, raw (a list and its text differ there): tests hold it to that.
PLATFORM_INPUTS = (
    *_PLATFORM_FIELDS,
    "cloud.provider",
    "event.module",
    "network.protocol",
    "dns.question.name",
    "event.category",
)
_ECS_THREAT_FIELDS = ("threat.technique.id", "threat.technique.subtechnique.id", "threat.tactic.id")
# Who the alert belongs to, first match wins: a tenant stamped by attackmap (an API key's, a webhook
# header's), a tool platform's tenant_id, ECS-style tenant.id, then the Kibana space.
TENANT_FIELDS = ("attackmap.tenant", "tenant_id", "tenant.id", "kibana.space_ids")
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
            *TENANT_FIELDS,
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


def valid_text(text: str) -> str:
    """Text every encoder takes: a lone surrogate (a parsed ``"\\ud800"``, which no UTF-8 can carry)
    becomes U+FFFD, so features, cache keys, prompts, evidence and documents never fail to serialise."""
    return text if text.isascii() else text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _str(value: Any) -> str:
    """str() of a JSON value; an integer too long to print (over 4,300 digits) is named, not printed."""
    try:
        return valid_text(value if isinstance(value, str) else str(value))
    except ValueError:
        return f"<integer of {value.bit_length()} bits>"


def _text(value: Any) -> str | None:
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, list | tuple):
        # The list's own scalars are text, and so are the scalars of an object in it, one level down
        # (Office 365's Parameters: Name/Value pairs, read "Name=Value"); anything deeper is structure,
        # not an observable (and printing one nested hundreds of levels deep would exhaust the stack).
        parts = [t for v in value if (t := _item_text(v))]
        return " ".join(parts) if parts else None
    if isinstance(value, Mapping):
        return None
    return _str(value)


def _item_text(value: Any) -> str | None:
    """One list item as text: a scalar, or an object's scalar members as name=value pairs."""
    if value is None or value == "" or isinstance(value, list | tuple):
        return None
    if isinstance(value, Mapping):
        pairs = [f"{k}={_str(v)}" for k, v in value.items() if _is_scalar(v)]
        return " ".join(pairs) or None
    return _str(value)


def _is_scalar(value: Any) -> bool:
    return value is not None and value != "" and not isinstance(value, list | tuple | Mapping)


def has_text(value: Any) -> bool:
    """Whether a field value counts as present (what makes a document an alert at all)."""
    return _text(value) is not None


def observed_text(name: str, value: Any) -> str | None:
    """The text AlertFeatures.fields keeps of an observable field's value (None when absent)."""
    text = _text(value)
    return None if text is None else truncate(name, text)[0]


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


def _objects(value: Any) -> list[Mapping[str, Any]]:
    """The JSON objects of a value that should be a list of objects (one object alone counts as a
    list of one); anything else — a boolean, a number, a string — holds none."""
    if isinstance(value, Mapping):
        return [value]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, Mapping)]
    return []


def _scalar_text(value: Any) -> str | None:
    """A tag id or name: text from a string or number, nothing from an object or a list."""
    return None if isinstance(value, Mapping | list) else _text(value)


def parse_rule_threat(entries: Any) -> tuple[ThreatRef, ...]:
    """Flatten Kibana's nested tactic → technique → subtechnique mapping; tactic-only entries kept.
    Entries of the wrong JSON type are ignored, never trusted to be iterable."""
    refs: list[ThreatRef] = []
    for entry in _objects(entries):
        tactics = _objects(entry.get("tactic"))
        tactic = tactics[0] if tactics else {}
        tactic_id = _scalar_text(tactic.get("id"))
        tactic_name = _scalar_text(tactic.get("name"))
        techniques = _objects(entry.get("technique"))
        if not techniques and (tactic_id or tactic_name):
            refs.append(ThreatRef(tactic_id=tactic_id, tactic_name=tactic_name))
        for technique in techniques:
            ids = [_scalar_text(technique.get("id"))]
            ids += [_scalar_text(sub.get("id")) for sub in _objects(technique.get("subtechnique"))]
            refs.extend(ThreatRef(tactic_id=tactic_id, tactic_name=tactic_name, technique_id=tid) for tid in ids if tid)
    return tuple(dict.fromkeys(refs))


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [_str(v) for v in value if v is not None and v != "" and not isinstance(v, list | tuple | Mapping)]
    return [] if isinstance(value, Mapping) else [_str(value)]


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


class FieldReader:
    """flatten_alert for another fixed set of names (the execution fingerprint's, say): walks only the
    objects on the way to one of them, in flat, nested or mixed spelling."""

    def __init__(self, names: Iterable[str]) -> None:
        self._plan = _plan(names)

    def read(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        _flatten_inputs(doc, self._plan, out)
        return out


def first_text(flat: Mapping[str, Any], names: Iterable[str]) -> str | None:
    """The first of `names` with a value (a list's first item), as text."""
    for name in names:
        value = flat.get(name)
        if value is None:
            continue
        if type(value) is str:  # the common case, per alert on the hot path
            if value:
                return value
            continue
        if isinstance(value, list | tuple):
            value = next((v for v in value if v not in (None, "")), None)
        if (text := _text(value)) is not None:
            return text
    return None


def read_tenant(flat: Mapping[str, Any]) -> str | None:
    """The alert's tenant (TENANT_FIELDS). A tenant scopes caches, budgets and stores, so one that is not
    valid text is refused (the alert is dead-lettered) rather than coerced into some other tenant's name."""
    tenant = first_text(flat, TENANT_FIELDS)
    if tenant is not None:
        try:
            tenant.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("the alert's tenant is not valid UTF-8 text") from None
    return tenant


# --- risk score (issue #11): a score given as a word or a numeric string -------------------------
# Kibana's risk-score bands: a rule's default risk score for each severity.
SEVERITY_RISK = {"low": 21.0, "medium": 47.0, "high": 73.0, "critical": 99.0}


def read_risk_score(value: Any) -> tuple[float | None, str | None]:
    """(risk score, the raw text when it cannot be read). Numbers and numeric strings ("73") are
    read as numbers, severity words ("high") as Kibana's risk band for that severity; anything else
    is returned as text for the caller to report, never taken for "no score"."""
    if value is None or isinstance(value, bool):
        return None, None if value is None else str(value)
    if isinstance(value, int | float):
        return float(value), None
    text = str(value).strip()
    if not text:
        return None, None
    if (number := _float(text)) is not None:
        return number, None
    if (band := SEVERITY_RISK.get(text.lower())) is not None:
        return band, None
    return None, text[:64]


# -------------------------------------------------------------------------------------------------


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
    risk = read_risk_score(
        flat.get("kibana.alert.risk_score") or _rule_value(flat, "risk_score") or flat.get("event.risk_score")
    )
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
        risk_score=risk[0],
        risk_score_text=risk[1],
        severity=_text(
            flat.get("kibana.alert.severity") or _rule_value(flat, "severity") or flat.get("event.severity")
        ),
        platform=detect_platform(flat),
        tenant=read_tenant(flat),
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
