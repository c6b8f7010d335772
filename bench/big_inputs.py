"""Inputs past every comfortable size, for measuring `attackmap enrich`'s memory by hand (README, Robustness).

Writes, under --out:
  huge-line.ndjson   3 normal alerts around one line of --line-gb GB (a JSON object with one long string);
  huge-alert.ndjson  3 normal alerts around one alert of --alert-mb MB (a long command line: a real alert);
  many.ndjson        --alerts alerts, the 13 shortest examples in turn with the volatile values varied
                     (bench/throughput.py's `vary`), so the run sees cache hits, not one repeated alert.
Every file is written in 1 MiB pieces: generating it never holds it in memory either.

    python bench/big_inputs.py --out /tmp/attackmap-big [--line-gb 1] [--alert-mb 100] [--alerts 10000000]
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import REPO, vary

MIB = 2**20


def shortest_examples(n: int = 13) -> list[dict]:
    lines = [line for line in (REPO / "examples" / "alerts.ndjson").read_bytes().splitlines() if line.strip()]
    return [orjson.loads(line) for line in sorted(lines, key=len)[:n]]


def write_long_line(path: Path, prefix: bytes, size: int, suffix: bytes, around: list[bytes]) -> None:
    """around[0], then prefix + `size` bytes of 'A' + suffix on one line, then the rest of around."""
    piece = b"A" * MIB
    with path.open("wb") as out:
        out.write(around[0] + b"\n" + prefix)
        left = size
        while left > 0:
            out.write(piece[: min(MIB, left)])
            left -= MIB
        out.write(suffix + b"\n" + b"\n".join(around[1:]) + b"\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--line-gb", type=float, default=1.0)
    parser.add_argument("--alert-mb", type=float, default=100.0)
    parser.add_argument("--alerts", type=int, default=10_000_000)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    examples = shortest_examples()
    normal = [orjson.dumps(e) for e in examples[:3]]

    write_long_line(args.out / "huge-line.ndjson", b'{"pad": "', int(args.line_gb * 1024 * MIB), b'"}', normal)
    alert = dict(examples[0])
    alert.pop("process", None)
    head = orjson.dumps({**alert, "process.name": "powershell.exe", "process.command_line": "__CUT__"})
    prefix, suffix = head.split(b"__CUT__")
    write_long_line(
        args.out / "huge-alert.ndjson", prefix + b"powershell.exe -enc ", int(args.alert_mb * MIB), suffix, normal
    )

    rng = random.Random(7)
    with (args.out / "many.ndjson").open("wb") as out:
        buffer = []
        for i in range(args.alerts):
            buffer.append(orjson.dumps(vary(examples[i % len(examples)], rng, i)))
            if len(buffer) == 10_000:
                out.write(b"\n".join(buffer) + b"\n")
                buffer = []
        if buffer:
            out.write(b"\n".join(buffer) + b"\n")
    for name in ("huge-line.ndjson", "huge-alert.ndjson", "many.ndjson"):
        print(f"{args.out / name}: {(args.out / name).stat().st_size / MIB:,.0f} MiB")


if __name__ == "__main__":
    main()
