"""An NDJSON file of alerts of any JSON shape, grown from the real examples by the property-based
tests' strategy (tests/alert_strategies.py), for running `attackmap enrich` on it end to end.

    python bench/fuzz_file.py --alerts 10000 --out /tmp/fuzz.ndjson
    attackmap enrich /tmp/fuzz.ndjson -o /tmp/fuzz.out --dead-letter /tmp/fuzz.dead -j 2

Derandomized: the same --alerts gives the same file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hypothesis import Phase, given, settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.alert_strategies import as_line, mutated_alerts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alerts", type=int, default=10_000)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    lines: list[bytes] = []

    @settings(max_examples=args.alerts, phases=[Phase.generate], derandomize=True, database=None, deadline=None)
    @given(mutated_alerts())
    def collect(alert: object) -> None:
        lines.append(as_line(alert).replace(b"\n", b" ").replace(b"\r", b" "))

    collect()
    args.out.write_bytes(b"\n".join(lines) + b"\n")
    print(f"{args.out}: {len(lines)} alerts")


if __name__ == "__main__":
    main()
