"""Pictures people would rather look at than read: where the trainable weights sit."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from monai_shpeft.sparse_set import SparseTrainableSet, block_of, layer_type_of
from monai_shpeft.utils import atomic_path

__all__ = [
    "save_figure",
    "trainable_count_heatmap_figure",
    "trainable_count_matrix",
    "trainable_heatmap_figure",
    "trainable_ratio_matrix",
]


def _cell_counts(trainable_set: SparseTrainableSet) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """Selected and total entries per (block, layer type); both NaN where a block has no such layer."""
    cells: dict[tuple[str, str], list[int]] = {}
    for name, shape in trainable_set.shapes.items():
        key = (block_of(name, trainable_set.scope), layer_type_of(name, trainable_set.scope))
        counts = cells.setdefault(key, [0, 0])
        counts[0] += int(trainable_set.indices[name].numel())
        counts[1] += int(np.prod(shape)) if shape else 1
    blocks = list(dict.fromkeys(block for block, _ in cells))
    types = list(dict.fromkeys(kind for _, kind in cells))
    selected = np.full((len(blocks), len(types)), np.nan)
    total = np.full((len(blocks), len(types)), np.nan)
    for (block, kind), (chosen, size) in cells.items():
        selected[blocks.index(block), types.index(kind)] = chosen
        total[blocks.index(block), types.index(kind)] = size
    return selected, total, blocks, types


def trainable_ratio_matrix(trainable_set: SparseTrainableSet) -> tuple[np.ndarray, list[str], list[str]]:
    """Trainable fraction per (block, layer type); NaN where a block has no such layer.

    Args:
        trainable_set: the set.

    Returns:
        the matrix ``[blocks, layer types]``, the block names (rows) and the layer types (columns).
    """
    selected, total, blocks, types = _cell_counts(trainable_set)
    return selected / np.maximum(total, 1), blocks, types


def trainable_count_matrix(trainable_set: SparseTrainableSet) -> tuple[np.ndarray, list[str], list[str]]:
    """Number of trainable entries per (block, layer type); NaN where a block has no such layer.

    The ratio heatmap hides how many weights a cell holds (a fully trained LayerNorm bias is 100% of a few
    hundred weights, 0.1% of an MLP matrix can be thousands); this is the absolute count.

    Args:
        trainable_set: the set.

    Returns:
        the matrix ``[blocks, layer types]`` (float, so that missing cells can be NaN), the block names (rows)
        and the layer types (columns).
    """
    selected, _, blocks, types = _cell_counts(trainable_set)
    return selected, blocks, types


def save_figure(figure: Any, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Save a matplotlib figure as PNG atomically (a reader never sees half a file) and close it.

    Args:
        figure: the matplotlib ``Figure``.
        path: destination file; missing folders are created.
        dpi: resolution.

    Returns:
        the path written.
    """
    from matplotlib import pyplot as plt

    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=dpi, format="png", bbox_inches="tight")
    plt.close(figure)
    return Path(path)


def trainable_heatmap_figure(trainable_set: SparseTrainableSet):  # noqa: ANN201 - matplotlib Figure
    """A heatmap of the trainable fraction per block (rows) and layer type (columns), log colour scale.

    Args:
        trainable_set: the set.

    Returns:
        a matplotlib ``Figure`` (Agg backend, no display needed).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import colors
    from matplotlib import pyplot as plt

    matrix, blocks, types = trainable_ratio_matrix(trainable_set)
    positive = matrix[np.isfinite(matrix) & (matrix > 0)]
    vmin = float(positive.min()) if positive.size else 1e-6
    figure, axis = plt.subplots(figsize=(max(6.0, 0.45 * len(types) + 2), max(4.0, 0.3 * len(blocks) + 1.5)))
    shown = np.where(np.isfinite(matrix) & (matrix > 0), matrix, np.nan)
    image = axis.imshow(shown, aspect="auto", cmap="viridis", norm=colors.LogNorm(vmin=vmin, vmax=1.0))
    axis.set_xticks(range(len(types)), types, rotation=60, ha="right", fontsize=7)
    axis.set_yticks(range(len(blocks)), blocks, fontsize=7)
    axis.set_title(f"trainable fraction ({trainable_set.num_selected:,} weights, {trainable_set.ratio:.3%})")
    figure.colorbar(image, ax=axis, label="selected / total (log)")
    figure.tight_layout()
    return figure


def _compact_count(count: float) -> str:
    """``1234 -> "1.2k"``, so that a count fits in a heatmap cell."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if count >= limit:
            return f"{count / limit:.1f}{suffix}"
    return f"{count:.0f}"


def trainable_count_heatmap_figure(trainable_set: SparseTrainableSet, annotate_up_to: int = 400):  # noqa: ANN201
    """A heatmap of the number of trainable entries per block (rows) and layer type (columns), log colour scale.

    Cells without a trainable entry are left blank (grey), cells whose block has no such layer white.

    Args:
        trainable_set: the set.
        annotate_up_to: write the count into each cell when the matrix has at most this many cells.

    Returns:
        a matplotlib ``Figure`` (Agg backend, no display needed).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import colors
    from matplotlib import pyplot as plt

    matrix, blocks, types = trainable_count_matrix(trainable_set)
    positive = matrix[np.isfinite(matrix) & (matrix > 0)]
    vmax = float(positive.max()) if positive.size else 1.0
    figure, axis = plt.subplots(figsize=(max(6.0, 0.45 * len(types) + 2), max(4.0, 0.3 * len(blocks) + 1.5)))
    # zero cells and absent layers are drawn apart: grey for "exists, nothing selected", white for "no such layer"
    axis.imshow(np.where(np.isfinite(matrix), 0.85, np.nan), aspect="auto", cmap="gray", vmin=0.0, vmax=1.0)
    shown = np.where(np.isfinite(matrix) & (matrix > 0), matrix, np.nan)
    image = axis.imshow(shown, aspect="auto", cmap="viridis", norm=colors.LogNorm(vmin=1.0, vmax=max(vmax, 1.0)))
    if matrix.size <= annotate_up_to:
        for row, column in zip(*np.nonzero(np.isfinite(shown))):
            value = shown[row, column]
            bright = np.log(value) > 0.6 * np.log(max(vmax, 1.0 + 1e-9))  # dark text on the yellow end of viridis
            axis.text(
                column,
                row,
                _compact_count(value),
                ha="center",
                va="center",
                fontsize=6,
                color="black" if bright else "white",
            )
    axis.set_xticks(range(len(types)), types, rotation=60, ha="right", fontsize=7)
    axis.set_yticks(range(len(blocks)), blocks, fontsize=7)
    axis.set_title(f"trainable entries per block and layer ({trainable_set.num_selected:,} in all)")
    figure.colorbar(image, ax=axis, label="selected entries (log)")
    figure.tight_layout()
    return figure
