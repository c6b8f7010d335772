"""Turning alerts and labelled examples into text for lexical matching, the same way for both."""

from __future__ import annotations

import re

from mitre.models import AlertFeatures

_TOKEN = re.compile(r"[a-z][a-z0-9_]{1,39}|\d{4,5}")
# Identity and address fields say nothing about the technique.
_SKIP_FIELDS = frozenset({"user.name", "user.domain", "user.target.name", "host.name", "source.ip", "source.port"})
STOPWORDS = frozenset(
    (
        "the and for with from that this are was were has have via use used using may can not any all its "
        "exe dll com www http https windows system32 program files users appdata local"
    ).split()
)


def tokenize(text: str) -> list[str]:
    return [t for t in _TOKEN.findall(text.lower()) if t not in STOPWORDS]


def alert_text(features: AlertFeatures) -> str:
    """Rule text plus the observable field values that can show a technique."""
    parts = [features.rule_name or "", features.rule_description or "", features.rule_query or ""]
    parts += [value for name, value in features.fields.items() if name not in _SKIP_FIELDS]
    return "\n".join(p for p in parts if p)
