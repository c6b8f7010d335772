"""Grounding: a technique in an answer stands only on a quote that really is in the alert.

Each technique cites alert fields and a verbatim snippet of each. A quote is accepted when, with case
and runs of whitespace ignored, it occurs in the text of the field the model was shown (redacted and
clipped as it was shown). A model that names the wrong field for a real quote is forgiven: the field
the quote was found in is recorded instead. A quote is not support when

- it occurs only inside text that addresses the model (see `injection`): an attacker wrote it for us;
- it spells an ATT&CK ID: it talks about the classification, not about the activity;
- it is shorter than `MIN_QUOTE_CHARS` (too short to show anything).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from mitre.mappers.llm.injection import Suspicion, mentions_technique_id

MIN_QUOTE_CHARS = 3
# Names the model may use for the rule fields, besides the keys of the JSON it was shown.
FIELD_ALIASES = {
    "rule.name": "rule_name",
    "kibana.alert.rule.name": "rule_name",
    "signal.rule.name": "rule_name",
    "rule.description": "rule_description",
    "kibana.alert.rule.description": "rule_description",
    "signal.rule.description": "rule_description",
    "rule.query": "rule_query",
    "kibana.alert.rule.query": "rule_query",
    "signal.rule.query": "rule_query",
    "rule.tags": "rule_tags",
    "kibana.alert.rule.tags": "rule_tags",
}


def _norm(text: str) -> str:
    return " ".join(text.casefold().split())


def _variants(quote: str) -> list[str]:
    """The quote, and the quote with JSON escaping undone (the model read the alert as JSON)."""
    out = [quote]
    try:
        unescaped = json.loads(f'"{quote}"')
        if isinstance(unescaped, str) and unescaped != quote:
            out.append(unescaped)
    except ValueError:
        pass
    if "\\\\" in quote:
        out.append(quote.replace("\\\\", "\\"))
    return out


@dataclass(frozen=True)
class Verdict:
    """One piece of evidence checked: the field it was found in, or why it is not support."""

    field: str | None
    quote: str
    problem: str | None = None
    injected: bool = False


class AlertText:
    """The alert as the model saw it: field → text, with each field's suspicious region."""

    def __init__(self, shown: Mapping[str, str], suspicions: Mapping[str, Suspicion]) -> None:
        self._fields = {name: _norm(value) for name, value in shown.items()}
        # Where each field's suspicious region starts, in the normalised text.
        self._clean_until = {
            name: len(_norm(shown[name][: s.start])) for name, s in suspicions.items() if name in shown
        }

    def _field_name(self, field: str) -> str:
        name = field.strip().removeprefix("fields.").removeprefix("alert.")
        return FIELD_ALIASES.get(name, name)

    @staticmethod
    def _where(text: str, quote: str, clean_until: int) -> tuple[bool, bool]:
        """(found at all, found ending before `clean_until`) for a normalised quote in a field's text."""
        start = text.find(quote)
        if start < 0:
            return False, False
        return True, start + len(quote) <= clean_until

    def verify(self, field: str, quote: str) -> Verdict:
        if len(quote.strip()) < MIN_QUOTE_CHARS:
            return Verdict(None, quote, "quote too short to show anything")
        if mentions_technique_id(quote):
            return Verdict(None, quote, "quote names an ATT&CK ID instead of showing activity", injected=True)
        wanted = self._field_name(field)
        order = [wanted] + [name for name in self._fields if name != wanted]
        injected_only = False
        for variant in _variants(quote):
            needle = _norm(variant)
            for name in order:
                text = self._fields.get(name)
                if text is None:
                    continue
                found, clean = self._where(text, needle, self._clean_until.get(name, len(text)))
                if clean:
                    return Verdict(name, quote)
                injected_only = injected_only or found
        if injected_only:
            return Verdict(None, quote, "quote is text that addresses the model", injected=True)
        return Verdict(None, quote, f"quote not found in {wanted or 'the alert'}")
