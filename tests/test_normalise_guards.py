"""Normalising skips a rule when an ASCII value holds none of the substrings its matches need: it must
write exactly what running every rule writes (cache keys depend on it)."""

from __future__ import annotations

import random

import pytest

from mitre.cachekey import _BARE_NUMBER, _EPOCH, _RULES, normalise_volatile

PIECES = (
    *("\\Users\\", "/USERS/", "/home/", "Public", "Default", "TMP", "temp", ".TmP", "a1b2c3d4.tmp"),
    *("pid", "PID=", "-p ", "-pid ", "1234", "0x", "deadbeefdeadbeef12", "2026-01-01T00:00:00Z"),
    *("10.0.0.1", "1759489200.37", "{0f8fad5b-d9cb-469f-a165-70867728950e}", "x", " ", "\\", "/", "_", "-", "."),
    *("ſ", "K", "İ", "ı"),  # non-ASCII letters that case-fold to ASCII ones: searched, never skipped
)


def _every_rule(value: str, command: bool) -> str:
    for pattern, replacement, _ in _RULES:
        value = pattern.sub(replacement, value)
    return _BARE_NUMBER.sub("<n>", _EPOCH.sub("<epoch>", value)) if command else value


@pytest.mark.parametrize("command", [False, True])
def test_skipped_rules_change_nothing(command: bool) -> None:
    rng = random.Random(9)
    for _ in range(3_000):
        value = "".join(rng.choice(PIECES) for _ in range(rng.randrange(1, 12)))
        assert normalise_volatile.__wrapped__(value, command) == _every_rule(value, command), value
