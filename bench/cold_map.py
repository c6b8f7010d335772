"""Cold mapping cost of one unseen alert on one core, and the knowledge base's build time.

    python bench/cold_map.py [--shared ../shared/data] [--repeat 3]

Builds the default workflow's knowledge base (the files workflows.yaml lists, plus the catalog's own
examples; `--kb` to name others) from scratch and times it; then maps each hand-written eval case's
alert, one at a time and with no cache (features → indicators → decision → local mapper), and reports
the p50 / p95 per alert.
BLAS threads are pinned to one, so the figure is one core's.
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import orjson  # noqa: E402
import yaml  # noqa: E402

from mitre.catalog import load_catalog  # noqa: E402
from mitre.config import DecisionSettings, MapperSettings  # noqa: E402
from mitre.decision import decide  # noqa: E402
from mitre.features import extract_features  # noqa: E402
from mitre.indicators import load_indicators  # noqa: E402
from mitre.knowledge import KnowledgeBase, load_examples  # noqa: E402
from mitre.mappers.local import LocalMapper  # noqa: E402

HERE = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=HERE.parent / "shared" / "data")
    parser.add_argument("--repeat", type=int, default=3, help="knowledge-base builds to time (median reported)")
    parser.add_argument("--kb", type=Path, nargs="*", help="knowledge-base files (default: workflows.yaml's)")
    parser.add_argument("--cases", type=Path, default=HERE / "evals" / "cases", help="eval cases to map")
    args = parser.parse_args()
    catalog = load_catalog(None)  # the default workflow's catalog: the bundled ATT&CK v18.1
    paths = args.kb or [
        HERE / p
        for p in yaml.safe_load((HERE / "workflows.yaml").read_text())["workflows"][0]["mapper"]["knowledge_base"]
    ]
    builds = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        examples, _ = load_examples(paths, catalog)
        knowledge = KnowledgeBase(examples)
        knowledge.warm()
        builds.append(time.perf_counter() - started)
    indicators = load_indicators(catalog)
    mapper = LocalMapper(catalog, indicators, MapperSettings(), knowledge=knowledge)
    settings = DecisionSettings()
    alerts = [
        orjson.loads(line)["alert"]
        for path in sorted(args.cases.glob("*.jsonl"))
        for line in path.read_bytes().splitlines()
        if line.strip()
    ]
    mapper.map(extract_features(alerts[0]), decide(extract_features(alerts[0]), (), settings, catalog))  # warm-up
    costs = []
    for alert in alerts:
        started = time.perf_counter()
        features = extract_features(alert)
        decision = decide(features, indicators.evaluate(features), settings, catalog)
        mapper.map(features, decision)
        costs.append(time.perf_counter() - started)
    costs.sort()
    print(
        f"knowledge base build: median {statistics.median(builds):.1f} s over {len(builds)} "
        f"({', '.join(f'{b:.1f}' for b in builds)}); {len(knowledge)} examples"
    )
    print(
        f"cold mapping of one unseen alert ({len(costs)} alerts, one core): "
        f"p50 {1000 * statistics.median(costs):.1f} ms, p95 {1000 * costs[int(0.95 * (len(costs) - 1))]:.1f} ms"
    )


if __name__ == "__main__":
    main()
