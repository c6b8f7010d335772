"""The ledger in a PostgreSQL table, shared by every worker on every machine (`budget.ledger: postgresql`).

The same events as the SQLite ledger, in one table; spend is a SUM over an index on (workflow, kind, ts).
`append_once` inserts under a unique key with ON CONFLICT DO NOTHING, so of the workers that cross a hard
limit at once exactly one records the trip and the others read it. One connection per process and
thread of use (a forked worker opens its own), autocommit: each append is durable when it returns.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

from psycopg.types.json import Jsonb

from mitre.budget.ledger import CONTROL_KINDS, LedgerEvent

_COLUMNS = tuple(f for f in LedgerEvent.__dataclass_fields__ if f != "detail")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS {table} (
    ts double precision NOT NULL, kind text NOT NULL, workflow text NOT NULL, provider text, model text,
    input_tokens bigint, output_tokens bigint, cache_write_tokens bigint, cache_read_tokens bigint,
    cost_usd double precision, count bigint, reason text, detail jsonb, once text UNIQUE,
    id bigserial PRIMARY KEY
);
CREATE INDEX IF NOT EXISTS {table}_wf_kind_ts ON {table} (workflow, kind, ts);
"""


class PostgresLedger:
    def __init__(self, dsn: str, table: str = "attackmap_ledger") -> None:
        self.dsn = dsn
        self.table = table  # validated by BudgetSettings (an identifier)
        self._lock = threading.Lock()
        self._conn: Any = None
        self._pid = 0
        with self._lock:
            # Two workers starting at once may both create the table: the loser retries and finds it.
            try:
                self._connection().execute(_SCHEMA.format(table=table))
            except Exception:
                self._connection().execute(_SCHEMA.format(table=table))

    def _connection(self) -> Any:
        import psycopg

        if self._conn is None or self._pid != os.getpid() or self._conn.closed:
            self._conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=10)
            self._pid = os.getpid()
        return self._conn

    def _row(self, e: LedgerEvent, once: str | None) -> tuple[Any, ...]:
        return (*(getattr(e, c) for c in _COLUMNS), Jsonb(e.detail), once)

    def _insert_sql(self, conflict: str = "") -> str:
        columns = (*_COLUMNS, "detail", "once")
        return f"INSERT INTO {self.table} ({','.join(columns)}) VALUES ({','.join(['%s'] * len(columns))}){conflict}"

    def append(self, events: Sequence[LedgerEvent]) -> None:
        if not events:
            return
        with self._lock, self._connection().cursor() as cursor:
            cursor.executemany(self._insert_sql(), [self._row(e, None) for e in events])

    def append_once(self, event: LedgerEvent, key: str) -> bool:
        with self._lock:
            cursor = self._connection().execute(
                self._insert_sql(" ON CONFLICT (once) DO NOTHING"), self._row(event, key)
            )
            return bool(cursor.rowcount == 1)

    def spend(self, workflow: str, since: float) -> float:
        with self._lock:
            row = (
                self._connection()
                .execute(
                    f"SELECT COALESCE(SUM(cost_usd), 0) FROM {self.table}"
                    " WHERE workflow=%s AND kind='llm_call' AND ts>=%s",
                    (workflow, since),
                )
                .fetchone()
            )
        return float(row[0])

    def _events(self, where: str, args: Sequence[Any], tail: str = "") -> list[LedgerEvent]:
        sql = f"SELECT {','.join(_COLUMNS)}, detail FROM {self.table} WHERE {where}{tail}"
        with self._lock:
            rows = self._connection().execute(sql, args).fetchall()
        return [LedgerEvent(**dict(zip(_COLUMNS, r[:-1], strict=True)), detail=r[-1] or {}) for r in rows]

    def events(
        self, since: float = 0.0, kinds: Sequence[str] | None = None, workflow: str | None = None
    ) -> list[LedgerEvent]:
        where, args = "ts>=%s", list[Any]([since])
        if kinds:
            where += " AND kind = ANY(%s)"
            args.append(list(kinds))
        if workflow is not None:
            where += " AND workflow=%s"
            args.append(workflow)
        return self._events(where, args, " ORDER BY ts, id")

    def last_control(self, workflow: str) -> LedgerEvent | None:
        found = self._events(
            "workflow=%s AND kind = ANY(%s)", [workflow, list(CONTROL_KINDS)], " ORDER BY ts DESC, id DESC LIMIT 1"
        )
        return found[0] if found else None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None
