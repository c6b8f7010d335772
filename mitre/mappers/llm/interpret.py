"""A vendor's reply → a MappingResult. Lenient in what it accepts, strict in what it emits.

Accepted: a technique as an ID with or without its sub-technique ("T1059.001", "t1059", "T1059/001"),
inside other text ("T1003.001 - LSASS Memory"), or by name ("PowerShell", "OS Credential Dumping: LSASS
Memory"), each normalised through the active catalog (revoked and newer IDs redirected); a tactic as an
ID, a shortname or a name; a confidence as a number, a numeric string or a percentage. Emitted: only
active technique IDs of the catalog, each grounded in a verified quote from the alert (`grounding`).

A bad part of an answer is dropped with a reason (`answer_issues`, shown in provenance); the rest is
kept. Only an answer with nothing usable is reported as a `problem`, the text the model is shown when
it is asked again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mitre.catalog import Catalog
from mitre.config import MapperSettings
from mitre.mappers.llm.grounding import AlertText
from mitre.mappers.llm.transport import ProviderReply
from mitre.models import (
    Evidence,
    InjectionSuspicion,
    IssueSeverity,
    MappingResult,
    TechniqueScore,
    Usage,
    ValidationIssue,
)

_ID = re.compile(r"\bT(\d{4})(?:\s*[.\-_/]\s*(\d{3}))?\b", re.IGNORECASE)
# Why a part of an answer was dropped (stable codes, counted).
DROP_UNKNOWN = "unknown_technique"
DROP_AMBIGUOUS = "ambiguous_technique_name"
DROP_UNGROUNDED = "ungrounded"
DROP_INJECTED = "support_is_injected_text"
DROP_DICTATED = "named_by_injected_text"
DROP_CONFIDENCE = "bad_confidence"
DROP_BELOW_FLOOR = "below_confidence_floor"
DROP_SHAPE = "not_a_technique_entry"
INJECTION_DROPS = frozenset({DROP_INJECTED, DROP_DICTATED})


@dataclass(frozen=True)
class Grounds:
    """What an answer is checked against, for one alert."""

    text: AlertText
    flags: tuple[InjectionSuspicion, ...] = ()
    # Techniques that text addressing the model names, and those the local indicators found anyway.
    dictated: frozenset[str] = frozenset()
    indicated: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Interpretation:
    """`result` is None when nothing in the reply is usable; `problem` is what to tell the model;
    `unknown` lists the IDs that are not techniques of the catalog; `drops` the codes of dropped parts."""

    result: MappingResult | None
    problem: str | None = None
    unknown: list[str] = field(default_factory=list)
    drops: list[str] = field(default_factory=list)

    @property
    def injected(self) -> bool:
        """Every part was dropped because of text addressing the model: the model followed it."""
        return bool(self.drops) and all(d in INJECTION_DROPS for d in self.drops)


class TechniqueNames:
    """Technique names → IDs for one catalog: "PowerShell", "Command and Scripting Interpreter:
    PowerShell", "OS Credential Dumping"; a name shared by several techniques is ambiguous."""

    def __init__(self, catalog: Catalog) -> None:
        self._ids: dict[str, set[str]] = {}
        for tid, technique in catalog.techniques.items():
            self._add(technique.name, tid)
            if technique.parent and technique.parent in catalog.techniques:
                parent = catalog.techniques[technique.parent].name
                self._add(f"{parent}: {technique.name}", tid)
                self._add(f"{parent} - {technique.name}", tid)

    def _add(self, name: str, tid: str) -> None:
        self._ids.setdefault(self.key(name), set()).add(tid)

    @staticmethod
    def key(name: str) -> str:
        return " ".join(name.casefold().replace("&", "and").split())

    def lookup(self, name: str) -> set[str]:
        return self._ids.get(self.key(name), set())


def _confidence(value: Any) -> float | None:
    """A probability from a number, a numeric string or a percentage (7.5, "80%", 92 → 0.92)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip().rstrip("%").strip()
        try:
            number = float(text)
        except ValueError:
            return None
        if value.strip().endswith("%"):
            number /= 100
    elif isinstance(value, int | float):
        number = float(value)
    else:
        return None
    if 1 < number <= 100:
        number /= 100
    return number if 0 <= number <= 1 else None


class ReplyInterpreter:
    """Turns replies into results for one mapper (its name, model and prompt hash go into the result)."""

    def __init__(
        self, name: str, model: str | None, prompt_hash: str, catalog: Catalog, settings: MapperSettings
    ) -> None:
        self.name = name
        self.model = model
        self.prompt_hash = prompt_hash
        self.catalog = catalog
        self.settings = settings
        self.names = TechniqueNames(catalog)

    def technique(self, raw: Any) -> tuple[str | None, str | None]:
        """(active technique ID, None) or (None, drop code)."""
        text = str(raw or "").strip()
        m = _ID.search(text)
        if m is not None:
            tid = f"T{m.group(1)}" + (f".{m.group(2)}" if m.group(2) else "")
            active = self.catalog.resolve(tid).active_id
            return (active, None) if active else (None, DROP_UNKNOWN)
        found = self.names.lookup(text)
        if len(found) == 1:
            return next(iter(found)), None
        return None, DROP_AMBIGUOUS if found else DROP_UNKNOWN

    def interpret(
        self, reply: ProviderReply, local_result: MappingResult, usage: Usage, grounds: Grounds
    ) -> Interpretation:
        if reply.problem is not None:
            return Interpretation(None, reply.problem)
        data = reply.data
        items = data.get("techniques") if isinstance(data, Mapping) else None
        if not isinstance(items, list):
            return Interpretation(None, 'the answer must be a JSON object with a "techniques" list')
        issues: list[ValidationIssue] = []
        drops: list[str] = []
        unknown: list[str] = []

        def drop(code: str, message: str, technique_id: str | None = None) -> None:
            drops.append(code)
            issues.append(
                ValidationIssue(
                    severity=IssueSeverity.WARNING, code=f"llm_{code}", message=message, technique_id=technique_id
                )
            )

        scores: list[TechniqueScore] = []
        for item in items:
            if not isinstance(item, Mapping):
                drop(DROP_SHAPE, f"answer entry {str(item)[:60]!r} is not an object")
                continue
            raw_id = item.get("technique_id") or item.get("technique") or item.get("id") or item.get("name")
            tid, problem = self.technique(raw_id)
            if tid is None:
                shown = str(raw_id)[:60]
                if problem == DROP_UNKNOWN:
                    unknown.append(shown)
                drop(problem or DROP_UNKNOWN, f"{shown!r} is not a technique of ATT&CK {self.catalog.version}")
                continue
            confidence = _confidence(item.get("confidence"))
            if confidence is None:
                drop(DROP_CONFIDENCE, f"{tid}: confidence {item.get('confidence')!r} is not a probability", tid)
                continue
            if confidence < self.settings.confidence_floor:
                drop(DROP_BELOW_FLOOR, f"{tid}: confidence {confidence:.2f} below the floor", tid)
                continue
            evidence, why = self._grounded(item.get("evidence"), grounds)
            if not evidence:
                code = DROP_INJECTED if why == DROP_INJECTED else DROP_UNGROUNDED
                drop(code, f"{tid}: no quote from the alert supports it ({why})", tid)
                continue
            if tid in grounds.dictated and tid not in grounds.indicated:
                drop(DROP_DICTATED, f"{tid}: named by text in the alert that addresses the model", tid)
                continue
            tactic = self.catalog.tactic(str(item.get("tactic") or ""))
            rationale = str(item.get("rationale") or "")[:400]
            scores.append(
                TechniqueScore(
                    technique_id=tid,
                    confidence=round(confidence, 4),
                    tactic_ids=(tactic.id,) if tactic is not None else (),
                    rationale=rationale or None,
                    evidence=tuple(
                        Evidence(source="llm", field=name, detail=quote[:200], score=round(confidence, 4))
                        for name, quote in evidence
                    ),
                )
            )
        scores.sort(key=lambda s: -s.confidence)
        chosen = scores[: self.settings.max_techniques]
        result = MappingResult(
            mapper=self.name,
            model=self.model,
            prompt_hash=self.prompt_hash,
            techniques=tuple(chosen),
            candidates=local_result.candidates,
            usage=usage,
            answer_issues=tuple(issues),
            prompt_injection_suspected=grounds.flags,
        )
        if items and not chosen:
            reasons = "; ".join(i.message for i in issues[:4])
            return Interpretation(None, f"no usable technique in the answer: {reasons}", unknown, drops)
        return Interpretation(result, None, unknown, drops)

    def _grounded(self, raw: Any, grounds: Grounds) -> tuple[list[tuple[str, str]], str]:
        """(verified (field, quote) pairs, why none was) for an entry's evidence list."""
        if isinstance(raw, Mapping):
            raw = [raw]
        if not isinstance(raw, list) or not raw:
            return [], "no evidence given"
        verified: list[tuple[str, str]] = []
        problems: list[str] = []
        injected = False
        for piece in raw[:5]:
            if not isinstance(piece, Mapping):
                problems.append("evidence entry is not an object")
                continue
            verdict = grounds.text.verify(str(piece.get("field") or ""), str(piece.get("quote") or ""))
            if verdict.field is not None:
                verified.append((verdict.field, verdict.quote))
            else:
                injected = injected or verdict.injected
                problems.append(verdict.problem or "not found")
        if verified:
            return verified, ""
        return [], DROP_INJECTED if injected else "; ".join(problems[:2])
