"""Operating points for one positive class: sensitivity at fixed specificities, a threshold chosen on validation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from monai_shpeft.clinical.figures import ratio

__all__ = ["apply_threshold", "operating_points", "sensitivity_at_specificity", "threshold_for_sensitivity"]


def sensitivity_at_specificity(positive: np.ndarray, scores: np.ndarray, specificity: float) -> dict[str, float]:
    """The highest sensitivity of a threshold on ``scores`` whose specificity is at least ``specificity``.

    Args:
        positive: ``[N]`` booleans, the positive cases.
        scores: ``[N]`` the positive class's probabilities.
        specificity: the specificity to keep.

    Returns:
        ``{"specificity", "sensitivity", "threshold"}`` of that point of scikit-learn's ROC curve.
    """
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(positive, scores)
    allowed = (1 - fpr) >= specificity - 1e-12
    best = int(np.flatnonzero(allowed)[np.argmax(tpr[allowed])])
    return {"specificity": float(1 - fpr[best]), "sensitivity": float(tpr[best]), "threshold": float(thresholds[best])}


def threshold_for_sensitivity(positive: np.ndarray, scores: np.ndarray, target: float) -> float:
    """The highest threshold on ``scores`` whose sensitivity reaches ``target`` (the most specific such threshold).

    Args:
        positive: ``[N]`` booleans, the positive cases (validation).
        scores: ``[N]`` the positive class's probabilities (validation).
        target: the sensitivity to reach.

    Returns:
        the threshold: a case is called positive when its score is at least this.
    """
    from sklearn.metrics import roc_curve

    _, tpr, thresholds = roc_curve(positive, scores)
    reached = np.flatnonzero(tpr >= target - 1e-12)
    return float(min(thresholds[reached[0]], 1.0))


def apply_threshold(positive: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Sensitivity, specificity, PPV and NPV of calling ``scores >= threshold`` positive.

    Args:
        positive: ``[N]`` booleans, the positive cases.
        scores: ``[N]`` the positive class's probabilities.
        threshold: the decision threshold.

    Returns:
        the four figures (``nan`` where a denominator is empty) and the counts behind them.
    """
    called = scores >= threshold
    tp, fn = int(np.sum(called & positive)), int(np.sum(~called & positive))
    fp, tn = int(np.sum(called & ~positive)), int(np.sum(~called & ~positive))

    return {
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "ppv": ratio(tp, tp + fp),
        "npv": ratio(tn, tn + fn),
        "true_positives": tp,
        "false_negatives": fn,
        "false_positives": fp,
        "true_negatives": tn,
    }


def operating_points(
    positive_index: int,
    test_labels: np.ndarray,
    test_probabilities: np.ndarray,
    validation_labels: np.ndarray | None = None,
    validation_probabilities: np.ndarray | None = None,
    specificities: Sequence[float] = (0.90, 0.95),
    target_sensitivity: float = 0.95,
) -> dict[str, Any]:
    """Where the classifier can operate for one positive class, read on the test split.

    Args:
        positive_index: the positive class's index.
        test_labels: ``[N]`` class indices of the test split.
        test_probabilities: ``[N, C]`` its class probabilities.
        validation_labels: ``[M]`` class indices of the validation split (for the threshold), or ``None``.
        validation_probabilities: ``[M, C]`` its class probabilities.
        specificities: the fixed specificities to read the test sensitivity at.
        target_sensitivity: the sensitivity the validation-chosen threshold must reach on validation.

    Returns:
        ``{"at_specificity": [...], "validation_threshold": {...} or None}``: the second applies the threshold chosen
        on validation to the test split, so its figures are honest estimates; the first is read on the test split
        itself (a description of the ROC curve, not a chosen threshold).
    """
    positive = np.asarray(test_labels) == positive_index
    scores = np.asarray(test_probabilities)[:, positive_index]
    result: dict[str, Any] = {
        "at_specificity": [sensitivity_at_specificity(positive, scores, s) for s in specificities],
        "validation_threshold": None,
    }
    if validation_labels is not None and validation_probabilities is not None:
        validation_positive = np.asarray(validation_labels) == positive_index
        if 0 < validation_positive.sum() < len(validation_positive):
            threshold = threshold_for_sensitivity(
                validation_positive, np.asarray(validation_probabilities)[:, positive_index], target_sensitivity
            )
            result["validation_threshold"] = {
                "target_sensitivity": target_sensitivity,
                "threshold": threshold,
                "validation": apply_threshold(
                    validation_positive, np.asarray(validation_probabilities)[:, positive_index], threshold
                ),
                "test": apply_threshold(positive, scores, threshold),
            }
    return result
