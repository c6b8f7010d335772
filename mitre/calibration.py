"""Calibrated confidence: the local mapper's evidence score → the probability that a technique is right.

The local mapper ranks candidates by a noisy-or of indicator, knowledge-base and catalog-text evidence.
Those scores order candidates well but do not read as probabilities (predictions at 0.8–0.9 used to be
right 36% of the time). A monotone map per kind of alert (a rule's alert, a raw event) and kind of
evidence (an indicator's, or only the knowledge base's), fitted by isotonic regression on development
data only (`python -m evals.calibrate`), turns them into probabilities. It is data
(mitre/data/calibration.yaml), applied after the choice: it changes what a confidence means, never
which techniques are chosen.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import yaml
from pydantic import Field, model_validator

from mitre.models import Contract, TechniqueScore

INDICATOR = "indicator"  # a technique an indicator named
KNOWLEDGE = "knowledge"  # a technique only the knowledge base or the catalog text proposed
RULE = "rule"  # an alert a detection rule raised
EVENT = "event"  # a raw event (no rule): how right the same evidence is differs between the two


class Curve(Contract):
    """A piecewise-linear monotone map, given by its knots (x ascending, y non-decreasing)."""

    x: tuple[float, ...] = Field(min_length=2)
    y: tuple[float, ...] = Field(min_length=2)

    @model_validator(mode="after")
    def _monotone(self) -> Curve:
        if len(self.x) != len(self.y):
            raise ValueError("x and y need the same number of knots")
        if any(b < a for a, b in zip(self.x, self.x[1:], strict=False)):
            raise ValueError("x must ascend")
        if any(b < a for a, b in zip(self.y, self.y[1:], strict=False)):
            raise ValueError("y must not descend")
        if not all(0.0 <= v <= 1.0 for v in (*self.x, *self.y)):
            raise ValueError("knots must lie in [0, 1]")
        return self

    def __call__(self, value: float) -> float:
        if value <= self.x[0]:
            return self.y[0]
        if value >= self.x[-1]:
            return self.y[-1]
        i = bisect_right(self.x, value) - 1
        x0, x1, y0, y1 = self.x[i], self.x[i + 1], self.y[i], self.y[i + 1]
        return y0 if x1 == x0 else y0 + (y1 - y0) * (value - x0) / (x1 - x0)


def curve_key(raw_event: bool, evidence: str) -> str:
    """`event/indicator`, `rule/knowledge`, …: which curve a candidate is read through."""
    return f"{EVENT if raw_event else RULE}/{evidence}"


class Calibration(Contract):
    """One curve per kind of alert and kind of evidence (`curve_key`), and where it was fitted."""

    curves: dict[str, Curve]
    fitted_on: tuple[str, ...] = ()

    @staticmethod
    def evidence_kind(score: TechniqueScore) -> str:
        return INDICATOR if any(e.source == "indicator" for e in score.evidence) else KNOWLEDGE

    def apply(self, scores: Sequence[TechniqueScore], raw_event: bool) -> tuple[TechniqueScore, ...]:
        """The same candidates, their confidence read through their kinds' curve."""
        out = []
        for score in scores:
            curve = self.curves.get(curve_key(raw_event, self.evidence_kind(score)))
            if curve is None:
                out.append(score)
                continue
            out.append(score.model_copy(update={"confidence": round(curve(score.confidence), 4)}))
        return tuple(out)


def load_calibration(path: Path | None = None) -> Calibration | None:
    """The packaged calibration (or the one at `path`); None when there is none."""
    if path is None:
        resource = resources.files("mitre") / "data" / "calibration.yaml"
        if not resource.is_file():
            return None
        text = resource.read_text()
    else:
        text = path.read_text()
    return Calibration.model_validate(yaml.safe_load(text))
