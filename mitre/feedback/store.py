"""Where feedback lives.

Corrections and opt-outs are the durable, shared part: `SQLiteCorrections` (embedded, one file every
process on the host opens) or `ElasticCorrections` (an index every worker shares). Both are append-only,
so the newest record wins and `version()` — a count — tells an engine that something changed.
The review queue and the decision telemetry are local bookkeeping in `FeedbackLog` (SQLite).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import orjson

from mitre.feedback.models import Feedback, OptOut, ReviewItem, RuleTelemetry


class CorrectionStore(Protocol):
    def add(self, feedback: Feedback) -> Feedback: ...

    def latest(self, keys: Iterable[str]) -> dict[str, Feedback]: ...

    def version(self) -> int: ...

    def set_opt_out(self, opt_out: OptOut) -> None: ...

    def opted_out(self, tenant: str | None) -> set[str]: ...

    def history(self, tenant: str | None, limit: int = 1000) -> list[Feedback]: ...


class _Local:
    """A SQLite file opened once per thread and process (a forked worker must not share its parent's).
    `durable=False` (telemetry, the review queue) skips the fsync of each commit: a crash may lose the
    last batch's counts, and enrichment never waits for the disk."""

    def __init__(self, path: Path, schema: Sequence[str], durable: bool = True) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.synchronous = "FULL" if durable else "NORMAL"
        self._local = threading.local()
        conn = self.conn()
        conn.execute("PRAGMA journal_mode=WAL")
        for statement in schema:
            conn.execute(statement)

    def conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn


def _tenant_clause(tenant: str | None) -> tuple[str, tuple[Any, ...]]:
    return ("tenant IS NULL", ()) if tenant is None else ("tenant = ?", (tenant,))


class SQLiteCorrections:
    def __init__(self, path: Path) -> None:
        self._db = _Local(
            path,
            (
                "CREATE TABLE IF NOT EXISTS feedback (seq INTEGER PRIMARY KEY AUTOINCREMENT, mapping_key TEXT, "
                "tenant TEXT, rule_id TEXT, verdict TEXT, doc TEXT)",
                "CREATE INDEX IF NOT EXISTS feedback_key ON feedback (mapping_key)",
                "CREATE TABLE IF NOT EXISTS opt_outs (seq INTEGER PRIMARY KEY AUTOINCREMENT, tenant TEXT, "
                "rule_id TEXT, opted_out INTEGER, doc TEXT)",
            ),
        )

    def add(self, feedback: Feedback) -> Feedback:
        stamped = feedback if feedback.ts else feedback.model_copy(update={"ts": time.time()})
        self._db.conn().execute(
            "INSERT INTO feedback (mapping_key, tenant, rule_id, verdict, doc) VALUES (?, ?, ?, ?, ?)",
            (stamped.mapping_key, stamped.tenant, stamped.rule_id, stamped.verdict, stamped.model_dump_json()),
        )
        return stamped

    def latest(self, keys: Iterable[str]) -> dict[str, Feedback]:
        wanted = list(dict.fromkeys(keys))
        found: dict[str, Feedback] = {}
        conn = self._db.conn()
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = conn.execute(
                f"SELECT mapping_key, doc FROM feedback WHERE mapping_key IN ({marks}) ORDER BY seq", chunk
            )
            for key, doc in rows:
                found[key] = Feedback.model_validate_json(doc)
        return found

    def version(self) -> int:
        row = (
            self._db.conn()
            .execute(
                "SELECT (SELECT COALESCE(MAX(seq), 0) FROM feedback) + (SELECT COALESCE(MAX(seq), 0) FROM opt_outs)"
            )
            .fetchone()
        )
        return int(row[0])

    def set_opt_out(self, opt_out: OptOut) -> None:
        stamped = opt_out if opt_out.ts else opt_out.model_copy(update={"ts": time.time()})
        self._db.conn().execute(
            "INSERT INTO opt_outs (tenant, rule_id, opted_out, doc) VALUES (?, ?, ?, ?)",
            (stamped.tenant, stamped.rule_id, int(stamped.opted_out), stamped.model_dump_json()),
        )

    def opted_out(self, tenant: str | None) -> set[str]:
        clause, args = _tenant_clause(tenant)
        rows = self._db.conn().execute(f"SELECT rule_id, opted_out FROM opt_outs WHERE {clause} ORDER BY seq", args)
        state: dict[str, bool] = {}
        for rule_id, flag in rows:
            state[rule_id] = bool(flag)
        return {rule for rule, on in state.items() if on}

    def history(self, tenant: str | None, limit: int = 1000) -> list[Feedback]:
        clause, args = _tenant_clause(tenant)
        rows = self._db.conn().execute(
            f"SELECT doc FROM feedback WHERE {clause} ORDER BY seq DESC LIMIT ?", (*args, limit)
        )
        return [Feedback.model_validate_json(doc) for (doc,) in rows]


def feedback_index_mappings() -> dict[str, Any]:
    keyword = {"type": "keyword"}
    return {
        "dynamic": False,
        "properties": {
            "kind": keyword,
            "mapping_key": keyword,
            "tenant": keyword,
            "rule_id": keyword,
            "verdict": keyword,
            "opted_out": {"type": "boolean"},
            "ts": {"type": "double"},
            "doc": {"type": "object", "enabled": False},
        },
    }


class ElasticCorrections:
    """Corrections and opt-outs in one Elasticsearch index, written with refresh=wait_for so the next
    mapping anywhere sees them; `version()` is the document count, asked at most every `poll_seconds`."""

    def __init__(self, client: Any, index: str = "attackmap-feedback", poll_seconds: float = 0.25) -> None:
        self.client = client
        self.index = index
        self.poll_seconds = poll_seconds
        self._version = (0.0, -1)
        if not client.indices.exists(index=index):
            client.indices.create(index=index, mappings=feedback_index_mappings())

    def _put(self, body: dict[str, Any]) -> None:
        self.client.index(index=self.index, id=uuid.uuid4().hex, document=body, refresh="wait_for")
        self._version = (0.0, -1)

    def _search(self, query: dict[str, Any], size: int = 10_000) -> list[dict[str, Any]]:
        hits = self.client.search(index=self.index, query=query, size=size, sort=[{"ts": "asc"}])["hits"]["hits"]
        return [h["_source"] for h in hits]

    def add(self, feedback: Feedback) -> Feedback:
        stamped = feedback if feedback.ts else feedback.model_copy(update={"ts": time.time()})
        body = {"kind": "feedback", "mapping_key": stamped.mapping_key, "tenant": stamped.tenant}
        self._put(
            body
            | {"rule_id": stamped.rule_id, "verdict": stamped.verdict, "ts": stamped.ts, "doc": stamped.model_dump()}
        )
        return stamped

    def latest(self, keys: Iterable[str]) -> dict[str, Feedback]:
        wanted = list(dict.fromkeys(keys))
        found: dict[str, Feedback] = {}
        for start in range(0, len(wanted), 1000):
            query = {
                "bool": {
                    "filter": [{"term": {"kind": "feedback"}}, {"terms": {"mapping_key": wanted[start : start + 1000]}}]
                }
            }
            for source in self._search(query):
                found[source["mapping_key"]] = Feedback.model_validate(source["doc"])
        return found

    def version(self) -> int:
        at, value = self._version
        now = time.monotonic()
        if value < 0 or now - at >= self.poll_seconds:
            value = int(self.client.count(index=self.index)["count"])
            self._version = (now, value)
        return value

    def set_opt_out(self, opt_out: OptOut) -> None:
        stamped = opt_out if opt_out.ts else opt_out.model_copy(update={"ts": time.time()})
        body = {"kind": "opt_out", "tenant": stamped.tenant, "rule_id": stamped.rule_id}
        self._put(body | {"opted_out": stamped.opted_out, "ts": stamped.ts, "doc": stamped.model_dump()})

    def _tenant_filter(self, tenant: str | None) -> dict[str, Any]:
        if tenant is None:
            return {"bool": {"must_not": {"exists": {"field": "tenant"}}}}
        return {"term": {"tenant": tenant}}

    def opted_out(self, tenant: str | None) -> set[str]:
        state: dict[str, bool] = {}
        query = {"bool": {"filter": [{"term": {"kind": "opt_out"}}, self._tenant_filter(tenant)]}}
        for source in self._search(query):
            state[source["rule_id"]] = bool(source["opted_out"])
        return {rule for rule, on in state.items() if on}

    def history(self, tenant: str | None, limit: int = 1000) -> list[Feedback]:
        query = {"bool": {"filter": [{"term": {"kind": "feedback"}}, self._tenant_filter(tenant)]}}
        return [Feedback.model_validate(s["doc"]) for s in reversed(self._search(query))][:limit]


def _review_doc(item: ReviewItem) -> str:
    """The item as JSON; an alert JSON cannot hold (nested too deep, lone surrogates) is left out with a
    note, so one odd alert never costs the batch its review rows and decision counts."""
    try:
        return item.model_dump_json()
    except ValueError:  # pydantic's serialisation errors are ValueErrors
        note = {"attackmap_note": "alert left out: not storable as JSON (nested too deep or invalid text)"}
        return item.model_copy(update={"alert": note}).model_dump_json()


class FeedbackLog:
    """The review queue (one row per mapping key, newest kept) and decision counts per day, tenant and rule."""

    def __init__(self, path: Path) -> None:
        self._db = _Local(
            path,
            (
                "CREATE TABLE IF NOT EXISTS review (mapping_key TEXT PRIMARY KEY, tenant TEXT, ts REAL, "
                "confidence REAL, disputed INTEGER, doc TEXT)",
                "CREATE INDEX IF NOT EXISTS review_tenant ON review (tenant, confidence)",
                "CREATE TABLE IF NOT EXISTS decisions (day TEXT, tenant TEXT, rule TEXT, kind TEXT, n INTEGER, "
                "PRIMARY KEY (day, tenant, rule, kind))",
            ),
            durable=False,
        )

    def record(self, review: Sequence[ReviewItem], decisions: dict[tuple[str | None, str, str], int]) -> None:
        if not review and not decisions:
            return
        day = time.strftime("%Y-%m-%d", time.gmtime())
        conn = self._db.conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "INSERT OR REPLACE INTO review VALUES (?, ?, ?, ?, ?, ?)",
                [(r.mapping_key, r.tenant, r.ts, r.confidence, int(r.disputed), _review_doc(r)) for r in review],
            )
            conn.executemany(
                "INSERT INTO decisions VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (day, tenant, rule, kind) DO UPDATE SET n = n + excluded.n",
                [(day, tenant or "", rule, kind, n) for (tenant, rule, kind), n in decisions.items()],
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def review(self, tenant: str | None, limit: int = 100) -> list[ReviewItem]:
        clause, args = _tenant_clause(tenant)
        rows = self._db.conn().execute(
            f"SELECT doc FROM review WHERE {clause} ORDER BY disputed DESC, confidence ASC, ts DESC LIMIT ?",
            (*args, limit),
        )
        return [ReviewItem.model_validate_json(doc) for (doc,) in rows]

    def item(self, mapping_key: str) -> ReviewItem | None:
        row = self._db.conn().execute("SELECT doc FROM review WHERE mapping_key = ?", (mapping_key,)).fetchone()
        return ReviewItem.model_validate_json(row[0]) if row else None

    def decision_counts(self, tenant: str | None) -> dict[str, dict[str, int]]:
        rows = self._db.conn().execute(
            "SELECT rule, kind, SUM(n) FROM decisions WHERE tenant = ? GROUP BY rule, kind", (tenant or "",)
        )
        counts: dict[str, dict[str, int]] = {}
        for rule, kind, n in rows:
            counts.setdefault(rule, {})[kind] = int(n)
        return counts


def telemetry(
    log: FeedbackLog, corrections: CorrectionStore, tenant: str | None
) -> tuple[list[RuleTelemetry], dict[str, int]]:
    """Per-rule decision counts and precision from feedback, and the tenant's totals."""
    counts = log.decision_counts(tenant)
    judged: dict[str, dict[str, int]] = {}
    seen: set[str] = set()
    for item in corrections.history(tenant, limit=100_000):  # newest first: one verdict per mapping
        if item.mapping_key in seen:
            continue
        seen.add(item.mapping_key)
        rule = item.rule_id or "(no rule)"
        judged.setdefault(rule, {}).setdefault(item.verdict, 0)
        judged[rule][item.verdict] += 1
    opted = corrections.opted_out(tenant)
    rows = []
    for rule in sorted(set(counts) | set(judged) | opted):
        c, j = counts.get(rule, {}), judged.get(rule, {})
        rows.append(
            RuleTelemetry(
                tenant=tenant,
                rule=rule,
                skip=c.get("skip", 0),
                map=c.get("map", 0),
                extend=c.get("extend", 0),
                accepted=j.get("accept", 0),
                rejected=j.get("reject", 0),
                corrected=j.get("correct", 0),
                opted_out=rule in opted,
            )
        )
    totals = {kind: sum(c.get(kind, 0) for c in counts.values()) for kind in ("skip", "map", "extend")}
    return rows, totals


def dumps(items: Iterable[Any]) -> bytes:
    return orjson.dumps([i.model_dump(mode="json") for i in items])
