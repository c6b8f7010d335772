"""The LLM prompt: template files in `prompts/`, a candidate shortlist, and the alert as quoted data.

The template `prompts/map_alert.md` has a static part (instructions, tactic list, candidate line
format: identical for every alert, so vendors can cache it) and a per-alert part below the
`=== USER ===` line. The alert features are rendered as ONE JSON object between `<<<ALERT_DATA`
and `ALERT_DATA>>>`; JSON escaping plus escaping of `<` and `>` means nothing inside an alert
field can close the block or pose as an instruction line.

Token counts are ESTIMATES: no tokenizer package is installed (tiktoken is not a dependency), so
`estimate_tokens` uses the documented rule of thumb of ~4 characters per token. The renderer shrinks
the per-alert part (examples, then field lengths, then candidates) until system + user + response
schema is at most `SAFE_INPUT_TOKENS` (1,100) estimated tokens, which leaves room for the vendor's
own additions (Anthropic's forced-tool system prompt, a few hundred tokens) under the 1,500-token
per-call ceiling (`MAX_INPUT_TOKENS`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from mitre.catalog import Catalog
from mitre.models import AlertFeatures, Decision, MappingResult, TechniqueScore

if TYPE_CHECKING:
    from mitre.mappers.local import LocalMapper

RENDER_VERSION = "2"  # bump when the rendering code changes what is sent
TEMPLATE_FILE = "map_alert.md"
SCHEMA_FILE = "map_alert.schema.json"
USER_MARKER = "=== USER ==="
DATA_OPEN = "<<<ALERT_DATA"
DATA_CLOSE = "ALERT_DATA>>>"
CHARS_PER_TOKEN = 4
MAX_INPUT_TOKENS = 1500
SAFE_INPUT_TOKENS = 1100
SHORTLIST_SIZE = 20
TOOL_NAME = "record_attack_mapping"


def estimate_tokens(text: str) -> int:
    """~4 characters per token (OpenAI's and Anthropic's published rule of thumb for English)."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


@cache
def _read(name: str) -> str:
    return resources.files("prompts").joinpath(name).read_text(encoding="utf-8")


def template_text() -> str:
    return _read(TEMPLATE_FILE)


def response_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(_read(SCHEMA_FILE))
    return schema


@cache
def prompt_hash() -> str:
    """SHA-256 of the template files (and the render version): part of every LLM cache key."""
    h = hashlib.sha256()
    for name in (TEMPLATE_FILE, SCHEMA_FILE):
        h.update(name.encode() + b"\0" + _read(name).encode("utf-8") + b"\0")
    h.update(RENDER_VERSION.encode())
    return h.hexdigest()


@dataclass(frozen=True)
class Candidate:
    technique_id: str
    name: str
    tactic_ids: tuple[str, ...]
    sources: tuple[str, ...]


@dataclass(frozen=True)
class RenderedPrompt:
    """What a provider sends: `system` is the static, cacheable prefix; `user` is per alert."""

    system: str
    user: str
    candidates: tuple[Candidate, ...]
    schema: dict[str, Any] = field(repr=False)
    prompt_hash: str = ""

    @property
    def estimated_tokens(self) -> int:
        """Estimated input tokens of system + user + response schema (the vendor adds its own overhead)."""
        return (
            estimate_tokens(self.system)
            + estimate_tokens(self.user)
            + estimate_tokens(json.dumps(self.schema, separators=(",", ":")))
        )

    @property
    def estimated_user_tokens(self) -> int:
        return estimate_tokens(self.user)


def safe_json(value: Any) -> str:
    """JSON with `<`, `>` and `&` escaped, so quoted data can never spell a block delimiter."""
    text = json.dumps(value, ensure_ascii=True, sort_keys=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _clip(value: str | None, limit: int) -> str | None:
    if value is None or len(value) <= limit:
        return value
    return value[:limit] + f"…[{len(value) - limit} more chars]"


def alert_payload(
    features: AlertFeatures, decision: Decision, catalog: Catalog, field_chars: int, script_chars: int
) -> dict[str, Any]:
    """The features the model sees. Rule-tagged techniques are shown so `extend` can add to them."""
    from mitre.features import SCRIPT_FIELDS

    tagged = sorted({r.technique_id for r in features.rule_threat if r.technique_id})
    payload: dict[str, Any] = {
        "decision": decision.kind.value,
        "rule_name": _clip(features.rule_name, 200),
        "rule_description": _clip(features.rule_description, field_chars),
        "rule_type": features.rule_type,
        "rule_query": _clip(features.rule_query, field_chars),
        "rule_tags": list(features.rule_tags[:10]),
        "rule_techniques_already_tagged": tagged,
        "platform": features.platform,
        "severity": features.severity,
        "risk_score": features.risk_score,
        "fields": {
            name: _clip(value, script_chars if name in SCRIPT_FIELDS else field_chars)
            for name, value in features.fields.items()
        },
    }
    if decision.indicators:
        payload["local_indicators"] = [f"{h.indicator_id} on {h.field}" for h in decision.indicators[:5]]
    return {k: v for k, v in payload.items() if v not in (None, [], {})}


def build_shortlist(
    features: AlertFeatures,
    local_result: MappingResult,
    catalog: Catalog,
    local: LocalMapper | None = None,
    size: int = SHORTLIST_SIZE,
) -> list[Candidate]:
    """Local mapper candidates + BM25 top + knowledge-base neighbours' labels, deduplicated, in that order.

    Without the local mapper only the local result's candidates are used.
    """
    from mitre.text import alert_text

    sources: dict[str, list[str]] = {}

    def add(tid: str, source: str) -> None:
        resolved = catalog.resolve(tid).active_id
        if resolved is None:
            return
        tags = sources.setdefault(resolved, [])
        if source not in tags:
            tags.append(source)

    def origin(score: TechniqueScore) -> str:
        kinds = {e.source for e in score.evidence}
        return "indicator" if "indicator" in kinds else ("kb" if "knowledge_base" in kinds else "lexical")

    for s in (*local_result.techniques, *local_result.candidates):
        add(s.technique_id, origin(s))
    text = alert_text(features)
    if local is not None:
        for tid, _ in local.retriever.search(text, 12):
            add(tid, "lexical")
    knowledge = local.knowledge if local is not None else None
    if knowledge is not None:
        for n in knowledge.neighbours(text, 8):
            for tid in n.example.techniques:
                add(tid, "kb")
    # Parents of candidate sub-techniques keep the parent level reachable.
    for tid in list(sources):
        parent = catalog.techniques[tid].parent
        if parent and len(sources) < size:
            add(parent, "parent")
    out = []
    for tid, tags in list(sources.items())[:size]:
        tech = catalog.techniques[tid]
        parent_tech = catalog.techniques.get(tech.parent) if tech.parent else None
        name = f"{parent_tech.name}: {tech.name}" if parent_tech else tech.name
        out.append(Candidate(tid, name, tuple(t.id for t in catalog.tactics_of(tid)), tuple(tags)))
    return out


def example_lines(features: AlertFeatures, local: LocalMapper | None, k: int = 2, chars: int = 160) -> list[str]:
    """A few labelled knowledge-base neighbours, as short one-line examples."""
    from mitre.text import alert_text

    knowledge = local.knowledge if local is not None else None
    if knowledge is None:
        return []
    lines = []
    for n in knowledge.neighbours(alert_text(features), k):
        if n.similarity < 0.2:
            continue
        snippet = " ".join(n.example.text.split())[:chars]
        lines.append(f"- {safe_json(snippet)} → {', '.join(n.example.techniques[:3])}")
    return lines


def _static(catalog: Catalog, max_techniques: int) -> tuple[str, str]:
    static, _, dynamic = template_text().partition(USER_MARKER)
    static = static.split("-->", 1)[1] if static.lstrip().startswith("<!--") else static
    tactics = "; ".join(f"{t.id} {t.name}" for t in catalog.tactics)
    return static.strip().format(tactics=tactics, max_techniques=max_techniques), dynamic.strip("\n")


def render_prompt(
    features: AlertFeatures,
    decision: Decision,
    catalog: Catalog,
    candidates: Sequence[Candidate],
    examples: Sequence[str] = (),
    max_techniques: int = 3,
    budget_tokens: int = SAFE_INPUT_TOKENS,
) -> RenderedPrompt:
    """Render, shrinking the per-alert part (examples, then field lengths, then candidates) to the budget."""
    system, dynamic = _static(catalog, max_techniques)
    schema = response_schema()
    fixed = estimate_tokens(system) + estimate_tokens(json.dumps(schema, separators=(",", ":")))
    field_chars, script_chars, n_candidates, use_examples = 600, 1200, len(candidates), bool(examples)
    while True:
        cand_lines = "\n".join(
            f"{c.technique_id} | {c.name} | {','.join(c.tactic_ids)} | {','.join(c.sources)}"
            for c in candidates[:n_candidates]
        )
        example_block = ("Labelled examples (data):\n" + "\n".join(examples) + "\n") if use_examples else ""
        payload = alert_payload(features, decision, catalog, field_chars, script_chars)
        user = dynamic.format(candidates=cand_lines, examples=example_block, alert_json=safe_json(payload))
        if fixed + estimate_tokens(user) <= budget_tokens:
            break
        if use_examples:
            use_examples = False
        elif field_chars > 120:
            field_chars, script_chars = int(field_chars * 0.7), int(script_chars * 0.7)
        elif n_candidates > 12:
            n_candidates -= 4
        elif field_chars > 40:
            field_chars, script_chars = int(field_chars * 0.7), int(script_chars * 0.7)
        elif n_candidates > 8:
            n_candidates -= 2
        else:
            break  # the floor: 40-char fields and 8 candidates
    return RenderedPrompt(
        system=system,
        user=user,
        candidates=tuple(candidates[:n_candidates]),
        schema=schema,
        prompt_hash=prompt_hash(),
    )
