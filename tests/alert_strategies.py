"""Hypothesis strategies: alerts of any JSON shape, grown from the real examples.

Every seed is a real alert (examples/alerts.ndjson, evals/cases/*.jsonl); a generated alert is a
seed with mutations drawn on top: values swapped for another JSON type, keys dropped, odd strings
planted (NUL, lone surrogates, control characters, very long text), numbers past 64 bits and
non-finite floats, nesting hundreds of levels deep, and the same field both flat (``"a.b"``) and
nested (``{"a": {"b"}}``) with different values. Mutations aim at the fields features read.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import orjson
from hypothesis import strategies as st

from mitre.features import FEATURE_INPUTS

REPO = Path(__file__).resolve().parents[1]

ODD_STRINGS = (
    "",
    " ",
    "\x00",
    "a\x00b",
    "\ud800",
    "x\udfffy",
    "\ufeff\u202e\u200b",
    "\r\n\t\x1b[31m",
    "T1059",
    "TA0002",
    "T9999.999",
    "null",
    "../../etc/passwd",
    "%s%n{0}",
    "é" * 3000,
    "A" * 20_000,
)
ODD_NUMBERS = (0, -1, 2**63, -(2**63) - 1, 2**64, 10**40, -(10**40), 1e308, -1e-308, float("inf"), float("nan"))


@cache
def seed_alerts() -> tuple[bytes, ...]:
    """The real alerts, as JSON (each example parses its own copy)."""
    seeds = [line for line in (REPO / "examples" / "alerts.ndjson").read_bytes().splitlines() if line.strip()]
    for path in sorted((REPO / "evals" / "cases").glob("*.jsonl")):
        seeds += [orjson.dumps(json.loads(line)["alert"]) for line in path.read_text().splitlines() if line.strip()]
    return tuple(seeds)


keys = st.one_of(st.sampled_from(FEATURE_INPUTS), st.text(max_size=12), st.sampled_from(("", ".", "a..b", "\x00")))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from(ODD_NUMBERS),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(ODD_STRINGS),
    st.text(st.characters(codec=None, exclude_categories=()), max_size=40),  # surrogates included
)
# Mostly scalars and flat containers (cheap to draw: ~10,000 examples must fit in about a minute),
# sometimes a small tree.
json_values = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(keys, scalars, max_size=3),
    st.recursive(
        scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3), max_leaves=5
    ),
)


def _nest(value: Any, depth: int, as_list: bool) -> Any:
    for _ in range(depth):
        value = [value] if as_list else {"n": value}
    return value


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a document (down to 12 levels) where a value can be replaced or a key dropped."""
    found: list[tuple[Any, ...]] = []
    if len(prefix) >= 12:
        return found
    if isinstance(doc, dict):
        for key, value in doc.items():
            found.append((*prefix, key))
            found += _paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            found.append((*prefix, i))
            found += _paths(value, (*prefix, i))
    return found


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    for step in path[:-1]:
        doc = doc[step]
    return doc


MUTATIONS = ("swap", "swap", "drop", "plant", "plant", "flat_and_nested", "deep", "deep_plant")


@st.composite
def mutated_alerts(draw: st.DrawFn, max_mutations: int = 4) -> Any:
    """A real alert with up to `max_mutations` mutations (or, rarely, any JSON value at all)."""
    if draw(st.integers(0, 49)) == 0:
        return draw(json_values)
    alert = orjson.loads(draw(st.sampled_from(seed_alerts())))
    for _ in range(draw(st.integers(1, max_mutations))):
        kind = draw(st.sampled_from(MUTATIONS))
        paths = _paths(alert)
        if kind in ("swap", "drop", "deep") and paths:
            path = draw(st.sampled_from(paths))
            parent = _parent(alert, path)
            if kind == "drop":
                del parent[path[-1]]
            elif kind == "deep":
                depth = draw(st.sampled_from((50, 254, 300, 700)))
                parent[path[-1]] = _nest(parent[path[-1]], depth, draw(st.booleans()))
            else:
                parent[path[-1]] = draw(json_values)
        elif kind == "plant" and isinstance(alert, dict):
            alert[draw(st.sampled_from(FEATURE_INPUTS))] = draw(json_values)
        elif kind == "deep_plant" and isinstance(alert, dict):  # a field features read, hundreds of levels deep
            depth = draw(st.sampled_from((254, 300, 700)))
            deep = _nest(draw(scalars), depth, draw(st.booleans()))
            alert[draw(st.sampled_from(FEATURE_INPUTS))] = [draw(scalars), deep]
        elif kind == "flat_and_nested" and isinstance(alert, dict):
            name = draw(st.sampled_from(FEATURE_INPUTS))
            head, _, tail = name.partition(".")
            alert[name] = draw(json_values)
            if tail:
                nested = alert.get(head)
                alert[head] = {**(nested if isinstance(nested, dict) else {}), tail: draw(json_values)}
    return alert


def as_line(alert: Any) -> bytes:
    """The NDJSON line a sender would write for it, or bytes no JSON encoder would (it is a test too)."""
    try:
        return json.dumps(alert, allow_nan=True).encode("utf-8", "surrogatepass")
    except (ValueError, RecursionError):
        return repr(alert).encode("utf-8", "surrogatepass")
