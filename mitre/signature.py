"""The outcome signature: what an alert's outcome depends on, and nothing else, as bytes.

The engine remembers outcomes by signature (the outcome memo, `mitre.engine`), so the signature must
hold everything an outcome (decision, mapping, `threat.*`, provenance) is a function of, and should hold
nothing more: every value that differs between two alerts of the same attack splits the memo. Each
feature input (`FEATURE_INPUTS`) enters in the form the engine reads it:

- the alert's own id (`ALERT_ID_FIELDS`): not at all; it names one alert and changes no mapping;
- an identity field (`IDENTITY_FIELDS`: user, host name, source port): whether it is present (that alone
  can make a document an alert), and what the indicators read in it — which patterns fire on it, which
  `requires` it satisfies — when one reads it; the cache key leaves it out;
- any other observable field: its text normalised as the cache key normalises it (`mitre.cachekey`), and,
  when normalising changed the text and an indicator reads the field, what the indicators read in the raw
  text: the mapping is keyed on the normalised text, the decision on the indicators' reading;
- rule attributes, risk, severity, tenant, existing tags, and what platform detection and the Windows
  event type read: the raw value (read raw, and few distinct values).

The mapping comes from the cache under the alert's key, a function of the signature; the decision is a
function of the rule, the risk, the tenant's settings and the indicators' hits, all in the signature.
What the memo cannot reproduce is the text an indicator quotes in the decision: a replayed outcome's
`decision.indicators` quote the first alert of its signature, as a cache hit's evidence quotes the alert
that was mapped first.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any

import orjson

from mitre.cachekey import COMMAND_FIELDS, IDENTITY_FIELDS, normalise_volatile
from mitre.features import (
    ALERT_ID_FIELDS,
    EVENT_TYPE_INPUTS,
    FEATURE_INPUTS,
    OBSERVABLE_FIELDS,
    PLATFORM_INPUTS,
    has_text,
    observed_text,
)
from mitre.indicators import IndicatorSet


class Entry(Enum):
    """How a feature input enters the signature (see the module's table)."""

    NOTHING = "nothing"
    PRESENCE = "presence"
    PRESENCE_AND_READING = "presence_and_reading"
    NORMALISED = "normalised"
    NORMALISED_AND_READING = "normalised_and_reading"
    RAW = "raw"


def entry_for(name: str, read_by_indicators: frozenset[str]) -> Entry:
    read = name in read_by_indicators
    if name in ALERT_ID_FIELDS:
        return Entry.NOTHING
    if name in IDENTITY_FIELDS:
        return Entry.PRESENCE_AND_READING if read else Entry.PRESENCE
    if name in OBSERVABLE_FIELDS and name not in PLATFORM_INPUTS and name not in EVENT_TYPE_INPUTS:
        return Entry.NORMALISED_AND_READING if read else Entry.NORMALISED
    return Entry.RAW


REDUCED_MEMO_ENTRIES = 200_000
_MISSING = object()


class OutcomeSignature:
    """Alert inputs (`flatten_alert`'s view) → signature bytes, for one indicator set."""

    def __init__(self, indicators: IndicatorSet) -> None:
        self._indicators = indicators
        self.entries = {name: entry_for(name, indicators.fields_read) for name in FEATURE_INPUTS}
        self._dropped = frozenset(n for n, e in self.entries.items() if e is Entry.NOTHING)
        self._reduced_names = frozenset(n for n, e in self.entries.items() if e not in (Entry.NOTHING, Entry.RAW))
        # (field, text) → its reduced form: values recur across alerts, and this runs per alert.
        self._memo: dict[tuple[str, str], Any] = {}

    def _reduced(self, name: str, value: Any, entry: Entry) -> Any:
        if entry is Entry.PRESENCE:
            return has_text(value)
        text = observed_text(name, value)
        if text is None:
            return None
        if entry is Entry.PRESENCE_AND_READING:
            return self._indicators.reading(name, text)
        normalised = normalise_volatile(text, command=name in COMMAND_FIELDS)
        if entry is Entry.NORMALISED or normalised == text:
            return normalised  # unchanged: the text itself, which decides the indicators' reading
        return (normalised, self._indicators.reading(name, text))

    def __call__(self, flat: Mapping[str, Any]) -> bytes | None:
        """The signature, or None when the inputs hold a value JSON cannot (alerts handed in as objects)."""
        signed = dict(flat)
        # frozenset.intersection(dict) walks the alert's few keys; `flat.keys() & frozenset` would walk
        # every name of the set (a frozenset is not an exact set, so the view does not take the short way).
        for name in self._dropped.intersection(flat):
            del signed[name]
        memo = self._memo
        for name in self._reduced_names.intersection(flat):
            value = signed[name]
            if type(value) is str:
                reduced = memo.get((name, value), _MISSING)
                if reduced is _MISSING:
                    if len(memo) >= REDUCED_MEMO_ENTRIES:
                        memo.clear()
                    reduced = memo[(name, value)] = self._reduced(name, value, self.entries[name])
                signed[name] = reduced
            else:
                signed[name] = self._reduced(name, value, self.entries[name])
        try:
            return orjson.dumps(signed, option=orjson.OPT_SORT_KEYS)
        except TypeError:
            return None
