"""Tests of monai_shpeft.methods.adapter (AdaptFormer) on tiny real timm and open_clip ViTs."""

from __future__ import annotations

import pytest
import torch

from monai_shpeft.backbones import TINY_DEPTH, TINY_WIDTH
from monai_shpeft.methods import adapter
from monai_shpeft.methods.base import count_trainable
from tests.method_helpers import (
    BACKBONES,
    HEAD,
    TINY_OPEN_CLIP,
    check_deepcopy_and_save_round_trip,
    check_identity_start_and_training,
    check_rejects_misuse,
    random_images,
    tiny_model,
)

BOTTLENECK = 8


@pytest.mark.parametrize("backbone", BACKBONES)
def test_trainable_count(backbone: str) -> None:
    model = adapter.apply(tiny_model(backbone), bottleneck=BOTTLENECK)
    d, b = TINY_WIDTH, BOTTLENECK
    expected = TINY_DEPTH * (d * b + b + b * d + d) + HEAD
    assert count_trainable(model).trainable == expected
    adapters = [m for m in model.modules() if isinstance(m, adapter.AdaptedMlp)]
    assert len(adapters) == TINY_DEPTH


@pytest.mark.parametrize("backbone", BACKBONES)
def test_starts_as_original_and_trains_only_adapters_and_head(backbone: str) -> None:
    trainable = check_identity_start_and_training(backbone, adapter.apply)
    assert {n.rsplit(".", 2)[-2] for n in trainable if not n.startswith("head.")} == {"down", "up"}


@pytest.mark.parametrize("backbone", BACKBONES)
def test_deepcopy_and_save_round_trip(backbone: str) -> None:
    model = adapter.apply(tiny_model(backbone), bottleneck=BOTTLENECK)
    check_deepcopy_and_save_round_trip(model, random_images(backbone))


def test_wrapper_reads_through_to_the_mlp() -> None:
    # open_clip's blocks read their dtype from `mlp.c_fc.weight`.
    model = adapter.apply(tiny_model(TINY_OPEN_CLIP))
    block = model.backbone.transformer.resblocks[0]
    assert isinstance(block.mlp, adapter.AdaptedMlp)
    assert block.get_weight_dtype() == torch.float32
    assert block.mlp.c_fc is block.mlp.mlp.c_fc


def test_rejects_bad_options_and_double_application() -> None:
    check_rejects_misuse(adapter.apply, {"bottleneck": 0}, "already has an adapter")


def test_info() -> None:
    assert adapter.INFO.name == "adapter"
    assert adapter.INFO.kind == "additive"
    assert adapter.INFO.apply is adapter.apply
