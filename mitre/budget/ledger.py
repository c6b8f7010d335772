"""The ledger: an append-only event log of every billed call (`llm_call`), every budget control (`trip`,
`kill`, `resume`), local fallbacks (`fallback`) and hybrid-decision / cache telemetry (`decision`,
`cache`), each with a `count` so telemetry is written aggregated per batch. SQLite at
$ATTACKMAP_HOME/ledger.sqlite by default; a PostgreSQL table when `budget.ledger: postgresql`, or an
Elasticsearch index when `budget.ledger: elasticsearch` (Kibana dashboard in kibana/), so workers on
several machines share one budget.

A control that many workers may record at once — the trip when spend crosses a hard limit — is
appended with `append_once` under a key: of every worker that crosses it, exactly one records it."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import orjson

from mitre.config import BudgetSettings

if TYPE_CHECKING:
    from elasticsearch import Elasticsearch

CONTROL_KINDS = ("trip", "kill", "resume")


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

    def append_once(self, event: LedgerEvent, key: str) -> bool:
        """Append the event unless one was appended under `key` before; True when this call appended it."""
        ...

    def spend(self, workflow: str, since: float) -> float: ...

    def events(
        self, since: float = 0.0, kinds: Sequence[str] | None = None, workflow: str | None = None
    ) -> list[LedgerEvent]: ...

    def last_control(self, workflow: str) -> LedgerEvent | None: ...

    def close(self) -> None: ...


_COLUMNS = tuple(f for f in LedgerEvent.__dataclass_fields__ if f != "detail")
_INSERT_COLUMNS = (*_COLUMNS, "detail", "once")


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
        if "once" not in {row[1] for row in self._db.execute("PRAGMA table_info(events)")}:  # older ledgers
            self._db.execute("ALTER TABLE events ADD COLUMN once TEXT")
        self._db.execute("CREATE UNIQUE INDEX IF NOT EXISTS events_once ON events (once)")
        self._db.commit()

    def _insert(self, events: Sequence[LedgerEvent], once: str | None, verb: str = "INSERT") -> int:
        rows = [(*(getattr(e, c) for c in _COLUMNS), orjson.dumps(e.detail).decode(), once) for e in events]
        sql = f"{verb} INTO events ({','.join(_INSERT_COLUMNS)}) VALUES ({','.join('?' * len(_INSERT_COLUMNS))})"
        with self._lock:
            cursor = self._db.executemany(sql, rows)
            self._db.commit()
            return cursor.rowcount

    def append(self, events: Sequence[LedgerEvent]) -> None:
        self._insert(events, None)

    def append_once(self, event: LedgerEvent, key: str) -> bool:
        return self._insert([event], key, "INSERT OR IGNORE") == 1

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

    def __init__(
        self, client: Elasticsearch, index: str = "attackmap-ledger", refresh: Literal["wait_for"] | bool = "wait_for"
    ) -> None:
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

    def append_once(self, event: LedgerEvent, key: str) -> bool:
        """The key is the document id, created only if absent (409 otherwise)."""
        response = self.client.options(ignore_status=409).index(
            index=self.index, id=key, document=event.as_doc(), op_type="create", refresh=self.refresh
        )
        return response.get("result") == "created"

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


def open_ledger(settings: BudgetSettings, home: Path, es_client: Elasticsearch | None = None) -> Ledger:
    """SQLite at budget.ledger_path or $ATTACKMAP_HOME/ledger.sqlite; PostgreSQL or Elasticsearch when configured."""
    if settings.ledger == "postgresql":
        from mitre.budget.ledger_postgres import PostgresLedger
        from mitre.config import Environment

        dsn = settings.ledger_postgres_url or Environment().postgres_url
        if not dsn:
            raise ValueError("budget.ledger is postgresql: set budget.ledger_postgres_url or ATTACKMAP_POSTGRES_URL")
        return PostgresLedger(dsn, settings.ledger_table)
    if settings.ledger == "elasticsearch":
        if es_client is None:
            from mitre.config import Environment
            from mitre.io.elastic import es_client as make_client

            url = settings.ledger_es_url or Environment().es_url
            if not url:
                raise ValueError("budget.ledger is elasticsearch: set budget.ledger_es_url or ATTACKMAP_ES_URL")
            es_client = make_client(url)
        return ElasticLedger(es_client, settings.ledger_index)
    return SQLiteLedger(settings.ledger_path or home / "ledger.sqlite")
