from __future__ import annotations

import math

import numpy as np
import torch
from matplotlib import pyplot as plt
from PIL import Image

from monai_shpeft.plots import (
    save_figure,
    trainable_count_heatmap_figure,
    trainable_count_matrix,
    trainable_heatmap_figure,
    trainable_ratio_matrix,
)
from monai_shpeft.sparse_set import SparseTrainableSet


def test_matrix_cells_are_the_trainable_fractions() -> None:
    shapes = {
        "backbone.pos_embed": (1, 4),
        "backbone.blocks.0.attn.qkv.weight": (2, 5),
        "backbone.blocks.1.attn.qkv.weight": (2, 5),
        "backbone.blocks.1.norm1.weight": (5,),
    }
    indices = {"backbone.pos_embed": torch.tensor([0]), "backbone.blocks.1.attn.qkv.weight": torch.tensor([1, 2])}
    matrix, blocks, types = trainable_ratio_matrix(SparseTrainableSet(indices=indices, shapes=shapes))
    assert blocks == ["pos_embed", "blocks.0", "blocks.1"] and types == ["pos_embed", "attn.qkv.weight", "norm1.weight"]
    assert matrix[0, 0] == 0.25 and matrix[1, 1] == 0.0 and matrix[2, 1] == 0.2 and matrix[2, 2] == 0.0
    assert math.isnan(matrix[1, 2])  # block 0 has no norm1 in this toy set


def test_figure_renders_without_a_display(tmp_path) -> None:
    shapes = {"backbone.blocks.0.mlp.fc1.weight": (4, 4)}
    figure = trainable_heatmap_figure(
        SparseTrainableSet(indices={"backbone.blocks.0.mlp.fc1.weight": torch.arange(3)}, shapes=shapes)
    )
    figure.savefig(tmp_path / "heatmap.png")
    assert (tmp_path / "heatmap.png").stat().st_size > 1000


def test_count_matrix_cells_are_the_selected_entries() -> None:
    shapes = {
        "backbone.pos_embed": (1, 4),
        "backbone.blocks.0.attn.qkv.weight": (2, 5),
        "backbone.blocks.1.attn.qkv.weight": (2, 5),
        "backbone.blocks.1.norm1.weight": (5,),
    }
    indices = {"backbone.pos_embed": torch.tensor([0]), "backbone.blocks.1.attn.qkv.weight": torch.tensor([1, 2, 7])}
    trainable_set = SparseTrainableSet(indices=indices, shapes=shapes)
    counts, blocks, types = trainable_count_matrix(trainable_set)
    ratios, ratio_blocks, ratio_types = trainable_ratio_matrix(trainable_set)
    assert (blocks, types) == (ratio_blocks, ratio_types)
    assert counts[0, 0] == 1 and counts[1, 1] == 0 and counts[2, 1] == 3 and counts[2, 2] == 0
    assert math.isnan(counts[1, 2]) and math.isnan(ratios[1, 2])
    assert np.nansum(counts) == trainable_set.num_selected
    assert ratios[2, 1] == 0.3  # the ratio matrix still divides by the cell's size


def test_count_figure_is_saved_as_a_readable_png(tmp_path) -> None:
    shapes = {"backbone.blocks.0.mlp.fc1.weight": (40, 40), "backbone.blocks.0.norm1.bias": (40,)}
    indices = {"backbone.blocks.0.mlp.fc1.weight": torch.arange(1500), "backbone.blocks.0.norm1.bias": torch.arange(2)}
    figure = trainable_count_heatmap_figure(SparseTrainableSet(indices=indices, shapes=shapes))
    axis = figure.axes[0]
    assert sorted(text.get_text() for text in axis.texts) == ["1.5k", "2"]  # the counts are written in the cells
    assert "1,502" in axis.get_title()
    path = save_figure(figure, tmp_path / "nested" / "counts.png")
    assert not plt.fignum_exists(figure.number)  # saving closes it, so loops of plots do not pile up figures
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100
