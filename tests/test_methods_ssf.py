"""Tests of monai_shpeft.methods.ssf (scale and shift features) on tiny real timm and open_clip ViTs."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn as nn

from monai_shpeft.backbones import TINY_DEPTH, TINY_WIDTH, build_classifier
from monai_shpeft.methods import ssf
from monai_shpeft.methods.base import count_trainable

# Not tests.helpers: it imports MONAI, which would double these tests' run time.
TINY_TIMM = "timm:vit_small_patch14_dinov2"
TINY_OPEN_CLIP = "open_clip:ViT-B-16"
# A 2x2 patch grid: patch 14 for DINOv2, 16 for CLIP ViT-B-16.
IMAGE_SIZE = {TINY_TIMM: 28, TINY_OPEN_CLIP: 32}
BACKBONES = list(IMAGE_SIZE)
NUM_CLASSES = 3

# Output channels of the wrapped layers, in units of the width D (MLP ratio 4):
# timm block: norm1, qkv (3), proj, norm2, fc1 (4), fc2; outside the blocks: the patch embedding and the final norm.
# open_clip block: ln_1, attention output, ln_2, c_fc (4), c_proj; outside: conv1, ln_pre, ln_post.
CHANNELS_PER_BLOCK = {TINY_TIMM: 1 + 3 + 1 + 1 + 4 + 1, TINY_OPEN_CLIP: 1 + 1 + 1 + 4 + 1}
CHANNELS_OUTSIDE_BLOCKS = {TINY_TIMM: 2, TINY_OPEN_CLIP: 3}


def _model(backbone: str) -> nn.Module:
    torch.manual_seed(0)
    # DINOv2's LayerScale starts at 1e-5, which makes a random model's blocks almost the identity: use 1.
    options = {"init_values": 1.0} if backbone == TINY_TIMM else {}
    return build_classifier(backbone, NUM_CLASSES, image_size=IMAGE_SIZE[backbone], tiny=True, **options)


def _images(backbone: str, batch: int = 4, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, IMAGE_SIZE[backbone], IMAGE_SIZE[backbone], generator=generator)


def _train(model: nn.Module, backbone: str, steps: int = 3) -> None:
    """A few AdamW steps on random data; every parameter is given to the optimizer, frozen ones included."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(2)
    model.train()
    for step in range(steps):
        labels = torch.randint(0, NUM_CLASSES, (4,), generator=generator)
        loss = loss_fn(model(_images(backbone, seed=10 + step)), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
        optimizer.step()
    model.eval()


@pytest.mark.parametrize("backbone", BACKBONES)
def test_trainable_count(backbone: str) -> None:
    model = ssf.apply(_model(backbone))
    channels = TINY_WIDTH * (TINY_DEPTH * CHANNELS_PER_BLOCK[backbone] + CHANNELS_OUTSIDE_BLOCKS[backbone])
    expected = 2 * channels + (TINY_WIDTH * NUM_CLASSES + NUM_CLASSES)
    assert count_trainable(model).trainable == expected


def test_wrapped_layers() -> None:
    timm_model = ssf.apply(_model(TINY_TIMM))
    block = timm_model.backbone.blocks[0]
    for layer in (block.norm1, block.attn.qkv, block.attn.proj, block.norm2, block.mlp.fc1, block.mlp.fc2):
        assert isinstance(layer, ssf.ScaleShift)
    assert isinstance(timm_model.backbone.patch_embed.proj, ssf.ScaleShift)
    assert timm_model.backbone.patch_embed.proj.channel_dim == 1

    clip_model = ssf.apply(_model(TINY_OPEN_CLIP))
    block = clip_model.backbone.transformer.resblocks[0]
    assert isinstance(block.attn, ssf.ScaleShift) and isinstance(block.attn.base, nn.MultiheadAttention)
    assert not isinstance(block.attn.base.out_proj, ssf.ScaleShift)  # MHA uses its weight directly
    assert isinstance(clip_model.backbone.conv1, ssf.ScaleShift)
    # Attributes are read through the wrappers: open_clip's blocks read their dtype from `mlp.c_fc.weight`.
    assert block.get_weight_dtype() == torch.float32
    assert block.attn.embed_dim == TINY_WIDTH


@pytest.mark.parametrize("backbone", BACKBONES)
def test_identity_init_then_trains_only_scale_shift_and_head(backbone: str) -> None:
    model = _model(backbone).eval()
    original = copy.deepcopy(model)
    frozen = {id(p): (name, p.detach().clone()) for name, p in model.backbone.named_parameters()}
    ssf.apply(model, init_std=0.0)
    images = _images(backbone)
    with torch.no_grad():
        torch.testing.assert_close(model(images), original(images), rtol=0, atol=1e-6)

    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    _train(model, backbone)
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert changed == trainable
    assert {n.rsplit(".", 1)[-1] for n in trainable if not n.startswith("head.")} == {"scale", "shift"}
    assert any(n.startswith("head.") for n in trainable)

    # Every pretrained tensor is still in the model and bit-identical, wherever the wrapper moved its name.
    assert set(frozen) <= {id(p) for p in model.parameters()}
    for param in model.parameters():
        if id(param) in frozen:
            name, value = frozen[id(param)]
            assert torch.equal(param, value), name
    with torch.no_grad():
        assert not torch.allclose(model(images), original(images))


def test_default_init_is_near_identity() -> None:
    torch.manual_seed(0)
    model = ssf.apply(_model(TINY_TIMM))
    scales = torch.cat([m.scale.detach() for m in model.modules() if isinstance(m, ssf.ScaleShift)])
    shifts = torch.cat([m.shift.detach() for m in model.modules() if isinstance(m, ssf.ScaleShift)])
    assert abs(scales.mean().item() - 1.0) < 0.01 and 0.01 < scales.std().item() < 0.03
    assert abs(shifts.mean().item()) < 0.01 and 0.01 < shifts.std().item() < 0.03


@pytest.mark.parametrize("backbone", BACKBONES)
def test_deepcopy_and_save_round_trip(backbone: str) -> None:
    model = ssf.apply(_model(backbone))
    with torch.no_grad():  # move the new parameters off their initial values (e.g. the adapters' zero `up`)
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.1 * torch.randn_like(param))
    images = _images(backbone)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    with torch.no_grad():
        expected = model.eval()(images)
        assert expected.shape == (4, NUM_CLASSES)
        for other in (copy.deepcopy(model), loaded):
            torch.testing.assert_close(other.eval()(images), expected, rtol=0, atol=0)
            assert count_trainable(other).trainable == count_trainable(model).trainable


def test_rejects_bad_options_and_double_application() -> None:
    with pytest.raises(ValueError, match="init_std"):
        ssf.apply(_model(TINY_TIMM), init_std=-1.0)
    with pytest.raises(ValueError, match="backbone classifier"):
        ssf.apply(nn.Linear(2, 2))
    model = ssf.apply(_model(TINY_OPEN_CLIP))
    with pytest.raises(ValueError, match="already has SSF"):
        ssf.apply(model)


def test_info() -> None:
    assert ssf.INFO.name == "ssf"
    assert ssf.INFO.kind == "additive"
    assert ssf.INFO.apply is ssf.apply
