"""Calibrated confidence: a monotone map per kind of evidence, applied after the choice."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from evals.calibrate import fit_curve
from mitre.calibration import INDICATOR, KNOWLEDGE, Calibration, Curve, curve_key, load_calibration
from mitre.models import Evidence, TechniqueScore


def score(tid: str, confidence: float, source: str) -> TechniqueScore:
    return TechniqueScore(
        technique_id=tid, confidence=confidence, evidence=(Evidence(source=source, detail="x", score=confidence),)
    )


def test_a_curve_interpolates_between_knots_and_clips_outside():
    curve = Curve(x=(0.2, 0.6, 1.0), y=(0.1, 0.5, 0.9))
    assert curve(0.0) == 0.1 and curve(1.0) == 0.9
    assert curve(0.4) == pytest.approx(0.3)


def test_a_curve_must_not_descend():
    with pytest.raises(ValidationError):
        Curve(x=(0.0, 1.0), y=(0.9, 0.1))


def test_each_kind_of_alert_and_evidence_reads_through_its_own_curve():
    calibration = Calibration(
        curves={
            curve_key(True, INDICATOR): Curve(x=(0.0, 1.0), y=(0.5, 0.9)),
            curve_key(True, KNOWLEDGE): Curve(x=(0.0, 1.0), y=(0.0, 0.6)),
            curve_key(False, INDICATOR): Curve(x=(0.0, 1.0), y=(0.0, 0.2)),
        }
    )
    scores = [score("T1059.001", 0.5, "indicator"), score("T1105", 0.5, "lexical")]
    indicator, knowledge = calibration.apply(scores, raw_event=True)
    assert indicator.confidence == pytest.approx(0.7) and knowledge.confidence == pytest.approx(0.3)
    on_a_rule, _ = calibration.apply(scores, raw_event=False)
    assert on_a_rule.confidence == pytest.approx(0.1)


def test_the_fit_is_monotone_and_never_certain():
    points = [(i / 100, i % 3 != 0 and i > 40, 1.0) for i in range(100)]
    curve = fit_curve(points)
    assert list(curve.y) == sorted(curve.y)
    assert max(curve.y) <= 0.99


def test_the_packaged_calibration_was_fitted_on_development_data_only():
    calibration = load_calibration()
    assert calibration is not None
    assert set(calibration.curves) == {curve_key(e, k) for e in (True, False) for k in (INDICATOR, KNOWLEDGE)}
    assert all("holdout" not in d and "check" not in d for d in calibration.fitted_on)
