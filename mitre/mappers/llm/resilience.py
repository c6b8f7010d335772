"""How a vendor call survives a bad day: timeouts, retries, backoff and a circuit breaker.

- a per-request timeout;
- 429 honours `retry-after`/`retry-after-ms` (a wait longer than `max_retry_after_s` gives up now);
- 5xx, 529 (overloaded), timeouts and connection errors back off exponentially with "equal jitter";
- 400/401/403 are not retried;
- a circuit breaker (one per mapper) sends alerts to the local mapper after N consecutive failed calls
  and lets one probe through after a cool-down.
Sleep, clock and randomness are injected, so tests run without waiting.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from mitre.mappers.llm.errors import ProviderError
from mitre.mappers.llm.transport import ProviderReply

log = logging.getLogger("attackmap.llm")


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


class Retrier:
    """One request, sent until it succeeds, fails for good, or runs out of attempts."""

    def __init__(
        self,
        resilience: Resilience,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.resilience = resilience
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()

    def backoff(self, attempt: int) -> float:
        r = self.resilience
        cap = min(r.backoff_max_s, r.backoff_base_s * 2 ** (attempt - 1))
        return cap / 2 + self._rng.uniform(0, cap / 2)  # "equal jitter"

    def send(
        self,
        label: str,
        attempt_once: Callable[[float], ProviderReply],
        on_error: Callable[[ProviderError, float], None],
        on_retry: Callable[[], None],
    ) -> ProviderReply:
        """`attempt_once(timeout)` is one HTTP call; `on_error(error, latency)` sees every failed one,
        `on_retry()` every retry. The last error is raised when no attempt succeeds."""
        r = self.resilience
        for attempt in range(1, r.max_attempts + 1):
            started = self._clock()
            try:
                return attempt_once(r.timeout_s)
            except ProviderError as exc:
                on_error(exc, self._clock() - started)
                if not exc.retryable or attempt == r.max_attempts:
                    raise
                if exc.kind == "rate_limited" and exc.retry_after is not None:
                    delay = exc.retry_after
                    if delay > r.max_retry_after_s:
                        raise
                else:
                    delay = self.backoff(attempt)
                log.warning("%s: %s; retry %d in %.1fs", label, exc, attempt, delay)
                on_retry()
                self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover
