"""The mapping cache key: SHA-256 over a canonical JSON of everything a mapping depends on.

Volatile values (timestamps, IDs, GUIDs, hex blobs, PIDs, temp names, per-user profile
paths) are normalised away for the key only, so the thousandth copy of the same attack
from another host or minute hits the cache. Identity fields (user, host) are left out of
the key: a mapping must not depend on them.

A mapper is given the alert and the decision, so the key holds the decision's part in the mapping
too: its kind, the indicators that fired (id, techniques, field — not the quoted text) and, when it
extends a rule, the rule's techniques. Normalising can hide what an indicator reads (a pattern naming
one GUID), and an indicator can read an identity field (`requires` on `user.name`): two alerts that
normalise alike but fire differently never share a mapping.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache

import orjson

from mitre.models import AlertFeatures, Decision, DecisionKind

KEY_SCHEMA_VERSION = 2
IDENTITY_FIELDS = frozenset({"user.name", "user.domain", "user.target.name", "host.name", "source.port"})

# (pattern, replacement, substrings one of which any match contains, lower-case; () when none is known).
# An ASCII value holding none of a rule's substrings cannot match it and is not searched: a value new to
# the process is normalised in about half the time (case-insensitive searches cost ~1.5 us each).
_RULES: tuple[tuple[re.Pattern[str], str, tuple[str, ...]], ...] = (
    (re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?"), "<ts>", ()),
    (re.compile(r"\{?[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\}?"), "<guid>", ()),
    (re.compile(r"(?i)\b(?:0x)?[0-9a-f]{16,}\b"), "<hex>", ()),
    (
        re.compile(r"(?i)(\\users\\|/users/|/home/)(?!public\b|default\b|all users\b|shared\b)[^\\/\s\"']+"),
        r"\1<user>",
        ("\\users\\", "/users/", "/home/"),
    ),
    (re.compile(r"(?i)\b(tmp|temp)[._-]?[a-z0-9]{4,}(\.tmp)?\b"), r"\1<rand>", ("tmp", "temp")),
    (re.compile(r"(?i)\b[a-z0-9]{8}\.tmp\b"), "<rand>.tmp", (".tmp",)),
    (re.compile(r"(?i)(\bpid[=: ]+|-p(?:id)? )\d+"), r"\1<n>", ("pid", "-p ")),
    (re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b"), "<ip>", ()),
)


# In command lines and scripts a bare number is a PID, size or counter; elsewhere (event.code,
# destination.port) numbers carry meaning and are kept.
_BARE_NUMBER = re.compile(r"(?<![\w.-])\d{3,}(?![\w.-])")
# Unix times (2017-2033) inside names, such as the `__1759489200.37` output file of remote execution tools.
_EPOCH = re.compile(r"(?<!\d)1[5-9]\d{8}(?:\.\d+)?(?!\d)")
COMMAND_FIELDS = frozenset(
    {"process.command_line", "process.parent.command_line", "process.args", "powershell.file.script_block_text"}
)


@lru_cache(maxsize=65_536)
def normalise_volatile(value: str, command: bool = False) -> str:
    """Pure, so memoised: one attack seen on many hosts repeats the same values."""
    # Case folding can match a non-ASCII character to an ASCII one (the long s to "s"): those are searched.
    ascii = value.isascii()
    lowered = value.lower() if ascii else ""
    for pattern, replacement, needs in _RULES:
        if ascii and needs and not any(need in lowered for need in needs):
            continue
        replaced = pattern.sub(replacement, value)
        if replaced != value:
            value = replaced
            lowered = value.lower() if ascii else ""
    if command:
        value = _BARE_NUMBER.sub("<n>", _EPOCH.sub("<epoch>", value))
    return value


def stable_features(features: AlertFeatures) -> dict[str, object]:
    """The part of the features a mapping depends on, with volatile values normalised."""
    return {
        "rule_name": features.rule_name,
        "rule_description": features.rule_description,
        "rule_type": features.rule_type,
        "rule_query": normalise_volatile(features.rule_query) if features.rule_query else None,
        "platform": features.platform,
        "fields": {
            name: normalise_volatile(value, command=name in COMMAND_FIELDS)
            for name, value in sorted(features.fields.items())
            if name not in IDENTITY_FIELDS
        },
    }


def decision_part(features: AlertFeatures, decision: Decision) -> dict[str, object]:
    """What a mapper reads of the decision: its kind, the indicators that fired (less the quoted text),
    and, when it extends a rule, the rule's techniques (they are carried, not competed with)."""
    part: dict[str, object] = {
        "kind": decision.kind.value,
        "indicators": sorted([h.indicator_id, list(h.techniques), h.field] for h in decision.indicators),
    }
    if decision.kind is DecisionKind.EXTEND:
        part["rule_techniques"] = sorted({r.technique_id for r in features.rule_threat if r.technique_id})
    return part


def cache_key(
    features: AlertFeatures,
    *,
    catalog_version: str,
    mapper: str,
    model: str | None,
    prompt_hash: str,
    settings_hash: str = "",
    tenant: str | None = None,
    decision: Decision | None = None,
) -> str:
    """SHA-256 hex of the canonical JSON described in the README ("Cache key"). Without a decision (tools
    that count distinct alerts), the key of the features alone."""
    payload: dict[str, object] = {
        "v": KEY_SCHEMA_VERSION,
        "catalog": catalog_version,
        "mapper": mapper,
        "model": model or "",
        "prompt": prompt_hash,
        "settings": settings_hash,
        "features": stable_features(features),
    }
    if decision is not None:
        payload["decision"] = decision_part(features, decision)
    if tenant is not None:  # a mapping's evidence quotes the alert: never served to another tenant
        payload["tenant"] = tenant
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()
