"""Hybridity (SH-PEFT Sec. 2.1): how far the top ``k`` changes of two tasks coincide, block by block."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from monai_shpeft.analysis.changes import _check_same_layout, _top_set
from monai_shpeft.sparse_set import (
    SparseSetMismatchError,
    SparseTrainableSet,
    block_of,
)

__all__ = ["HYBRIDITY_FRACTIONS", "BlockOverlap", "HybridityPoint", "set_overlap", "hybridity", "hybridity_figure"]

logger = logging.getLogger(__name__)

#: the fractions of the paper's hybridity analysis: 5%, 1%, 0.1% and 0.05% of the weights
HYBRIDITY_FRACTIONS: tuple[float, ...] = (0.05, 0.01, 0.001, 0.0005)


# ---------------------------------------------------------------------------------------------- hybridity
@dataclass(frozen=True)
class BlockOverlap:
    """Selected and shared positions of two sets inside one block.

    Args:
        selected_a: positions of the first set in the block.
        selected_b: positions of the second set in the block.
        shared: positions in both.
        total: entries in the block.
    """

    selected_a: int
    selected_b: int
    shared: int
    total: int

    @property
    def overlap(self) -> float:
        """``2 |A∩B| / (|A| + |B|)``: ``|A∩B| / |A|`` when both sets are equally large; NaN when both are empty."""
        size = self.selected_a + self.selected_b
        return 2 * self.shared / size if size else math.nan

    @property
    def iou(self) -> float:
        """``|A∩B| / |A∪B|``; NaN when both sets are empty."""
        union = self.selected_a + self.selected_b - self.shared
        return self.shared / union if union else math.nan


@dataclass(frozen=True)
class HybridityPoint:
    """Positional overlap of the key weights of two tasks at one ``k`` (the hybridity panel of the paper's Fig. 2).

    Args:
        fraction: ``k``, the share of the entries each set holds (for two sets of different sizes, the mean).
        selected_a: positions in the first set.
        selected_b: positions in the second set.
        shared: positions in both sets.
        total: entries in scope.
        per_block: block name (see :func:`~monai_shpeft.sparse_set.block_of`) -> counts, in model order.
    """

    fraction: float
    selected_a: int
    selected_b: int
    shared: int
    total: int
    per_block: dict[str, BlockOverlap] = field(default_factory=dict)

    @property
    def overlap(self) -> float:
        """Share of the key positions both tasks have: ``|A∩B| / |A|`` for equal sizes (symmetric Dice in general)."""
        return BlockOverlap(self.selected_a, self.selected_b, self.shared, self.total).overlap

    @property
    def iou(self) -> float:
        """``|A∩B| / |A∪B|``."""
        return BlockOverlap(self.selected_a, self.selected_b, self.shared, self.total).iou

    @property
    def chance(self) -> float:
        """The overlap two sets of these sizes have on average when their positions are drawn independently.

        A random position of ``A`` falls into an independent uniformly random ``B`` with probability
        ``|B| / N``, so ``E|A∩B| = |A| |B| / N``: for equal sizes the expected overlap is ``k`` itself
        (0.05% shared positions at ``k = 0.05%``). An overlap far above ``k`` says the positions are not
        independent across tasks: part of them is task-agnostic. The same holds inside every block.
        """
        size = self.selected_a + self.selected_b
        return 2 * self.selected_a * self.selected_b / (self.total * size) if size and self.total else math.nan

    @property
    def enrichment(self) -> float:
        """``overlap / chance``: how many times more positions are shared than independent sets would share."""
        return self.overlap / self.chance if self.chance else math.nan

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable record with the derived overlap, IoU, chance level and per-block overlaps."""
        return {
            "fraction": self.fraction,
            "selected_a": self.selected_a,
            "selected_b": self.selected_b,
            "shared": self.shared,
            "total": self.total,
            "overlap": self.overlap,
            "iou": self.iou,
            "chance": self.chance,
            "enrichment": self.enrichment,
            "per_block": {
                block: {
                    "selected_a": counts.selected_a,
                    "selected_b": counts.selected_b,
                    "shared": counts.shared,
                    "total": counts.total,
                    "overlap": None if math.isnan(counts.overlap) else counts.overlap,
                    "iou": None if math.isnan(counts.iou) else counts.iou,
                }
                for block, counts in self.per_block.items()
            },
        }


def set_overlap(set_a: SparseTrainableSet, set_b: SparseTrainableSet) -> HybridityPoint:
    """Positional overlap of two trainable sets of the same backbone, overall and per block.

    Args:
        set_a: the first set (e.g. SH-PEFT's set for task A, loaded with ``SparseTrainableSet.load``).
        set_b: the second set.

    Returns:
        the overlap; its ``fraction`` is the mean trainable ratio of the two sets.

    Raises:
        SparseSetMismatchError: when the sets were made for different backbones, scopes, parameters or shapes.
    """
    backbone_a, backbone_b = set_a.header.get("backbone"), set_b.header.get("backbone")
    if backbone_a and backbone_b and backbone_a != backbone_b:
        raise SparseSetMismatchError(f"the sets were made for different backbones: {backbone_a} and {backbone_b}.")
    if set_a.scope != set_b.scope:
        raise SparseSetMismatchError(f"the sets cover different scopes: {set_a.scope!r} and {set_b.scope!r}.")
    try:
        _check_same_layout(set_a.shapes, set_b.shapes, "first set", "second set")
    except ValueError as error:
        raise SparseSetMismatchError(str(error)) from error
    blocks: dict[str, list[int]] = {}
    for name, shape in set_a.shapes.items():
        indices_a, indices_b = set_a.indices[name].numpy(), set_b.indices[name].numpy()
        shared = np.intersect1d(indices_a, indices_b, assume_unique=True).size  # indices are sorted and unique
        counts = blocks.setdefault(block_of(name, set_a.scope), [0, 0, 0, 0])
        counts[0] += indices_a.size
        counts[1] += indices_b.size
        counts[2] += shared
        counts[3] += math.prod(shape)
    per_block = {block: BlockOverlap(*counts) for block, counts in blocks.items()}
    return HybridityPoint(
        fraction=(set_a.ratio + set_b.ratio) / 2,
        selected_a=sum(c.selected_a for c in per_block.values()),
        selected_b=sum(c.selected_b for c in per_block.values()),
        shared=sum(c.shared for c in per_block.values()),
        total=sum(c.total for c in per_block.values()),
        per_block=per_block,
    )


def hybridity(
    scores_a: Mapping[str, torch.Tensor],
    scores_b: Mapping[str, torch.Tensor],
    fractions: Sequence[float] = HYBRIDITY_FRACTIONS,
    scope: str | None = "backbone",
) -> list[HybridityPoint]:
    """Positional overlap of the top ``k`` entries of two rankings, at each ``k`` (the paper's hybridity).

    Args:
        scores_a: name -> ranking of task A (weight changes of a model fine-tuned on it, or importance scores).
        scores_b: name -> ranking of task B, over the same parameters.
        fractions: the ``k`` to compare at, each in ``(0, 1]``; the paper's 5%, 1%, 0.1% and 0.05% by default.
        scope: the submodule the names belong to (for per-block grouping).

    Returns:
        one point per fraction: overlap ``|A∩B| / |A|``, IoU, chance level ``k`` and per-block overlaps.

    Raises:
        ValueError: when the two rankings cover different parameters or shapes, or a fraction is not in
            ``(0, 1]``.
    """
    _check_same_layout(scores_a, scores_b, "scores of task A", "scores of task B")
    points = []
    for fraction in fractions:
        if not 0.0 < float(fraction) <= 1.0:
            raise ValueError(f"hybridity fractions must be in (0, 1], got {fraction}.")
        set_a = _top_set(scores_a, fraction, scope, {"analysis": "hybridity", "task": "A"})
        set_b = _top_set(scores_b, fraction, scope, {"analysis": "hybridity", "task": "B"})
        point = dataclasses.replace(set_overlap(set_a, set_b), fraction=float(fraction))
        points.append(point)
        logger.info(
            "Hybridity at k=%g%%: %d of %d key positions shared (overlap %.4f, IoU %.4f, chance %.4g).",
            100 * float(fraction),
            point.shared,
            point.selected_a,
            point.overlap,
            point.iou,
            point.chance,
        )
    return points


def hybridity_figure(points: Sequence[HybridityPoint], title: str | None = None):  # noqa: ANN201 - Figure
    """Overlap of the key positions of two tasks: overall per ``k`` (left) and per block for each ``k`` (right).

    The chance level (the overlap of independent positions, ``k``) is drawn beside each measured overlap.

    Args:
        points: from :func:`hybridity` or :func:`set_overlap`.
        title: a title above both panels (e.g. which tasks and rankings are compared).

    Returns:
        a matplotlib ``Figure`` with two axes (Agg backend).

    Raises:
        ValueError: if ``points`` is empty.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import pyplot as plt

    if not points:
        raise ValueError("a hybridity figure needs at least one point.")
    ordered = sorted(points, key=lambda p: p.fraction, reverse=True)
    blocks = list(dict.fromkeys(block for point in ordered for block in point.per_block))
    figure, (overall, per_block) = plt.subplots(
        1, 2, figsize=(max(11.0, 4.5 + 0.45 * len(blocks)), 4.5), gridspec_kw={"width_ratios": [1, 2.2]}
    )
    colours = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, len(ordered)))
    labels = [f"{100 * p.fraction:g}%" for p in ordered]
    positions = np.arange(len(ordered))
    overall.bar(positions - 0.2, [p.overlap for p in ordered], 0.4, color=colours, label="measured")
    overall.bar(positions + 0.2, [p.chance for p in ordered], 0.4, color="lightgray", label="chance (= k)")
    for position, point in zip(positions, ordered):
        overall.text(position - 0.2, point.overlap, f"{point.overlap:.1%}", ha="center", va="bottom", fontsize=7)
    overall.set_xticks(positions, labels)
    overall.set_xlabel("k (top share of the weights)")
    overall.set_ylabel("overlap |A∩B| / |A|")
    overall.set_title("Key positions shared by two tasks")
    overall.legend(fontsize=8)
    x = np.arange(len(blocks))
    for colour, label, point in zip(colours, labels, ordered):
        values = [point.per_block[b].overlap if b in point.per_block else math.nan for b in blocks]
        per_block.plot(x, values, "o-", color=colour, label=f"k = {label}", markersize=4)
        per_block.axhline(point.chance, color=colour, linestyle=":", linewidth=1)
    per_block.set_xticks(x, blocks, rotation=60, ha="right", fontsize=7)
    per_block.set_ylabel("overlap in the block")
    per_block.set_title("Per block (dotted: chance level of each k)")
    per_block.grid(True, alpha=0.3)
    per_block.legend(fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure
