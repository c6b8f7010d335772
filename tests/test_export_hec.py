"""Splunk HEC sink against the protocol stand-in (devtools/hec_standin.py: no Splunk can be installed
here, and the OpenTelemetry Collector's receiver cannot be built from the Go module proxy), as a real
process: batching, indexed fields, indexer acknowledgement, error codes, an outage."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from devtools.receivers import HEC_TOKEN, Receiver, many_alerts, read_ndjson
from mitre.io.exports.delivery import Delivery, RetryPolicy
from mitre.io.exports.event import from_enriched
from mitre.io.exports.hec import HecSink

FAST = RetryPolicy(initial_seconds=0.05, max_seconds=0.5, batch_size=50)


def _delivery(base: str, tmp_path: Path, *, token: str = HEC_TOKEN, index: str = "attackmap") -> Delivery:
    return Delivery(HecSink(base, token, index=index, ack=True), tmp_path / "spool", policy=FAST)


def test_events_arrive_once_with_envelope_and_indexed_fields(
    hec: tuple[Receiver, str, Path], enriched_examples: list[dict[str, Any]], tmp_path: Path
) -> None:
    _, base, received = hec
    events = [from_enriched(a) for a in many_alerts(enriched_examples, 120)]
    delivery = _delivery(base, tmp_path)
    assert delivery.offer(events) == 120
    assert delivery.offer(events[:10]) == 0  # offered twice: spooled once
    assert delivery.drain(timeout=30)
    rows = read_ndjson(received)
    assert len(rows) == 120 and len({r["event"]["id"] for r in rows}) == 120
    first, event = rows[0], events[0]
    assert first["time"] == round(event.timestamp.timestamp(), 3)
    assert (first["index"], first["source"], first["sourcetype"]) == ("attackmap", "attackmap", "attackmap:event")
    assert first["fields"]["technique_ids"] == list(event.technique_ids)
    assert first["fields"]["tactic_ids"] == list(event.tactic_ids)
    assert first["host"] == next(i.value for i in event.related_indicators if i.type == "host")
    assert delivery.stats.delivered == 120 and delivery.stats.dead_lettered == 0
    delivery.close()


def test_busy_receiver_is_retried_and_refusals_are_dead_lettered_with_the_reason(
    hec: tuple[Receiver, str, Path], enriched_examples: list[dict[str, Any]], tmp_path: Path
) -> None:
    _, base, received = hec
    events = [from_enriched(a) for a in many_alerts(enriched_examples, 30)]
    for fault in ({"status": 503, "code": 9, "times": 2}, {"status": 429, "code": 9, "retry_after": 0}):
        httpx.post(f"{base}/_control/fail", json=fault).raise_for_status()
    delivery = _delivery(base, tmp_path)
    delivery.offer(events)
    assert delivery.drain(timeout=30)
    assert len(read_ndjson(received)) == 30 and delivery.stats.transient_failures == 3

    wrong_index = _delivery(base, tmp_path / "b", index="not-allowed")
    wrong_index.offer(events[:2])
    assert wrong_index.drain(timeout=30)
    bad_token = _delivery(base, tmp_path / "c", token="00000000-0000-4000-8000-000000000000")
    bad_token.offer(events[2:5])
    assert bad_token.drain(timeout=30)
    assert len(read_ndjson(received)) == 30
    letters = read_ndjson(wrong_index.dead_letter) + read_ndjson(bad_token.dead_letter)
    reasons = sorted(str(r["reason"]).split(": ", 1)[1] for r in letters)
    assert reasons == ["HTTP 400 code 7 'Incorrect index'"] * 2 + ["HTTP 403 code 1 'Token disabled'"] * 3
    assert {r["event"]["id"] for r in letters} == {e.id for e in events[:5]}  # type: ignore[index]


def test_an_outage_spools_and_everything_arrives_once_after_the_restart(
    hec: tuple[Receiver, str, Path], enriched_examples: list[dict[str, Any]], tmp_path: Path
) -> None:
    receiver, base, received = hec
    events = [from_enriched(a) for a in many_alerts(enriched_examples, 300)]
    delivery = _delivery(base, tmp_path)
    delivery.start()
    delivery.offer(events[:100])
    receiver.stop()
    started = time.monotonic()
    delivery.offer(events[100:])  # never blocks, while the receiver is down
    assert time.monotonic() - started < 1.0
    while delivery.stats.transient_failures < 2:  # the sender really met the outage
        time.sleep(0.05)
    assert delivery.pending()
    receiver.start()
    assert delivery.close(timeout=60)
    ids = [r["event"]["id"] for r in read_ndjson(received)]  # type: ignore[index]
    assert len(ids) == 300 and set(ids) == {e.id for e in events}
