"""Elasticsearch source (alerts to enrich) and sink (write the engine's fields back).

Source
    ``ElasticSource.read()`` yields :class:`SourceAlert` from Kibana's security alert indices
    (``.alerts-security.alerts-<space>``) or any index: alerts newer than a :class:`Checkpoint`, with a
    risk score at or above a threshold, and not yet enriched with the current provenance hash.  Paging is
    ``search_after`` over a point-in-time, sorted by ``@timestamp`` then a stable unique keyword
    (``kibana.alert.uuid`` by default); ES adds the implicit ``_shard_doc`` tiebreaker within the PIT.
    The checkpoint holds the last ``(@timestamp, tiebreaker)`` pair and is applied as a *query* filter
    (``> checkpoint`` in sort order), so it stays valid across point-in-times, merges and restarts.

Fetch
    ``fetch_alerts()`` reads alerts by reference (realtime ``mget``), for events and webhooks that name them.

Sink
    ``ElasticSink.write()`` writes only ``threat`` and ``attackmap`` with partial-document bulk updates
    guarded by ``if_seq_no``/``if_primary_term``.  Keys that the stored ``threat``/``attackmap`` have and the
    new ones don't are set to ``null`` so the result equals the engine's object (a partial update merges
    objects).  Conflicts (409) are re-read and retried with the fresh sequence number; transient errors
    (the node unreachable or restarting, 429, 5xx) are retried with backoff for up to ``retry_seconds``.
    A doc whose stored ``attackmap.provenance_hash`` equals the update's is left alone and counted as
    unchanged.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from mitre.config import Environment
from mitre.features import valid_text
from mitre.io.events import AlertRef

DEFAULT_ES_URL = "http://127.0.0.1:9200"
ENGINE_FIELDS: tuple[str, ...] = ("threat", "attackmap")
PROVENANCE_HASH_FIELD = "attackmap.provenance_hash"
RISK_FIELD = "kibana.alert.risk_score"
DEFAULT_TIEBREAKER = "kibana.alert.uuid"
TIMESTAMP_FIELD = "@timestamp"
_TS_FORMAT = "strict_date_optional_time_nanos"


def es_client(url: str | None = None, env: Environment | None = None) -> Any:
    """An Elasticsearch client: ``url``, else ``ATTACKMAP_ES_URL``, else a node on localhost."""
    from elasticsearch import Elasticsearch

    return Elasticsearch(url or (env or Environment()).es_url or DEFAULT_ES_URL, request_timeout=60)


# --------------------------------------------------------------------------- Kibana spaces

_KIBANA_ALERTS = "alerts-security.alerts-"


def kibana_alerts_index(space: str = "default") -> str:
    """The alias Kibana's security solution writes alerts to for a space."""
    return f".{_KIBANA_ALERTS}{space}"


def kibana_space(index: str) -> str | None:
    """The Kibana space of `.alerts-security.alerts-<space>` (backing index: `.internal.alerts-...-<space>-000001`)."""
    if _KIBANA_ALERTS not in index:
        return None
    tail = index.split(_KIBANA_ALERTS, 1)[1]
    parts = tail.rsplit("-", 1)
    return parts[0] if len(parts) == 2 and parts[1].isdigit() else tail


# --------------------------------------------------------------------------- mapping


def _kw() -> dict[str, Any]:
    return {"type": "keyword", "ignore_above": 1024}


def _id_name_ref() -> dict[str, Any]:
    return {"properties": {"id": _kw(), "name": _kw(), "reference": _kw()}}


def alerts_index_mapping() -> dict[str, Any]:
    """A trimmed mapping for alert indices used by the tests and the engine's flows.

    Keywords for rule uuid/name and the ECS ``threat.*`` ids/names/references, float risk score, date
    ``@timestamp``; ``attackmap`` maps only ``provenance_hash`` (keyword) and keeps the rest of the
    provenance object in ``_source`` unindexed (``dynamic: false``, the per-field equivalent of
    ``enabled: false``).  Other fields are mapped dynamically.
    """
    technique = _id_name_ref()
    technique["properties"]["subtechnique"] = _id_name_ref()
    return {
        "dynamic": True,
        "properties": {
            "@timestamp": {"type": "date"},
            "kibana": {
                "properties": {
                    "alert": {
                        "properties": {
                            "uuid": _kw(),
                            "risk_score": {"type": "float"},
                            "severity": _kw(),
                            "workflow_status": _kw(),
                            "rule": {"properties": {"uuid": _kw(), "rule_id": _kw(), "name": _kw()}},
                        }
                    }
                }
            },
            "threat": {
                "properties": {
                    "framework": _kw(),
                    "tactic": _id_name_ref(),
                    "technique": technique,
                }
            },
            "attackmap": {
                "type": "object",
                "dynamic": False,
                "properties": {"provenance_hash": _kw()},
            },
        },
    }


# --------------------------------------------------------------------------- helpers


def get_path(source: Mapping[str, Any], dotted: str) -> Any:
    """Value at ``dotted`` in a ``_source``, whether stored nested, as flat dotted keys, or mixed."""
    if dotted in source:
        return source[dotted]
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:cut])
        child = source.get(head)
        if isinstance(child, Mapping):
            found = get_path(child, ".".join(parts[cut:]))
            if found is not None:
                return found
    return None


def _replacement(stored: Any, new: Any) -> Any:
    """The partial-update value that turns ``stored`` into ``new``: new, plus nulls for dropped keys."""
    if not isinstance(new, Mapping) or not isinstance(stored, Mapping):
        return new
    out: dict[str, Any] = {key: _replacement(stored.get(key), value) for key, value in new.items()}
    for key in stored:
        if key not in new:
            out[key] = None
    return out


def _engine_doc(stored_source: Mapping[str, Any], alert: Mapping[str, Any]) -> dict[str, Any]:
    """The ``doc`` for a partial update writing the engine's fields of ``alert`` over ``stored_source``.

    ``stored_source`` is the stored ``_source`` filtered to the engine fields; flat dotted keys such as
    ``"threat.tactic.id"`` are nulled too, so the nested object written is the only copy.
    """
    doc: dict[str, Any] = {}
    written = [name for name in ENGINE_FIELDS if name in alert]
    for name in written:
        doc[name] = _utf8_safe(_replacement(stored_source.get(name), alert[name]))
    for key in stored_source:
        if any(key.startswith(f"{name}.") for name in written):
            doc[key] = None
    return doc


def _utf8_safe(value: Any) -> Any:
    """``value`` with each lone surrogate in its strings (a parsed ``"\\ud800"``, kept from the alert's
    own threat data) made U+FFFD: the client would send it as bytes that are not UTF-8, which ES
    rejects."""
    if isinstance(value, str):
        return valid_text(value)
    if isinstance(value, Mapping):
        return {_utf8_safe(k): _utf8_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_utf8_safe(v) for v in value]
    return value


# --------------------------------------------------------------------------- source


class SourceAlert(BaseModel):
    """One alert to enrich, with what the sink needs to write it back safely."""

    model_config = ConfigDict(frozen=True)

    doc_id: str
    index: str
    seq_no: int
    primary_term: int
    source: dict[str, Any]
    sort: list[Any] = Field(default_factory=list, description="sort values (timestamp, tiebreaker, ...)")

    def as_tuple(self) -> tuple[str, str, int, int, dict[str, Any]]:
        return (self.doc_id, self.index, self.seq_no, self.primary_term, self.source)


def source_alert(hit: Mapping[str, Any]) -> SourceAlert:
    """A SourceAlert from an ES search hit or ``mget`` doc (``_index``, ``_id``, ``_seq_no``,
    ``_primary_term``, ``_source``, optional ``sort``)."""
    return SourceAlert(
        doc_id=str(hit["_id"]),
        index=str(hit["_index"]),
        seq_no=int(hit["_seq_no"]),
        primary_term=int(hit["_primary_term"]),
        source=dict(hit.get("_source") or {}),
        sort=list(hit.get("sort") or []),
    )


def is_located(hit: Mapping[str, Any]) -> bool:
    """Whether a dict carries everything a guarded write-back needs (an ES hit, not a bare alert)."""
    return {"_index", "_id", "_seq_no", "_primary_term"} <= hit.keys()


def fetch_alerts(es: Any, refs: Sequence[AlertRef]) -> tuple[list[SourceAlert], list[str]]:
    """Read the referenced alerts (realtime mget, with seq_no/primary_term); also the ids not found."""
    if not refs:
        return [], []
    resp = es.mget(docs=[{"_index": r.index, "_id": r.id} for r in refs], realtime=True)
    found: list[SourceAlert] = []
    missing: list[str] = []
    for ref, doc in zip(refs, resp["docs"], strict=True):
        if "error" in doc or not doc.get("found"):
            missing.append(ref.resource_id)
            continue
        found.append(source_alert(doc))
    return found, missing


class Checkpoint:
    """The last ``(timestamp, tiebreaker)`` read, persisted as a small JSON file (written atomically)."""

    def __init__(self, path: str | Path, timestamp: str | None = None, tiebreaker: Any = None) -> None:
        self.path = Path(path)
        self.timestamp = timestamp
        self.tiebreaker = tiebreaker

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        path = Path(path)
        if not path.is_file():
            return cls(path)
        data = json.loads(path.read_text() or "{}")
        return cls(path, data.get("timestamp"), data.get("tiebreaker"))

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = json.dumps({"timestamp": self.timestamp, "tiebreaker": self.tiebreaker}, sort_keys=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(payload + "\n")
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @property
    def is_empty(self) -> bool:
        return self.timestamp is None

    def advance(self, sort_values: Sequence[Any]) -> None:
        if sort_values:
            self.timestamp = sort_values[0]
            self.tiebreaker = sort_values[1] if len(sort_values) > 1 else None

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r}, timestamp={self.timestamp!r}, tiebreaker={self.tiebreaker!r})"


class ElasticSource:
    """Reads alerts to enrich from an index, alias or pattern (e.g. ``kibana_alerts_index("default")``).

    ``tiebreaker`` must be a unique keyword field (Kibana alerts: ``kibana.alert.uuid``); with
    ``tiebreaker=None`` the checkpoint resumes at the last timestamp inclusively (at-least-once: alerts
    sharing that timestamp are read again, and normally dropped by the provenance filter).
    """

    def __init__(
        self,
        client: Any,
        index: str,
        *,
        min_risk: float | None = None,
        provenance_hash: str | None = None,
        page_size: int = 500,
        tiebreaker: str | None = DEFAULT_TIEBREAKER,
        risk_field: str = RISK_FIELD,
        keep_alive: str = "2m",
        extra_filters: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        self.client = client
        self.index = index
        self.min_risk = min_risk
        self.provenance_hash = provenance_hash
        self.page_size = page_size
        self.tiebreaker = tiebreaker
        self.risk_field = risk_field
        self.keep_alive = keep_alive
        self.extra_filters = [dict(item) for item in extra_filters]

    def sort(self) -> list[dict[str, Any]]:
        sort: list[dict[str, Any]] = [
            {TIMESTAMP_FIELD: {"order": "asc", "format": _TS_FORMAT, "unmapped_type": "date"}}
        ]
        if self.tiebreaker:
            sort.append({self.tiebreaker: {"order": "asc", "unmapped_type": "keyword"}})
        return sort

    def query(self, checkpoint: Checkpoint | None = None) -> dict[str, Any]:
        filters: list[dict[str, Any]] = list(self.extra_filters)
        must_not: list[dict[str, Any]] = []
        if self.min_risk is not None:
            filters.append({"range": {self.risk_field: {"gte": self.min_risk}}})
        if self.provenance_hash:
            must_not.append({"term": {PROVENANCE_HASH_FIELD: self.provenance_hash}})
        if checkpoint is not None and not checkpoint.is_empty:
            filters.append(self._after(checkpoint))
        return {"bool": {"filter": filters, "must_not": must_not}}

    def _after(self, checkpoint: Checkpoint) -> dict[str, Any]:
        ts = checkpoint.timestamp
        if not self.tiebreaker or checkpoint.tiebreaker is None:
            return {"range": {TIMESTAMP_FIELD: {"gte": ts, "format": _TS_FORMAT}}}
        return {
            "bool": {
                "should": [
                    {"range": {TIMESTAMP_FIELD: {"gt": ts, "format": _TS_FORMAT}}},
                    {
                        "bool": {
                            "filter": [
                                {"range": {TIMESTAMP_FIELD: {"gte": ts, "lte": ts, "format": _TS_FORMAT}}},
                                {"range": {self.tiebreaker: {"gt": checkpoint.tiebreaker}}},
                            ]
                        }
                    },
                ],
                "minimum_should_match": 1,
            }
        }

    def read(self, checkpoint: Checkpoint | None = None, limit: int | None = None) -> Iterator[SourceAlert]:
        """Yield matching alerts in (timestamp, tiebreaker) order, advancing ``checkpoint`` as it goes.

        The checkpoint is advanced in memory for every alert yielded; save it once they are handled.
        """
        if limit is not None and limit <= 0:
            return
        pit = self.client.open_point_in_time(
            index=self.index, keep_alive=self.keep_alive, expand_wildcards="all", ignore_unavailable=True
        )
        pit_id = pit["id"]
        count = 0
        search_after: list[Any] | None = None
        query = self.query(checkpoint)
        try:
            while True:
                size = self.page_size if limit is None else min(self.page_size, limit - count)
                kwargs: dict[str, Any] = {}
                if search_after is not None:
                    kwargs["search_after"] = search_after
                resp = self.client.search(
                    pit={"id": pit_id, "keep_alive": self.keep_alive},
                    query=query,
                    sort=self.sort(),
                    size=size,
                    seq_no_primary_term=True,
                    track_total_hits=False,
                    **kwargs,
                )
                pit_id = resp.get("pit_id", pit_id)
                hits = resp["hits"]["hits"]
                for hit in hits:
                    alert = source_alert(hit)
                    if checkpoint is not None:
                        checkpoint.advance(alert.sort)
                    count += 1
                    yield alert
                    if limit is not None and count >= limit:
                        return
                if len(hits) < size:
                    return
                search_after = list(hits[-1]["sort"])
        finally:
            with contextlib.suppress(Exception):  # the PIT expires on its own; closing is a courtesy
                self.client.close_point_in_time(id=pit_id)


# --------------------------------------------------------------------------- sink


class AlertUpdate(NamedTuple):
    """``(index, doc_id, seq_no, primary_term, enriched_alert)``; plain 5-tuples are accepted too."""

    index_name: str
    doc_id: str
    seq_no: int
    primary_term: int
    alert: Mapping[str, Any]


class SinkSummary(BaseModel):
    """What a ``write`` did: counts, plus ``(doc_id, reason)`` for each update that could not be written."""

    updated: int = 0
    unchanged: int = 0
    conflicts_retried: int = 0
    failed: list[tuple[str, str]] = Field(default_factory=list)

    def merge(self, other: SinkSummary) -> SinkSummary:
        return SinkSummary(
            updated=self.updated + other.updated,
            unchanged=self.unchanged + other.unchanged,
            conflicts_retried=self.conflicts_retried + other.conflicts_retried,
            failed=[*self.failed, *other.failed],
        )


_RETRYABLE_STATUS = frozenset({429, 502, 503, 504})


def _transient(exc: BaseException) -> bool:
    """Whether a failed request may succeed later: the node unreachable, timing out or restarting,
    429 (queue full) and 5xx. A 4xx is the request's own fault and is not retried."""
    from elasticsearch import ApiError, TransportError

    if isinstance(exc, TransportError):  # connection refused or reset, timeout
        return True
    if isinstance(exc, ApiError):
        return exc.meta.status in _RETRYABLE_STATUS or exc.meta.status >= 500
    return isinstance(exc, OSError)


class _Pending:
    __slots__ = (
        "alert",
        "conflicted",
        "conflicts",
        "doc_id",
        "index",
        "new_hash",
        "primary_term",
        "seq_no",
        "stored",
    )

    def __init__(self, update: AlertUpdate, new_hash: str) -> None:
        self.index = update.index_name
        self.doc_id = update.doc_id
        self.seq_no = update.seq_no
        self.primary_term = update.primary_term
        self.alert = update.alert
        self.new_hash = new_hash
        self.stored: dict[str, Any] = {}
        self.conflicted = False
        self.conflicts = 0


class ElasticSink:
    """Writes ``threat`` and ``attackmap`` of enriched alerts back to their documents, in bulk.

    Transient failures — the node unreachable or restarting, 429 (queue full), 502–504 and other 5xx,
    for the whole request or single items — are retried with exponential backoff (``backoff`` doubling
    up to ``backoff_cap``) for up to ``retry_seconds``; version conflicts up to ``max_retries`` times.
    What still fails is reported per document in ``SinkSummary.failed``, never dropped. A retried write
    is never applied twice: each attempt first re-reads the stored provenance hash (realtime), so an
    update ES applied before its answer was lost counts as unchanged."""

    def __init__(
        self,
        client: Any,
        *,
        batch_size: int = 1000,
        max_retries: int = 5,
        backoff: float = 0.2,
        backoff_cap: float = 5.0,
        retry_seconds: float = 120.0,
        refresh: bool | str = False,
        sleep: Any = time.sleep,
        clock: Any = time.monotonic,
    ) -> None:
        self.client = client
        self.batch_size = batch_size
        self.max_retries = max_retries
        self.backoff = backoff
        self.backoff_cap = backoff_cap
        self.retry_seconds = retry_seconds
        self.refresh = refresh
        self._sleep = sleep
        self._clock = clock

    def write(self, updates: Iterable[AlertUpdate | tuple[str, str, int, int, Mapping[str, Any]]]) -> SinkSummary:
        summary = SinkSummary()
        batch: list[AlertUpdate] = []
        for update in updates:
            batch.append(AlertUpdate(*update))
            if len(batch) >= self.batch_size:
                summary = summary.merge(self._write_batch(batch))
                batch = []
        if batch:
            summary = summary.merge(self._write_batch(batch))
        return summary

    # -- one batch ---------------------------------------------------------

    def _write_batch(self, batch: list[AlertUpdate]) -> SinkSummary:
        summary = SinkSummary()
        pending: list[_Pending] = []
        for update in batch:
            new_hash = get_path(update.alert, PROVENANCE_HASH_FIELD)
            if not isinstance(new_hash, str) or not new_hash:
                summary.failed.append((update.doc_id, "update has no attackmap.provenance_hash"))
                continue
            pending.append(_Pending(update, new_hash))

        deadline = self._clock() + self.retry_seconds
        attempt = 0
        while pending:
            out_of_time = self._clock() >= deadline
            try:
                pending, unread = self._load_stored(pending, summary, out_of_time=out_of_time)
            except Exception as exc:
                if not _transient(exc) or out_of_time:
                    why = f"reading the stored document failed: {exc}"
                    summary.failed.extend((item.doc_id, why) for item in pending)
                    return summary
                attempt += 1
                self._pause(attempt)
                continue
            retry: list[_Pending] = []
            conflicts: list[_Pending] = []
            if pending:
                retry, conflicts = self._bulk(pending, summary, out_of_time=out_of_time)
            summary.conflicts_retried += sum(1 for item in conflicts if not item.conflicted)
            for item in conflicts:
                item.conflicted = True
                item.conflicts += 1
            pending = retry + conflicts + unread
            if not pending:
                break
            attempt += 1
            if retry or unread:
                self._pause(attempt)
        return summary

    def _pause(self, attempt: int) -> None:
        self._sleep(min(self.backoff_cap, self.backoff * (2 ** (attempt - 1))))

    def _load_stored(
        self, pending: list[_Pending], summary: SinkSummary, *, out_of_time: bool
    ) -> tuple[list[_Pending], list[_Pending]]:
        """Fetch the stored engine fields (and, after a conflict, the fresh seq_no); drop unchanged/missing.
        Returns (to write, to read again): a document whose shard is not available is read again.

        The first attempt keeps the caller's ``seq_no``/``primary_term`` as the guard, so a doc changed
        since it was read conflicts; a conflicted doc is retried with the numbers read here.
        """
        resp = self.client.mget(
            docs=[{"_index": item.index, "_id": item.doc_id} for item in pending],
            source_includes=list(ENGINE_FIELDS),
            realtime=True,
            filter_path=["docs.found", "docs._seq_no", "docs._primary_term", "docs._source", "docs.error"],
        )
        keep: list[_Pending] = []
        unread: list[_Pending] = []  # a shard not (yet) available, e.g. a node just restarted: read again
        for item, doc in zip(pending, resp["docs"], strict=True):
            if "error" in doc:
                error = doc["error"]
                permanent = isinstance(error, Mapping) and error.get("type") == "index_not_found_exception"
                if permanent or out_of_time:
                    summary.failed.append((item.doc_id, f"get failed: {_reason(error)}"))
                else:
                    unread.append(item)
                continue
            if not doc.get("found"):
                summary.failed.append((item.doc_id, f"document_missing: [{item.doc_id}] not found in {item.index}"))
                continue
            stored = doc.get("_source") or {}
            if get_path(stored, PROVENANCE_HASH_FIELD) == item.new_hash:
                summary.unchanged += 1
                continue
            item.stored = stored
            if item.conflicted:
                item.seq_no = doc["_seq_no"]
                item.primary_term = doc["_primary_term"]
            keep.append(item)
        return keep, unread

    def _bulk(
        self, pending: list[_Pending], summary: SinkSummary, *, out_of_time: bool
    ) -> tuple[list[_Pending], list[_Pending]]:
        """Send one bulk request; return (items to retry after transient errors, items that conflicted)."""
        operations: list[dict[str, Any]] = []
        sent: list[_Pending] = []
        for item in pending:
            try:
                doc = _engine_doc(item.stored, item.alert)
            except (ValueError, TypeError, RecursionError) as exc:  # one bad document never fails the batch
                summary.failed.append((item.doc_id, f"unwritable document: {exc}"))
                continue
            operations.append(
                {
                    "update": {
                        "_index": item.index,
                        "_id": item.doc_id,
                        "if_seq_no": item.seq_no,
                        "if_primary_term": item.primary_term,
                    }
                }
            )
            operations.append({"doc": doc, "detect_noop": True})
            sent.append(item)
        pending = sent
        if not pending:
            return [], []
        kwargs: dict[str, Any] = {}
        if self.refresh:
            kwargs["refresh"] = self.refresh
        try:
            resp = self.client.bulk(
                operations=operations,
                filter_path=["errors", "items.*.status", "items.*.result", "items.*.error"],
                **kwargs,
            )
        except Exception as exc:  # whole request failed (connection, 429, 5xx): retry everything, bounded
            if out_of_time or not _transient(exc):
                summary.failed.extend((item.doc_id, f"bulk request failed: {exc}") for item in pending)
                return [], []
            return list(pending), []
        retry: list[_Pending] = []
        conflicts: list[_Pending] = []
        for item, result in zip(pending, resp["items"], strict=True):
            outcome = result.get("update", {})
            status = int(outcome.get("status", 500))
            if status < 300:
                if outcome.get("result") == "noop":
                    summary.unchanged += 1
                else:
                    summary.updated += 1
                continue
            reason = _reason(outcome.get("error"))
            if status == 409 and item.conflicts < self.max_retries:
                conflicts.append(item)
            elif (status in _RETRYABLE_STATUS or status >= 500) and not out_of_time:
                retry.append(item)
            else:
                prefix = "version_conflict after retries: " if status == 409 else ""
                summary.failed.append((item.doc_id, f"{prefix}{status} {reason}"))
        return retry, conflicts


def _reason(error: Any) -> str:
    if isinstance(error, Mapping):
        kind = error.get("type", "error")
        message = error.get("reason", "")
        return f"{kind}: {message}" if message else str(kind)
    return str(error)
