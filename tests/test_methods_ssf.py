"""Tests of monai_shpeft.methods.ssf (scale and shift features) on tiny real timm and open_clip ViTs."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from monai_shpeft.backbones import TINY_DEPTH, TINY_WIDTH
from monai_shpeft.methods import ssf
from monai_shpeft.methods.base import count_trainable
from tests.method_helpers import (
    BACKBONES,
    HEAD,
    TINY_OPEN_CLIP,
    TINY_TIMM,
    check_deepcopy_and_save_round_trip,
    check_identity_start_and_training,
    check_rejects_misuse,
    random_images,
    tiny_model,
)

# Output channels of the wrapped layers, in units of the width D (MLP ratio 4):
# timm block: norm1, qkv (3), proj, norm2, fc1 (4), fc2; outside the blocks: the patch embedding and the final norm.
# open_clip block: ln_1, attention output, ln_2, c_fc (4), c_proj; outside: conv1, ln_pre, ln_post.
CHANNELS_PER_BLOCK = {TINY_TIMM: 1 + 3 + 1 + 1 + 4 + 1, TINY_OPEN_CLIP: 1 + 1 + 1 + 4 + 1}
CHANNELS_OUTSIDE_BLOCKS = {TINY_TIMM: 2, TINY_OPEN_CLIP: 3}


@pytest.mark.parametrize("backbone", BACKBONES)
def test_trainable_count(backbone: str) -> None:
    model = ssf.apply(tiny_model(backbone))
    channels = TINY_WIDTH * (TINY_DEPTH * CHANNELS_PER_BLOCK[backbone] + CHANNELS_OUTSIDE_BLOCKS[backbone])
    expected = 2 * channels + HEAD
    assert count_trainable(model).trainable == expected


def test_wrapped_layers() -> None:
    timm_model = ssf.apply(tiny_model(TINY_TIMM))
    block = timm_model.backbone.blocks[0]
    for layer in (block.norm1, block.attn.qkv, block.attn.proj, block.norm2, block.mlp.fc1, block.mlp.fc2):
        assert isinstance(layer, ssf.ScaleShift)
    assert isinstance(timm_model.backbone.patch_embed.proj, ssf.ScaleShift)
    assert timm_model.backbone.patch_embed.proj.channel_dim == 1

    clip_model = ssf.apply(tiny_model(TINY_OPEN_CLIP))
    block = clip_model.backbone.transformer.resblocks[0]
    assert isinstance(block.attn, ssf.ScaleShift) and isinstance(block.attn.base, nn.MultiheadAttention)
    assert not isinstance(block.attn.base.out_proj, ssf.ScaleShift)  # MHA uses its weight directly
    assert isinstance(clip_model.backbone.conv1, ssf.ScaleShift)
    # Attributes are read through the wrappers: open_clip's blocks read their dtype from `mlp.c_fc.weight`.
    assert block.get_weight_dtype() == torch.float32
    assert block.attn.embed_dim == TINY_WIDTH


@pytest.mark.parametrize("backbone", BACKBONES)
def test_identity_init_then_trains_only_scale_shift_and_head(backbone: str) -> None:
    trainable = check_identity_start_and_training(backbone, lambda model: ssf.apply(model, init_std=0.0))
    assert {n.rsplit(".", 1)[-1] for n in trainable if not n.startswith("head.")} == {"scale", "shift"}


def test_default_init_is_near_identity() -> None:
    torch.manual_seed(0)
    model = ssf.apply(tiny_model(TINY_TIMM))
    scales = torch.cat([m.scale.detach() for m in model.modules() if isinstance(m, ssf.ScaleShift)])
    shifts = torch.cat([m.shift.detach() for m in model.modules() if isinstance(m, ssf.ScaleShift)])
    assert abs(scales.mean().item() - 1.0) < 0.01 and 0.01 < scales.std().item() < 0.03
    assert abs(shifts.mean().item()) < 0.01 and 0.01 < shifts.std().item() < 0.03


@pytest.mark.parametrize("backbone", BACKBONES)
def test_deepcopy_and_save_round_trip(backbone: str) -> None:
    model = ssf.apply(tiny_model(backbone))
    check_deepcopy_and_save_round_trip(model, random_images(backbone))


def test_rejects_bad_options_and_double_application() -> None:
    check_rejects_misuse(ssf.apply, {"init_std": -1.0}, "already has SSF", backbone=TINY_OPEN_CLIP)


def test_info() -> None:
    assert ssf.INFO.name == "ssf"
    assert ssf.INFO.kind == "additive"
    assert ssf.INFO.apply is ssf.apply
