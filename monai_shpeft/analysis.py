"""The statistical evidence of SH-PEFT (Liu et al., Sec. 2.1, Fig. 2): sparsity and hybridity of weight changes.

Given pretrained weights ``W_ori`` and weights ``W_ft`` fully fine-tuned on a medical task, the change of each
weight is ``dW = |W_ft - W_ori|`` (:func:`weight_changes`).

* **Sparsity**: keep only the top ``k`` of the changes, i.e. put the fine-tuned value of the ``k`` most changed
  entries into the pretrained model (``W_ori <- ft@k``, :func:`transplant_top_changes`) and evaluate it. If a
  small ``k`` recovers most of the fine-tuned performance (the paper: ~10% for ~95%), training a few selected
  weights is enough (:func:`sparsity_curve`, :func:`sparsity_figure`).
* **Hybridity**: the positions of the top ``k`` changes of two tasks partly coincide. The shared part is
  task-agnostic, the rest task-specific (:func:`hybridity`, :func:`set_overlap`, :func:`hybridity_figure`).

Everything works on the parameters of one submodule (``scope``, the backbone by default): the head of a
classifier is new for every task, so it has no pretrained value to compare with.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from monai_shpeft.importance import scoped_parameters, unwrap
from monai_shpeft.sparse_set import (
    SparseSetMismatchError,
    SparseTrainableSet,
    block_of,
    resolve_budget,
    select_top_k,
)

__all__ = [
    "FULL_PERFORMANCE_SHARE",
    "HYBRIDITY_FRACTIONS",
    "BlockOverlap",
    "HybridityPoint",
    "SparsityPoint",
    "WeightSource",
    "hybridity",
    "hybridity_figure",
    "set_overlap",
    "sparsity_curve",
    "sparsity_figure",
    "top_changed_positions",
    "transplant_top_changes",
    "weight_changes",
]

logger = logging.getLogger(__name__)

#: the fractions of the paper's hybridity analysis: 5%, 1%, 0.1% and 0.05% of the weights
HYBRIDITY_FRACTIONS: tuple[float, ...] = (0.05, 0.01, 0.001, 0.0005)
#: the share of the fine-tuned performance the paper's sparsity analysis looks for
FULL_PERFORMANCE_SHARE = 0.95

#: a model, or its state dict (only the floating-point entries under the scope are used)
WeightSource = nn.Module | Mapping[str, torch.Tensor]


# ---------------------------------------------------------------------------------------------- weight changes
def _scoped_weights(source: WeightSource, scope: str | None) -> dict[str, torch.Tensor]:
    """The weights in scope of a model (its parameters) or of a state dict (its floating-point entries)."""
    if isinstance(source, nn.Module):
        return {name: param.detach() for name, param in scoped_parameters(source, scope).items()}
    prefix = f"{scope}." if scope else ""
    return {
        name: tensor.detach()
        for name, tensor in source.items()
        if name.startswith(prefix) and torch.is_tensor(tensor) and tensor.is_floating_point()
    }


def _check_same_layout(
    first: Mapping[str, torch.Tensor | tuple[int, ...]],
    second: Mapping[str, torch.Tensor | tuple[int, ...]],
    first_label: str,
    second_label: str,
) -> None:
    """Raise a ValueError naming the first parameter that one side lacks or that differs in shape."""

    def shape_of(value: torch.Tensor | tuple[int, ...]) -> tuple[int, ...]:
        return tuple(value.shape) if torch.is_tensor(value) else tuple(value)

    if not first:
        raise ValueError(f"the {first_label} has no weight in scope; check the scope (the backbone submodule's name).")
    for name, value in first.items():
        if name not in second:
            raise ValueError(
                f"parameter '{name}' of the {first_label} is not in the {second_label}: they are not the same "
                "architecture (a model of another backbone?)."
            )
        if shape_of(value) != shape_of(second[name]):
            raise ValueError(
                f"parameter '{name}' has shape {list(shape_of(value))} in the {first_label} but "
                f"{list(shape_of(second[name]))} in the {second_label} (another backbone or image size?)."
            )
    extra = [name for name in second if name not in first]
    if extra:
        raise ValueError(
            f"parameter '{extra[0]}' of the {second_label} is not in the {first_label} ({len(extra)} such "
            "parameters): they are not the same architecture."
        )


def weight_changes(
    pretrained: WeightSource, finetuned: WeightSource, scope: str | None = "backbone"
) -> dict[str, torch.Tensor]:
    """The change of every weight in scope by fine-tuning: ``|W_ft - W_ori|`` (the paper's ``dW^ft``).

    Args:
        pretrained: the pretrained model, or its state dict.
        finetuned: the fine-tuned model of the same architecture, or its state dict.
        scope: submodule whose parameters are compared (``"backbone"``; ``None``: every parameter). For a state
            dict, every floating-point entry whose name starts with ``"<scope>."`` is a weight.

    Returns:
        name -> absolute change (float32, CPU), in the pretrained model's parameter order.

    Raises:
        ValueError: naming the parameter when the two have different names or shapes (e.g. models of two
            backbones), or when nothing is in scope.
    """
    original = _scoped_weights(pretrained, scope)
    tuned = _scoped_weights(finetuned, scope)
    _check_same_layout(original, tuned, "pretrained model", "fine-tuned model")
    return {name: (tuned[name].float().cpu() - weight.float().cpu()).abs() for name, weight in original.items()}


# ---------------------------------------------------------------------------------------------- sparsity
def _top_set(
    scores: Mapping[str, torch.Tensor], fraction: float, scope: str | None, header: Mapping[str, Any]
) -> SparseTrainableSet:
    """The global top ``fraction`` of ``scores`` as a set; ``fraction == 0`` gives an empty set."""
    fraction = float(fraction)  # an int 1 must mean 100%, not one entry (resolve_budget reads ints as counts)
    if not 0.0 <= fraction <= 1.0:  # also False for NaN
        raise ValueError(f"fraction must be in [0, 1] (0.01 means 1%), got {fraction}.")
    shapes = {name: tuple(tensor.shape) for name, tensor in scores.items()}
    if not shapes:
        raise ValueError("no score is given: nothing to rank.")
    info = {**header, "fraction": fraction}
    if fraction == 0.0:
        return SparseTrainableSet(indices={}, shapes=shapes, header=info, scope=scope)
    total = sum(tensor.numel() for tensor in scores.values())
    indices = select_top_k(scores, resolve_budget(fraction, total))
    return SparseTrainableSet(indices=indices, shapes=shapes, header=info, scope=scope)


def top_changed_positions(
    changes: Mapping[str, torch.Tensor], fraction: float, scope: str | None = "backbone"
) -> SparseTrainableSet:
    """The positions of the top ``fraction`` of the weight changes, ranked over all tensors at once.

    Exactly ``round(fraction * total)`` entries are selected (at least one for a positive fraction); ties are
    broken by position (see :func:`~monai_shpeft.sparse_set.select_top_k`), so the sets of growing fractions
    are nested.

    Args:
        changes: name -> weight change, e.g. from :func:`weight_changes`.
        fraction: share of the entries to keep, in ``[0, 1]`` (0.1 = 10%); 0 keeps none.
        scope: the submodule the names belong to (for per-block grouping).

    Returns:
        the selected positions as a :class:`~monai_shpeft.sparse_set.SparseTrainableSet` (``.indices[name]``
        holds sorted flat indices).

    Raises:
        ValueError: for a fraction outside ``[0, 1]``, no tensor, or NaN changes.
    """
    return _top_set(changes, fraction, scope, {"analysis": "top weight changes"})


def transplant_top_changes(
    pretrained_model: WeightSource,
    finetuned_model: nn.Module,
    fraction: float,
    scope: str | None = "backbone",
    changes: Mapping[str, torch.Tensor] | None = None,
) -> nn.Module:
    """The pretrained model with its ``fraction`` most changed weights set to their fine-tuned values.

    This is the paper's ``W_ori <- ft@k%``. The in-scope weights are the pretrained ones except at the top
    positions; everything outside the scope (the head, and any buffer) is the fine-tuned model's, because a
    pretrained backbone has no head for the task. The result is built from a copy of the fine-tuned model,
    so that its head may differ from the one (if any) of ``pretrained_model``. ``fraction = 0`` gives the
    pretrained backbone under the fine-tuned head, ``fraction = 1`` the fine-tuned model itself.

    Args:
        pretrained_model: the pretrained model, or its state dict.
        finetuned_model: the fine-tuned model (left untouched).
        fraction: share of the in-scope entries taken from the fine-tuned model, in ``[0, 1]``.
        scope: the submodule whose weights are mixed.
        changes: precomputed :func:`weight_changes` of the two models (saves recomputing them per fraction).

    Returns:
        a new model, on the fine-tuned model's device, in eval mode.

    Raises:
        ValueError: when the models do not match (see :func:`weight_changes`) or ``fraction`` is out of range.
    """
    if changes is None:
        changes = weight_changes(pretrained_model, finetuned_model, scope)
    return _transplant(pretrained_model, finetuned_model, top_changed_positions(changes, fraction, scope))


def _transplant(pretrained_model: WeightSource, finetuned_model: nn.Module, positions: SparseTrainableSet) -> nn.Module:
    """A copy of the fine-tuned model whose in-scope weights are the pretrained ones outside ``positions``."""
    original = _scoped_weights(pretrained_model, positions.scope)
    _check_same_layout(original, positions.shapes, "pretrained model", "selected positions")
    transplanted = copy.deepcopy(unwrap(finetuned_model))
    target = scoped_parameters(transplanted, positions.scope)
    _check_same_layout(positions.shapes, dict(target), "selected positions", "fine-tuned model")
    with torch.no_grad():
        for name, parameter in target.items():
            chosen = positions.indices[name].to(parameter.device)
            # built flat and copied back whole, so that a non-contiguous parameter is written correctly too
            mixed = original[name].to(device=parameter.device, dtype=parameter.dtype).reshape(-1).clone()
            mixed[chosen] = parameter.detach().reshape(-1)[chosen]
            parameter.copy_(mixed.view(parameter.shape))
    return transplanted.eval()


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
    for x, point in zip(positions, ordered):
        overall.text(x - 0.2, point.overlap, f"{point.overlap:.1%}", ha="center", va="bottom", fontsize=7)
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
