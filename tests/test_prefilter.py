"""Literal prefilters must never hide a match: only skip searches that cannot succeed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mitre.catalog import load_catalog
from mitre.features import extract_features
from mitre.indicators import load_indicators
from mitre.prefilter import may_match, required_literals

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        (r"mimikatz|sekurlsa::\w+", {"mimikatz", "sekurlsa::"}),
        (r"(?<![\w-])(?:net1? user|whoami)(?![\w-])", {" user", "whoami"}),
        (r"vssadmin(\.exe)?\s+delete\s+shadows", {"vssadmin"}),
        (r"(?:ab)+cdef", {"cdef"}),
        (r"Invoke-(Mimikatz|Kerberoast)", {"mimikatz", "kerberoast"}),  # the most selective
        (r"(?x) comsvcs \s* \.dll", {"comsvcs"}),
        (r"a|bc", None),  # too short to be selective
        (r"(foo)?bar", {"bar"}),
        (r"(?:foo)*x\d+", None),  # nothing required is a literal
        (r"[", None),  # not a pattern at all
    ],
)
def test_required_literals(pattern: str, expected: set[str] | None):
    found = required_literals(pattern, re.IGNORECASE)
    assert (set(found) if found is not None else None) == expected


def test_non_ascii_subjects_are_always_searched():
    literals = required_literals("strasse", re.IGNORECASE)
    assert may_match(literals, None)  # callers pass None for non-ASCII values
    assert not may_match(literals, "notepad.exe")


def _values() -> list[tuple[str, str]]:
    values = []
    for line in (REPO / "examples" / "alerts.ndjson").read_text().splitlines():
        if line:
            values += list(extract_features(json.loads(line)).fields.items())
    for path in (REPO / "evals" / "cases").glob("*.jsonl"):
        for line in path.read_text().splitlines():
            if line:
                values += list(extract_features(json.loads(line)["alert"]).fields.items())
    return values


def test_prefiltered_indicators_fire_exactly_as_plain_ones():
    indicators = load_indicators(load_catalog(None))
    values = _values()
    fired = 0
    for compiled in indicators._compiled:
        fields = set(compiled.spec.fields)
        for name, value in values:
            if name not in fields:
                continue
            lowered = value.lower() if value.isascii() else None
            plain = compiled.match_value(value)
            assert compiled.match_value(value, lowered) == plain, (compiled.spec.id, value)
            fired += plain is not None
    assert fired > 100
