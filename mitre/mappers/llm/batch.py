"""Backfills through the vendors' batch APIs (Anthropic Message Batches, OpenAI Batch): the same request
bodies as real-time calls, one line each, submitted at once and polled until the batch ends."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mitre.mappers.llm.errors import ProviderError
from mitre.mappers.llm.mapper import FALLBACK_INVALID, FALLBACK_PROVIDER, FALLBACK_UNKNOWN_IDS, LLMMapper
from mitre.models import AlertFeatures, Decision, MappingResult

_CUSTOM_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def batch_requests(
    mapper: LLMMapper, items: Sequence[tuple[str, AlertFeatures, Decision]]
) -> tuple[list[dict[str, Any]], dict[str, MappingResult]]:
    """Vendor batch lines for (custom_id, features, decision) items, and each item's local result."""
    lines, locals_ = [], {}
    for custom_id, features, decision in items:
        if not _CUSTOM_ID.fullmatch(custom_id):
            raise ValueError(f"batch custom_id {custom_id!r} must match [A-Za-z0-9_-]{{1,64}}")
        local_result = mapper.local.map(features, decision)
        locals_[custom_id] = local_result
        prompt = mapper.render(features, decision, local_result)
        lines.append(mapper.provider.batch_line(custom_id, mapper.provider.build_request(prompt)))
    return lines, locals_


def parse_batch(
    mapper: LLMMapper, results: Iterable[Mapping[str, Any]], locals_: Mapping[str, MappingResult]
) -> dict[str, MappingResult]:
    """Vendor result lines → MappingResults; anything missing, failed or invalid falls back to local."""
    out: dict[str, MappingResult] = {}
    for line in results:
        custom_id, reply = mapper.provider.parse_batch_line(line)
        local_result = locals_.get(custom_id)
        if local_result is None:
            continue
        if isinstance(reply, ProviderError):
            out[custom_id] = mapper.fallback(local_result, f"{FALLBACK_PROVIDER}:{reply.kind}")
            continue
        found = mapper.interpreter.interpret(reply, local_result, reply.usage)
        mapper.record(reply.usage, "ok" if found.problem is None else "invalid", unknown=len(found.unknown), batch=True)
        if found.problem is None and found.result is not None:
            out[custom_id] = found.result
        else:
            reason = FALLBACK_UNKNOWN_IDS if found.unknown else FALLBACK_INVALID
            out[custom_id] = mapper.fallback(local_result, reason, reply.usage)
    for custom_id, local_result in locals_.items():
        out.setdefault(custom_id, mapper.fallback(local_result, "batch_missing_result"))
    return out


@dataclass
class BatchRun:
    batch_id: str
    results: dict[str, MappingResult] = field(default_factory=dict)
    polls: int = 0


def run_batch(
    mapper: LLMMapper,
    items: Sequence[tuple[str, AlertFeatures, Decision]],
    *,
    poll_interval_s: float = 60.0,
    max_polls: int = 24 * 60,
    sleep: Callable[[float], None] = time.sleep,
) -> BatchRun:
    """Backfill: submit one vendor batch, poll until it ends, parse results (fallbacks for the rest)."""
    lines, locals_ = batch_requests(mapper, items)
    batch_id = mapper.provider.submit_batch(lines)
    run = BatchRun(batch_id)
    for _ in range(max_polls):
        run.polls += 1
        found = mapper.provider.batch_results(batch_id)
        if found is not None:
            run.results = parse_batch(mapper, found, locals_)
            return run
        sleep(poll_interval_s)
    raise TimeoutError(f"batch {batch_id} did not finish after {max_polls} polls")
