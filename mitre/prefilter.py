"""Literal prefilters for regular expressions: substrings at least one of which every match contains.

Python's `re` has no multi-pattern matching, so a value checked against a hundred indicator
patterns costs a hundred scans. Most patterns cannot match most values, and a plain substring
test proves it far faster than a scan: a pattern is searched only when its prefilter passes.
The analysis walks the parsed pattern the way RE2 and Hyperscan build theirs; anything it does
not understand yields no prefilter (the pattern is always searched), never a wrong one.
"""

from __future__ import annotations

import re
from re import _constants as sre  # type: ignore[attr-defined]
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any

MIN_LITERAL = 3  # shorter literals occur in nearly every command line: no better than no filter

_REPEATS = {sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT}


def required_literals(pattern: str, flags: int = 0) -> frozenset[str] | None:
    """Lower-case substrings one of which any match must contain, or None when none is known.

    Lower-cased, so the test is sound with or without IGNORECASE, for ASCII subjects (Unicode
    case folding can match a non-ASCII character to an ASCII one: callers search those anyway)."""
    try:
        parsed = sre_parse.parse(pattern, flags)
    except (re.error, RecursionError):
        return None
    found = _sequence(list(parsed))
    if found is None or min(len(s) for s in found) < MIN_LITERAL:
        return None
    return frozenset(found)


def _sequence(items: list[tuple[Any, Any]]) -> set[str] | None:
    """Every item of a sequence must match, so any one item's requirement is the sequence's: keep
    the most selective (the longest shortest literal)."""
    candidates: list[set[str]] = []
    run: list[str] = []

    def close_run() -> None:
        if run:
            candidates.append({"".join(run)})
            run.clear()

    for op, arg in items:
        if op is sre.LITERAL and arg < 128:
            run.append(chr(arg).lower())
            continue
        close_run()
        inner = _item(op, arg)
        if inner is not None:
            candidates.append(inner)
    close_run()
    if not candidates:
        return None
    return max(candidates, key=lambda c: min(len(s) for s in c))


def _item(op: Any, arg: Any) -> set[str] | None:
    if op is sre.SUBPATTERN:
        return _sequence(list(arg[-1]))
    if op is sre.ATOMIC_GROUP:
        return _sequence(list(arg))
    if op in _REPEATS:
        low, _, body = arg
        return _sequence(list(body)) if low >= 1 else None
    if op is sre.BRANCH:
        union: set[str] = set()
        for alternative in arg[1]:
            found = _sequence(list(alternative))
            if found is None:
                return None
            union |= found
        return union
    return None  # classes, anchors, lookarounds, back-references: no literal known


def may_match(literals: frozenset[str] | None, lowered: str | None) -> bool:
    """False only when the pattern provably cannot match (`lowered`: the ASCII subject, lower-cased)."""
    if literals is None or lowered is None:
        return True
    return any(literal in lowered for literal in literals)
