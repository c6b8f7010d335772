"""Receivers for the export tests and benchmarks, as real processes that can be stopped and restarted on
the same port: the HEC stand-in (`devtools/hec_standin.py`) and medallion (`devtools/taxii_server.py`);
test data (distinct copies of the enriched examples) and the outage scenario both of them run."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
HEC_TOKEN = "11111111-2222-4333-8444-555555555555"
TAXII_USER = "attackmap"
TAXII_PASSWORD = "taxii-test-password"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


EXAMPLES = REPO / "examples" / "alerts.ndjson"


def many_alerts(enriched: list[dict[str, Any]], n: int, run: str = "alert") -> list[dict[str, Any]]:
    """n distinct enriched alerts: the examples that carry techniques, each copy with its own id
    (``<run>-<n>-…``) and time."""
    tagged = [a for a in enriched if a.get("threat", {}).get("technique")]
    out = []
    for i in range(n):
        alert = dict(tagged[i % len(tagged)])
        alert["kibana.alert.uuid"] = f"{run}-{i:08d}-{i % len(tagged):04d}"
        alert["@timestamp"] = f"2026-10-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:{(i // 60) % 60:02d}.000Z"
        out.append(alert)
    return out


def write_ndjson(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    import orjson

    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


class Receiver:
    """A server process on a fixed port: start, stop (SIGTERM: a graceful shutdown), start again."""

    def __init__(self, argv: Sequence[str], health_url: str, log: Path, auth: tuple[str, str] | None = None) -> None:
        self.argv = list(argv)
        self.health_url = health_url
        self.log = log
        self.auth = auth
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.argv[1]} exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.health_url, timeout=1.0, auth=self.auth).status_code < 500:
                    return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.argv[1]} did not answer on {self.health_url} within {timeout:.0f}s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def hec_standin(directory: Path, *, ack: bool = False, indexes: Sequence[str] = ()) -> tuple[Receiver, str, Path]:
    """(receiver, base URL, NDJSON of accepted events)."""
    port = free_port()
    out = directory / "hec-received.ndjson"
    argv = [sys.executable, "-m", "devtools.hec_standin", "--port", str(port), "--out", str(out)]
    argv += ["--token", HEC_TOKEN, "--disabled-token", "00000000-0000-4000-8000-000000000000"]
    argv += [arg for index in indexes for arg in ("--index", index)]
    if ack:
        argv.append("--ack")
    base = f"http://127.0.0.1:{port}"
    return Receiver(argv, f"{base}/services/collector/health", directory / "hec.log"), base, out


def taxii_server(directory: Path) -> tuple[Receiver, str]:
    """(receiver, collection URL); the collection survives a stop and a start."""
    from devtools.taxii_server import collection_url

    port = free_port()
    argv = [sys.executable, "-m", "devtools.taxii_server", "--port", str(port)]
    argv += ["--data", str(directory / "taxii-data.json"), "--user", TAXII_USER, "--password", TAXII_PASSWORD]
    base = f"http://127.0.0.1:{port}"
    receiver = Receiver(argv, f"{base}/taxii2/", directory / "taxii.log", auth=(TAXII_USER, TAXII_PASSWORD))
    return receiver, collection_url(base)


def read_ndjson(path: Path) -> list[dict[str, object]]:
    import orjson

    if not path.is_file():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


# --------------------------------------------------------------------------- outage scenario (test and bench)


@dataclass
class OutageResult:
    alerts: int
    down_seconds: float
    offer_max_ms: float
    offer_p99_ms: float
    drained_seconds_after_restart: float
    hec_received: int
    hec_distinct: int
    taxii_sightings: int
    taxii_distinct: int
    expected_sightings: int
    dead_lettered: int

    @property
    def all_delivered_once(self) -> bool:
        return (
            self.hec_received == self.hec_distinct == self.alerts
            and self.taxii_sightings == self.taxii_distinct == self.expected_sightings
            and self.dead_lettered == 0
        )


# medallion's memory backend answers a page of objects in time quadratic in the collection's size
# (every object is matched against the whole manifest): past a few thousand objects the stream is
# counted in the store the server saves when stopped, not read back through the API.
API_READ_BACK_LIMIT = 2000


def stored_objects(directory: Path) -> list[dict[str, Any]]:
    """The objects of the collection in the data file medallion saved (devtools/taxii_server.py)."""
    import orjson

    data = orjson.loads((directory / "taxii-data.json").read_bytes())
    return [o for c in data["api1"]["collections"] for o in c.get("objects", ())]


def outage_run(
    alerts: Sequence[dict[str, Any]], directory: Path, *, feed_seconds: float, down_at: float, down_for: float
) -> OutageResult:
    """Feed enriched alerts to a HEC and a TAXII delivery at an even pace over ``feed_seconds``; stop
    both receivers (SIGTERM: a real process stop) ``down_at`` seconds in, start them again ``down_for``
    seconds later; then count what each received, and how often."""
    import statistics
    import threading

    from mitre.catalog import load_catalog
    from mitre.io.exports.delivery import Delivery, RetryPolicy
    from mitre.io.exports.event import from_enriched
    from mitre.io.exports.hec import HecSink
    from mitre.io.exports.stix import sighting_ids
    from mitre.io.exports.taxii import TaxiiSink, read_collection

    catalog = load_catalog(None)
    events = [from_enriched(a) for a in alerts]
    hec, hec_base, received = hec_standin(directory, ack=True)
    taxii, taxii_url = taxii_server(directory)
    hec.start()
    taxii.start()
    policy = RetryPolicy(initial_seconds=0.2, max_seconds=2.0, batch_size=250)
    deliveries = [
        Delivery(HecSink(hec_base, HEC_TOKEN, index="attackmap", ack=True), directory / "spool", policy=policy),
        Delivery(TaxiiSink(taxii_url, catalog, user=TAXII_USER, password=TAXII_PASSWORD), directory / "spool",
                 policy=policy),
    ]  # fmt: skip
    restarted = threading.Event()

    def outage() -> None:
        time.sleep(down_at)
        hec.stop()
        taxii.stop()
        time.sleep(down_for)
        hec.start()
        taxii.start()
        restarted.set()

    try:
        for delivery in deliveries:
            delivery.start()
        controller = threading.Thread(target=outage, daemon=True)
        started = time.monotonic()
        controller.start()
        offer_ms: list[float] = []
        chunk = 50
        for i in range(0, len(events), chunk):
            due = started + feed_seconds * i / len(events)
            time.sleep(max(0.0, due - time.monotonic()))
            t0 = time.perf_counter()
            for delivery in deliveries:
                delivery.offer(events[i : i + chunk])
            offer_ms.append((time.perf_counter() - t0) * 1000)
        controller.join()
        back = time.monotonic()
        drained = all([d.close(timeout=600) for d in deliveries])
        drained_seconds = time.monotonic() - back
        assert drained, "deliveries did not drain"
        hec_ids = [str(r["event"]["id"]) for r in read_ndjson(received)]  # type: ignore[index]
        read_back = None
        if len(events) <= API_READ_BACK_LIMIT:
            read_back = sorted(
                str(o["id"])
                for o in read_collection(taxii_url, user=TAXII_USER, password=TAXII_PASSWORD)
                if o["type"] == "sighting"
            )
    finally:
        hec.stop()
        taxii.stop()  # a graceful stop: medallion saves its collections
    sightings = [str(o["id"]) for o in stored_objects(directory) if o["type"] == "sighting"]
    assert read_back is None or read_back == sorted(sightings), "TAXII read-back differs from the server's store"
    return OutageResult(
        alerts=len(events),
        down_seconds=down_for,
        offer_max_ms=max(offer_ms),
        offer_p99_ms=statistics.quantiles(offer_ms, n=100, method="inclusive")[98] if offer_ms[1:] else offer_ms[0],
        drained_seconds_after_restart=drained_seconds,
        hec_received=len(hec_ids),
        hec_distinct=len(set(hec_ids)),
        taxii_sightings=len(sightings),
        taxii_distinct=len(set(sightings) & set(sighting_ids(events))),
        expected_sightings=len(set(sighting_ids(events))),
        dead_lettered=sum(d.stats.dead_lettered for d in deliveries),
    )
