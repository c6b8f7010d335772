"""What every LLM provider shares: prompt → SDK call with resilience → schema check → catalog check.

- Response parsing: jsonschema (prompts/map_alert.schema.json), then the catalog: an ID that is not
  an ATT&CK technique is counted and the model is asked once more with the error appended; after a
  second invalid answer the local mapper's result is returned with `fallback_reason` set (so the
  engine does not cache it). The engine's validator runs on the result as on every mapper's.
- Resilience: a per-request timeout; 429 honours `retry-after`/`retry-after-ms`; 5xx and 529
  (overloaded) back off exponentially with jitter; 400/401/403 are not retried. A circuit breaker
  (one per mapper instance) sends alerts to the local mapper after N consecutive failed calls and
  lets one probe through after a cool-down. Sleep, clock and randomness are injected for tests.
- Secrets: the API key stays inside the SDK client (never in a repr) and is scrubbed from every error,
  log line and provenance.
- Transport: the official `anthropic` and `openai` SDKs, which read the vendors' environment variables
  themselves, built with max_retries=0 (the retries are this module's). They speak httpx2; `HttpxTransport`
  carries their requests over httpx, which respx fakes in tests. SDK exceptions map onto ProviderError.
- Batch: the same request bodies go into the vendors' batch APIs for backfills (`run_batch`).
"""

from __future__ import annotations

import email.utils
import hashlib
import logging
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import httpx2
import orjson
from jsonschema import Draft202012Validator

from mitre import prompting
from mitre.catalog import Catalog
from mitre.config import MapperSettings
from mitre.mappers.base import MapperContext
from mitre.models import AlertFeatures, Decision, Evidence, MappingResult, TechniqueScore, Usage
from mitre.prompting import RenderedPrompt

log = logging.getLogger("attackmap.llm")

FALLBACK_INVALID = "invalid_response"
FALLBACK_UNKNOWN_IDS = "unknown_technique_ids"
FALLBACK_CIRCUIT = "circuit_open"
FALLBACK_PROVIDER = "provider_error"  # + ":<kind>"

_KEYLIKE = re.compile(r"\b(?:sk-ant-[A-Za-z0-9_\-*]{6,}|sk-[A-Za-z0-9_\-*]{6,})")


class MissingAPIKeyError(ValueError):
    """The vendor's environment variable holding the API key is not set."""


def missing_api_key(variable: str, provider: str) -> MissingAPIKeyError:
    return MissingAPIKeyError(f"mapper {provider!r} needs an API key: set the environment variable {variable}")


def env_api_key(env: Mapping[str, str], variable: str, provider: str) -> str:
    value = (env.get(variable) or "").strip()
    if not value:
        raise missing_api_key(variable, provider)
    return value


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Remove API keys (exact values and anything key-shaped) from a message."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return _KEYLIKE.sub("[redacted]", text)


# ---------------------------------------------------------------------------- errors and replies


class ProviderError(Exception):
    """One failed vendor call, classified. `kind` is a stable code (counted, used in fallback_reason)."""

    def __init__(self, kind: str, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.kind in {"rate_limited", "overloaded", "server_error", "timeout", "connection"}


def parse_retry_after(headers: httpx2.Headers, now: float) -> float | None:
    """Seconds to wait from `retry-after-ms`, `retry-after` (seconds or HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return None if parsed is None else max(0.0, parsed.timestamp() - now)


def error_from_response(response: httpx2.Response, secrets: Sequence[str], now: float) -> ProviderError:
    """Classify a non-2xx answer. Both vendors' error bodies are understood:
    Anthropic `{"type":"error","error":{"type","message"}}`, OpenAI `{"error":{"message","type","code"}}`."""
    status = response.status_code
    vendor_type, message = "", response.text[:300]
    try:
        body = response.json()
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict):
            vendor_type = str(err.get("type") or err.get("code") or "")
            message = str(err.get("message") or message)
    except ValueError:
        pass
    if status == 429:
        kind = "rate_limited"
    elif status == 529 or vendor_type == "overloaded_error":
        kind = "overloaded"
    elif status >= 500:
        kind = "server_error"
    elif status in (401, 403):
        kind = "auth_error"
    else:
        kind = "bad_request"
    text = scrub(f"HTTP {status} {vendor_type}: {message}".strip(), secrets)
    return ProviderError(kind, text, status=status, retry_after=parse_retry_after(response.headers, now))


@dataclass(frozen=True)
class ProviderReply:
    """A 2xx answer: the structured data if any, else a parse problem to report back to the model."""

    data: Any
    usage: Usage
    problem: str | None = None
    raw_id: str | None = None
    malformed: bool = False  # the body was not JSON at all: a broken endpoint, which the breaker counts


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


class Provider(Protocol):
    """The vendor-specific part: request bodies, the SDK call and reply parsing."""

    name: str
    model: str

    def build_request(self, prompt: RenderedPrompt, retry_note: str | None = None) -> dict[str, Any]: ...

    def send(self, body: dict[str, Any], timeout: float) -> ProviderReply: ...

    def parse_reply(self, payload: Any) -> ProviderReply: ...

    def secrets(self) -> tuple[str, ...]: ...

    # batch
    def batch_line(self, custom_id: str, body: dict[str, Any]) -> dict[str, Any]: ...

    def submit_batch(self, lines: Sequence[dict[str, Any]]) -> str: ...

    def batch_results(self, batch_id: str) -> list[dict[str, Any]] | None: ...

    def parse_batch_line(self, line: Mapping[str, Any]) -> tuple[str, ProviderReply | ProviderError]: ...


class HttpxTransport(httpx2.BaseTransport):
    """Carries the SDKs' requests (they speak httpx2) over an httpx client: the project's HTTP stack, the one
    respx fakes in tests. Bodies are passed on still encoded, so httpx2 decodes them as it would its own."""

    def __init__(self, transport: httpx.BaseTransport | None = None) -> None:
        self._client = httpx.Client(transport=transport)

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        timeout = request.extensions.get("timeout")
        outgoing = httpx.Request(
            request.method,
            str(request.url),
            headers=request.headers.multi_items(),
            content=request.read(),
            extensions={"timeout": timeout} if timeout else {},
        )
        try:
            response = self._client.send(outgoing, stream=True)
            try:
                raw = b"".join(response.iter_raw())
            finally:
                response.close()
        except httpx.TimeoutException as exc:
            raise httpx2.TimeoutException(str(exc), request=request) from exc
        except httpx.TransportError as exc:
            raise httpx2.TransportError(str(exc), request=request) from exc
        return httpx2.Response(response.status_code, headers=response.headers.multi_items(), content=raw)

    def close(self) -> None:
        self._client.close()


def sdk_http_client(transport: httpx.BaseTransport | None = None) -> httpx2.Client:
    """The `http_client` both SDKs are built with."""
    return httpx2.Client(transport=HttpxTransport(transport))


@dataclass(frozen=True)
class SdkErrors:
    """One vendor SDK's exception classes (the timeout class is a subclass of the connection class)."""

    status: type[Exception]  # APIStatusError, with the httpx2 response as `.response`
    timeout: type[Exception]  # APITimeoutError
    connection: type[Exception]  # APIConnectionError


class SdkProvider:
    """What the vendors share over their official SDK clients (built with max_retries=0: retries are ours)."""

    name = "sdk"
    errors: SdkErrors

    def __init__(self, model: str, client: Any, clock: Callable[[], float] = time.time) -> None:
        self.model = model
        self._client = client
        self._clock = clock

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, base_url={self.base_url!r})"

    @property
    def base_url(self) -> str:
        return str(self._client.base_url).rstrip("/")

    def secrets(self) -> tuple[str, ...]:
        values = (getattr(self._client, "api_key", None), getattr(self._client, "auth_token", None))
        return tuple(v for v in values if isinstance(v, str) and v)

    @contextmanager
    def calling(self) -> Iterator[None]:
        """Turns the SDK's exceptions into classified ProviderErrors with the keys scrubbed."""
        try:
            yield
        except self.errors.timeout as exc:
            raise ProviderError("timeout", scrub(f"{type(exc).__name__}: request timed out", self.secrets())) from None
        except self.errors.connection as exc:
            detail = exc.__cause__ or exc
            raise ProviderError("connection", scrub(f"{type(exc).__name__}: {detail}", self.secrets())) from None
        except self.errors.status as exc:
            response = exc.response  # type: ignore[attr-defined]
            raise error_from_response(response, self.secrets(), self._clock()) from None


def json_body(response: httpx2.Response) -> Any:
    """A 2xx body as JSON, or a `_Malformed` marker when it is cut off or garbled."""
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return _Malformed(response.text[:200])


@dataclass(frozen=True)
class _Malformed:
    """A 2xx body that is not JSON (cut-off or garbled): reported to the model as an invalid answer."""

    text: str


def malformed_reply(payload: Any) -> ProviderReply | None:
    if isinstance(payload, _Malformed):
        problem = "the response body was not valid JSON (truncated or malformed)"
        return ProviderReply(None, Usage(), problem=problem, malformed=True)
    return None


# ---------------------------------------------------------------------------- resilience


@dataclass(frozen=True)
class Resilience:
    timeout_s: float = 30.0
    max_attempts: int = 4
    backoff_base_s: float = 1.0
    backoff_max_s: float = 30.0
    max_retry_after_s: float = 120.0
    breaker_threshold: int = 5
    breaker_cooldown_s: float = 60.0


class CircuitBreaker:
    """closed → (N consecutive failures) → open → (cool-down) → half-open: one probe; success closes."""

    def __init__(self, threshold: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False
        self.trips = 0

    @property
    def state(self) -> str:
        with self._lock:
            return self._state()

    def _state(self) -> str:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self.cooldown_s:
            return "half_open"
        return "open"

    def allow(self) -> bool:
        with self._lock:
            state = self._state()
            if state == "closed":
                return True
            if state == "half_open" and not self._probing:
                self._probing = True
                return True
            return False

    def record_success(self) -> None:
        with self._lock:
            self._failures, self._opened_at, self._probing = 0, None, False

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._probing or self._failures >= self.threshold:
                if self._opened_at is None or self._probing:
                    self.trips += 1
                self._opened_at, self._probing = self._clock(), False


# ---------------------------------------------------------------------------- the mapper


def _schema_validator() -> Draft202012Validator:
    return Draft202012Validator(prompting.response_schema())


class LLMMapper:
    """A Mapper over one Provider. The local mapper supplies the shortlist and every fallback."""

    def __init__(
        self,
        name: str,
        provider: Provider,
        catalog: Catalog,
        settings: MapperSettings,
        local: Any,
        *,
        resilience: Resilience | None = None,
        redactor: Any = None,
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
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()
        self._validator = _schema_validator()
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
            "redact": bool(getattr(s, "redact", False)),
            "local": self.local.settings_hash(),
        }
        return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]

    def _count(self, key: str, n: int = 1) -> None:
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

    def _backoff(self, attempt: int) -> float:
        r = self.resilience
        cap = min(r.backoff_max_s, r.backoff_base_s * 2 ** (attempt - 1))
        return cap / 2 + self._rng.uniform(0, cap / 2)  # "equal jitter"

    def _send(self, body: dict[str, Any]) -> ProviderReply:
        r = self.resilience
        for attempt in range(1, r.max_attempts + 1):
            started = self._clock()
            try:
                reply = self.provider.send(body, r.timeout_s)
                self._count("http_ok")
                return reply
            except ProviderError as exc:
                self._count(f"http_error:{exc.kind}")
                self._record(Usage(), "error", error_kind=exc.kind, latency=self._clock() - started)
                if not exc.retryable or attempt == r.max_attempts:
                    raise
                if exc.kind == "rate_limited" and exc.retry_after is not None:
                    delay = exc.retry_after
                    if delay > r.max_retry_after_s:
                        raise
                else:
                    delay = self._backoff(attempt)
                log.warning("%s: %s; retry %d in %.1fs", self.name, exc, attempt, delay)
                self._count("retries")
                self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _record(
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

    # ------------------------------------------------------------ parsing

    def interpret(
        self, reply: ProviderReply, local_result: MappingResult, usage: Usage
    ) -> tuple[MappingResult | None, str | None, list[str]]:
        """(result, problem to report back, unknown IDs)."""
        if reply.problem is not None:
            return None, reply.problem, []
        errors = sorted(self._validator.iter_errors(reply.data), key=lambda e: list(e.absolute_path))
        if errors:
            text = "; ".join(
                f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:160]}" for e in errors[:3]
            )
            return None, f"the answer does not match the JSON schema: {text}", []
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
        return result, problem, unknown

    def fallback(self, local_result: MappingResult, reason: str, usage: Usage | None = None) -> MappingResult:
        self._count(f"fallback:{reason}")
        return local_result.model_copy(update={"fallback_reason": reason, "usage": usage})

    # ------------------------------------------------------------ Mapper

    def map(self, features: AlertFeatures, decision: Decision) -> MappingResult:
        local_result = self.local.map(features, decision)
        if not self.breaker.allow():
            return self.fallback(local_result, FALLBACK_CIRCUIT)
        prompt = self.render(features, decision, local_result)
        self._count("prompts")
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
            if reply.malformed:  # 2xx but not JSON: an endpoint answering garbage trips the breaker too
                self.breaker.record_failure()
            else:
                self.breaker.record_success()
            total = add_usage(total, reply.usage)
            result, problem, unknown = self.interpret(reply, local_result, total)
            if unknown:
                self._count("unknown_ids", len(unknown))
            outcome = "ok" if problem is None else ("unknown_ids" if unknown else "invalid")
            self._record(reply.usage, outcome, unknown=len(unknown), latency=self._clock() - started)
            if problem is None and result is not None:
                return result
            self._count("invalid_answers")
            log.warning("%s: invalid answer (attempt %d): %s", self.name, attempt, problem)
            note, last_unknown = problem, unknown
            if (
                attempt == 2
                and result is not None
                and any(self.catalog.resolve(t.technique_id).active_id for t in result.techniques)
            ):
                return result  # the valid part stands; the validator drops the unknown IDs (counted above)
        reason = FALLBACK_UNKNOWN_IDS if last_unknown else FALLBACK_INVALID
        return self.fallback(local_result, reason, total)

    # ------------------------------------------------------------ batch

    def batch_requests(
        self, items: Sequence[tuple[str, AlertFeatures, Decision]]
    ) -> tuple[list[dict[str, Any]], dict[str, MappingResult]]:
        """Vendor batch lines for (custom_id, features, decision) items, and each item's local result."""
        lines, locals_ = [], {}
        for custom_id, features, decision in items:
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", custom_id):
                raise ValueError(f"batch custom_id {custom_id!r} must match [A-Za-z0-9_-]{{1,64}}")
            local_result = self.local.map(features, decision)
            locals_[custom_id] = local_result
            prompt = self.render(features, decision, local_result)
            lines.append(self.provider.batch_line(custom_id, self.provider.build_request(prompt)))
        return lines, locals_

    def parse_batch(
        self, results: Iterable[Mapping[str, Any]], locals_: Mapping[str, MappingResult]
    ) -> dict[str, MappingResult]:
        """Vendor result lines → MappingResults; anything missing, failed or invalid falls back to local."""
        out: dict[str, MappingResult] = {}
        for line in results:
            custom_id, reply = self.provider.parse_batch_line(line)
            local_result = locals_.get(custom_id)
            if local_result is None:
                continue
            if isinstance(reply, ProviderError):
                out[custom_id] = self.fallback(local_result, f"{FALLBACK_PROVIDER}:{reply.kind}")
                continue
            result, problem, unknown = self.interpret(reply, local_result, reply.usage)
            self._record(reply.usage, "ok" if problem is None else "invalid", unknown=len(unknown), batch=True)
            if problem is None and result is not None:
                out[custom_id] = result
            else:
                out[custom_id] = self.fallback(
                    local_result, FALLBACK_UNKNOWN_IDS if unknown else FALLBACK_INVALID, reply.usage
                )
        for custom_id, local_result in locals_.items():
            out.setdefault(custom_id, self.fallback(local_result, "batch_missing_result"))
        return out


def assemble_mapper(
    name: str,
    provider: Provider,
    context: MapperContext,
    resilience: Resilience,
    sleep: Callable[[float], None] | None = None,
    clock: Callable[[], float] | None = None,
    redactor: Any = None,
) -> LLMMapper:
    """The LLMMapper every vendor factory ends with: injected sleep/clock for tests, redaction per settings."""
    kwargs: dict[str, Any] = {}
    if sleep is not None:
        kwargs["sleep"] = sleep
    if clock is not None:
        kwargs["clock"] = clock
    if redactor is None and context.settings.redact:
        from mitre.redact import Redactor

        redactor = Redactor.for_installation()
    return LLMMapper(
        name,
        provider,
        context.catalog,
        context.settings,
        context.local,
        resilience=resilience,
        redactor=redactor,
        **kwargs,
    )


def add_usage(a: Usage, b: Usage) -> Usage:
    return Usage(
        input_tokens=a.input_tokens + b.input_tokens,
        output_tokens=a.output_tokens + b.output_tokens,
        cache_write_tokens=a.cache_write_tokens + b.cache_write_tokens,
        cache_read_tokens=a.cache_read_tokens + b.cache_read_tokens,
    )


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
    lines, locals_ = mapper.batch_requests(items)
    batch_id = mapper.provider.submit_batch(lines)
    run = BatchRun(batch_id)
    for _ in range(max_polls):
        run.polls += 1
        found = mapper.provider.batch_results(batch_id)
        if found is not None:
            run.results = mapper.parse_batch(found, locals_)
            return run
        sleep(poll_interval_s)
    raise TimeoutError(f"batch {batch_id} did not finish after {max_polls} polls")


def strip_keywords(schema: Any, drop: frozenset[str]) -> Any:
    """A copy of a JSON schema without the given keywords (vendors accept different subsets)."""
    if isinstance(schema, dict):
        return {k: strip_keywords(v, drop) for k, v in schema.items() if k not in drop}
    if isinstance(schema, list):
        return [strip_keywords(v, drop) for v in schema]
    return schema


def jsonl(lines: Iterable[Mapping[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(dict(line)) + b"\n" for line in lines)


def parse_jsonl(text: str | bytes) -> list[dict[str, Any]]:
    raw = text.encode() if isinstance(text, str) else text
    return [orjson.loads(line) for line in raw.splitlines() if line.strip()]
