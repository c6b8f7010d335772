"""Export figures: throughput per format, and a receiver outage in the middle of a stream.

    python bench/exports.py throughput --events 20000      # events/s per format, exporter pinned to one core
    python bench/exports.py outage --alerts 10000 --down 60  # HEC + TAXII stopped for 60 s mid-stream

The events are examples/alerts.ndjson enriched offline (no knowledge base), copied with distinct ids
and times. File formats (event, stix, navigator, matrix) are timed in-process from enriched alert
dicts (parsed JSON) to the output bytes, as `attackmap export` does after reading a line. Receivers
are real processes on this machine: the HEC stand-in (with and without indexer acknowledgement),
medallion (TAXII 2.1), and the Elasticsearch node at $ATTACKMAP_ES_URL when set;
their figures start from common events (as the flows offer them) and run end to end through the
delivery layer (spool → send → settled), so they include the receiver's own work on the other core.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devtools.receivers import (  # noqa: E402
    EXAMPLES,
    HEC_TOKEN,
    TAXII_PASSWORD,
    TAXII_USER,
    hec_standin,
    many_alerts,
    outage_run,
    taxii_server,
)
from mitre.assemble import EngineOptions, build_engine  # noqa: E402
from mitre.catalog import Catalog, load_catalog  # noqa: E402
from mitre.config import WorkflowsFile  # noqa: E402
from mitre.io.exports.coverage import coverage_of_events  # noqa: E402
from mitre.io.exports.delivery import Delivery, RetryPolicy  # noqa: E402
from mitre.io.exports.event import from_enriched  # noqa: E402
from mitre.io.exports.matrix import render_matrix  # noqa: E402
from mitre.io.exports.navigator import build_layer  # noqa: E402
from mitre.io.exports.sink import Sink  # noqa: E402
from mitre.io.exports.stix import build_bundle  # noqa: E402
from mitre.models import RawAlert  # noqa: E402


def enriched_examples(cache: Path) -> list[dict[str, Any]]:
    engine = build_engine(WorkflowsFile(), options=EngineOptions(knowledge_base=(), cache_dir=cache))
    lines = [line for line in EXAMPLES.read_bytes().splitlines() if line.strip()]
    outcomes = engine.process_batch([RawAlert(line=i, raw=line) for i, line in enumerate(lines, start=1)])
    return [o.alert for o in outcomes if o.alert is not None]


def timed(label: str, n: int, work: Callable[[], Any]) -> None:
    started = time.perf_counter()
    work()
    seconds = time.perf_counter() - started
    print(f"| {label} | {n:,} | {seconds:.2f} s | {n / seconds:,.0f} |", flush=True)


def delivered(sink: Sink, events: list[Any], spool: Path, batch: int) -> None:
    delivery = Delivery(sink, spool, policy=RetryPolicy(batch_size=batch))
    delivery.offer(events)
    assert delivery.drain(timeout=1800), delivery.stats
    assert delivery.stats.dead_lettered == 0, delivery.stats


def throughput(n: int, work_dir: Path, catalog: Catalog) -> None:
    alerts = many_alerts(enriched_examples(work_dir / "cache"), n, run=f"bench-{uuid.uuid4().hex[:6]}")
    os.sched_setaffinity(0, {0})  # the exporter on one core; receivers may use the other
    print("| format | events | time | events/s |\n|---|---|---|---|")
    events = [from_enriched(a) for a in alerts]

    def common() -> list[Any]:
        return [from_enriched(a) for a in alerts]

    timed("common event only (enriched alert → CommonEvent)", n, common)
    timed("event NDJSON", n, lambda: b"".join(e.to_json() + b"\n" for e in common()))
    timed("STIX 2.1 bundle", n, lambda: build_bundle(common(), catalog).serialize())
    timed("Navigator layer", n, lambda: build_layer(coverage_of_events(catalog, common(), "bench")))
    timed("HTML matrix", n, lambda: render_matrix(coverage_of_events(catalog, common(), "bench")))

    from mitre.io.exports.hec import HecSink

    for ack in (False, True):
        receiver, base, _ = hec_standin(work_dir / f"hec-{ack}", ack=ack)
        (work_dir / f"hec-{ack}").mkdir(exist_ok=True)
        receiver.start()
        try:
            sink = HecSink(base, HEC_TOKEN, ack=ack)
            timed(f"Splunk HEC, batches of 500{', indexer ack' if ack else ''}", n,
                  lambda sink=sink, ack=ack: delivered(sink, events, work_dir / f"spool-hec-{ack}", 500))  # fmt: skip
        finally:
            receiver.stop()

    from mitre.io.exports.taxii import TaxiiSink

    (work_dir / "taxii").mkdir()
    receiver, url = taxii_server(work_dir / "taxii")
    receiver.start()
    try:
        sink = TaxiiSink(url, catalog, user=TAXII_USER, password=TAXII_PASSWORD)
        timed("TAXII 2.1 (medallion), batches of 500", n, lambda: delivered(sink, events, work_dir / "spool-t", 500))
    finally:
        receiver.stop()

    es_url = os.environ.get("ATTACKMAP_ES_URL")
    if es_url:
        from elasticsearch import Elasticsearch

        from mitre.io.exports.elastic import ElasticExportSink

        client = Elasticsearch(es_url, request_timeout=60)
        index = f"attackmap-bench-exports-{uuid.uuid4().hex[:8]}"
        try:
            sink_es = ElasticExportSink(client, index, data_stream=False)
            timed("Elasticsearch bulk, batches of 1,000", n,
                  lambda: delivered(sink_es, events, work_dir / "spool-es", 1000))  # fmt: skip
        finally:
            client.options(ignore_status=404).indices.delete(index=index)
            client.options(ignore_status=404).indices.delete_index_template(name=f"attackmap-events-{index}")


def outage(n: int, down: float, work_dir: Path) -> None:
    alerts = many_alerts(enriched_examples(work_dir / "cache"), n, run=f"outage-{uuid.uuid4().hex[:6]}")
    feed = max(2 * down, 30.0)
    started = time.perf_counter()
    result = outage_run(alerts, work_dir, feed_seconds=feed, down_at=(feed - down) / 2, down_for=down)
    print(f"{n:,} alerts fed over {feed:.0f} s; HEC and TAXII stopped at {(feed - down) / 2:.0f} s for {down:.0f} s")
    print(result)
    print(f"all delivered once: {result.all_delivered_once}; total {time.perf_counter() - started:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--events", type=int, default=20_000)
    o = sub.add_parser("outage")
    o.add_argument("--alerts", type=int, default=10_000)
    o.add_argument("--down", type=float, default=60.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="attackmap-bench-exports-") as tmp:
        os.environ.setdefault("ATTACKMAP_HOME", tmp)
        if args.command == "throughput":
            throughput(args.events, Path(tmp), load_catalog(None))
        else:
            outage(args.alerts, args.down, Path(tmp))


if __name__ == "__main__":
    main()
