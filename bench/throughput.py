"""Throughput of `attackmap enrich` on a large generated file, cold and warm cache, local mapper.

Generates N alerts from examples/alerts.ndjson with per-copy variation in every volatile value
(timestamps, alert/rule UUIDs, host and user names, PIDs, temp file names), then times:
  1. a bare orjson read + write of the same file (the floor),
  2. `attackmap enrich` with an empty cache (cold),
  3. the same again with the cache it left (warm).
The floor and the warm run are repeated (--repeat, default 3) and their medians reported: on a
shared 2-core machine single runs swing by a third.
Usage: python bench/throughput.py --alerts 100000 [--workdir /tmp/attackmap-bench]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[1]


def vary(alert: dict, rng: random.Random, i: int) -> dict:
    user = rng.choice(["alice", "bob", "svc_backup", "jdoe", "mchen", "a.kowalski"])
    host = f"wks-{rng.randrange(10_000):04d}"
    doc = orjson.loads(orjson.dumps(alert))
    doc["@timestamp"] = f"2026-11-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:{(i * 7) % 60:02d}.{i % 1000:03d}Z"
    if "kibana.alert.uuid" in doc:
        doc["kibana.alert.uuid"] = str(uuid.UUID(int=rng.getrandbits(128)))
    if isinstance(doc.get("host"), dict):
        doc["host"]["name"] = host
    if isinstance(doc.get("user"), dict):
        doc["user"]["name"] = user
    proc = doc.get("process")
    if isinstance(proc, dict):
        proc["pid"] = rng.randrange(200, 65_000)
        cmd = proc.get("command_line")
        if isinstance(cmd, str) and "\\Temp\\" in cmd:
            proc["command_line"] = cmd.replace("\\Temp\\", f"\\Temp\\tmp{rng.randrange(16**4):04X}\\")
    return doc


def generate_unique(source: Path, target: Path, n: int) -> None:
    """Every alert a distinct cache key (a unique word in its command line or rule name): the cost
    of mapping alerts never seen before, with nothing to reuse."""
    examples = [orjson.loads(line) for line in source.read_bytes().splitlines() if line.strip()]
    rng = random.Random(7)
    with target.open("wb") as out:
        for i in range(n):
            doc = vary(examples[i % len(examples)], rng, i)
            word = f"u{i:07d}x"
            proc = doc.get("process")
            if isinstance(proc, dict) and isinstance(proc.get("command_line"), str):
                proc["command_line"] += f" {word}"
            else:
                doc["message"] = f"{doc.get('message', '')} {word}"
            doc["kibana.alert.risk_score"] = 99  # past the risk filter, so each one is mapped
            out.write(orjson.dumps(doc) + b"\n")


def generate(source: Path, target: Path, n: int) -> None:
    examples = [orjson.loads(line) for line in source.read_bytes().splitlines() if line.strip()]
    rng = random.Random(42)
    with target.open("wb") as out:
        for i in range(n):
            out.write(orjson.dumps(vary(examples[i % len(examples)], rng, i)) + b"\n")


def distinct_keys(source: Path) -> int:
    from mitre.cachekey import cache_key
    from mitre.features import extract_features

    keys = set()
    with source.open("rb") as src:
        for line in src:
            features = extract_features(orjson.loads(line))
            keys.add(cache_key(features, catalog_version="", mapper="local", model=None, prompt_hash=""))
    return len(keys)


def bare_copy(source: Path, target: Path) -> float:
    t0 = time.perf_counter()
    with source.open("rb") as src, target.open("wb") as out:
        for line in src:
            out.write(orjson.dumps(orjson.loads(line)) + b"\n")
    return time.perf_counter() - t0


def enrich(source: Path, target: Path, cache: Path, env: dict[str, str]) -> float:
    cmd = [
        sys.executable,
        "-m",
        "mitre",
        "enrich",
        str(source),
        "-o",
        str(target),
        "--cache-dir",
        str(cache),
        "--dead-letter",
        str(target.with_suffix(".dead.ndjson")),
    ]
    t0 = time.perf_counter()
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True)
    elapsed = time.perf_counter() - t0
    if result.returncode not in (0, 3):
        raise SystemExit(result.stderr.decode())
    return elapsed


def _runs(times: list[float]) -> str:
    return ", ".join(f"{t:.2f} s" for t in times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--alerts", type=int, default=100_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/attackmap-bench"))
    parser.add_argument("--examples", type=Path, default=REPO / "examples" / "alerts.ndjson")
    parser.add_argument("--unique", type=int, default=10_000, help="alerts in the all-distinct (truly cold) run")
    parser.add_argument("--repeat", type=int, default=3, help="runs of the floor and the warm run; medians reported")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    src = args.workdir / "alerts.ndjson"
    generate(args.examples, src, args.alerts)
    cache = args.workdir / "cache"
    subprocess.run(["rm", "-rf", str(cache)], check=True)
    env = {**os.environ, "ATTACKMAP_HOME": str(args.workdir / "home")}
    floors = sorted(bare_copy(src, args.workdir / "copy.ndjson") for _ in range(args.repeat))
    floor = statistics.median(floors)
    # Start-up (catalog, indicators, knowledge base, BM25 index) is timed separately on empty input:
    # the first run trains and stores the knowledge base, later runs reload it.
    empty = args.workdir / "empty.ndjson"
    empty.write_bytes(b"")
    first_startup = enrich(empty, args.workdir / "empty.out.ndjson", args.workdir / "startup-cache", env)
    startup = enrich(empty, args.workdir / "empty.out.ndjson", args.workdir / "startup-cache", env)
    cold = enrich(src, args.workdir / "cold.ndjson", cache, env)
    warms = sorted(enrich(src, args.workdir / "warm.ndjson", cache, env) for _ in range(args.repeat))
    warm = statistics.median(warms)
    unique = args.workdir / "unique.ndjson"
    generate_unique(args.examples, unique, args.unique)
    unique_time = enrich(unique, args.workdir / "unique.out.ndjson", args.workdir / "unique-cache", env)
    n = args.alerts
    print(f"alerts: {n}  file: {src.stat().st_size / 2**20:.1f} MiB")
    print(f"bare orjson read+write: {floor:.2f} s  ({n / floor:,.0f} alerts/s); runs {_runs(floors)}")
    print(f"start-up (empty input): first run {first_startup:.2f} s (trains the knowledge base), then {startup:.2f} s")
    keys = distinct_keys(src)
    print(f"distinct cache keys in the file: {keys} (a cold run computes each once)")
    for label, t in (("cold cache", cold), ("warm cache", warm)):
        steady = max(t - startup, 1e-9)
        print(
            f"enrich, {label}: {t:.2f} s wall ({n / t:,.0f} alerts/s); excluding start-up {n / steady:,.0f} alerts/s;"
            f" {steady / floor:.1f}x the bare read+write"
        )
    print(f"warm runs: {_runs(warms)} (the median is reported above)")
    steady_unique = max(unique_time - startup, 1e-9)
    print(
        f"enrich, {args.unique} all-distinct alerts (nothing reusable): {unique_time:.2f} s wall;"
        f" excluding start-up {args.unique / steady_unique:,.0f} alerts/s"
    )


if __name__ == "__main__":
    main()
