"""Shortlist recall: is the labelled technique among the candidates the LLM is shown?

The model can only pick what it is shown, so this bounds what an LLM answer can get right. For each
labelled case the real prompt is rendered (`LLMMapper.render`, the same shortlist and size limits a
real call uses) and its candidate list is compared with the labels:

- label recall (strict): share of labelled techniques whose exact ID is a candidate;
- label recall (family): ... or whose parent or one of whose sub-techniques is a candidate;
- case recall: share of cases with at least one labelled technique among the candidates;
- catalog recall: share of labelled techniques the prompt's static part lists (the whole catalog).

Datasets, each loaded by path (never copied):
- the hand-written cases (`evals/cases/`), knowledge base Sigma + Atomic Red Team as in workflows.yaml;
- a sample of Sigma rules, knowledge base Atomic Red Team only (a rule is never its own neighbour);
- a sample of Atomic Red Team tests, knowledge base Sigma only;
- the telemetry `check` split (`../shared/data/telemetry-dev/cases.jsonl`), knowledge base Sigma + ART.
  An empty or missing file is reported as such and the run goes on: the measurement runs as is when
  the data arrives.

    python bench/shortlist_recall.py                      # all datasets, 400 Sigma + 400 ART samples
    python bench/shortlist_recall.py --sample 200 --json out.json
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))

from evals.datasets import HANDWRITTEN_DIR, Case, load_atomic, load_cases, load_sigma  # noqa: E402
from evals.labels import normalise_cases  # noqa: E402
from mitre.catalog import Catalog, load_catalog  # noqa: E402
from mitre.config import DecisionSettings, MapperSettings  # noqa: E402
from mitre.decision import decide  # noqa: E402
from mitre.features import extract_features  # noqa: E402
from mitre.indicators import IndicatorSet, load_indicators  # noqa: E402
from mitre.knowledge import KnowledgeBase, load_examples  # noqa: E402
from mitre.mappers.llm.mapper import LLMMapper  # noqa: E402
from mitre.mappers.local import LocalMapper  # noqa: E402
from mitre.models import Decision, DecisionKind  # noqa: E402

SIGMA = SHARED / "sigma" / "rules.jsonl"
ATOMIC = SHARED / "atomic-red-team" / "tests.jsonl"
TELEMETRY = SHARED / "telemetry-dev" / "cases.jsonl"


class _Offline:
    """A provider stand-in: prompts are rendered, never sent."""

    name = "anthropic"
    model = "claude-haiku-4-5"


def listed_in(system: str) -> set[str]:
    """The technique IDs the prompt's catalog section lists (`T1059 name [..]: .001 name; ...`)."""
    ids: set[str] = set()
    for line in system.splitlines():
        if m := re.match(r"(T\d{4}) ", line):
            ids.add(m.group(1))
            ids.update(f"{m.group(1)}.{sub}" for sub in re.findall(r"(?:: |; )\.(\d{3}) ", line))
    return ids


def family(tid: str, catalog: Catalog) -> set[str]:
    """A technique, its parent, and its parent's sub-techniques."""
    parent = catalog.techniques[tid].parent or tid
    return {parent, *(t for t in catalog.techniques if t.startswith(parent + "."))}


def measure(name: str, cases: Sequence[Case], mapper: LLMMapper, catalog: Catalog, settings: DecisionSettings) -> dict:
    labels = strict = fam = hit_cases = scored = listed = 0
    sizes: list[int] = []
    misses: dict[str, int] = {}
    for case in cases:
        if not case.techniques:
            continue
        features = extract_features(case.alert)
        decision = decide(features, mapper.local.indicators.evaluate(features), settings, catalog)
        if decision.kind is DecisionKind.SKIP:  # measure what the model would see if it were asked
            decision = Decision(kind=DecisionKind.MAP, reason="measured", detail="", indicators=decision.indicators)
        local_result = mapper.local.map(features, decision)
        prompt = mapper.render(features, decision, local_result)
        shown = {c.technique_id for c in prompt.candidates}
        catalog_ids = listed_in(prompt.system)
        listed += sum(1 for tid in case.techniques if tid in catalog_ids)
        sizes.append(len(shown))
        scored += 1
        any_hit = False
        for tid in case.techniques:
            labels += 1
            if tid in shown:
                strict += 1
                any_hit = True
            else:
                misses[tid] = misses.get(tid, 0) + 1
            if family(tid, catalog) & shown:
                fam += 1
        hit_cases += any_hit
    return {
        "dataset": name,
        "cases": scored,
        "labels": labels,
        "label_recall_strict": round(strict / labels, 4) if labels else None,
        "label_recall_family": round(fam / labels, 4) if labels else None,
        "case_recall": round(hit_cases / scored, 4) if scored else None,
        "catalog_recall": round(listed / labels, 4) if labels else None,
        "mean_candidates": round(sum(sizes) / len(sizes), 1) if sizes else None,
        "most_missed": sorted(misses.items(), key=lambda kv: -kv[1])[:10],
    }


def llm_mapper(catalog: Catalog, indicators: IndicatorSet, kb_paths: Sequence[Path]) -> LLMMapper:
    examples, _ = load_examples([p for p in kb_paths if p.is_file()], catalog)
    settings = MapperSettings(provider="anthropic", model="claude-haiku-4-5")
    knowledge = KnowledgeBase(examples) if examples else None
    local = LocalMapper(catalog, indicators, settings, knowledge=knowledge, knowledge_fingerprint="recall")
    return LLMMapper("anthropic", _Offline(), catalog, settings, local)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sample", type=int, default=400, help="Sigma rules and ART tests sampled from each corpus")
    ap.add_argument("--telemetry", type=Path, default=TELEMETRY, help="eval cases with a split field")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    started = time.time()
    rng = random.Random(args.seed)
    catalog = load_catalog(None)
    indicators = load_indicators(catalog)
    settings = DecisionSettings(mode="always")
    report: dict[str, Any] = {"datasets": [], "notes": []}

    both = llm_mapper(catalog, indicators, [SIGMA, ATOMIC])
    cases, _ = normalise_cases(load_cases(HANDWRITTEN_DIR)[0], catalog)
    report["datasets"].append(measure("hand-written cases", cases, both, catalog, settings))

    if args.telemetry.is_file() and args.telemetry.stat().st_size > 0:
        rows = [json.loads(line) for line in args.telemetry.read_text().splitlines() if line.strip()]
        check_ids = {str(r["id"]) for r in rows if r.get("split") == "check"}
        telemetry, _ = normalise_cases([c for c in load_cases(args.telemetry)[0] if c.id in check_ids], catalog)
        report["datasets"].append(measure("telemetry check split", telemetry, both, catalog, settings))
    else:
        report["notes"].append(f"{args.telemetry}: missing or empty, telemetry check split not measured")

    if SIGMA.is_file() and ATOMIC.is_file():
        sigma, _ = normalise_cases(load_sigma(SIGMA)[0], catalog)
        atomic, _ = normalise_cases(load_atomic(ATOMIC)[0], catalog)
        sample_sigma = rng.sample(sigma, min(args.sample, len(sigma)))
        sample_atomic = rng.sample(atomic, min(args.sample, len(atomic)))
        report["datasets"].append(
            measure(
                "Sigma sample (KB: ART)", sample_sigma, llm_mapper(catalog, indicators, [ATOMIC]), catalog, settings
            )
        )
        report["datasets"].append(
            measure(
                "ART sample (KB: Sigma)", sample_atomic, llm_mapper(catalog, indicators, [SIGMA]), catalog, settings
            )
        )
    else:
        report["notes"].append(f"{SHARED}: Sigma / ART corpora not found, samples not measured")
    report["runtime_s"] = round(time.time() - started, 1)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
