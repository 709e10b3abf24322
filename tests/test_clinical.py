"""Tests for monai_shpeft.clinical: figures checked against hand counts and scikit-learn, intervals, calibration."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from monai_shpeft.clinical import (
    bootstrap_intervals,
    brier_score,
    classification_report,
    expected_calibration_error,
    flatten_figures,
    reliability_curve,
)

NAMES = ["benign", "malignant", "normal"]


def predictions(seed: int = 0, size: int = 120) -> tuple[np.ndarray, np.ndarray]:
    """Labels and informative but imperfect probabilities for three classes."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size)
    logits = rng.normal(0, 1, (size, 3))
    logits[np.arange(size), labels] += 1.5
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return labels, probabilities


def test_per_class_figures_match_hand_counts_and_scikit_learn() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2])
    probabilities = np.eye(3)[[0, 0, 1, 1, 2, 2]] * 0.8 + 0.2 / 3  # predicted: 0 0 1 1 2 2
    report = classification_report(labels, probabilities, NAMES)
    assert report["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    benign, malignant = report["per_class"]["benign"], report["per_class"]["malignant"]
    assert benign["sensitivity"] == pytest.approx(2 / 3) and benign["specificity"] == 1.0
    assert benign["ppv"] == 1.0 and benign["npv"] == pytest.approx(3 / 4) and benign["support"] == 3
    assert malignant["sensitivity"] == 0.5 and malignant["ppv"] == 0.5 and malignant["specificity"] == 0.75
    predicted = probabilities.argmax(1)
    assert report["macro_f1"] == pytest.approx(f1_score(labels, predicted, average="macro"))
    assert report["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, predicted))
    assert report["accuracy"] == pytest.approx(4 / 6)
    auc = roc_auc_score(labels == 1, probabilities[:, 1])
    assert malignant["auc"] == pytest.approx(auc)


def test_a_class_without_cases_reads_nan_not_a_number_made_up() -> None:
    labels = np.array([0, 0, 1, 1])
    probabilities = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1]])
    normal = classification_report(labels, probabilities, NAMES)["per_class"]["normal"]
    assert math.isnan(normal["sensitivity"]) and math.isnan(normal["auc"]) and normal["support"] == 0
    assert normal["specificity"] == 1.0  # never predicted
    with pytest.raises(ValueError, match="2 class names for 3"):
        classification_report(labels, probabilities, NAMES[:2])


def test_calibration_figures_of_perfect_and_overconfident_predictions() -> None:
    labels = np.array([0, 1, 1, 0])
    assert expected_calibration_error(labels, np.eye(2)[labels]) == 0.0
    assert brier_score(labels, np.eye(2)[labels]) == 0.0
    # always 90% sure, right half of the time: the gap is 0.4
    overconfident = np.array([[0.9, 0.1], [0.9, 0.1], [0.1, 0.9], [0.1, 0.9]])
    assert expected_calibration_error(labels, overconfident) == pytest.approx(0.4)
    assert brier_score(labels, overconfident) == pytest.approx((2 * 0.02 + 2 * 1.62) / 4)
    confidence, accuracy, count = reliability_curve(labels, overconfident, num_bins=10)
    assert count.sum() == 4 and count[8] == 4 and accuracy[8] == 0.5 and confidence[8] == pytest.approx(0.9)
    assert np.isnan(accuracy[0])


def test_bootstrap_intervals_bracket_the_figure_are_seeded_and_narrow_with_more_data() -> None:
    def figures(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
        return flatten_figures(classification_report(y, p, NAMES))

    labels, probabilities = predictions()
    point = figures(labels, probabilities)
    intervals = bootstrap_intervals(labels, probabilities, figures, num_resamples=200, seed=3)
    assert set(intervals) == set(point)
    for name in ("macro_f1", "accuracy", "per_class/malignant/sensitivity", "ece"):
        assert intervals[name]["low"] <= point[name] <= intervals[name]["high"]
    assert intervals == bootstrap_intervals(labels, probabilities, figures, num_resamples=200, seed=3)
    wide = intervals["macro_f1"]["high"] - intervals["macro_f1"]["low"]
    many = predictions(seed=1, size=1200)
    narrow = bootstrap_intervals(*many, figures, num_resamples=200, seed=3)["macro_f1"]
    assert narrow["high"] - narrow["low"] < wide / 2
    with pytest.raises(ValueError, match="num_resamples"):
        bootstrap_intervals(labels, probabilities, figures, num_resamples=0)


def test_stratified_resamples_keep_every_class() -> None:
    labels = np.array([0] * 50 + [1] * 2)
    probabilities = np.eye(2)[labels] * 0.9 + 0.05
    seen: list[np.ndarray] = []

    def figures(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
        seen.append(np.bincount(y, minlength=2))
        return {"accuracy": float((p.argmax(1) == y).mean())}

    bootstrap_intervals(labels, probabilities, figures, num_resamples=50, seed=0)
    assert all(counts.tolist() == [50, 2] for counts in seen)


def test_operating_points_read_the_roc_curve_and_carry_a_validation_threshold_to_the_test_split() -> None:
    from monai_shpeft.clinical import operating_points
    from monai_shpeft.clinical.operating_point import apply_threshold, threshold_for_sensitivity

    labels, probabilities = predictions(seed=5, size=300)
    validation_labels, validation_probabilities = predictions(seed=6, size=300)
    points = operating_points(1, labels, probabilities, validation_labels, validation_probabilities, (0.9,), 0.95)
    at_90 = points["at_specificity"][0]
    positive, scores = labels == 1, probabilities[:, 1]
    assert at_90["specificity"] >= 0.9
    assert apply_threshold(positive, scores, at_90["threshold"])["sensitivity"] == pytest.approx(at_90["sensitivity"])
    # no threshold with specificity >= 0.9 has a higher sensitivity
    for threshold in np.unique(scores):
        figures = apply_threshold(positive, scores, threshold)
        if figures["specificity"] >= 0.9:
            assert figures["sensitivity"] <= at_90["sensitivity"] + 1e-12
    chosen = points["validation_threshold"]
    assert chosen["validation"]["sensitivity"] >= 0.95 and chosen["target_sensitivity"] == 0.95
    assert chosen["test"] == apply_threshold(positive, scores, chosen["threshold"])
    # the most specific threshold that reaches the target: a slightly higher one misses it
    validation_positive = validation_labels == 1
    higher = np.min(validation_probabilities[:, 1][validation_probabilities[:, 1] > chosen["threshold"]])
    assert apply_threshold(validation_positive, validation_probabilities[:, 1], higher)["sensitivity"] < 0.95
    assert threshold_for_sensitivity(validation_positive, validation_probabilities[:, 1], 1.0) <= chosen["threshold"]
    assert operating_points(1, labels, probabilities)["validation_threshold"] is None
