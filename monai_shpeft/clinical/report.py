"""The clinical report of a test split: figures with confidence intervals as JSON, and the figures people look at."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_shpeft.clinical.bootstrap import bootstrap_intervals
from monai_shpeft.clinical.calibration import reliability_curve
from monai_shpeft.clinical.figures import classification_report, flatten_figures
from monai_shpeft.clinical.temperature import rescale_probabilities
from monai_shpeft.plots import save_figure
from monai_shpeft.utils import atomic_write_json

__all__ = ["REPORT_FIGURES", "clinical_report", "save_clinical_report"]

#: the PNG files :func:`save_clinical_report` writes beside ``report.json``
REPORT_FIGURES = ("confusion_matrix.png", "roc_curves.png", "reliability_diagram.png")
_OVERALL = ("macro_f1", "accuracy", "balanced_accuracy", "macro_auc", "ece", "brier")


def clinical_report(
    labels: np.ndarray,
    probabilities: np.ndarray,
    class_names: Sequence[str],
    num_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Every figure of :func:`~monai_shpeft.clinical.classification_report` with its bootstrap interval.

    Args:
        labels: ``[N]`` class indices.
        probabilities: ``[N, C]`` class probabilities.
        class_names: one name per class.
        num_resamples: stratified bootstrap resamples (0: no intervals).
        level: the intervals' coverage.
        seed: the resampling's seed.

    Returns:
        ``{"num_cases", "classes", "intervals", "overall": {figure: {"value", "low", "high"}}, "per_class": {name:
        {figure: {"value", "low", "high"}, "support": n}}, "confusion_matrix": {"rows": "true class", "columns":
        "predicted class", "counts": [[...]]}}``.
    """
    names = list(class_names)
    point = classification_report(labels, probabilities, names)
    intervals: dict[str, dict[str, float]] = {}
    if num_resamples > 0:
        intervals = bootstrap_intervals(
            labels,
            probabilities,
            lambda y, p: flatten_figures(classification_report(y, p, names)),
            num_resamples,
            level,
            seed,
        )

    def with_interval(key: str, value: float) -> dict[str, float]:
        bounds = intervals.get(key, {"low": float("nan"), "high": float("nan")})
        return {"value": float(value), **bounds}

    per_class: dict[str, dict[str, Any]] = {}
    for name, figures in point["per_class"].items():
        per_class[name] = {
            key: with_interval(f"per_class/{name}/{key}", value) for key, value in figures.items() if key != "support"
        }
        per_class[name]["support"] = figures["support"]
    return {
        "num_cases": int(len(labels)),
        "classes": names,
        "intervals": {
            "method": "percentile bootstrap, resampled within each class",
            "level": level,
            "resamples": num_resamples,
            "seed": seed,
        },
        "overall": {key: with_interval(key, point[key]) for key in _OVERALL},
        "per_class": per_class,
        "confusion_matrix": {"rows": "true class", "columns": "predicted class", "counts": point["confusion_matrix"]},
    }


def save_clinical_report(
    report: dict[str, Any], labels: np.ndarray, probabilities: np.ndarray, folder: str | os.PathLike
) -> list[Path]:
    """Write ``report.json`` and the :data:`REPORT_FIGURES` into ``folder``.

    Args:
        report: from :func:`clinical_report`.
        labels: the labels it was computed from.
        probabilities: the probabilities it was computed from.
        folder: the output folder (created).

    Returns:
        the files written.
    """
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay, roc_curve

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = report["classes"]
    written = [folder / "report.json"]
    atomic_write_json(written[0], _nan_to_null(report))  # strict JSON: a figure without cases reads null

    figure, axes = plt.subplots(figsize=(1.6 * len(names) + 2.5, 1.6 * len(names) + 2))
    ConfusionMatrixDisplay(np.asarray(report["confusion_matrix"]["counts"]), display_labels=names).plot(
        ax=axes, cmap="Blues", colorbar=False
    )
    axes.set_title(f"Confusion matrix ({report['num_cases']} cases)")
    written.append(save_figure(figure, folder / REPORT_FIGURES[0]))

    figure, axes = plt.subplots(figsize=(5.5, 5))
    for index, name in enumerate(names):
        positive = labels == index
        if not 0 < positive.sum() < len(labels):
            continue  # no ROC curve without both positives and negatives
        fpr, tpr, _ = roc_curve(positive, probabilities[:, index])
        figures = report["per_class"][name]
        auc = figures["auc"]["value"]
        (line,) = axes.plot(fpr, tpr, label=f"{name} (AUC {auc:.2f})")
        # the operating point of the model's decision (the most probable class)
        axes.plot(1 - figures["specificity"]["value"], figures["sensitivity"]["value"], "o", color=line.get_color())
    axes.plot([0, 1], [0, 1], ":", color="grey")
    axes.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC, one class against the rest (dot: argmax)")
    axes.legend(loc="lower right")
    written.append(save_figure(figure, folder / REPORT_FIGURES[1]))

    confidence, accuracy, count = reliability_curve(labels, probabilities)
    figure, axes = plt.subplots(figsize=(5.5, 5))
    filled = count > 0
    centres = (np.arange(len(count)) + 0.5) / len(count)
    axes.bar(centres[filled], accuracy[filled], width=1 / len(count), alpha=0.7, edgecolor="black", label="accuracy")
    axes.plot(confidence[filled], confidence[filled], "_", color="black", markersize=9, label="mean confidence")
    for centre, height, cases in zip(centres[filled], accuracy[filled], count[filled]):
        axes.annotate(f"{int(cases)}", (centre, min(height, 0.95)), ha="center", va="bottom", fontsize=7)
    axes.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    ece = report["overall"]["ece"]["value"]
    title = f"Reliability diagram (ECE {ece:.3f}; cases per bin)"
    scaling = report.get("temperature_scaling") or {}
    if scaling.get("applied"):
        # the network's own probabilities, before the temperature fitted on validation divided its logits
        own_confidence, own_accuracy, own_count = reliability_curve(
            labels, rescale_probabilities(probabilities, scaling["temperature"])
        )
        own = own_count > 0
        axes.plot(own_confidence[own], own_accuracy[own], "x--", color="tab:red", label="before temperature scaling")
        title = (
            f"Reliability diagram (ECE {ece:.3f}, {scaling['ece']['before']:.3f} before T = "
            f"{scaling['temperature']:.2f}; cases per bin)"
        )
    axes.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top class)", ylabel="accuracy")
    axes.set_title(title, fontsize=9)
    axes.legend(loc="upper left")
    written.append(save_figure(figure, folder / REPORT_FIGURES[2]))
    return written


def _nan_to_null(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _nan_to_null(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_nan_to_null(item) for item in value]
    return None if isinstance(value, float) and value != value else value
