"""LLMMapper: prompt → vendor call (with resilience) → interpretation; the local mapper shortlists
candidates and answers whenever the vendor cannot.

An answer with IDs that are not ATT&CK techniques is counted and the model is asked once more with
the error appended; after a second unusable answer the local mapper's result is returned with
`fallback_reason` set (so the engine does not cache it). The engine's validator runs on the result as
on every mapper's.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from mitre import prompting
from mitre.catalog import Catalog
from mitre.config import MapperSettings
from mitre.mappers.base import MapperContext
from mitre.mappers.llm.errors import ProviderError
from mitre.mappers.llm.interpret import ReplyInterpreter
from mitre.mappers.llm.resilience import CircuitBreaker, Resilience, Retrier
from mitre.mappers.llm.transport import Provider, ProviderReply
from mitre.mappers.local import LocalMapper
from mitre.models import AlertFeatures, Decision, MappingResult, Usage
from mitre.prompting import RenderedPrompt
from mitre.redact import Redactor

log = logging.getLogger("attackmap.llm")

FALLBACK_INVALID = "invalid_response"
FALLBACK_UNKNOWN_IDS = "unknown_technique_ids"
FALLBACK_CIRCUIT = "circuit_open"
FALLBACK_PROVIDER = "provider_error"  # + ":<kind>"


@dataclass(frozen=True)
class CallRecord:
    """One billed vendor call, for the budget ledger."""

    provider: str
    model: str
    usage: Usage
    outcome: str  # ok | invalid | unknown_ids | error
    error_kind: str | None = None
    unknown_ids: int = 0
    latency_s: float = 0.0
    batch: bool = False


def add_usage(a: Usage, b: Usage) -> Usage:
    return Usage(
        input_tokens=a.input_tokens + b.input_tokens,
        output_tokens=a.output_tokens + b.output_tokens,
        cache_write_tokens=a.cache_write_tokens + b.cache_write_tokens,
        cache_read_tokens=a.cache_read_tokens + b.cache_read_tokens,
    )


class LLMMapper:
    """A Mapper over one Provider. The local mapper supplies the shortlist and every fallback."""

    def __init__(
        self,
        name: str,
        provider: Provider,
        catalog: Catalog,
        settings: MapperSettings,
        local: LocalMapper | None,
        *,
        resilience: Resilience | None = None,
        redactor: Redactor | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        on_call: Callable[[CallRecord], None] | None = None,
    ) -> None:
        if local is None:
            raise ValueError(f"mapper {name!r} needs the local mapper (shortlist and fallback)")
        self.name = name
        self.provider = provider
        self.model: str | None = provider.model
        self.prompt_hash = prompting.prompt_hash()
        self.catalog = catalog
        self.settings = settings
        self.local = local
        self.resilience = resilience or Resilience()
        self.redactor = redactor
        self.breaker = CircuitBreaker(self.resilience.breaker_threshold, self.resilience.breaker_cooldown_s, clock)
        self.retrier = Retrier(self.resilience, sleep=sleep, clock=clock, rng=rng)
        self.interpreter = ReplyInterpreter(name, self.model, self.prompt_hash, catalog, settings)
        self._clock = clock
        self.on_call = on_call
        self.stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LLMMapper(name={self.name!r}, provider={self.provider!r})"

    def settings_hash(self) -> str:
        s = self.settings
        payload = {
            "provider": self.name,
            "model": self.model,
            "max": s.max_techniques,
            "floor": s.confidence_floor,
            "redact": s.redact,
            "local": self.local.settings_hash(),
        }
        return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]

    def count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self.stats[key] += n

    # ------------------------------------------------------------ prompt

    def render(self, features: AlertFeatures, decision: Decision, local_result: MappingResult) -> RenderedPrompt:
        shown = self.redactor.redact_features(features) if self.redactor is not None else features
        candidates = prompting.build_shortlist(shown, local_result, self.catalog, self.local)
        examples = prompting.example_lines(shown, self.local)
        return prompting.render_prompt(
            shown, decision, self.catalog, candidates, examples, max_techniques=self.settings.max_techniques
        )

    # ------------------------------------------------------------ calls

    def _send(self, body: dict[str, Any]) -> ProviderReply:
        def failed(exc: ProviderError, latency: float) -> None:
            self.count(f"http_error:{exc.kind}")
            self.record(Usage(), "error", error_kind=exc.kind, latency=latency)

        reply = self.retrier.send(
            self.name, lambda timeout: self.provider.send(body, timeout), failed, lambda: self.count("retries")
        )
        self.count("http_ok")
        return reply

    def record(
        self,
        usage: Usage,
        outcome: str,
        *,
        error_kind: str | None = None,
        unknown: int = 0,
        latency: float = 0.0,
        batch: bool = False,
    ) -> None:
        if self.on_call is not None:
            self.on_call(CallRecord(self.name, self.model or "", usage, outcome, error_kind, unknown, latency, batch))

    def fallback(self, local_result: MappingResult, reason: str, usage: Usage | None = None) -> MappingResult:
        self.count(f"fallback:{reason}")
        return local_result.model_copy(update={"fallback_reason": reason, "usage": usage})

    # ------------------------------------------------------------ Mapper

    def map(self, features: AlertFeatures, decision: Decision) -> MappingResult:
        local_result = self.local.map(features, decision)
        if not self.breaker.allow():
            return self.fallback(local_result, FALLBACK_CIRCUIT)
        prompt = self.render(features, decision, local_result)
        self.count("prompts")
        total = Usage()
        note: str | None = None
        last_unknown: list[str] = []
        for attempt in (1, 2):
            body = self.provider.build_request(prompt, note)
            started = self._clock()
            try:
                reply = self._send(body)
            except ProviderError as exc:
                self.breaker.record_failure()
                log.warning("%s: giving up on this alert: %s", self.name, exc)
                return self.fallback(
                    local_result, f"{FALLBACK_PROVIDER}:{exc.kind}", total if total != Usage() else None
                )
            self.breaker.record_success()
            total = add_usage(total, reply.usage)
            found = self.interpreter.interpret(reply, local_result, total)
            if found.unknown:
                self.count("unknown_ids", len(found.unknown))
            outcome = "ok" if found.problem is None else ("unknown_ids" if found.unknown else "invalid")
            self.record(reply.usage, outcome, unknown=len(found.unknown), latency=self._clock() - started)
            if found.problem is None and found.result is not None:
                return found.result
            self.count("invalid_answers")
            log.warning("%s: invalid answer (attempt %d): %s", self.name, attempt, found.problem)
            note, last_unknown = found.problem, found.unknown
            if (
                attempt == 2
                and found.result is not None
                and any(self.catalog.resolve(t.technique_id).active_id for t in found.result.techniques)
            ):
                return found.result  # the valid part stands; the validator drops the unknown IDs (counted above)
        reason = FALLBACK_UNKNOWN_IDS if last_unknown else FALLBACK_INVALID
        return self.fallback(local_result, reason, total)


def assemble_mapper(
    name: str,
    provider: Provider,
    context: MapperContext,
    resilience: Resilience,
    sleep: Callable[[float], None] | None = None,
    clock: Callable[[], float] | None = None,
    redactor: Redactor | None = None,
) -> LLMMapper:
    """The LLMMapper every vendor factory ends with: injected sleep/clock for tests, redaction per settings."""
    if redactor is None and context.settings.redact:
        redactor = Redactor.for_installation()
    return LLMMapper(
        name,
        provider,
        context.catalog,
        context.settings,
        context.local,
        resilience=resilience,
        redactor=redactor,
        sleep=sleep or time.sleep,
        clock=clock or time.monotonic,
    )
