"""A vendor's reply → a MappingResult: the reply schema first (prompts/map_alert.schema.json), then the
catalog. What cannot be used is reported as a `problem`, the text the model is shown when asked again."""

from __future__ import annotations

from dataclasses import dataclass, field

from jsonschema import Draft202012Validator

from mitre import prompting
from mitre.catalog import Catalog
from mitre.config import MapperSettings
from mitre.mappers.llm.transport import ProviderReply
from mitre.models import Evidence, MappingResult, TechniqueScore, Usage


@dataclass(frozen=True)
class Interpretation:
    """`result` is None when nothing in the reply is usable; `problem` is what to tell the model;
    `unknown` lists the IDs that are not techniques of the catalog."""

    result: MappingResult | None
    problem: str | None = None
    unknown: list[str] = field(default_factory=list)


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
        self._validator = Draft202012Validator(prompting.response_schema())

    def interpret(self, reply: ProviderReply, local_result: MappingResult, usage: Usage) -> Interpretation:
        if reply.problem is not None:
            return Interpretation(None, reply.problem)
        errors = sorted(self._validator.iter_errors(reply.data), key=lambda e: list(e.absolute_path))
        if errors:
            text = "; ".join(
                f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:160]}" for e in errors[:3]
            )
            return Interpretation(None, f"the answer does not match the JSON schema: {text}")
        scores: list[TechniqueScore] = []
        unknown: list[str] = []
        for item in reply.data["techniques"]:
            tid = item["technique_id"].strip().upper()
            if self.catalog.resolve(tid).active_id is None:
                unknown.append(tid)
            fields_used = [f for f in item["fields_used"] if f]
            scores.append(
                TechniqueScore(
                    technique_id=tid,
                    confidence=round(float(item["confidence"]), 4),
                    tactic_ids=(item["tactic"],),
                    rationale=item["rationale"],
                    evidence=(
                        Evidence(
                            source="llm",
                            field=", ".join(fields_used)[:200] or None,
                            detail=item["rationale"][:400],
                            score=round(float(item["confidence"]), 4),
                        ),
                    ),
                )
            )
        if unknown:
            problem = (
                f"these IDs are not techniques of ATT&CK {self.catalog.version}: {', '.join(unknown)}. "
                "Use only IDs from the CANDIDATES list or other real ATT&CK technique IDs."
            )
        else:
            problem = None
        scores.sort(key=lambda s: -s.confidence)
        chosen = [s for s in scores if s.confidence >= self.settings.confidence_floor][: self.settings.max_techniques]
        result = MappingResult(
            mapper=self.name,
            model=self.model,
            prompt_hash=self.prompt_hash,
            techniques=tuple(chosen),
            candidates=local_result.candidates,
            usage=usage,
        )
        return Interpretation(result, problem, unknown)
