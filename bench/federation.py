"""Signed federation: what signing and verifying cost per payload, and whether 10,000 findings reach a
peer that is down for 60 s in the middle — all of them, once.

1. Sign + verify, Ed25519 and HMAC-SHA256, for a request of 1 finding and of 500 (a delivery batch):
   headers built (body digest, signature) and checked (digest, signature), --rounds times each. A
   finding is a common event as the federation sink serialises it.
2. Outage: a receiver (uvicorn, mutual TLS with a throwaway CA, the shared SQLite nonce/delivery
   store) and the exports' delivery layer sending to it in its background thread through the
   federation sink — the path the flows, the event worker and `attackmap federation send` take.
   Findings are offered at a steady rate; after the first half the receiver is stopped for --down
   seconds, then started again on the same port. The run ends when the spool is empty; every emitted
   finding key is counted, and so is the time each hand-over to the delivery took.
Usage: python bench/federation.py [--findings 10000] [--down 60] [--rounds 2000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.routing import Route  # noqa: E402

from devtools.asgi import ThreadedServer  # noqa: E402
from devtools.tls import ThrowawayCA  # noqa: E402
from mitre.io.exports.delivery import Delivery, RetryPolicy  # noqa: E402
from mitre.io.exports.event import CommonEvent, Provenance, Rule  # noqa: E402
from mitre.io.federation.inbound import Inbound  # noqa: E402
from mitre.io.federation.outbound import FederationSink, mtls_client, request_body  # noqa: E402
from mitre.io.federation.signing import (  # noqa: E402
    NONCE_HEADER,
    SIGNATURE_HEADER,
    TENANT_HEADER,
    TIMESTAMP_HEADER,
    Ed25519Signer,
    HmacSigner,
    PeersFile,
    public_key_text,
    signed_headers,
    signed_message,
)
from mitre.io.federation.store import ReceiverStore  # noqa: E402

PATH = "/v1/federation/inbound"
SECRET = "b" * 32
WHEN = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)


def finding(n: int) -> CommonEvent:
    return CommonEvent(
        id=f"alert-{n:06d}",
        tenant="acme",
        timestamp=WHEN,
        rule=Rule(id="rule-dump", name="LSASS dump via comsvcs"),
        severity="high",
        technique_ids=("T1003", "T1003.001"),
        tactic_ids=("TA0006",),
        confidence=0.97,
        technique_confidence={"T1003.001": 0.97},
        execution_fingerprint=f"{n:064x}",
        nist_800_53_controls=("AC-2", "AC-3", "CM-2", "IA-2", "SI-4"),
        provenance=Provenance(catalog_version="18.1", mapper="local", decision="map", provenance_hash=f"p{n}"),
    )


def peers_file(directory: Path, key: Ed25519PrivateKey) -> Path:
    path = directory / "peers.yaml"
    path.write_text(
        "peers:\n  - name: east\n    tenants: [acme]\n    max_body_bytes: 4000000\n    requests_per_minute: 100000\n"
        f"    keys:\n      - {{key_id: east-1, algorithm: ed25519, public_key: {public_key_text(key)}}}\n"
        "      - {key_id: east-hmac, algorithm: hmac-sha256, secret_env: BENCH_SECRET}\n"
    )
    return path


def signing_cost(peers: PeersFile, key: Ed25519PrivateKey, rounds: int) -> None:
    print("| signature | payload | body | sign | verify |\n|---|---|---|---|---|")
    for signer in (Ed25519Signer("east-1", key), HmacSigner("east-hmac", SECRET.encode())):
        verifier = peers.verifier(signer.key_id)
        assert verifier is not None
        for size in (1, 500):
            body = request_body([finding(i).to_json() for i in range(size)])
            signs, checks = [], []
            for _ in range(rounds if size == 1 else max(rounds // 10, 50)):
                t0 = time.perf_counter()
                headers = signed_headers(signer, "acme", body)
                t1 = time.perf_counter()
                message = signed_message(
                    signer.key_id, headers[TIMESTAMP_HEADER], headers[NONCE_HEADER], headers[TENANT_HEADER], body
                )
                assert verifier.verify(message, headers[SIGNATURE_HEADER])
                t2 = time.perf_counter()
                signs.append(t1 - t0)
                checks.append(t2 - t1)
            print(
                f"| {signer.algorithm} | {size} finding(s) | {len(body):,} B "
                f"| {statistics.median(signs) * 1e6:.0f} µs | {statistics.median(checks) * 1e6:.0f} µs |"
            )


def outage(root: Path, ca: ThrowawayCA, peers_path: Path, key: Ed25519PrivateKey, total: int, down: float) -> None:
    emitted: Counter[str] = Counter()
    lock = threading.Lock()

    def emit(peer: str, findings: object) -> None:
        with lock:
            emitted.update(f.key for f in findings)  # type: ignore[attr-defined]

    inbound = Inbound(PeersFile(peers_path, environ={"BENCH_SECRET": SECRET}), ReceiverStore(root / "r.sqlite"), emit)
    app = Starlette(routes=[Route(PATH, inbound.handle, methods=["POST"])])
    cert = ca.issue("receiver", server=True)
    client = ca.issue("east", server=False)
    tls = {"certfile": cert.cert, "keyfile": cert.key, "ca_certs": ca.ca_file}
    server = ThreadedServer(app, **tls)
    server.start()
    sink = FederationSink(
        server.url + PATH, Ed25519Signer("east-1", key), mtls_client(ca.ca_file, client.cert, client.key)
    )
    delivery = Delivery(sink, root / "spool", policy=RetryPolicy(initial_seconds=0.5, max_seconds=5.0, batch_size=500))
    delivery.start()
    started = time.monotonic()
    rate = 500  # findings offered per second
    handovers: list[float] = []
    stopped_at = restarted_at = None
    backlog = 0

    def restart() -> None:
        nonlocal server, restarted_at, backlog
        backlog = delivery.stats.offered - delivery.stats.delivered
        server = ThreadedServer(app, port=server.port, **tls)
        server.start()
        restarted_at = time.monotonic()
        print(f"receiver restarted after {restarted_at - (stopped_at or 0):.1f} s down; {backlog:,} findings spooled")

    for n in range(0, total, 50):
        batch = [finding(i) for i in range(n, min(n + 50, total))]
        t0 = time.perf_counter()
        delivery.offer(batch)
        handovers.append(time.perf_counter() - t0)
        time.sleep(50 / rate)
        if stopped_at is None and n + 50 >= total // 2:
            with lock:
                before = sum(emitted.values())
            server.stop()
            stopped_at = time.monotonic()
            print(f"receiver stopped after {n + 50:,} offered, {before:,} delivered")
        if stopped_at is not None and restarted_at is None and time.monotonic() - stopped_at >= down:
            restart()
    if restarted_at is None:
        time.sleep(max(0.0, down - (time.monotonic() - (stopped_at or 0))))
        restart()
    assert restarted_at is not None
    while delivery.pending() and time.monotonic() - restarted_at < 120:
        time.sleep(0.1)
    drained = time.monotonic()
    delivery.close(timeout=10)
    server.stop()
    stats = delivery.stats
    with lock:
        distinct, deliveries = len(emitted), sum(emitted.values())
    handovers.sort()
    print(
        f"offered {total:,}; delivered {distinct:,} distinct findings in {deliveries:,} emissions "
        f"(duplicates emitted: {deliveries - distinct}); dead-lettered {stats.dead_lettered}; "
        f"{stats.transient_failures} failed tries while down; backlog drained {drained - restarted_at:.1f} s after the "
        f"restart; {drained - started:.1f} s in all; handing 50 findings over: p99 "
        f"{handovers[int(len(handovers) * 0.99)] * 1e3:.1f} ms, max {handovers[-1] * 1e3:.1f} ms"
    )
    assert distinct == total and deliveries == total, "every finding delivered exactly once"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--findings", type=int, default=10_000)
    parser.add_argument("--down", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        key = Ed25519PrivateKey.generate()
        path = peers_file(root, key)
        signing_cost(PeersFile(path, environ={"BENCH_SECRET": SECRET}), key, args.rounds)
        outage(root, ThrowawayCA(root / "pki"), path, key, args.findings, args.down)


if __name__ == "__main__":
    main()
