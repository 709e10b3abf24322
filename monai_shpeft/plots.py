"""Pictures people would rather look at than read: where the trainable weights sit."""

from __future__ import annotations

import numpy as np

from monai_shpeft.sparse_set import SparseTrainableSet, block_of, layer_type_of

__all__ = ["trainable_ratio_matrix", "trainable_heatmap_figure"]


def trainable_ratio_matrix(trainable_set: SparseTrainableSet) -> tuple[np.ndarray, list[str], list[str]]:
    """Trainable fraction per (block, layer type); NaN where a block has no such layer.

    Args:
        trainable_set: the set.

    Returns:
        the matrix ``[blocks, layer types]``, the block names (rows) and the layer types (columns).
    """
    cells: dict[tuple[str, str], list[int]] = {}
    for name, shape in trainable_set.shapes.items():
        key = (block_of(name, trainable_set.scope), layer_type_of(name, trainable_set.scope))
        counts = cells.setdefault(key, [0, 0])
        counts[0] += int(trainable_set.indices[name].numel())
        counts[1] += int(np.prod(shape)) if shape else 1
    blocks = list(dict.fromkeys(block for block, _ in cells))
    types = list(dict.fromkeys(kind for _, kind in cells))
    matrix = np.full((len(blocks), len(types)), np.nan)
    for (block, kind), (selected, total) in cells.items():
        matrix[blocks.index(block), types.index(kind)] = selected / max(total, 1)
    return matrix, blocks, types


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
