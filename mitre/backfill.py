"""`attackmap enrich --batch`: a backfill through the vendor's batch API (Anthropic Message Batches,
OpenAI Batch), at the batch price, resumable after an interruption.

1. plan: the input is read once: every alert that would be mapped gets its cache key; keys already in
   the mapping cache are done, the others become the batch's items (one per key, custom_id = the key).
2. submit: the cascade settles the alerts the local mapper is confident about; the rest go out as one
   batch, and the state file is written at once with the batch id, so that a run interrupted from
   here on polls the same batch instead of paying for a second one.
3. poll until the batch ends; the answers go into the mapping cache, and every result (answers and
   fallbacks) into the state file.
4. enrich: the ordinary run, with the batch's results handed to the engine (`Engine.precomputed`):
   nothing is sent to the vendor in real time.
The state file belongs to one input file (path, size, modification time) and one mapper, model and
prompt; anything else starts afresh.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from mitre.engine import Engine
from mitre.features import features_from_flat, flatten_alert
from mitre.io.ndjson import read_lines
from mitre.mappers.budgeted import BudgetedMapper
from mitre.mappers.llm.batch import parse_batch, poll, prepare_batch
from mitre.mappers.llm.mapper import LLMMapper
from mitre.models import AlertFeatures, Decision, DecisionKind, MappingResult

log = logging.getLogger("attackmap.backfill")
STATE_VERSION = 1


@dataclass
class BatchState:
    """What survives an interruption: whose batch this is, its id, and the results once it ended."""

    identity: dict[str, Any]
    batch_id: str | None = None
    custom_ids: list[str] = field(default_factory=list)
    results: dict[str, MappingResult] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path, identity: dict[str, Any]) -> BatchState:
        if path.is_file():
            raw = orjson.loads(path.read_bytes())
            if raw.get("identity") == identity:
                return cls(
                    identity,
                    raw.get("batch_id"),
                    list(raw.get("custom_ids") or []),
                    {k: MappingResult.model_validate(v) for k, v in (raw.get("results") or {}).items()},
                )
            log.warning("%s belongs to another input or mapper: starting afresh", path)
        return cls(identity)

    def save(self, path: Path) -> None:
        """Written to a temporary file and renamed: an interruption never leaves half a state."""
        doc = {
            "version": STATE_VERSION,
            "identity": self.identity,
            "batch_id": self.batch_id,
            "custom_ids": self.custom_ids,
            "results": {k: v.model_dump(mode="json") for k, v in self.results.items()},
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_suffix(f".{os.getpid()}.tmp")
        staging.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
        staging.replace(path)


def llm_of(engine: Engine) -> tuple[LLMMapper, BudgetedMapper | None]:
    mapper = engine.mapper
    if isinstance(mapper, BudgetedMapper):
        return mapper.inner, mapper
    if isinstance(mapper, LLMMapper):
        return mapper, None
    raise ValueError(f"--batch needs an LLM mapper (anthropic, openai); the workflow maps with {mapper.name!r}")


def plan(engine: Engine, path: Path) -> dict[str, tuple[AlertFeatures, Decision]]:
    """Cache key → (features, decision) of every alert in the file that would be mapped and is not cached."""
    todo: dict[str, tuple[AlertFeatures, Decision]] = {}
    with path.open("rb") as source:
        for item in read_lines(source):
            try:
                alert = orjson.loads(item.raw or b"")
                if not isinstance(alert, dict):
                    continue
                features = features_from_flat(flatten_alert(alert))
            except (orjson.JSONDecodeError, ValueError):
                continue  # the enrich pass dead-letters it with the reason
            decision = engine.decide(features)
            if decision.kind is DecisionKind.SKIP:
                continue
            key = engine.mapping_key(features, decision)
            if key not in todo and (engine.cache is None or engine.cache.get(key) is None):
                todo[key] = (features, decision)
    return todo


def prefill(
    engine: Engine,
    path: Path,
    state_path: Path,
    *,
    poll_interval_s: float = 60.0,
    max_polls: int = 24 * 60,
    sleep: Callable[[float], None] = time.sleep,
) -> BatchState:
    """Steps 1-3; the engine then answers every planned alert from the batch (step 4 is the caller's)."""
    mapper, budgeted = llm_of(engine)
    stat = path.stat()
    identity = {
        "input": str(path.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "mapper": mapper.name,
        "model": mapper.model,
        "prompt_hash": mapper.prompt_hash,
        "catalog": engine.catalog.fingerprint,
    }
    state = BatchState.load(state_path, identity)
    if not state.results:
        # Planned again on a resume: the same file, mapper and prompt give the same items and prompts.
        items = plan(engine, path)
        lines, prepared = prepare_batch(mapper, [(key, f, d) for key, (f, d) in items.items()])
        state.custom_ids = list(prepared)
        if state.batch_id is None and lines:
            state.batch_id = mapper.provider.submit_batch(lines)
            state.save(state_path)
            log.info("batch %s submitted: %d of %d alerts need the model", state.batch_id, len(lines), len(items))
        found: list[dict[str, Any]] = []
        if state.batch_id is not None:
            found, polls = poll(
                mapper, state.batch_id, poll_interval_s=poll_interval_s, max_polls=max_polls, sleep=sleep
            )
            log.info("batch %s ended after %d polls", state.batch_id, polls)
        results = parse_batch(mapper, found, prepared)
        if budgeted is not None:
            results = {key: budgeted.priced(r, batch=True) for key, r in results.items()}
        state.results = results
        state.save(state_path)
    for key, result in state.results.items():
        if engine.cache is not None and result.fallback_reason is None:
            engine.cache.put(key, result)
        engine.precomputed[key] = result
    return state
