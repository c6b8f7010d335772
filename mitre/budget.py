"""LLM spend: prices, the ledger, and the budget (soft limit throttle, hard limit kill switch).

- Prices come from `mitre/data/prices.yaml` (USD per million tokens for input, output, cache reads
  and cache writes; batch calls at the batch discount). Unknown models (local servers) cost 0 and
  are marked unpriced.
- The ledger is an append-only event log: every billed call (`llm_call`), every budget control
  (`trip`, `kill`, `resume`), and hybrid-decision / cache telemetry (`decision`, `cache`), each with a
  `count` so telemetry is written aggregated per batch. SQLite at $ATTACKMAP_HOME/ledger.sqlite by
  default; an Elasticsearch index when `budget.ledger: elasticsearch` (Kibana dashboard in kibana/).
- The budget turns the ledger into a state per workflow: `ok`, `soft` (throttle) or `killed` (local
  only). Crossing a hard limit records a `trip` that holds until the period rolls over (next UTC day or
  month) or `attackmap budget resume`; `attackmap budget kill` holds until resumed.
"""

from __future__ import annotations

import calendar
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Protocol

import orjson
import yaml

from mitre.config import BudgetSettings
from mitre.models import Outcome, Usage

CONTROL_KINDS = ("trip", "kill", "resume")
DAY = 86_400.0


# ---------------------------------------------------------------------------- prices


@dataclass(frozen=True)
class Price:
    model: str
    provider: str
    input: float
    output: float
    cache_read: float
    cache_write: float


class PriceTable:
    def __init__(self, prices: Mapping[str, Price], per_tokens: int = 1_000_000, batch_discount: float = 0.5) -> None:
        self.prices = dict(prices)
        self.per_tokens = per_tokens
        self.batch_discount = batch_discount

    @classmethod
    def load(cls, path: Path | None = None) -> PriceTable:
        text = path.read_text() if path else resources.files("mitre").joinpath("data/prices.yaml").read_text()
        raw = yaml.safe_load(text)
        prices: dict[str, Price] = {}
        for name, p in raw["models"].items():
            price = Price(
                model=name,
                provider=str(p.get("provider", "")),
                input=float(p["input"]),
                output=float(p["output"]),
                cache_read=float(p.get("cache_read", p["input"])),
                cache_write=float(p.get("cache_write", p["input"])),
            )
            for alias in (name, *p.get("aliases", ())):
                prices[alias] = price
        return cls(prices, int(raw.get("per_tokens", 1_000_000)), float(raw.get("batch_discount", 0.5)))

    def models(self) -> list[Price]:
        return list({p.model: p for p in self.prices.values()}.values())

    def price(self, model: str | None) -> Price | None:
        if not model:
            return None
        if model in self.prices:
            return self.prices[model]
        # Dated snapshots (claude-haiku-4-5-20251001, gpt-4o-mini-2024-07-18) price as their family.
        for name in sorted(self.prices, key=len, reverse=True):
            if model.startswith(name + "-"):
                return self.prices[name]
        return None

    def cost(self, model: str | None, usage: Usage, batch: bool = False) -> float | None:
        p = self.price(model)
        if p is None:
            return None
        usd = (
            usage.input_tokens * p.input
            + usage.output_tokens * p.output
            + usage.cache_read_tokens * p.cache_read
            + usage.cache_write_tokens * p.cache_write
        ) / self.per_tokens
        return usd * (self.batch_discount if batch else 1.0)


# ---------------------------------------------------------------------------- ledger


@dataclass(frozen=True)
class LedgerEvent:
    ts: float
    kind: str
    workflow: str
    provider: str = ""
    model: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0
    cost_usd: float = 0.0
    count: int = 1
    reason: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    def as_doc(self) -> dict[str, Any]:
        doc = {k: getattr(self, k) for k in self.__dataclass_fields__}
        doc["@timestamp"] = datetime.fromtimestamp(self.ts, UTC).isoformat()
        return doc


class Ledger(Protocol):
    def append(self, events: Sequence[LedgerEvent]) -> None: ...

    def spend(self, workflow: str, since: float) -> float: ...

    def events(
        self, since: float = 0.0, kinds: Sequence[str] | None = None, workflow: str | None = None
    ) -> list[LedgerEvent]: ...

    def last_control(self, workflow: str) -> LedgerEvent | None: ...

    def close(self) -> None: ...


_COLUMNS = tuple(f for f in LedgerEvent.__dataclass_fields__ if f != "detail")


class SQLiteLedger:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS events (ts REAL NOT NULL, kind TEXT NOT NULL, workflow TEXT NOT NULL,"
            " provider TEXT, model TEXT, input_tokens INTEGER, output_tokens INTEGER, cache_write_tokens INTEGER,"
            " cache_read_tokens INTEGER, cost_usd REAL, count INTEGER, reason TEXT, detail TEXT)"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS events_wf_kind_ts ON events (workflow, kind, ts)")
        self._db.commit()

    def append(self, events: Sequence[LedgerEvent]) -> None:
        rows = [(*(getattr(e, c) for c in _COLUMNS), orjson.dumps(e.detail).decode()) for e in events]
        with self._lock:
            self._db.executemany(f"INSERT INTO events VALUES ({','.join('?' * (len(_COLUMNS) + 1))})", rows)
            self._db.commit()

    def spend(self, workflow: str, since: float) -> float:
        with self._lock:
            row = self._db.execute(
                "SELECT COALESCE(SUM(cost_usd), 0) FROM events WHERE workflow=? AND kind='llm_call' AND ts>=?",
                (workflow, since),
            ).fetchone()
        return float(row[0])

    def events(
        self, since: float = 0.0, kinds: Sequence[str] | None = None, workflow: str | None = None
    ) -> list[LedgerEvent]:
        sql = f"SELECT {','.join(_COLUMNS)}, detail FROM events WHERE ts>=?"
        args: list[Any] = [since]
        if kinds:
            sql += f" AND kind IN ({','.join('?' * len(kinds))})"
            args += list(kinds)
        if workflow is not None:
            sql += " AND workflow=?"
            args.append(workflow)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY ts, rowid", args).fetchall()
        return [LedgerEvent(**dict(zip(_COLUMNS, r[:-1], strict=True)), detail=orjson.loads(r[-1])) for r in rows]

    def last_control(self, workflow: str) -> LedgerEvent | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {','.join(_COLUMNS)}, detail FROM events WHERE workflow=? AND kind IN"
                " ('trip','kill','resume') ORDER BY ts DESC, rowid DESC LIMIT 1",
                (workflow,),
            ).fetchone()
        if row is None:
            return None
        return LedgerEvent(**dict(zip(_COLUMNS, row[:-1], strict=True)), detail=orjson.loads(row[-1]))

    def close(self) -> None:
        with self._lock:
            self._db.close()


def ledger_index_mappings() -> dict[str, Any]:
    keyword = {"type": "keyword"}
    return {
        "dynamic": False,
        "properties": {
            "@timestamp": {"type": "date"},
            "ts": {"type": "double"},
            "kind": keyword,
            "workflow": keyword,
            "provider": keyword,
            "model": keyword,
            "reason": keyword,
            "input_tokens": {"type": "long"},
            "output_tokens": {"type": "long"},
            "cache_write_tokens": {"type": "long"},
            "cache_read_tokens": {"type": "long"},
            "cost_usd": {"type": "double"},
            "count": {"type": "long"},
            "detail": {"type": "object", "enabled": False},
        },
    }


class ElasticLedger:
    """The same ledger in an Elasticsearch index (elasticsearch 8.x client), for the Kibana dashboard."""

    def __init__(self, client: Any, index: str = "attackmap-ledger", refresh: bool | str = "wait_for") -> None:
        self.client = client
        self.index = index
        self.refresh = refresh
        if not client.indices.exists(index=index):
            client.options(ignore_status=400).indices.create(index=index, mappings=ledger_index_mappings())

    def append(self, events: Sequence[LedgerEvent]) -> None:
        if not events:
            return
        operations: list[dict[str, Any]] = []
        for e in events:
            operations += [{"index": {"_index": self.index}}, e.as_doc()]
        response = self.client.bulk(operations=operations, refresh=self.refresh)
        if response.get("errors"):
            raise RuntimeError(f"ledger bulk write to {self.index} had errors")

    def _filter(self, since: float, kinds: Sequence[str] | None, workflow: str | None) -> dict[str, Any]:
        must: list[dict[str, Any]] = [{"range": {"ts": {"gte": since}}}]
        if kinds:
            must.append({"terms": {"kind": list(kinds)}})
        if workflow is not None:
            must.append({"term": {"workflow": workflow}})
        return {"bool": {"filter": must}}

    def spend(self, workflow: str, since: float) -> float:
        response = self.client.search(
            index=self.index,
            size=0,
            query=self._filter(since, ["llm_call"], workflow),
            aggs={"usd": {"sum": {"field": "cost_usd"}}},
        )
        return float(response["aggregations"]["usd"]["value"] or 0.0)

    def events(
        self, since: float = 0.0, kinds: Sequence[str] | None = None, workflow: str | None = None
    ) -> list[LedgerEvent]:
        out: list[LedgerEvent] = []
        search_after: list[Any] | None = None
        while True:
            kwargs: dict[str, Any] = {"search_after": search_after} if search_after else {}
            response = self.client.search(
                index=self.index,
                size=1000,
                query=self._filter(since, kinds, workflow),
                sort=[{"ts": "asc"}, {"_doc": "asc"}],
                **kwargs,
            )
            hits = response["hits"]["hits"]
            for h in hits:
                src = dict(h["_source"])
                src.pop("@timestamp", None)
                out.append(LedgerEvent(**{k: v for k, v in src.items() if k in LedgerEvent.__dataclass_fields__}))
            if len(hits) < 1000:
                return out
            search_after = hits[-1]["sort"]

    def last_control(self, workflow: str) -> LedgerEvent | None:
        response = self.client.search(
            index=self.index, size=1, query=self._filter(0.0, CONTROL_KINDS, workflow), sort=[{"ts": "desc"}]
        )
        hits = response["hits"]["hits"]
        if not hits:
            return None
        src = dict(hits[0]["_source"])
        src.pop("@timestamp", None)
        return LedgerEvent(**{k: v for k, v in src.items() if k in LedgerEvent.__dataclass_fields__})

    def close(self) -> None:
        pass


def open_ledger(settings: BudgetSettings, home: Path, es_client: Any = None) -> Ledger:
    """SQLite at budget.ledger_path or $ATTACKMAP_HOME/ledger.sqlite; Elasticsearch when configured."""
    kind = getattr(settings, "ledger", "sqlite")
    if kind == "elasticsearch":
        if es_client is None:
            from mitre.config import Environment
            from mitre.io.elastic import es_client as make_client

            url = getattr(settings, "ledger_es_url", None) or Environment().es_url
            if not url:
                raise ValueError("budget.ledger is elasticsearch: set budget.ledger_es_url or ATTACKMAP_ES_URL")
            es_client = make_client(url)
        return ElasticLedger(es_client, getattr(settings, "ledger_index", "attackmap-ledger"))
    path = getattr(settings, "ledger_path", None) or home / "ledger.sqlite"
    return SQLiteLedger(Path(path))


# ---------------------------------------------------------------------------- budget


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
        """The state for the next LLM call; crossing a hard limit records a trip (once)."""
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
                    self.ledger.append([event])
                    self._control = event
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
    ) -> float:
        cost = self.prices.cost(model, usage, batch)
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


# ---------------------------------------------------------------------------- status report


@dataclass(frozen=True)
class StatusReport:
    workflow: str
    state: BudgetState
    daily_usd: float | None
    monthly_usd: float | None
    burn_usd_per_hour: float
    projected_month_usd: float
    llm_calls_month: int
    tokens_month: dict[str, int]
    cache_hits: int
    cache_misses: int
    avoided_by_rule: int
    avoided_by_cache: int
    fallbacks: dict[str, int]
    decisions: dict[str, int]
    daily_series: list[tuple[str, float]]

    @property
    def cache_hit_rate(self) -> float | None:
        total = self.cache_hits + self.cache_misses
        return self.cache_hits / total if total else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "workflow": self.workflow,
            "state": self.state.state,
            "reason": self.state.reason,
            "detail": self.state.detail,
            "spend_today_usd": round(self.state.spend_day, 6),
            "spend_month_usd": round(self.state.spend_month, 6),
            "daily_limit_usd": self.daily_usd,
            "monthly_limit_usd": self.monthly_usd,
            "burn_usd_per_hour": round(self.burn_usd_per_hour, 6),
            "projected_month_usd": round(self.projected_month_usd, 4),
            "llm_calls_month": self.llm_calls_month,
            "tokens_month": self.tokens_month,
            "cache_hit_rate": self.cache_hit_rate,
            "calls_avoided_by_hybrid_rule": self.avoided_by_rule,
            "calls_avoided_by_cache": self.avoided_by_cache,
            "fallbacks": self.fallbacks,
            "decisions": self.decisions,
            "daily_spend": self.daily_series,
        }


def status_report(budget: Budget, burn_window_s: float = 6 * 3600) -> StatusReport:
    """Spend, burn rate (last `burn_window_s`), projection to month end, cache and hybrid-rule savings."""
    state = budget.check()
    now = budget.clock()
    month_start, month_end = month_bounds(now)
    events = budget.ledger.events(since=month_start, workflow=budget.workflow)
    calls = [e for e in events if e.kind == "llm_call"]
    window_start = max(month_start, now - burn_window_s)
    recent = sum(e.cost_usd for e in calls if e.ts >= window_start)
    hours = max((now - window_start) / 3600, 1 / 60)
    burn = recent / hours
    projected = state.spend_month + burn * (month_end - now) / 3600
    tokens = Counter[str]()
    for e in calls:
        tokens["input"] += e.input_tokens
        tokens["output"] += e.output_tokens
        tokens["cache_write"] += e.cache_write_tokens
        tokens["cache_read"] += e.cache_read_tokens
    cache = Counter[str]()
    decisions = Counter[str]()
    fallbacks = Counter[str]()
    for e in events:
        if e.kind == "cache":
            cache[e.reason] += e.count
        elif e.kind == "decision":
            decisions[f"{e.detail.get('decision')}:{e.reason}"] += e.count
        elif e.kind == "fallback":
            fallbacks[e.reason] += e.count
    avoided_by_rule = sum(n for k, n in decisions.items() if k.startswith("skip:"))
    per_day: dict[str, float] = {}
    for e in calls:
        day = datetime.fromtimestamp(e.ts, UTC).strftime("%Y-%m-%d")
        per_day[day] = per_day.get(day, 0.0) + e.cost_usd
    return StatusReport(
        workflow=budget.workflow,
        state=state,
        daily_usd=budget.settings.daily_usd,
        monthly_usd=budget.settings.monthly_usd,
        burn_usd_per_hour=burn,
        projected_month_usd=projected,
        llm_calls_month=sum(1 for e in calls if not e.reason.startswith("error")),
        tokens_month=dict(tokens),
        cache_hits=cache["hit"],
        cache_misses=cache["miss"],
        avoided_by_rule=avoided_by_rule,
        avoided_by_cache=cache["hit"],
        fallbacks=dict(fallbacks),
        decisions=dict(decisions),
        daily_series=sorted(per_day.items()),
    )


def spend_chart_html(report: StatusReport) -> str:
    """A self-contained HTML page with an inline SVG chart of daily and cumulative spend (no scripts)."""
    from html import escape

    series = report.daily_series or [(datetime.now(UTC).strftime("%Y-%m-%d"), 0.0)]
    width, height, pad = 760, 320, 50
    cumulative: list[float] = []
    total = 0.0
    for _, usd in series:
        total += usd
        cumulative.append(total)
    top = max([*cumulative, report.monthly_usd or 0.0, 1e-9])
    n = len(series)
    step = (width - 2 * pad) / max(n, 1)

    def y(v: float) -> float:
        return height - pad - (height - 2 * pad) * v / top

    bars = "".join(
        f'<rect x="{pad + i * step + step * 0.15:.1f}" y="{y(usd):.1f}" width="{step * 0.7:.1f}" '
        f'height="{height - pad - y(usd):.1f}" fill="#6baed6"><title>{escape(d)}: ${usd:.4f}</title></rect>'
        for i, (d, usd) in enumerate(series)
    )
    points = " ".join(f"{pad + (i + 0.5) * step:.1f},{y(v):.1f}" for i, v in enumerate(cumulative))
    limit = ""
    if report.monthly_usd:
        limit = (
            f'<line x1="{pad}" x2="{width - pad}" y1="{y(report.monthly_usd):.1f}" y2="{y(report.monthly_usd):.1f}" '
            f'stroke="#d62728" stroke-dasharray="6 4"/><text x="{width - pad}" y="{y(report.monthly_usd) - 4:.1f}" '
            f'text-anchor="end" font-size="11" fill="#d62728">monthly limit ${report.monthly_usd:g}</text>'
        )
    labels = "".join(
        f'<text x="{pad + (i + 0.5) * step:.1f}" y="{height - pad + 14}" font-size="10" text-anchor="middle">'
        f"{escape(d[5:])}</text>"
        for i, (d, _) in enumerate(series)
        if n <= 31
    )
    rows = "".join(
        f"<tr><td>{escape(str(k))}</td><td>{escape(str(v))}</td></tr>"
        for k, v in report.as_dict().items()
        if k != "daily_spend"
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>attackmap LLM spend: {escape(report.workflow)}</title>
<style>body{{font-family:sans-serif;margin:24px}}td{{padding:2px 10px;border-bottom:1px solid #eee}}</style></head>
<body><h1>LLM spend — workflow {escape(report.workflow)}</h1>
<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img"
 aria-label="daily spend bars and cumulative spend line">
<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#333"/>
<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#333"/>
<text x="{pad - 6}" y="{pad}" font-size="11" text-anchor="end">${top:.2f}</text>
<text x="{pad - 6}" y="{height - pad}" font-size="11" text-anchor="end">$0</text>
{bars}<polyline points="{points}" fill="none" stroke="#08519c" stroke-width="2"/>{limit}{labels}
</svg>
<p>Bars: spend per UTC day; line: cumulative spend this month.</p>
<table>{rows}</table></body></html>
"""
