"""Scoring predictions against expected labels.

- strict technique, parent-technique and tactic precision / recall / F1, micro and macro;
- hierarchical F1 as the public Sigma benchmark (cotool.ai, "Sigma Detection Classification")
  defines it: an exact match, or a predicted sub-technique where its parent was expected, scores
  1.0; the predicted parent where a sub-technique was expected scores 0.75; predictions and
  expectations are matched one-to-one greedily by score; precision = credit / |predicted|,
  recall = credit / |expected|; F1 per case, averaged over cases (the headline figure);
- abstention rate (overall, on positives, on hard negatives), invalid-ID rate, cost / latency per
  alert, cache hit rate, per-tactic F1, most frequent confusions, and a reliability table
  (calibration bins: confidence vs precision) with its expected calibration error (ECE: the
  prediction-weighted mean gap between a bin's confidence and its precision), which says whether
  `confidence` can be read as the probability that a technique is right;
- case outcomes: how many labelled cases got only right techniques, a right one plus others the
  labels do not name (and which evidence named those), only wrong ones, or none; and top-1
  accuracy. They tell a mapper's mistakes from a labelling convention: Atomic Red Team names one
  technique per test, its purpose, even where the command also shows a download or an interpreter.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

CALIBRATION_BINS = 10


@dataclass
class Prediction:
    """What a mapper said about one case (after validation), plus run accounting."""

    case_id: str
    techniques: tuple[str, ...] = ()
    confidences: dict[str, float] = field(default_factory=dict)
    tactics: tuple[str, ...] = ()
    raw_ids: tuple[str, ...] = ()  # technique IDs exactly as the mapper returned them
    invalid_ids: tuple[str, ...] = ()  # raw IDs that are not active techniques of the catalog
    latency_s: float = 0.0
    cost_usd: float | None = None
    cache_hit: bool = False
    evidence: dict[str, list[str]] = field(default_factory=dict)
    fallback_reason: str | None = None


@dataclass(frozen=True)
class Truth:
    case_id: str
    techniques: tuple[str, ...]
    tactics: tuple[str, ...]
    hard_negative: bool = False


def parent(tid: str) -> str:
    return tid.split(".")[0]


def prf(tp: float, n_pred: float, n_true: float) -> dict[str, float]:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_true if n_true else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f}


def _pair_score(pred: str, exp: str) -> float:
    if pred == exp or (parent(pred) == exp and pred != parent(pred)):
        return 1.0
    if pred == parent(exp) and exp != parent(exp):
        return 0.75
    return 0.0


def hierarchical_match(pred: Sequence[str], exp: Sequence[str]) -> tuple[float, list[tuple[str, str, float]]]:
    """Greedy one-to-one matching by score; (total credit, matched pairs)."""
    pairs = sorted(
        ((s, i, j) for i, p in enumerate(pred) for j, e in enumerate(exp) if (s := _pair_score(p, e)) > 0),
        key=lambda x: (-x[0], x[1], x[2]),
    )
    used_p: set[int] = set()
    used_e: set[int] = set()
    matched = []
    credit = 0.0
    for s, i, j in pairs:
        if i in used_p or j in used_e:
            continue
        used_p.add(i)
        used_e.add(j)
        matched.append((pred[i], exp[j], s))
        credit += s
    return credit, matched


def hierarchical_case(pred: Sequence[str], exp: Sequence[str]) -> dict[str, float]:
    """Per-case hierarchical P/R/F1. Nothing expected and nothing predicted (hard negative) = 1."""
    pred = list(dict.fromkeys(pred))
    exp = list(dict.fromkeys(exp))
    if not exp and not pred:
        return {"precision": 1.0, "recall": 1.0, "f1": 1.0, "credit": 0.0}
    credit, _ = hierarchical_match(pred, exp)
    out = prf(credit, len(pred), len(exp))
    if not exp:  # a hard negative with predictions: precision 0, recall vacuous
        out = {"precision": 0.0, "recall": 1.0, "f1": 0.0}
    out["credit"] = credit
    return out


class _Counts:
    def __init__(self) -> None:
        self.tp: Counter[str] = Counter()
        self.fp: Counter[str] = Counter()
        self.fn: Counter[str] = Counter()

    def add(self, pred: set[str], exp: set[str]) -> None:
        for x in pred & exp:
            self.tp[x] += 1
        for x in pred - exp:
            self.fp[x] += 1
        for x in exp - pred:
            self.fn[x] += 1

    def micro(self) -> dict[str, float]:
        tp = sum(self.tp.values())
        return prf(tp, tp + sum(self.fp.values()), tp + sum(self.fn.values()))

    def per_label(self) -> dict[str, dict[str, float]]:
        labels = set(self.tp) | set(self.fp) | set(self.fn)
        out = {}
        for label in sorted(labels):
            tp = self.tp[label]
            scores = prf(tp, tp + self.fp[label], tp + self.fn[label])
            scores["support"] = tp + self.fn[label]
            out[label] = scores
        return out

    def macro(self) -> dict[str, float]:
        """Unweighted mean over labels that were expected at least once."""
        per = {k: v for k, v in self.per_label().items() if v["support"] > 0}
        if not per:
            return {"precision": 0.0, "recall": 0.0, "f1": 0.0}
        return {m: statistics.fmean(v[m] for v in per.values()) for m in ("precision", "recall", "f1")}


def _leading_source(evidence: Sequence[str]) -> str:
    """The kind of evidence that put a technique in a prediction: an indicator when one did, else the
    first listed (evidence reads `source[@field]: detail`, or `rule tag`)."""
    sources = [item.split(":", 1)[0].split("@", 1)[0] for item in evidence]
    return "indicator" if "indicator" in sources else (sources[0] if sources else "unknown")


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


def score(truths: Sequence[Truth], predictions: Sequence[Prediction], top_confusions: int = 25) -> dict[str, Any]:
    """All figures for one run. `truths` and `predictions` are aligned by position."""
    if len(truths) != len(predictions):
        raise ValueError("truths and predictions differ in length")
    strict, parents, tactics = _Counts(), _Counts(), _Counts()
    h_rows = []
    h_credit = h_pred = h_true = 0.0
    confusions: Counter[tuple[str, str]] = Counter()
    calib: list[list[tuple[float, bool, bool]]] = [[] for _ in range(CALIBRATION_BINS)]
    abstained = abstained_positive = abstained_negative = 0
    raw_ids = invalid = 0
    outcomes: Counter[str] = Counter()
    extra_sources: Counter[str] = Counter()
    top1 = 0
    per_case = []
    for truth, pred in zip(truths, predictions, strict=True):
        p_set, e_set = set(pred.techniques), set(truth.techniques)
        strict.add(p_set, e_set)
        parents.add({parent(t) for t in p_set}, {parent(t) for t in e_set})
        tactics.add(set(pred.tactics), set(truth.tactics))
        h = hierarchical_case(pred.techniques, truth.techniques)
        h_rows.append(h)
        h_credit += h["credit"]
        h_pred += len(p_set)
        h_true += len(e_set)
        if not pred.techniques:
            abstained += 1
            if truth.techniques:
                abstained_positive += 1
            elif truth.hard_negative:
                abstained_negative += 1
        raw_ids += len(pred.raw_ids)
        invalid += len(pred.invalid_ids)
        if e_set:
            extra = p_set - e_set
            if not p_set:
                outcomes["none"] += 1
            elif extra == p_set:
                outcomes["wrong"] += 1
            elif extra:
                outcomes["right_plus_extra"] += 1
                extra_sources.update(_leading_source(pred.evidence.get(t, ())) for t in extra)
            else:
                outcomes["right_only"] += 1
            if pred.techniques and max(pred.techniques, key=lambda t: pred.confidences.get(t, 0.0)) in e_set:
                top1 += 1
        _, matched = hierarchical_match(list(pred.techniques), list(truth.techniques))
        got_p = {m[0] for m in matched}
        got_e = {m[1] for m in matched}
        miss_e = [e for e in truth.techniques if e not in got_e]
        miss_p = [p for p in pred.techniques if p not in got_p]
        for e in miss_e:
            for p in miss_p or ["(none)"]:
                confusions[(e, p)] += 1
        if not miss_e:
            for p in miss_p:
                confusions[("(none)", p)] += 1
        for tid in pred.techniques:
            conf = pred.confidences.get(tid, 0.0)
            b = min(CALIBRATION_BINS - 1, int(conf * CALIBRATION_BINS))
            calib[b].append((conf, tid in e_set, tid in got_p))
        per_case.append(
            {
                "id": truth.case_id,
                "expected": list(truth.techniques),
                "predicted": list(pred.techniques),
                "expected_tactics": list(truth.tactics),
                "predicted_tactics": list(pred.tactics),
                "hf1": round(h["f1"], 4),
                "strict_hit": len(p_set & e_set),
            }
        )
    n = len(truths)
    positives = sum(1 for t in truths if t.techniques)
    latencies = [p.latency_s for p in predictions]
    costs = [p.cost_usd for p in predictions if p.cost_usd is not None]
    per_tactic = tactics.per_label()
    calibration = [
        {
            "bin": f"{i / CALIBRATION_BINS:.1f}-{(i + 1) / CALIBRATION_BINS:.1f}",
            "count": len(rows),
            "mean_confidence": statistics.fmean(r[0] for r in rows) if rows else None,
            "precision": statistics.fmean(1.0 if r[1] else 0.0 for r in rows) if rows else None,
            "hierarchical_precision": statistics.fmean(1.0 if r[2] else 0.0 for r in rows) if rows else None,
        }
        for i, rows in enumerate(calib)
    ]
    return {
        "cases": n,
        "ece": expected_calibration_error(calibration),
        "hierarchical": {
            "f1": statistics.fmean(r["f1"] for r in h_rows) if h_rows else 0.0,
            "precision": statistics.fmean(r["precision"] for r in h_rows) if h_rows else 0.0,
            "recall": statistics.fmean(r["recall"] for r in h_rows) if h_rows else 0.0,
            "micro": prf(h_credit, h_pred, h_true),
        },
        "technique": {"micro": strict.micro(), "macro": strict.macro()},
        "parent_technique": {"micro": parents.micro(), "macro": parents.macro()},
        "tactic": {"micro": tactics.micro(), "macro": tactics.macro()},
        "per_tactic": per_tactic,
        "abstention_rate": abstained / n if n else 0.0,
        "abstention_rate_on_positives": abstained_positive / max(1, sum(1 for t in truths if t.techniques)),
        # Benign look-alikes left without a technique (1.0 when there are none to get wrong).
        "hard_negative_abstention": (
            abstained_negative / hard if (hard := sum(1 for t in truths if t.hard_negative)) else 1.0
        ),
        "invalid_id_rate": invalid / raw_ids if raw_ids else 0.0,
        "invalid_ids": invalid,
        "predicted_per_case": h_pred / n if n else 0.0,
        "outcomes": {
            "positives": positives,
            **{k: outcomes[k] for k in ("right_only", "right_plus_extra", "wrong", "none")},
            "top1_accuracy": top1 / positives if positives else 0.0,
            "extra_by_source": dict(extra_sources.most_common()),
        },
        "latency_s": {
            "mean": statistics.fmean(latencies) if latencies else 0.0,
            "p50": _percentile(latencies, 0.5),
            "p95": _percentile(latencies, 0.95),
        },
        "cost_usd": {
            "total": sum(costs) if costs else 0.0,
            "per_alert": (sum(costs) / n) if costs and n else 0.0,
            "priced": len(costs),
        },
        "cache_hit_rate": sum(1 for p in predictions if p.cache_hit) / n if n else 0.0,
        "confusions": [
            {"expected": e, "predicted": p, "count": c} for (e, p), c in confusions.most_common(top_confusions)
        ],
        "calibration": calibration,
        "per_case": per_case,
    }


def expected_calibration_error(bins: Sequence[dict[str, Any]]) -> float:
    """Σ over bins of (predictions in the bin / all predictions) × |mean confidence − precision|."""
    total = sum(b["count"] for b in bins)
    if not total:
        return 0.0
    return sum(b["count"] / total * abs(b["mean_confidence"] - b["precision"]) for b in bins if b["count"])


def headline(metrics: dict[str, Any]) -> dict[str, float]:
    """The flat figures thresholds.yaml gates on."""
    return {
        "hierarchical_f1": metrics["hierarchical"]["f1"],
        "technique_f1": metrics["technique"]["micro"]["f1"],
        "technique_macro_f1": metrics["technique"]["macro"]["f1"],
        "parent_technique_f1": metrics["parent_technique"]["micro"]["f1"],
        "tactic_f1": metrics["tactic"]["micro"]["f1"],
        "tactic_macro_f1": metrics["tactic"]["macro"]["f1"],
        "abstention_rate": metrics["abstention_rate"],
        "hard_negative_abstention": metrics["hard_negative_abstention"],
        "invalid_id_rate": metrics["invalid_id_rate"],
        "top1_accuracy": metrics["outcomes"]["top1_accuracy"],
        "ece": metrics["ece"],
        "latency_mean_s": metrics["latency_s"]["mean"],
        "cost_per_alert_usd": metrics["cost_usd"]["per_alert"],
        "cache_hit_rate": metrics["cache_hit_rate"],
    }


def group_by(values: Sequence[tuple[str, float]]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = defaultdict(list)
    for k, v in values:
        out[k].append(v)
    return out
