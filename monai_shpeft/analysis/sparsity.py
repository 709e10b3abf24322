"""Sparsity (SH-PEFT Sec. 2.1): how much of the fine-tuned performance the top ``k`` changes recover."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from monai_shpeft.analysis.changes import (
    WeightSource,
    _transplant,
    top_changed_positions,
    weight_changes,
)

__all__ = ["FULL_PERFORMANCE_SHARE", "SparsityPoint", "sparsity_curve", "sparsity_figure"]

logger = logging.getLogger(__name__)

#: the share of the fine-tuned performance the paper's sparsity analysis looks for
FULL_PERFORMANCE_SHARE = 0.95


@dataclass(frozen=True)
class SparsityPoint:
    """The metric of the pretrained model with the top ``fraction`` of the fine-tuning changes put back.

    Args:
        fraction: share of the in-scope entries taken from the fine-tuned model (0.1 = 10%).
        num_entries: how many entries that is.
        metric: the value ``evaluate`` returned for the transplanted model.
    """

    fraction: float
    num_entries: int
    metric: float


def sparsity_curve(
    pretrained_model: WeightSource,
    finetuned_model: nn.Module,
    fractions: Sequence[float],
    evaluate: Callable[[nn.Module], float],
    scope: str | None = "backbone",
) -> list[SparsityPoint]:
    """Evaluate :func:`transplant_top_changes` at each fraction (the sparsity panel of the paper's Fig. 2).

    The weight changes are computed once; one transplanted model exists at a time.

    Args:
        pretrained_model: the pretrained model, or its state dict.
        finetuned_model: the fine-tuned model.
        fractions: the ``k`` to try, each in ``[0, 1]`` (0 = pretrained backbone, 1 = the fine-tuned model).
        evaluate: model -> metric (e.g. macro-F1 on the test split).
        scope: the submodule whose weights are mixed.

    Returns:
        one point per fraction, in the order given.

    Raises:
        ValueError: when the models do not match or a fraction is out of range.
    """
    changes = weight_changes(pretrained_model, finetuned_model, scope)
    total = sum(tensor.numel() for tensor in changes.values())
    points = []
    for index, fraction in enumerate(fractions, start=1):
        started = time.perf_counter()
        positions = top_changed_positions(changes, fraction, scope)
        num_entries = positions.num_selected
        model = _transplant(pretrained_model, finetuned_model, positions)
        metric = float(evaluate(model))
        del model, positions
        points.append(SparsityPoint(fraction=float(fraction), num_entries=num_entries, metric=metric))
        logger.info(
            "Sparsity %d/%d: k=%g%% (%d of %d weights) -> metric %.4f (%.1f s).",
            index,
            len(fractions),
            100 * float(fraction),
            num_entries,
            total,
            metric,
            time.perf_counter() - started,
        )
    return points


def _reference_of(points: Sequence[SparsityPoint], reference: float | None) -> float | None:
    """The full fine-tuning metric: given, or the point at ``k = 100%`` (which is the fine-tuned model)."""
    if reference is not None:
        return float(reference)
    full = [point.metric for point in points if point.fraction == 1.0]
    return full[0] if full else None


def sparsity_figure(points: Sequence[SparsityPoint], metric_name: str = "macro-F1", reference: float | None = None):  # noqa: ANN201 - matplotlib Figure
    """The metric against the share of fine-tuning changes kept, on a log ``k`` axis.

    ``k = 0`` cannot sit on a log axis: it is drawn as a dotted horizontal line (the pretrained backbone). The
    full fine-tuning level is a dashed line, ``95%`` of it a dash-dotted one, and the smallest ``k`` reaching
    95% is marked.

    Args:
        points: from :func:`sparsity_curve`.
        metric_name: the y axis label.
        reference: the fully fine-tuned model's metric; by default the point at ``k = 100%`` if there is one.

    Returns:
        a matplotlib ``Figure`` (Agg backend).

    Raises:
        ValueError: if no point has ``k > 0``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import pyplot as plt

    positive = sorted((p for p in points if p.fraction > 0), key=lambda p: p.fraction)
    if not positive:
        raise ValueError("a sparsity figure needs at least one point with k > 0.")
    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    percents = [100 * p.fraction for p in positive]
    axis.plot(percents, [p.metric for p in positive], "o-", color="tab:blue", label="pretrained + top-k% changes")
    axis.set_xscale("log")
    for point in points:
        if point.fraction == 0:
            axis.axhline(point.metric, color="tab:gray", linestyle=":", label="k = 0 (pretrained backbone)")
            break
    full = _reference_of(points, reference)
    if full is not None:
        target = FULL_PERFORMANCE_SHARE * full
        axis.axhline(full, color="tab:green", linestyle="--", label="full fine-tuning")
        axis.axhline(target, color="tab:orange", linestyle="-.", label=f"{FULL_PERFORMANCE_SHARE:.0%} of full")
        reached = [p for p in positive if p.metric >= target]
        if reached:
            first = reached[0]
            axis.plot([100 * first.fraction], [first.metric], "*", color="tab:red", markersize=14)
            axis.annotate(
                f"k = {100 * first.fraction:g}%",
                (100 * first.fraction, first.metric),
                textcoords="offset points",
                xytext=(6, -14),
                fontsize=8,
            )
    axis.set_xlabel("k: top changed weights kept (% of the backbone, log)")
    axis.set_ylabel(metric_name)
    axis.set_title("Sparsity: fine-tuning changes put back into the pretrained model")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    return figure
