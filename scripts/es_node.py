#!/usr/bin/env python3
"""Start/stop a local single-node Elasticsearch for tests, CI and benchmarks.

    python scripts/es_node.py start [--port 9200] [--dir .es] [--version 8.19.21]
    python scripts/es_node.py stop  [--dir .es]
    python scripts/es_node.py url   [--dir .es]

The logic lives in devtools/es_node.py (shared with the pytest fixtures and the benchmarks through
devtools/servers.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devtools import es_node


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["start", "stop", "url"])
    parser.add_argument("--dir", type=Path, default=es_node.DEFAULT_DIR, help="work folder (default .es)")
    parser.add_argument("--port", type=int, default=es_node.DEFAULT_PORT, help="HTTP port (0: any free port)")
    parser.add_argument(
        "--version",
        default=None,
        help=f"Elasticsearch version (default $ATTACKMAP_ES_VERSION or {es_node.DEFAULT_VERSION})",
    )
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds to wait for the node to be ready")
    args = parser.parse_args(argv)

    if args.command == "start":
        try:
            info = es_node.start(port=args.port or None, work_dir=args.dir, version=args.version, timeout=args.timeout)
        except es_node.NodeError as exc:
            print(f"es_node: {exc}", file=sys.stderr)
            return 1
        print(info.url)
        return 0
    if args.command == "stop":
        stopped = es_node.stop(args.dir)
        print("stopped" if stopped else "not running", file=sys.stderr)
        return 0
    found = es_node.url(args.dir)
    if found is None:
        print("not running", file=sys.stderr)
        return 1
    print(found)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
