"""LLMMapper: a cascade in front of a vendor. The local mapper maps first; when it is confident
(`mapper.cascade_confidence`) its answer stands and no call is made. Otherwise the model is asked,
shown the local candidates and their evidence, and its answer is interpreted leniently and grounded in
the alert (`interpret`, `grounding`); the local mapper answers whenever the vendor cannot.

- An answer with nothing usable is reported back once (the retry note says what was wrong); after a
  second one the local mapper's result is returned with `fallback_reason` set (so the engine does not
  cache it). An answer whose every technique rests on text addressing the model (`injection`) is not
  retried: the model followed it, and the local mapper answers (`injected_answer`).
- Every result of an alert holding text that addresses the model carries the suspicion in
  `prompt_injection_suspected`, and keeps the local indicators' techniques: injected text can neither
  add a technique nor talk one away.
The engine's validator runs on the result as on every mapper's.
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
from mitre.mappers.llm import injection
from mitre.mappers.llm.errors import ProviderError
from mitre.mappers.llm.grounding import AlertText
from mitre.mappers.llm.interpret import Grounds, Interpretation, ReplyInterpreter
from mitre.mappers.llm.resilience import CircuitBreaker, Resilience, Retrier
from mitre.mappers.llm.transport import Provider, ProviderReply
from mitre.mappers.local import LocalMapper
from mitre.models import AlertFeatures, Decision, InjectionSuspicion, MappingResult, Usage
from mitre.prompting import PromptTemplate, RenderedPrompt
from mitre.redact import Redactor

log = logging.getLogger("attackmap.llm")

FALLBACK_INVALID = "invalid_response"
FALLBACK_UNKNOWN_IDS = "unknown_technique_ids"
FALLBACK_INJECTED = "injected_answer"
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
    cache_ttl: str = "5m"


@dataclass(frozen=True)
class Prepared:
    """One alert made ready for the model: the local result, the prompt, and what answers are checked
    against. `prompt` is None when the cascade lets the local result stand (`settled`)."""

    local_result: MappingResult
    prompt: RenderedPrompt | None
    grounds: Grounds | None
    flags: tuple[InjectionSuspicion, ...]
    suspected: bool

    @property
    def settled(self) -> MappingResult | None:
        if self.prompt is not None:
            return None
        return self.local_result.model_copy(update={"prompt_injection_suspected": self.flags})


def add_usage(a: Usage, b: Usage) -> Usage:
    return Usage(
        input_tokens=a.input_tokens + b.input_tokens,
        output_tokens=a.output_tokens + b.output_tokens,
        cache_write_tokens=a.cache_write_tokens + b.cache_write_tokens,
        cache_read_tokens=a.cache_read_tokens + b.cache_read_tokens,
        calls=a.calls + b.calls,
    )


RULE_FIELDS = frozenset({"rule_name", "rule_description", "rule_query"})


def alert_fields(features: AlertFeatures) -> dict[str, str]:
    """Every text of an alert the model may be shown, under the names the prompt uses."""
    rule = {"rule_name": features.rule_name, "rule_description": features.rule_description}
    rule["rule_query"] = features.rule_query
    return {**{k: v for k, v in rule.items() if v}, **features.fields}


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
        self.template = PromptTemplate.build(catalog, settings.max_techniques)
        self.prompt_hash = self.template.prompt_hash
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
            "cascade": s.cascade_confidence,
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
        return prompting.render_prompt(self.template, shown, decision, self.catalog, candidates, examples)

    def grounds(
        self, prompt: RenderedPrompt, decision: Decision, local_result: MappingResult, fields: dict[str, str]
    ) -> tuple[Grounds, dict[str, injection.Suspicion]]:
        """What this alert's answers are checked against; the suspicions found in its full fields."""
        suspicions = injection.scan(fields)
        hits = {
            active for h in decision.indicators for t in h.techniques if (active := self.catalog.resolve(t).active_id)
        }
        indicated = hits | {
            t.technique_id for t in local_result.techniques if any(e.source == "indicator" for e in t.evidence)
        }
        grounds = Grounds(
            text=AlertText(prompt.shown, injection.scan(prompt.shown)),
            flags=injection.flags(suspicions),
            dictated=injection.named_techniques(fields, suspicions, self.catalog, RULE_FIELDS),
            indicated=frozenset(
                indicated | {parent for t in indicated if (parent := self.catalog.techniques[t].parent) is not None}
            ),
        )
        return grounds, suspicions

    def confident(self, local_result: MappingResult) -> bool:
        """The cascade: the local mapper answers alone when its best technique is confident enough."""
        floor = self.settings.cascade_confidence
        return floor is not None and any(t.confidence >= floor for t in local_result.techniques)

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
            self.on_call(
                CallRecord(
                    self.name,
                    self.model or "",
                    usage,
                    outcome,
                    error_kind,
                    unknown,
                    latency,
                    batch,
                    self.settings.prompt_cache_ttl,
                )
            )

    def fallback(
        self,
        local_result: MappingResult,
        reason: str,
        usage: Usage | None = None,
        flags: tuple[InjectionSuspicion, ...] = (),
    ) -> MappingResult:
        self.count(f"fallback:{reason}")
        return local_result.model_copy(
            update={"fallback_reason": reason, "usage": usage, "prompt_injection_suspected": flags}
        )

    @staticmethod
    def keep_indicated(result: MappingResult, local_result: MappingResult) -> MappingResult:
        """On an alert with text addressing the model: the local indicators' techniques stay, so that
        injected text cannot talk a real detection away."""
        have = {t.technique_id for t in result.techniques}
        kept = [
            t
            for t in local_result.techniques
            if t.technique_id not in have and any(e.source == "indicator" for e in t.evidence)
        ]
        return result.model_copy(update={"techniques": result.techniques + tuple(kept)}) if kept else result

    # ------------------------------------------------------------ Mapper

    def prepare(self, features: AlertFeatures, decision: Decision) -> Prepared:
        local_result = self.local.map(features, decision)
        fields = alert_fields(features)
        if self.confident(local_result):
            self.count("cascade:local_confident")
            flags = injection.flags(injection.scan(fields))
            return Prepared(local_result, None, None, flags, bool(flags))
        prompt = self.render(features, decision, local_result)
        grounds, suspicions = self.grounds(prompt, decision, local_result, fields)
        return Prepared(local_result, prompt, grounds, grounds.flags, bool(suspicions))

    def conclude(self, prepared: Prepared, found: Interpretation) -> MappingResult | None:
        """The result of a usable answer (None when the answer was not usable)."""
        if found.result is None:
            return None
        if prepared.suspected:
            return self.keep_indicated(found.result, prepared.local_result)
        return found.result

    def map(self, features: AlertFeatures, decision: Decision) -> MappingResult:
        prepared = self.prepare(features, decision)
        if (settled := prepared.settled) is not None:
            return settled
        assert prepared.prompt is not None and prepared.grounds is not None
        local_result = prepared.local_result
        if not self.breaker.allow():
            return self.fallback(local_result, FALLBACK_CIRCUIT, flags=prepared.flags)
        self.count("prompts")
        total = Usage()
        note: str | None = None
        reason = FALLBACK_INVALID
        for attempt in (1, 2):
            body = self.provider.build_request(prepared.prompt, note)
            started = self._clock()
            try:
                reply = self._send(body)
            except ProviderError as exc:
                self.breaker.record_failure()
                log.warning("%s: giving up on this alert: %s", self.name, exc)
                usage = total if total != Usage() else None
                return self.fallback(local_result, f"{FALLBACK_PROVIDER}:{exc.kind}", usage, prepared.flags)
            if reply.malformed:  # 2xx but not JSON: an endpoint answering garbage trips the breaker too
                self.breaker.record_failure()
            else:
                self.breaker.record_success()
            total = add_usage(total, reply.usage)
            found = self.interpreter.interpret(reply, local_result, total, prepared.grounds)
            self.tally(found)
            outcome = "ok" if found.result is not None else ("unknown_ids" if found.unknown else "invalid")
            self.record(reply.usage, outcome, unknown=len(found.unknown), latency=self._clock() - started)
            if (result := self.conclude(prepared, found)) is not None:
                return result
            self.count("invalid_answers")
            log.warning("%s: unusable answer (attempt %d): %s", self.name, attempt, found.problem)
            reason = self.failure_reason(found)
            if reason == FALLBACK_INJECTED:
                break
            note = found.problem
        return self.fallback(local_result, reason, total, prepared.flags)

    def tally(self, found: Interpretation) -> None:
        if found.unknown:
            self.count("unknown_ids", len(found.unknown))
        for code in found.drops:
            self.count(f"dropped:{code}")

    @staticmethod
    def failure_reason(found: Interpretation) -> str:
        if found.injected:
            return FALLBACK_INJECTED
        return FALLBACK_UNKNOWN_IDS if found.unknown else FALLBACK_INVALID


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
