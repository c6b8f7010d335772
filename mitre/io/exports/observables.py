"""The observables an alert carries (IPs, domains, URLs, hashes, file paths, users, hosts, processes),
typed and checked, for the common event's ``related_indicators`` and STIX indicators.

Each type reads a fixed list of ECS fields; a value that does not parse as its type (an IP that is
not one, a hash of the wrong length) is left out rather than shared as an indicator.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

IndicatorType = Literal["ip", "domain", "url", "hash", "file_path", "user", "host", "process"]
HashAlgorithm = Literal["MD5", "SHA-1", "SHA-256", "SHA-512"]

_HASH_BY_LENGTH: dict[int, HashAlgorithm] = {32: "MD5", 40: "SHA-1", 64: "SHA-256", 128: "SHA-512"}
_HEX = re.compile(r"^[0-9a-fA-F]+$")
_DOMAIN = re.compile(r"^(?=.{1,253}$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}\.?$")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://\S+$")

_HASH_FIELDS = tuple(
    f"{obj}.hash.{algo}"
    for obj in ("file", "process", "process.parent", "dll")
    for algo in ("md5", "sha1", "sha256", "sha512")
)
# (type, ECS fields) in the order indicators are listed.
FIELDS: tuple[tuple[IndicatorType, tuple[str, ...]], ...] = (
    ("ip", ("source.ip", "destination.ip", "client.ip", "server.ip", "host.ip", "related.ip")),
    ("domain", ("destination.domain", "source.domain", "dns.question.name", "url.domain", "server.domain")),
    ("url", ("url.full", "url.original")),
    (
        "hash",
        (*_HASH_FIELDS, "related.hash"),
    ),
    ("file_path", ("file.path", "file.target_path", "process.executable", "process.parent.executable", "dll.path")),
    ("user", ("user.name", "user.target.name", "source.user.name", "related.user")),
    ("host", ("host.name", "host.hostname", "related.hosts")),
    ("process", ("process.name", "process.parent.name")),
)


class RelatedIndicator(BaseModel):
    """One observable found in the alert: its type, value, and the ECS field it came from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: IndicatorType
    value: str
    field: str
    hash_algorithm: HashAlgorithm | None = None


def _values(value: Any) -> list[str]:
    values = value if isinstance(value, list) else [value]
    return [str(v).strip() for v in values if isinstance(v, str | int | float) and str(v).strip()]


def _checked(kind: IndicatorType, value: str, field: str) -> RelatedIndicator | None:
    """The typed indicator, or None when the value is not of its type."""
    if kind == "ip":
        try:
            return RelatedIndicator(type=kind, value=str(ipaddress.ip_address(value)), field=field)
        except ValueError:
            return None
    if kind == "domain":
        return (
            RelatedIndicator(type=kind, value=value.lower().rstrip("."), field=field) if _DOMAIN.match(value) else None
        )
    if kind == "url":
        return RelatedIndicator(type=kind, value=value, field=field) if _URL.match(value) else None
    if kind == "hash":
        algorithm = _HASH_BY_LENGTH.get(len(value))
        if algorithm is None or not _HEX.match(value):
            return None
        return RelatedIndicator(type=kind, value=value.lower(), field=field, hash_algorithm=algorithm)
    return RelatedIndicator(type=kind, value=value, field=field)


def related_indicators(flat: Mapping[str, Any]) -> tuple[RelatedIndicator, ...]:
    """Every typed observable in a flattened alert, each (type, value) once."""
    found: dict[tuple[str, str], RelatedIndicator] = {}
    for kind, fields in FIELDS:
        for field in fields:
            raw = flat.get(field)
            if raw is None:
                continue
            for value in _values(raw):
                indicator = _checked(kind, value, field)
                if indicator is not None:
                    found.setdefault((indicator.type, indicator.value), indicator)
    return tuple(found.values())
