"""The LLM prompt: template files in `prompts/`, the ATT&CK catalog, a candidate shortlist, and the alert
as quoted data.

The template `prompts/map_alert.md` has a static part and a per-alert part below the `=== USER ===`
line. The static part (instructions, the tactic list and a compact list of every technique and
sub-technique of the active catalog) is identical for every alert, so vendors cache it: the model can
choose any technique, not only the shortlisted ones, and the prefix is long enough for prompt caching
(see `bench/cost_simulation.py` for the vendors' minimums and what caching costs). The per-alert part
holds the local detectors' candidates with their confidence and evidence, a few labelled examples, and
the alert features as ONE JSON object between `<<<ALERT_DATA` and `ALERT_DATA>>>`; JSON escaping plus
escaping of `<` and `>` means nothing inside an alert field can close the block.

Token counts here are ESTIMATES (~4 characters per token, the vendors' rule of thumb): the engine
needs no tokenizer. The renderer shrinks the per-alert part (examples, then field lengths, then
candidates) until it is at most `SAFE_USER_TOKENS` estimated tokens, so the uncached input of a call
stays under `MAX_UNCACHED_TOKENS`; bench/cost_simulation.py checks that with a real tokenizer.
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

RENDER_VERSION = "3"  # bump when the rendering code changes what is sent
TEMPLATE_FILE = "map_alert.md"
SCHEMA_FILE = "map_alert.schema.json"
USER_MARKER = "=== USER ==="
DATA_OPEN = "<<<ALERT_DATA"
DATA_CLOSE = "ALERT_DATA>>>"
CHARS_PER_TOKEN = 4
MAX_UNCACHED_TOKENS = 1500
SAFE_USER_TOKENS = 1150
SHORTLIST_SIZE = 20
CLIP_MARKER = "…["
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
    confidence: float | None = None  # the local mapper's, when it scored this technique
    evidence: str = ""  # the local mapper's strongest evidence, in a few words


@dataclass(frozen=True)
class PromptTemplate:
    """The static, cacheable prefix for one catalog, and the per-alert template below it."""

    system: str
    user_template: str
    schema: dict[str, Any] = field(repr=False)
    prompt_hash: str

    @classmethod
    def build(cls, catalog: Catalog, max_techniques: int) -> PromptTemplate:
        static, _, dynamic = template_text().partition(USER_MARKER)
        static = static.split("-->", 1)[1] if static.lstrip().startswith("<!--") else static
        tactics = "; ".join(f"{t.id} {t.shortname}: {t.name}" for t in catalog.tactics)
        system = static.strip().format(
            tactics=tactics,
            max_techniques=max_techniques,
            catalog_version=catalog.version,
            catalog=catalog_section(catalog),
        )
        return cls(system, dynamic.strip("\n"), response_schema(), prompt_hash())


@dataclass(frozen=True)
class RenderedPrompt:
    """What a provider sends: `system` is the static, cacheable prefix; `user` is per alert. `shown` holds
    the text of every alert field the model saw, as it saw it (redacted, clipped): quotes are checked
    against it."""

    system: str
    user: str
    candidates: tuple[Candidate, ...]
    schema: dict[str, Any] = field(repr=False)
    prompt_hash: str = ""
    shown: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def estimated_static_tokens(self) -> int:
        """Estimated tokens of the cached prefix: the instructions and catalog, and the response schema."""
        return estimate_tokens(self.system) + estimate_tokens(json.dumps(self.schema, separators=(",", ":")))

    @property
    def estimated_user_tokens(self) -> int:
        """Estimated tokens of the per-alert part: the uncached input of a call with a warm prefix."""
        return estimate_tokens(self.user)


def catalog_section(catalog: Catalog) -> str:
    """Every active technique, compactly: a parent a line with its tactics, its sub-techniques after it."""
    subs: dict[str, list[str]] = {}
    for tid, technique in catalog.techniques.items():
        if technique.parent:
            subs.setdefault(technique.parent, []).append(tid)
    lines = []
    for tid in sorted(t for t, tech in catalog.techniques.items() if not tech.parent):
        technique = catalog.techniques[tid]
        tactics = ",".join(t.id.removeprefix("TA") for t in catalog.tactics_of(tid))
        line = f"{tid} {technique.name} [{tactics}]"
        if tid in subs:
            line += ": " + "; ".join(
                f".{sub.split('.')[1]} {catalog.techniques[sub].name}" for sub in sorted(subs[tid])
            )
        lines.append(line)
    return "\n".join(lines)


def safe_json(value: Any) -> str:
    """JSON with `<`, `>` and `&` escaped, so quoted data can never spell a block delimiter."""
    text = json.dumps(value, ensure_ascii=True, sort_keys=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _clip(value: str | None, limit: int) -> str | None:
    if value is None or len(value) <= limit:
        return value
    return value[:limit] + f"{CLIP_MARKER}{len(value) - limit} more chars]"


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


def shown_text(payload: dict[str, Any]) -> dict[str, str]:
    """Field name → the text the model was shown (clip markers removed), for checking quotes."""

    def unclipped(value: str) -> str:
        return value.split(CLIP_MARKER, 1)[0] if value.endswith(" more chars]") else value

    shown = {
        key: unclipped(str(payload[key]))
        for key in ("rule_name", "rule_description", "rule_query", "rule_type")
        if isinstance(payload.get(key), str)
    }
    if payload.get("rule_tags"):
        shown["rule_tags"] = ", ".join(payload["rule_tags"])
    for name, value in payload.get("fields", {}).items():
        shown[name] = unclipped(value)
    return shown


def _evidence_note(score: TechniqueScore) -> str:
    """A few words on the local mapper's strongest evidence for a candidate."""
    best = max(score.evidence, key=lambda e: e.score, default=None)
    if best is None:
        return ""
    if best.source == "indicator":
        return f"indicator {best.detail.split(':', 1)[0]} on {best.field}"
    return {"knowledge_base": "kb", "lexical": "lexical", "rule": "rule"}.get(best.source, best.source)


def build_shortlist(
    features: AlertFeatures,
    local_result: MappingResult,
    catalog: Catalog,
    local: LocalMapper | None = None,
    size: int = SHORTLIST_SIZE,
) -> list[Candidate]:
    """Local mapper candidates (with their confidence and evidence) + BM25 top + knowledge-base
    neighbours' labels, deduplicated, in that order. Without the local mapper only the local result's
    candidates are used."""
    from mitre.text import alert_text

    sources: dict[str, list[str]] = {}
    scored: dict[str, TechniqueScore] = {}

    def add(tid: str, source: str) -> str | None:
        resolved = catalog.resolve(tid).active_id
        if resolved is None:
            return None
        tags = sources.setdefault(resolved, [])
        if source not in tags:
            tags.append(source)
        return resolved

    def origin(score: TechniqueScore) -> str:
        kinds = {e.source for e in score.evidence}
        return "indicator" if "indicator" in kinds else ("kb" if "knowledge_base" in kinds else "lexical")

    for s in (*local_result.techniques, *local_result.candidates):
        resolved = add(s.technique_id, origin(s))
        if resolved is not None and resolved not in scored:
            scored[resolved] = s
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
        local_score = scored.get(tid)
        out.append(
            Candidate(
                tid,
                name,
                tuple(t.id for t in catalog.tactics_of(tid)),
                tuple(tags),
                local_score.confidence if local_score else None,
                _evidence_note(local_score) if local_score else "",
            )
        )
    return out


def candidate_line(c: Candidate) -> str:
    local = f"{c.confidence:.2f}" if c.confidence is not None else "-"
    evidence = c.evidence or ",".join(c.sources)
    return f"{c.technique_id} | {c.name} | {','.join(c.tactic_ids)} | {local}: {evidence}"


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


def render_prompt(
    template: PromptTemplate,
    features: AlertFeatures,
    decision: Decision,
    catalog: Catalog,
    candidates: Sequence[Candidate],
    examples: Sequence[str] = (),
    budget_tokens: int = SAFE_USER_TOKENS,
) -> RenderedPrompt:
    """Render, shrinking the per-alert part (examples, then field lengths, then candidates) to the budget."""
    field_chars, script_chars, n_candidates, use_examples = 600, 1200, len(candidates), bool(examples)
    while True:
        cand_lines = "\n".join(candidate_line(c) for c in candidates[:n_candidates])
        example_block = ("Labelled examples (data):\n" + "\n".join(examples) + "\n") if use_examples else ""
        payload = alert_payload(features, decision, catalog, field_chars, script_chars)
        user = template.user_template.format(
            candidates=cand_lines, examples=example_block, alert_json=safe_json(payload)
        )
        if estimate_tokens(user) <= budget_tokens:
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
        system=template.system,
        user=user,
        candidates=tuple(candidates[:n_candidates]),
        schema=template.schema,
        prompt_hash=template.prompt_hash,
        shown=shown_text(payload),
    )
