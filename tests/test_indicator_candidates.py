"""The one-pass literal search must pick exactly the indicators the literal-by-literal test picks: those
with a prefilter literal in the value, and those without a prefilter."""

from __future__ import annotations

import json
import random
from pathlib import Path

from mitre.features import flatten_alert, observed_text
from mitre.indicators import IndicatorSet

REPO = Path(__file__).resolve().parents[1]


def _one_by_one(indicators: IndicatorSet, name: str, lowered: str) -> list[int]:
    """The definition: every indicator of the field whose literals are unknown or one of them is in the value."""
    return [
        index
        for index in indicators._by_field.get(name, [])
        if (literals := indicators._compiled[index].literals) is None or any(lit in lowered for lit in literals)
    ]


def test_candidates_are_the_indicators_a_literal_test_finds(indicators: IndicatorSet) -> None:
    values = []
    for line in (REPO / "examples" / "alerts.ndjson").read_text().splitlines():
        for name, value in flatten_alert(json.loads(line)).items():
            if name in indicators._by_field and (text := observed_text(name, value)) is not None:
                values.append((name, text))
    # Literal soup: overlapping, nested and repeated literals of every field.
    rng = random.Random(3)
    literals = sorted({lit for c in indicators._compiled for lit in c.literals or ()})
    fields = sorted(indicators._by_field)
    for _ in range(400):
        soup = "".join(rng.choice([*literals, " ", "\\", "x"]) for _ in range(rng.randrange(1, 25)))
        values.append((rng.choice(fields), soup))
    for name, value in values:
        lowered = value.lower()
        if value.isascii():
            assert indicators._candidates(name, lowered) == _one_by_one(indicators, name, lowered), (name, value)
