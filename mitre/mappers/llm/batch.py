"""Backfills through the vendors' batch APIs (Anthropic Message Batches, OpenAI Batch): the same request
bodies as real-time calls, one line each, submitted at once and polled until the batch ends. Billed at
the vendors' batch discount (`CallRecord.batch`). The cascade applies: alerts the local mapper is
confident about are settled without a line."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mitre.mappers.llm.errors import ProviderError
from mitre.mappers.llm.mapper import FALLBACK_PROVIDER, LLMMapper, Prepared
from mitre.models import AlertFeatures, Decision, MappingResult

_CUSTOM_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
MISSING = "batch_missing_result"


def prepare_batch(
    mapper: LLMMapper, items: Sequence[tuple[str, AlertFeatures, Decision]]
) -> tuple[list[dict[str, Any]], dict[str, Prepared]]:
    """Vendor batch lines for the (custom_id, features, decision) items the model must see, and every
    item's preparation (settled ones need no line)."""
    lines, prepared = [], {}
    for custom_id, features, decision in items:
        if not _CUSTOM_ID.fullmatch(custom_id):
            raise ValueError(f"batch custom_id {custom_id!r} must match [A-Za-z0-9_-]{{1,64}}")
        ready = mapper.prepare(features, decision)
        prepared[custom_id] = ready
        if ready.prompt is not None:
            lines.append(mapper.provider.batch_line(custom_id, mapper.provider.build_request(ready.prompt)))
    return lines, prepared


def parse_batch(
    mapper: LLMMapper, results: Iterable[Mapping[str, Any]], prepared: Mapping[str, Prepared]
) -> dict[str, MappingResult]:
    """Vendor result lines → MappingResults; anything missing, failed or unusable falls back to local."""
    out: dict[str, MappingResult] = {}
    for line in results:
        custom_id, reply = mapper.provider.parse_batch_line(line)
        ready = prepared.get(custom_id)
        if ready is None or ready.grounds is None:
            continue
        if isinstance(reply, ProviderError):
            out[custom_id] = mapper.fallback(ready.local_result, f"{FALLBACK_PROVIDER}:{reply.kind}", flags=ready.flags)
            continue
        found = mapper.interpreter.interpret(reply, ready.local_result, reply.usage, ready.grounds)
        mapper.tally(found)
        outcome = "ok" if found.result is not None else "invalid"
        mapper.record(reply.usage, outcome, unknown=len(found.unknown), batch=True)
        result = mapper.conclude(ready, found)
        out[custom_id] = (
            result
            if result is not None
            else mapper.fallback(ready.local_result, mapper.failure_reason(found), reply.usage, ready.flags)
        )
    for custom_id, ready in prepared.items():
        if custom_id not in out:
            out[custom_id] = ready.settled or mapper.fallback(ready.local_result, MISSING, flags=ready.flags)
    return out


@dataclass
class BatchRun:
    batch_id: str | None
    results: dict[str, MappingResult] = field(default_factory=dict)
    polls: int = 0


def poll(
    mapper: LLMMapper,
    batch_id: str,
    *,
    poll_interval_s: float = 60.0,
    max_polls: int = 24 * 60,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[list[dict[str, Any]], int]:
    """The batch's result lines once it has ended, and how many polls that took."""
    for polls in range(1, max_polls + 1):
        found = mapper.provider.batch_results(batch_id)
        if found is not None:
            return found, polls
        sleep(poll_interval_s)
    raise TimeoutError(f"batch {batch_id} did not finish after {max_polls} polls")


def run_batch(
    mapper: LLMMapper,
    items: Sequence[tuple[str, AlertFeatures, Decision]],
    *,
    poll_interval_s: float = 60.0,
    max_polls: int = 24 * 60,
    sleep: Callable[[float], None] = time.sleep,
) -> BatchRun:
    """Backfill in one go: submit one vendor batch, poll until it ends, parse results (fallbacks for
    the rest). `mitre.backfill` does the same resumably, for `attackmap enrich --batch`."""
    lines, prepared = prepare_batch(mapper, items)
    if not lines:
        return BatchRun(None, parse_batch(mapper, [], prepared))
    batch_id = mapper.provider.submit_batch(lines)
    found, polls = poll(mapper, batch_id, poll_interval_s=poll_interval_s, max_polls=max_polls, sleep=sleep)
    return BatchRun(batch_id, parse_batch(mapper, found, prepared), polls)
