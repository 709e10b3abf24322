"""Stratified bootstrap confidence intervals of every figure of a classification report."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

__all__ = ["bootstrap_intervals"]


def bootstrap_intervals(
    labels: np.ndarray,
    probabilities: np.ndarray,
    figures: Callable[[np.ndarray, np.ndarray], Mapping[str, float]],
    num_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Percentile intervals of ``figures`` over resamples drawn with replacement within each class.

    Resampling within each class keeps every resample's class counts equal to the test split's, so a rare class is
    never missing from a resample.

    Args:
        labels: ``[N]`` class indices.
        probabilities: ``[N, C]`` class probabilities.
        figures: ``figures(labels, probabilities) -> {name: value}`` (e.g. a flattened classification report).
        num_resamples: resamples drawn.
        level: the interval's coverage.
        seed: seed of the resampling (the same seed gives the same intervals).

    Returns:
        ``{name: {"low": ..., "high": ...}}``; a figure that is ``nan`` in every resample gets ``nan`` bounds.

    Raises:
        ValueError: when ``num_resamples`` is below 1 or ``level`` is not in (0, 1).
    """
    if num_resamples < 1:
        raise ValueError(f"num_resamples must be at least 1, got {num_resamples}.")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}.")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    samples: dict[str, list[float]] = {}
    for _ in range(num_resamples):
        index = np.concatenate([rng.choice(m, size=len(m), replace=True) for m in members])
        for name, value in figures(labels[index], probabilities[index]).items():
            samples.setdefault(name, []).append(value)
    tail = (1 - level) / 2 * 100
    intervals = {}
    for name, values in samples.items():
        finite = np.asarray(values, dtype=np.float64)
        finite = finite[np.isfinite(finite)]
        low, high = np.percentile(finite, [tail, 100 - tail]) if finite.size else (np.nan, np.nan)
        intervals[name] = {"low": float(low), "high": float(high)}
    return intervals
