"""Fit the local mapper's confidence calibration (mitre/data/calibration.yaml) on development data only.

    python -m evals.calibrate --out mitre/data/calibration.yaml [--shared ../shared/data]

Runs the local mapper with raw confidences, through the engine the shipped workflows.yaml describes, over development
data only — the Sigma 5-fold CV (rule alerts), the `dev` half of the hand-written cases (rule alerts and
raw events) and the `dev` split of telemetry-dev when that file has cases; never a holdout or check
split. Each predicted technique gives a (raw confidence, right or not) pair, keyed by the kind of alert
(a rule's, or a raw event) and of evidence (an indicator named it, or only the knowledge base / catalog
text did); each dataset weighs the same, and a monotone (isotonic) curve per key maps confidence to the
share of predictions that were right (a key with too few pairs uses its evidence kind's pooled curve).

Atomic Red Team is left out on purpose: it names one technique per test, so an indicator that rightly
shows the download or interpreter a test uses counts as wrong there. A fit that pooled it read an
indicator hit at 0.8 as right half the time, while on the hand-written holdout half such hits were right
85-100% of the time (ECE 0.137); the same pooled fit read rule alerts well (Chronicle ECE 0.049).
"""

from __future__ import annotations

import argparse
import itertools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from evals.datasets import HANDWRITTEN_DIR
from evals.metrics import _leading_source
from evals.runner import Dataset, Runner, prepare
from mitre.calibration import INDICATOR, KNOWLEDGE, Calibration, Curve, curve_key
from mitre.catalog import Catalog
from mitre.config import load_workflows
from mitre.features import extract_features
from mitre.mappers import LOCAL, default_registry, local_mapper
from mitre.mappers.base import MapperRegistry
from mitre.mappers.local import LocalWeights

BINS = 20  # equal-count bins per kind before the isotonic fit: a knot per bin, none on a handful of points
MAX_PROBABILITY = 0.99  # no technique is ever certain, whatever a bin of the fitting data says
MIN_PAIRS = 60  # fewer pairs for one kind of alert and evidence: its evidence kind's pooled curve is used


def pairs(runner: Runner, data: Dataset, cv: int | None) -> list[tuple[float, str, bool]]:
    """(raw confidence, curve key, right) for every technique the mapper itself predicted (rule tags left out)."""
    result = runner.run(data, cv=cv)
    cases = {c.id: c for c in data.cases}
    out = []
    for pred in result.predictions:
        case = cases[pred.case_id]
        raw_event = extract_features(case.alert).rule_name is None
        for tid in pred.techniques:
            evidence = pred.evidence.get(tid, ())
            if list(evidence) == ["rule tag"]:
                continue
            kind = INDICATOR if _leading_source(evidence) == "indicator" else KNOWLEDGE
            out.append((pred.confidences.get(tid, 0.0), curve_key(raw_event, kind), tid in case.techniques))
    return out


def fit_curve(points: Sequence[tuple[float, bool, float]]) -> Curve:
    """Isotonic fit of rightness on confidence over equal-count bins (weighted points)."""
    from sklearn.isotonic import IsotonicRegression

    ordered = sorted(points)
    x = np.array([p[0] for p in ordered])
    y = np.array([1.0 if p[1] else 0.0 for p in ordered])
    w = np.array([p[2] for p in ordered])
    edges = np.linspace(0, len(ordered), BINS + 1).astype(int)
    bx, by, bw = [], [], []
    for lo, hi in itertools.pairwise(edges):
        if hi > lo:
            weight = w[lo:hi].sum()
            bx.append(float((x[lo:hi] * w[lo:hi]).sum() / weight))
            by.append(float((y[lo:hi] * w[lo:hi]).sum() / weight))
            bw.append(float(weight))
    fitted = IsotonicRegression(y_min=0.0, y_max=MAX_PROBABILITY).fit(bx, by, sample_weight=bw).predict(bx)
    knots_x = [0.0, *[round(v, 4) for v in bx], 1.0]
    knots_y = [round(float(fitted[0]), 4), *[round(float(v), 4) for v in fitted], round(float(fitted[-1]), 4)]
    keep = [i for i in range(len(knots_x)) if i == 0 or knots_x[i] > knots_x[i - 1]]
    return Curve(x=tuple(knots_x[i] for i in keep), y=tuple(knots_y[i] for i in keep))


def _points(named: dict[str, list[tuple[float, str, bool]]], keys: set[str]) -> list[tuple[float, bool, float]]:
    """(confidence, right, weight) for the pairs under `keys`, each dataset weighing the same."""
    return [
        (conf, right, 1.0 / max(1, sum(1 for _, k, _ in rows if k in keys)))
        for rows in named.values()
        for conf, k, right in rows
        if k in keys
    ]


def fit(named: dict[str, list[tuple[float, str, bool]]]) -> Calibration:
    curves = {}
    for evidence in (INDICATOR, KNOWLEDGE):
        pooled = _points(named, {curve_key(True, evidence), curve_key(False, evidence)})
        for raw_event in (True, False):
            points = _points(named, {curve_key(raw_event, evidence)})
            chosen = points if len(points) >= MIN_PAIRS else pooled
            if len(chosen) >= BINS:
                curves[curve_key(raw_event, evidence)] = fit_curve(chosen)
    fitted_on = tuple(f"{name}: {len(rows)} predictions" for name, rows in named.items())
    return Calibration(curves=curves, fitted_on=fitted_on)


def _datasets(shared: Path, catalog: Catalog) -> list[tuple[str, Dataset, int | None]]:
    """The development sets, each mapped with the shipped workflow's knowledge base (Sigma and Atomic Red
    Team; Sigma cross-validated, each fold's own rows left out of it)."""
    chosen: list[tuple[str, Dataset, int | None]] = [
        (
            "sigma 5-fold CV, ART in the knowledge base",
            prepare(f"sigma:{shared / 'sigma' / 'rules.jsonl'}", catalog),
            5,
        ),
        ("hand-written cases, dev half", prepare(f"cases:{HANDWRITTEN_DIR}", catalog, "dev"), None),
    ]
    telemetry = shared / "telemetry-dev" / "cases.jsonl"
    if telemetry.is_file() and telemetry.stat().st_size:
        chosen.append(("telemetry-dev, dev split", prepare(f"telemetry:{telemetry}", catalog, "dev"), None))
    return chosen


def uncalibrated_registry() -> MapperRegistry:
    """The mapper registry with a local mapper that reports raw evidence scores (what the fit reads)."""
    registry = default_registry()
    registry.register(LOCAL, lambda context: local_mapper(context, LocalWeights(calibrated=False)))
    return registry


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workflows", type=Path, default=Path(__file__).resolve().parents[1] / "workflows.yaml")
    args = parser.parse_args(argv)
    os.environ.setdefault("ATTACKMAP_HOME", str(args.out.parent / ".calibrate-home"))
    # The engine the shipped workflows.yaml describes (ATT&CK bundle, crosswalk, Sigma + ART knowledge base).
    config = load_workflows(args.workflows)
    runner = Runner(config, registry=uncalibrated_registry(), progress=False)
    named = {name: pairs(runner, data, cv) for name, data, cv in _datasets(args.shared, runner.catalog)}
    calibration = fit(named)
    body: dict[str, Any] = calibration.model_dump(mode="json")
    header = (
        "# Confidence calibration of the local mapper: raw evidence score → probability a technique is right,\n"
        "# per kind of alert (rule/event) and evidence. Fitted by `python -m evals.calibrate` (isotonic, each\n"
        "# dataset weighted alike) on development data only: the datasets under fitted_on, never a holdout or\n"
        "# check split.\n"
        "# No confidence is ever certain: fitted values are capped at MAX_PROBABILITY (0.99).\n"
    )
    args.out.write_text(header + yaml.safe_dump(body, sort_keys=False, width=120, default_flow_style=None))
    print(f"wrote {args.out}: " + "; ".join(calibration.fitted_on))


if __name__ == "__main__":
    main()
