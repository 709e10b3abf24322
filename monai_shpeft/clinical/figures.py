"""Per-class and overall figures of a classifier's predictions, with scikit-learn's metrics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from monai_shpeft.clinical.calibration import brier_score, expected_calibration_error

__all__ = ["classification_report", "flatten_figures", "ratio"]


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, ``nan`` for an empty denominator (a figure without cases)."""
    return float(numerator / denominator) if denominator else float("nan")


def classification_report(
    labels: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """The figures of predictions ``argmax(probabilities)`` against ``labels``.

    Args:
        labels: ``[N]`` class indices.
        probabilities: ``[N, C]`` class probabilities (rows sum to one).
        class_names: one name per class; ``None``: ``"0"``, ``"1"``, ...

    Returns:
        ``{"per_class": {name: {sensitivity, specificity, ppv, npv, f1, auc, support}}, "confusion_matrix":
        [[...]] (rows: true class, columns: predicted), "macro_f1", "accuracy", "balanced_accuracy", "macro_auc",
        "ece", "brier"}``. A figure whose denominator is empty (no case of a class) is ``nan``.
    """
    from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score

    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    num_classes = probabilities.shape[1]
    names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} probability columns.")
    classes = np.arange(num_classes)
    predicted = probabilities.argmax(1)
    matrix = confusion_matrix(labels, predicted, labels=classes)
    total = matrix.sum()
    f1 = f1_score(labels, predicted, labels=classes, average=None, zero_division=0)
    per_class: dict[str, dict[str, float]] = {}
    aucs = []
    for index, name in enumerate(names):
        tp = matrix[index, index]
        fn = matrix[index].sum() - tp
        fp = matrix[:, index].sum() - tp
        tn = total - tp - fn - fp
        positive = labels == index
        auc = float(roc_auc_score(positive, probabilities[:, index])) if 0 < positive.sum() < len(labels) else np.nan
        aucs.append(auc)
        per_class[name] = {
            "sensitivity": ratio(tp, tp + fn),
            "specificity": ratio(tn, tn + fp),
            "ppv": ratio(tp, tp + fp),
            "npv": ratio(tn, tn + fn),
            "f1": float(f1[index]),
            "auc": float(auc),
            "support": int(tp + fn),
        }
    sensitivities = [per_class[n]["sensitivity"] for n in names]
    return {
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
        "macro_f1": float(np.mean(f1)),
        "accuracy": ratio(np.trace(matrix), total),
        # scikit-learn's balanced_accuracy_score over the classes present; here over every class, nan if one is absent
        "balanced_accuracy": float(np.mean(sensitivities)),
        "macro_auc": float(np.mean(aucs)),
        "ece": expected_calibration_error(labels, probabilities),
        "brier": brier_score(labels, probabilities),
    }


def flatten_figures(report: Mapping[str, Any]) -> dict[str, float]:
    """The scalar figures of a :func:`classification_report` as ``{"per_class/<name>/<figure>": value, ...}``.

    Args:
        report: the report.

    Returns:
        every scalar figure under a path-like key (the confusion matrix and supports are left out).
    """
    flat = {key: float(value) for key, value in report.items() if isinstance(value, (int, float))}
    for name, figures in report["per_class"].items():
        flat.update({f"per_class/{name}/{key}": float(v) for key, v in figures.items() if key != "support"})
    return flat
