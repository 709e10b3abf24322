"""Tests of monai_shpeft.methods.adapter (AdaptFormer) on tiny real timm and open_clip ViTs."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn as nn

from monai_shpeft.backbones import TINY_DEPTH, TINY_WIDTH, build_classifier
from monai_shpeft.methods import adapter
from monai_shpeft.methods.base import count_trainable

# Not tests.helpers: it imports MONAI, which would double these tests' run time.
TINY_TIMM = "timm:vit_small_patch14_dinov2"
TINY_OPEN_CLIP = "open_clip:ViT-B-16"

# A 2x2 patch grid: patch 14 for DINOv2, 16 for CLIP ViT-B-16.
IMAGE_SIZE = {TINY_TIMM: 28, TINY_OPEN_CLIP: 32}
BACKBONES = list(IMAGE_SIZE)
NUM_CLASSES = 3
BOTTLENECK = 8


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
    model = adapter.apply(_model(backbone), bottleneck=BOTTLENECK)
    d, b = TINY_WIDTH, BOTTLENECK
    expected = TINY_DEPTH * (d * b + b + b * d + d) + (d * NUM_CLASSES + NUM_CLASSES)
    assert count_trainable(model).trainable == expected
    adapters = [m for m in model.modules() if isinstance(m, adapter.AdaptedMlp)]
    assert len(adapters) == TINY_DEPTH


@pytest.mark.parametrize("backbone", BACKBONES)
def test_starts_as_original_and_trains_only_adapters_and_head(backbone: str) -> None:
    model = _model(backbone).eval()
    original = copy.deepcopy(model)
    frozen = {id(p): (name, p.detach().clone()) for name, p in model.backbone.named_parameters()}
    adapter.apply(model)
    images = _images(backbone)
    with torch.no_grad():
        torch.testing.assert_close(model(images), original(images), rtol=0, atol=1e-6)

    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    _train(model, backbone)
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert changed == trainable
    assert {n.rsplit(".", 2)[-2] for n in trainable if not n.startswith("head.")} == {"down", "up"}
    assert any(n.startswith("head.") for n in trainable)

    # Every pretrained tensor is still in the model and bit-identical, wherever the wrapper moved its name.
    seen = {id(p) for p in model.parameters()}
    assert set(frozen) <= seen
    for param in model.parameters():
        if id(param) in frozen:
            name, value = frozen[id(param)]
            assert torch.equal(param, value), name
    with torch.no_grad():
        assert not torch.allclose(model(images), original(images))


@pytest.mark.parametrize("backbone", BACKBONES)
def test_deepcopy_and_save_round_trip(backbone: str) -> None:
    model = adapter.apply(_model(backbone), bottleneck=BOTTLENECK)
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


def test_wrapper_reads_through_to_the_mlp() -> None:
    # open_clip's blocks read their dtype from `mlp.c_fc.weight`.
    model = adapter.apply(_model(TINY_OPEN_CLIP))
    block = model.backbone.transformer.resblocks[0]
    assert isinstance(block.mlp, adapter.AdaptedMlp)
    assert block.get_weight_dtype() == torch.float32
    assert block.mlp.c_fc is block.mlp.mlp.c_fc


def test_rejects_bad_options_and_double_application() -> None:
    with pytest.raises(ValueError, match="bottleneck"):
        adapter.apply(_model(TINY_TIMM), bottleneck=0)
    with pytest.raises(ValueError, match="backbone classifier"):
        adapter.apply(nn.Linear(2, 2))
    model = adapter.apply(_model(TINY_TIMM))
    with pytest.raises(ValueError, match="already has an adapter"):
        adapter.apply(model)


def test_info() -> None:
    assert adapter.INFO.name == "adapter"
    assert adapter.INFO.kind == "additive"
    assert adapter.INFO.apply is adapter.apply
