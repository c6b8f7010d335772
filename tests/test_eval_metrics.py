"""Eval metrics on tiny hand-computed examples."""

from __future__ import annotations

import pytest

from evals.metrics import Prediction, Truth, hierarchical_case, hierarchical_match, score
from mitre.cli.evalcmd import gate_failures, profile_name


def test_hierarchical_exact_and_more_specific_score_one() -> None:
    assert hierarchical_case(["T1059.001"], ["T1059.001"])["f1"] == 1.0
    # A predicted sub-technique where its parent was expected: full credit.
    assert hierarchical_case(["T1059.001"], ["T1059"])["f1"] == 1.0


def test_hierarchical_parent_for_sub_scores_three_quarters() -> None:
    h = hierarchical_case(["T1059"], ["T1059.001"])
    assert h["precision"] == pytest.approx(0.75)
    assert h["recall"] == pytest.approx(0.75)


def test_hierarchical_greedy_one_to_one() -> None:
    # Two predictions for one expected label: only one can take credit.
    credit, matched = hierarchical_match(["T1059.001", "T1059"], ["T1059.001"])
    assert credit == 1.0
    assert matched == [("T1059.001", "T1059.001", 1.0)]
    h = hierarchical_case(["T1059.001", "T1003.001"], ["T1059.001", "T1547.001"])
    assert h["precision"] == 0.5 and h["recall"] == 0.5 and h["f1"] == 0.5


def test_hierarchical_empty_cases() -> None:
    assert hierarchical_case([], [])["f1"] == 1.0  # hard negative left alone
    assert hierarchical_case(["T1059"], [])["f1"] == 0.0  # hard negative with a claim
    assert hierarchical_case([], ["T1059"])["f1"] == 0.0  # abstention on a positive


def test_score_strict_parent_tactic_and_rates() -> None:
    truths = [
        Truth("a", ("T1059.001",), ("TA0002",)),
        Truth("b", ("T1003.001",), ("TA0006",)),
        Truth("c", ("T1547.001",), ("TA0003", "TA0004")),
    ]
    preds = [
        Prediction("a", ("T1059.001",), {"T1059.001": 0.95}, ("TA0002",), raw_ids=("T1059.001",)),
        Prediction("b", ("T1003.002",), {"T1003.002": 0.55}, ("TA0006",), raw_ids=("T1003.002", "T9999")),
        Prediction("c", (), {}, (), raw_ids=()),
    ]
    preds[1].invalid_ids = ("T9999",)
    m = score(truths, preds)
    # strict: 1 TP of 2 predicted, 3 expected
    assert m["technique"]["micro"]["precision"] == pytest.approx(0.5)
    assert m["technique"]["micro"]["recall"] == pytest.approx(1 / 3)
    assert m["technique"]["micro"]["f1"] == pytest.approx(0.4)
    # parent level: T1003 matches
    assert m["parent_technique"]["micro"]["precision"] == pytest.approx(1.0)
    assert m["parent_technique"]["micro"]["recall"] == pytest.approx(2 / 3)
    # tactics: 2 TP, 2 predicted, 4 expected
    assert m["tactic"]["micro"]["f1"] == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert m["per_tactic"]["TA0003"]["recall"] == 0.0
    # hierarchical per case: 1, 0, 0
    assert m["hierarchical"]["f1"] == pytest.approx(1 / 3)
    assert m["abstention_rate"] == pytest.approx(1 / 3)
    assert m["invalid_id_rate"] == pytest.approx(1 / 3)
    assert {"expected": "T1003.001", "predicted": "T1003.002", "count": 1} in m["confusions"]
    assert {"expected": "T1547.001", "predicted": "(none)", "count": 1} in m["confusions"]
    top = next(b for b in m["calibration"] if b["bin"] == "0.9-1.0")
    assert top["count"] == 1 and top["precision"] == 1.0


def test_case_outcomes_tell_extra_techniques_from_wrong_ones() -> None:
    truths = [
        Truth("only-right", ("T1003.001",), ()),
        Truth("extra", ("T1003.001",), ()),
        Truth("wrong", ("T1003.001",), ()),
        Truth("none", ("T1003.001",), ()),
        Truth("benign", (), (), hard_negative=True),
    ]
    download = ["indicator@process.command_line: download-cradle: iwr http://x/m.exe"]
    preds = [
        Prediction("only-right", ("T1003.001",), {"T1003.001": 0.9}),
        # Right but not first by confidence: counted as right + extra, not as top-1.
        Prediction(
            "extra",
            ("T1003.001", "T1105"),
            {"T1003.001": 0.6, "T1105": 0.95},
            evidence={"T1003.001": ["knowledge_base: x"], "T1105": ["lexical: BM25 rank 1", *download]},
        ),
        Prediction("wrong", ("T1105",), {"T1105": 0.9}, evidence={"T1105": ["knowledge_base: y"]}),
        Prediction("none"),
        Prediction("benign", ("T1105",), {"T1105": 0.9}),
    ]
    outcomes = score(truths, preds)["outcomes"]
    assert outcomes == {
        "positives": 4,
        "right_only": 1,
        "right_plus_extra": 1,
        "wrong": 1,
        "none": 1,
        "top1_accuracy": 0.25,
        "extra_by_source": {"indicator": 1},
    }


def test_macro_averages_over_expected_labels() -> None:
    truths = [Truth("a", ("T1059",), ()), Truth("b", ("T1059",), ()), Truth("c", ("T1003",), ())]
    preds = [Prediction("a", ("T1059",)), Prediction("b", ("T1059",)), Prediction("c", ("T1059",))]
    m = score(truths, preds)
    # T1059: P 2/3, R 1, F1 0.8; T1003: F1 0 → macro 0.4
    assert m["technique"]["macro"]["f1"] == pytest.approx(0.4)
    assert m["technique"]["micro"]["f1"] == pytest.approx(2 / 3)


def test_gate_fails_below_threshold_and_passes_above() -> None:
    profile = {"min": {"hierarchical_f1": 0.7, "tactic_f1": 0.5}, "max": {"invalid_id_rate": 0.0}}
    ok = {"hierarchical_f1": 0.71, "tactic_f1": 0.9, "invalid_id_rate": 0.0}
    assert gate_failures(ok, profile) == []
    bad = {"hierarchical_f1": 0.69, "tactic_f1": 0.9, "invalid_id_rate": 0.01}
    failures = gate_failures(bad, profile)
    assert len(failures) == 2
    assert any("hierarchical_f1" in f for f in failures)
    assert any("invalid_id_rate" in f for f in failures)
    assert gate_failures({}, {"min": {"technique_f1": 0.1}}) == ["technique_f1: not measured"]


def test_profile_names() -> None:
    assert profile_name("sigma", 5, []) == "sigma-cv"
    assert profile_name("atomic", None, ["sigma"]) == "atomic-kb-sigma"
    assert profile_name("cases", None, ["sigma", "atomic"]) == "cases-kb-sigma+atomic"


def test_expected_calibration_error_weights_each_bins_gap() -> None:
    """Two predictions at 0.9 (one right) and two at 0.3 (none right): |0.9-0.5| and |0.3-0| weighted by 2/4."""
    truths = [Truth(f"c{i}", ("T1059",), ("TA0002",)) for i in range(4)]
    preds = [
        Prediction("c0", ("T1059",), {"T1059": 0.9}),
        Prediction("c1", ("T1105",), {"T1105": 0.9}),
        Prediction("c2", ("T1105",), {"T1105": 0.3}),
        Prediction("c3", ("T1082",), {"T1082": 0.3}),
    ]
    metrics = score(truths, preds)
    assert metrics["ece"] == pytest.approx(0.5 * 0.4 + 0.5 * 0.3)
