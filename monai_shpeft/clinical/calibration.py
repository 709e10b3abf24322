"""How far predicted probabilities can be trusted: expected calibration error, Brier score, reliability curve."""

from __future__ import annotations

import numpy as np

__all__ = ["brier_score", "expected_calibration_error", "reliability_curve"]


def reliability_curve(
    labels: np.ndarray, probabilities: np.ndarray, num_bins: int = 15
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Confidence against accuracy of the top prediction, in equal-width confidence bins.

    Args:
        labels: ``[N]`` class indices.
        probabilities: ``[N, C]`` class probabilities.
        num_bins: bins over ``(0, 1]``.

    Returns:
        ``(mean confidence, accuracy, count)`` per bin, ``nan`` for the empty ones.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    confidence = probabilities.max(1)
    correct = (probabilities.argmax(1) == np.asarray(labels)).astype(np.float64)
    # bin i holds confidences in (i/num_bins, (i+1)/num_bins]
    bins = np.clip(np.ceil(confidence * num_bins).astype(np.int64) - 1, 0, num_bins - 1)
    count = np.bincount(bins, minlength=num_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(bins, weights=confidence, minlength=num_bins) / count
        accuracy = np.bincount(bins, weights=correct, minlength=num_bins) / count
    return mean_confidence, accuracy, count


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, num_bins: int = 15) -> float:
    """ECE of the top prediction (Guo et al., ICML 2017): the count-weighted mean gap between confidence and accuracy.

    Args:
        labels: ``[N]`` class indices.
        probabilities: ``[N, C]`` class probabilities.
        num_bins: equal-width confidence bins.

    Returns:
        the ECE in ``[0, 1]``.
    """
    mean_confidence, accuracy, count = reliability_curve(labels, probabilities, num_bins)
    filled = count > 0
    return float(np.sum(count[filled] * np.abs(mean_confidence[filled] - accuracy[filled])) / count.sum())


def brier_score(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The multi-class Brier score: the mean over cases of the squared distance to the one-hot label.

    Args:
        labels: ``[N]`` class indices.
        probabilities: ``[N, C]`` class probabilities.

    Returns:
        the score in ``[0, 2]`` (0 is perfect).
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    one_hot = np.eye(probabilities.shape[1])[np.asarray(labels, dtype=np.int64)]
    return float(np.mean(np.sum((probabilities - one_hot) ** 2, axis=1)))
