from __future__ import annotations

import math

import torch

from monai_shpeft.plots import trainable_heatmap_figure, trainable_ratio_matrix
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
