"""The execution fingerprint: a deterministic SHA-256 over what ran where, for correlating one execution
across systems (the EDR's alert, the red-team platform's tool event, a peer's federated finding).

Composition (schema 1), each part the first present of its fields, in flat, nested or mixed spelling:

| part | fields |
|---|---|
| host | host.id, host.name, agent.id, attributes.host, attributes.hostname, attributes.target |
| process | process.entity_id, else process.pid + process.start (attributes.pid + attributes.process_start) |
| executable | process.executable, process.name, attributes.executable |
| command_line | process.command_line, attributes.command_line, attributes.command |
| parent | process.parent.entity_id, else process.parent.pid + process.parent.executable |
| user | user.id, user.name (with user.domain), attributes.user, attributes.operator |
| rule | the detection rule's id (kibana.alert.rule.rule_id, …), else the tool event's type |

The digest is SHA-256 hex of the canonical JSON (sorted keys, absent parts null) of
``{"v": 1, "host": …, "process": …, "executable": …, "command_line": …, "parent": …, "user": …,
"rule": …}``. Host names and users are lower-cased (Windows spells them either way); nothing volatile
(timestamps, alert ids, attackmap's own output) takes part, so re-enriching an alert gives the same
fingerprint. An event that brings its own (``execution_fingerprint`` or ``attackmap.execution_fingerprint``)
keeps it: the system that saw the execution first names it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

from mitre.features import FieldReader, first_text, valid_text

FINGERPRINT_SCHEMA = 1
GIVEN = ("execution_fingerprint", "attackmap.execution_fingerprint")
_HOST = ("host.id", "host.name", "agent.id", "attributes.host", "attributes.hostname", "attributes.target")
_ENTITY = ("process.entity_id",)
_PID = ("process.pid", "attributes.pid")
_START = ("process.start", "attributes.process_start")
_EXECUTABLE = ("process.executable", "process.name", "attributes.executable")
_COMMAND = ("process.command_line", "attributes.command_line", "attributes.command")
_PARENT_ENTITY = ("process.parent.entity_id",)
_PARENT_PID = ("process.parent.pid",)
_PARENT_EXE = ("process.parent.executable", "process.parent.name")
_USER = ("user.id", "user.name", "attributes.user", "attributes.operator")
_DOMAIN = ("user.domain",)
_RULE = (
    "kibana.alert.rule.rule_id",
    "kibana.alert.rule.uuid",
    "signal.rule.rule_id",
    "rule.id",
    "event_type",
    "event.action",
)
_READER = FieldReader(
    (
        *GIVEN,
        *_HOST,
        *_ENTITY,
        *_PID,
        *_START,
        *_EXECUTABLE,
        *_COMMAND,
        *_PARENT_ENTITY,
        *_PARENT_PID,
        *_PARENT_EXE,
        *_USER,
        *_DOMAIN,
        *_RULE,
    )
)


def _lower(value: str | None) -> str | None:
    return value.lower() if value is not None else None


def _joined(*parts: str | None) -> str | None:
    present = [p for p in parts if p is not None]
    return "|".join(p or "" for p in parts) if present else None


def composition(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The parts the fingerprint is computed over (documented above)."""
    return _compose(_READER.read(doc))


def _compose(flat: Mapping[str, Any]) -> dict[str, Any]:
    user = first_text(flat, _USER)
    domain = first_text(flat, _DOMAIN)
    # Built in sorted key order: the digest's canonical JSON is this dict written as it stands.
    return {
        "command_line": first_text(flat, _COMMAND),
        "executable": first_text(flat, _EXECUTABLE),
        "host": _lower(first_text(flat, _HOST)),
        "parent": first_text(flat, _PARENT_ENTITY)
        or _joined(first_text(flat, _PARENT_PID), first_text(flat, _PARENT_EXE)),
        "process": first_text(flat, _ENTITY) or _joined(first_text(flat, _PID), first_text(flat, _START)),
        "rule": first_text(flat, _RULE),
        "user": _lower(f"{domain}\\{user}" if domain and user else user),
        "v": FINGERPRINT_SCHEMA,
    }


def execution_fingerprint(doc: Mapping[str, Any]) -> str:
    """The document's own fingerprint when it brings one, else SHA-256 over `composition`."""
    flat = _READER.read(doc)
    if (GIVEN[0] in flat or GIVEN[1] in flat) and (given := first_text(flat, GIVEN)):
        return given
    parts = _compose(flat)
    for name, value in parts.items():
        if type(value) is str and not value.isascii():
            parts[name] = valid_text(value)
    # Keys already in sorted order (see _compose): the same bytes as OPT_SORT_KEYS, without the sort.
    return hashlib.sha256(orjson.dumps(parts)).hexdigest()
