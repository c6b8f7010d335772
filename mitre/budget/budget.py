"""A workflow's budget over the ledger: `ok`, `soft` (throttle) or `killed` (local only).

Crossing a hard limit records a `trip` that holds until the period rolls over (next UTC day or month)
or `attackmap budget resume`; `attackmap budget kill` holds until resumed.
"""

from __future__ import annotations

import calendar
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from mitre.budget.ledger import Ledger, LedgerEvent
from mitre.budget.prices import PriceTable
from mitre.config import BudgetSettings
from mitre.models import Outcome, Usage

DAY = 86_400.0


def day_bounds(now: float) -> tuple[float, float]:
    d = datetime.fromtimestamp(now, UTC)
    start = datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()
    return start, start + DAY


def month_bounds(now: float) -> tuple[float, float]:
    d = datetime.fromtimestamp(now, UTC)
    start = datetime(d.year, d.month, 1, tzinfo=UTC).timestamp()
    return start, start + calendar.monthrange(d.year, d.month)[1] * DAY


State = Literal["ok", "soft", "killed"]


@dataclass(frozen=True)
class BudgetState:
    state: State
    reason: str
    spend_day: float
    spend_month: float
    detail: str = ""


class Budget:
    """One workflow's budget over a ledger. Thread-safe; the clock is injectable for tests."""

    def __init__(
        self,
        ledger: Ledger,
        settings: BudgetSettings,
        workflow: str,
        prices: PriceTable | None = None,
        clock: Callable[[], float] = time.time,
        sync_s: float = 5.0,
    ) -> None:
        self.ledger = ledger
        self.settings = settings
        self.workflow = workflow
        self.prices = prices or PriceTable.load()
        self.clock = clock
        self.sync_s = sync_s
        self._lock = threading.Lock()
        self._synced_at = -1e18
        self._day = (0.0, 0.0)
        self._month = (0.0, 0.0)
        self._control: LedgerEvent | None = None

    # ------------------------------------------------------------ spend

    def _refresh(self, now: float) -> None:
        day_start, _ = day_bounds(now)
        month_start, _ = month_bounds(now)
        if now - self._synced_at >= self.sync_s or self._day[0] != day_start or self._month[0] != month_start:
            self._day = (day_start, self.ledger.spend(self.workflow, day_start))
            self._month = (month_start, self.ledger.spend(self.workflow, month_start))
            self._control = self.ledger.last_control(self.workflow)
            self._synced_at = now

    def spend(self) -> tuple[float, float]:
        with self._lock:
            self._refresh(self.clock())
            return self._day[1], self._month[1]

    # ------------------------------------------------------------ state

    def _control_ts(self, now: float) -> float:
        """Control events get strictly increasing timestamps, so "the latest" is unambiguous in any ledger."""
        last = self._control.ts if self._control is not None else 0.0
        return max(now, last + 1e-3)

    def check(self) -> BudgetState:
        """The state for the next LLM call; crossing a hard limit records a trip, once for every worker
        sharing the ledger."""
        with self._lock:
            now = self.clock()
            self._refresh(now)
            day, month = self._day[1], self._month[1]
            ctrl = self._control
            if ctrl is not None and ctrl.kind == "kill":
                return BudgetState("killed", "kill_switch", day, month, ctrl.reason or "manual kill")
            if ctrl is not None and ctrl.kind == "trip" and float(ctrl.detail.get("until", 0)) > now:
                return BudgetState("killed", "hard_limit", day, month, ctrl.reason)
            override = float(ctrl.detail.get("override_until", 0)) if ctrl is not None and ctrl.kind == "resume" else 0
            s = self.settings
            for period, limit, spent, bounds in (
                ("day", s.daily_usd, day, day_bounds(now)),
                ("month", s.monthly_usd, month, month_bounds(now)),
            ):
                if limit is not None and spent >= limit and override <= now:
                    reason = f"{period} spend ${spent:.4f} reached the hard limit ${limit:g}"
                    event = LedgerEvent(
                        ts=self._control_ts(now),
                        kind="trip",
                        workflow=self.workflow,
                        reason=reason,
                        detail={"period": period, "limit": limit, "spend": spent, "until": bounds[1]},
                    )
                    # Every worker that crosses the limit tries; the key makes one of them record it.
                    after = ctrl.ts if ctrl is not None else 0.0
                    key = f"trip:{self.workflow}:{period}:{bounds[1]:.0f}:{after!r}"
                    if self.ledger.append_once(event, key):
                        self._control = event
                    else:
                        self._control = self.ledger.last_control(self.workflow)
                    return BudgetState("killed", "hard_limit", day, month, reason)
            for period, limit, spent in (("day", s.daily_usd, day), ("month", s.monthly_usd, month)):
                if limit is not None and spent >= s.soft_limit_ratio * limit:
                    return BudgetState(
                        "soft",
                        "soft_limit",
                        day,
                        month,
                        f"{period} spend ${spent:.4f} ≥ {s.soft_limit_ratio:.0%} of ${limit:g}",
                    )
            return BudgetState("ok", "ok", day, month)

    def kill(self, reason: str = "manual kill", by: str = "cli") -> None:
        with self._lock:
            event = LedgerEvent(
                ts=self._control_ts(self.clock()), kind="kill", workflow=self.workflow, reason=reason, detail={"by": by}
            )
            self.ledger.append([event])
            self._control = event

    def resume(self, by: str = "cli") -> None:
        """Lift a kill or trip. If spend is over a hard limit right now, calls resume for the rest of that
        period on the operator's authority (no immediate re-trip)."""
        with self._lock:
            now = self.clock()
            self._synced_at = -1e18
            self._refresh(now)
            s = self.settings
            override = 0.0
            if s.daily_usd is not None and self._day[1] >= s.daily_usd:
                override = max(override, day_bounds(now)[1])
            if s.monthly_usd is not None and self._month[1] >= s.monthly_usd:
                override = max(override, month_bounds(now)[1])
            event = LedgerEvent(
                ts=self._control_ts(now),
                kind="resume",
                workflow=self.workflow,
                reason="resumed",
                detail={"by": by, "override_until": override},
            )
            self.ledger.append([event])
            self._control = event

    # ------------------------------------------------------------ recording

    def record_call(
        self,
        provider: str,
        model: str,
        usage: Usage,
        outcome: str = "ok",
        batch: bool = False,
        error_kind: str | None = None,
        unknown_ids: int = 0,
        cache_ttl: str = "5m",
    ) -> float:
        cost = self.prices.cost(model, usage, batch, cache_ttl)
        event = LedgerEvent(
            ts=self.clock(),
            kind="llm_call",
            workflow=self.workflow,
            provider=provider,
            model=model,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cost_usd=cost or 0.0,
            reason=outcome if error_kind is None else f"error:{error_kind}",
            detail={"priced": cost is not None, "batch": batch, "unknown_ids": unknown_ids},
        )
        self.ledger.append([event])
        with self._lock:
            self._day = (self._day[0], self._day[1] + event.cost_usd)
            self._month = (self._month[0], self._month[1] + event.cost_usd)
        return event.cost_usd

    def record_fallback(self, reason: str, count: int = 1) -> None:
        self.ledger.append(
            [LedgerEvent(ts=self.clock(), kind="fallback", workflow=self.workflow, reason=reason, count=count)]
        )

    def record_outcomes(self, outcomes: Iterable[Outcome]) -> None:
        """Hybrid-decision telemetry (kind/reason per rule) and cache hits/misses, aggregated per batch."""
        decisions: Counter[tuple[str, str, str]] = Counter()
        cache: Counter[str] = Counter()
        for o in outcomes:
            if o.decision is None:
                continue
            decisions[(o.decision.kind.value, o.decision.reason, _rule_name(o.alert))] += 1
            if o.mapping is not None:
                cache["hit" if o.cache_hit else "miss"] += 1
        now = self.clock()
        events = [
            LedgerEvent(
                ts=now,
                kind="decision",
                workflow=self.workflow,
                reason=reason,
                count=n,
                detail={"decision": kind, "rule": rule},
            )
            for (kind, reason, rule), n in decisions.items()
        ]
        events += [
            LedgerEvent(ts=now, kind="cache", workflow=self.workflow, reason=k, count=n) for k, n in cache.items()
        ]
        if events:
            self.ledger.append(events)


def _rule_name(alert: Mapping[str, Any] | None) -> str:
    if not alert:
        return ""
    for key in ("kibana.alert.rule.name", "signal.rule.name"):
        if isinstance(alert.get(key), str):
            return str(alert[key])
    node: Any = alert
    for part in ("kibana", "alert", "rule", "name"):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node if isinstance(node, str) else ""
