"""Throughput of `attackmap enrich` on a large generated file, cold and warm cache, local mapper.

Generates N alerts from examples/alerts.ndjson at a real fleet's cardinality (devtools/alertgen.py:
5,000 hosts with their agent ids, 800 users, per-alert ids, timestamps, PIDs, event ids and temp names,
rule ids stable per rule, 2% new command lines), then times:
  1. a bare orjson read + write of the same file (the floor),
  2. `attackmap enrich` with an empty cache (cold),
  3. the same again with the cache it left (warm).
The floor and the warm run are repeated in pairs (--repeat, default 3) and their medians reported: on a
shared 2-core machine single runs swing by a third. Each run's outcome-memo share is reported too.
Usage: python bench/throughput.py --alerts 100000 [--workdir /tmp/attackmap-bench]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from devtools.alertgen import RealisticAlerts  # noqa: E402


def _examples(source: Path) -> list[dict]:
    return [orjson.loads(line) for line in source.read_bytes().splitlines() if line.strip()]


def generate_unique(source: Path, target: Path, n: int, hosts: int, users: int) -> None:
    """Every alert a distinct cache key (a unique word in its command line or message): the cost
    of mapping alerts never seen before, with nothing to reuse."""
    stream = RealisticAlerts(_examples(source), hosts=hosts, users=users, distinct_commands=0.0, seed=7)
    with target.open("wb") as out:
        for i in range(n):
            doc = stream.alert(i)
            word = f"u{i:07d}x"
            proc = doc.get("process")
            if isinstance(proc, dict) and isinstance(proc.get("command_line"), str):
                proc["command_line"] += f" {word}"
            else:
                doc["message"] = f"{doc.get('message', '')} {word}"
            doc["kibana.alert.risk_score"] = 99  # past the risk filter, so each one is mapped
            out.write(orjson.dumps(doc) + b"\n")


def generate(source: Path, target: Path, n: int, hosts: int, users: int, distinct: float) -> None:
    stream = RealisticAlerts(_examples(source), hosts=hosts, users=users, distinct_commands=distinct)
    with target.open("wb") as out:
        for doc in stream.stream(n):
            out.write(orjson.dumps(doc) + b"\n")


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


def enrich(source: Path, target: Path, cache: Path, env: dict[str, str]) -> tuple[float, dict]:
    """(wall seconds, the run's summary)."""
    summary = target.with_suffix(".summary.json")
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
        "--summary-json",
        str(summary),
    ]
    t0 = time.perf_counter()
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True)
    elapsed = time.perf_counter() - t0
    if result.returncode not in (0, 3):
        raise SystemExit(result.stderr.decode())
    return elapsed, orjson.loads(summary.read_bytes())


def _runs(times: list[float]) -> str:
    return ", ".join(f"{t:.2f} s" for t in times)


def _memo_share(summary: dict) -> str:
    total = summary.get("total") or 1
    return f"{summary['cache'].get('remembered', 0) / total:.1%}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--alerts", type=int, default=100_000)
    parser.add_argument("--hosts", type=int, default=5_000, help="distinct hosts (each with its agent id)")
    parser.add_argument("--users", type=int, default=800, help="distinct human accounts")
    parser.add_argument("--distinct", type=float, default=0.02, help="share of alerts with a new command line")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/attackmap-bench"))
    parser.add_argument("--examples", type=Path, default=REPO / "examples" / "alerts.ndjson")
    parser.add_argument("--unique", type=int, default=10_000, help="alerts in the all-distinct (truly cold) run")
    parser.add_argument("--repeat", type=int, default=3, help="runs of the floor and the warm run; medians reported")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    src = args.workdir / "alerts.ndjson"
    generate(args.examples, src, args.alerts, args.hosts, args.users, args.distinct)
    cache = args.workdir / "cache"
    # Every cache this run fills starts empty: a workdir used before must not make a cold run warm.
    for used in (cache, args.workdir / "startup-cache", args.workdir / "unique-cache"):
        subprocess.run(["rm", "-rf", str(used)], check=True)
    env = {**os.environ, "ATTACKMAP_HOME": str(args.workdir / "home")}
    # Start-up (catalog, indicators, knowledge base, BM25 index) is timed separately on empty input:
    # the first run trains and stores the knowledge base, later runs reload it.
    empty = args.workdir / "empty.ndjson"
    empty.write_bytes(b"")
    first_startup, _ = enrich(empty, args.workdir / "empty.out.ndjson", args.workdir / "startup-cache", env)
    startup, _ = enrich(empty, args.workdir / "empty.out.ndjson", args.workdir / "startup-cache", env)
    cold, cold_summary = enrich(src, args.workdir / "cold.ndjson", cache, env)
    # Each warm run right after a floor run, so each ratio compares two runs under the same load.
    floors, warms, ratios = [], [], []
    warm_summary: dict = {}
    for _ in range(args.repeat):
        floors.append(bare_copy(src, args.workdir / "copy.ndjson"))
        took, warm_summary = enrich(src, args.workdir / "warm.ndjson", cache, env)
        warms.append(took)
        ratios.append(max(took - startup, 1e-9) / floors[-1])
    floor, warm = statistics.median(floors), statistics.median(warms)
    unique = args.workdir / "unique.ndjson"
    generate_unique(args.examples, unique, args.unique, args.hosts, args.users)
    unique_time, _ = enrich(unique, args.workdir / "unique.out.ndjson", args.workdir / "unique-cache", env)
    n = args.alerts
    print(
        f"alerts: {n}  file: {src.stat().st_size / 2**20:.1f} MiB  ({args.hosts} hosts, {args.users} users,"
        f" {args.distinct:.0%} new command lines)"
    )
    print(f"bare orjson read+write: {floor:.2f} s  ({n / floor:,.0f} alerts/s); runs {_runs(floors)}")
    print(f"start-up (empty input): first run {first_startup:.2f} s (trains the knowledge base), then {startup:.2f} s")
    keys = distinct_keys(src)
    print(f"distinct cache keys in the file: {keys} (a cold run computes each once)")
    for label, t, summary in (("cold cache", cold, cold_summary), ("warm cache", warm, warm_summary)):
        steady = max(t - startup, 1e-9)
        print(
            f"enrich, {label}: {t:.2f} s wall ({n / t:,.0f} alerts/s); excluding start-up {n / steady:,.0f} alerts/s;"
            f" {steady / floor:.1f}x the bare read+write; outcome memo answered {_memo_share(summary)}"
        )
    print(
        f"warm runs: {_runs(warms)}; each against the floor run just before it: "
        + ", ".join(f"{r:.2f}x" for r in ratios)
    )
    steady_unique = max(unique_time - startup, 1e-9)
    print(
        f"enrich, {args.unique} all-distinct alerts (nothing reusable): {unique_time:.2f} s wall;"
        f" excluding start-up {args.unique / steady_unique:,.0f} alerts/s"
    )


if __name__ == "__main__":
    main()
