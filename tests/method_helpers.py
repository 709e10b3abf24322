"""Shared pieces of the PEFT method tests (adapter, ssf, vpt, selective): tiny real ViTs, random data, short training.

This module must not import MONAI, directly or through ``tests.helpers`` (which does): importing MONAI doubles the
run time of the method tests that use it.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn as nn

from monai_shpeft.backbones import TINY_WIDTH, build_classifier
from monai_shpeft.methods.base import count_trainable

TINY_TIMM = "timm:vit_small_patch14_dinov2"
TINY_OPEN_CLIP = "open_clip:ViT-B-16"
# A 2x2 patch grid: patch 14 for DINOv2, 16 for CLIP ViT-B-16.
IMAGE_SIZE = {TINY_TIMM: 28, TINY_OPEN_CLIP: 32}
BACKBONES = list(IMAGE_SIZE)
NUM_CLASSES = 3
# Parameters of the linear classification head (weight and bias).
HEAD = TINY_WIDTH * NUM_CLASSES + NUM_CLASSES

Snapshot = dict[str, torch.Tensor]
Frozen = dict[int, tuple[str, torch.Tensor]]


def tiny_model(backbone: str) -> nn.Module:
    """A tiny random classifier on ``backbone`` (one of :data:`BACKBONES`), seeded for reproducibility."""
    torch.manual_seed(0)
    # DINOv2's LayerScale starts at 1e-5, which makes a random model's blocks almost the identity: use 1.
    options = {"init_values": 1.0} if backbone == TINY_TIMM else {}
    return build_classifier(backbone, NUM_CLASSES, image_size=IMAGE_SIZE[backbone], tiny=True, **options)


def random_images(backbone: str, batch: int = 4, seed: int = 1) -> torch.Tensor:
    """A reproducible batch of random images of the size :data:`IMAGE_SIZE` gives ``backbone``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, IMAGE_SIZE[backbone], IMAGE_SIZE[backbone], generator=generator)


def train(model: nn.Module, backbone: str, steps: int = 3, weight_decay: float = 0.01) -> None:
    """A few AdamW steps on random data; every parameter is given to the optimizer, frozen ones included.

    Each step also checks that no frozen parameter received a gradient. The model is left in eval mode, with the
    last step's gradients in place.
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(2)
    model.train()
    for step in range(steps):
        labels = torch.randint(0, NUM_CLASSES, (4,), generator=generator)
        loss = loss_fn(model(random_images(backbone, seed=10 + step)), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
        optimizer.step()
    model.eval()


def snapshot(model: nn.Module) -> Snapshot:
    """Copies of every parameter, by name."""
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def changed_parameters(before: Snapshot, model: nn.Module) -> set[str]:
    """Names of the parameters in ``before`` whose value is no longer bit-identical."""
    return {name for name, p in model.named_parameters() if name in before and not torch.equal(before[name], p)}


def frozen_backbone(model: nn.Module) -> Frozen:
    """Copies of the backbone's pretrained tensors by ``id``: a method may move them to other names when it wraps."""
    return {id(p): (name, p.detach().clone()) for name, p in model.backbone.named_parameters()}


def train_and_check_changes(model: nn.Module, backbone: str, frozen: Frozen) -> set[str]:
    """Train with :func:`train` and check what moved.

    Exactly the trainable parameters change, the head's among them, and every pretrained tensor of ``frozen`` is
    still in the model and bit-identical, wherever the method's wrappers moved its name.

    Returns:
        The names of the trainable parameters.
    """
    before = snapshot(model)
    train(model, backbone)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert changed_parameters(before, model) == trainable
    assert any(name.startswith("head.") for name in trainable)

    assert set(frozen) <= {id(p) for p in model.parameters()}
    for param in model.parameters():
        if id(param) in frozen:
            name, value = frozen[id(param)]
            assert torch.equal(param, value), name
    return trainable


def check_identity_start_and_training(backbone: str, apply: Callable[[nn.Module], object]) -> set[str]:
    """Apply a method that starts as the identity to a tiny ``backbone`` model, then train it.

    Right after ``apply`` (which changes the model in place) the output equals the original model's; training then
    changes what :func:`train_and_check_changes` says, and the output moves away from the original's.

    Returns:
        The names of the trainable parameters.
    """
    model = tiny_model(backbone).eval()
    original = copy.deepcopy(model)
    frozen = frozen_backbone(model)
    apply(model)
    images = random_images(backbone)
    with torch.no_grad():
        torch.testing.assert_close(model(images), original(images), rtol=0, atol=1e-6)

    trainable = train_and_check_changes(model, backbone, frozen)
    with torch.no_grad():
        assert not torch.allclose(model(images), original(images))
    return trainable


def check_deepcopy_and_save_round_trip(model: nn.Module, images: torch.Tensor) -> None:
    """A deep copy and a ``torch.save``/``torch.load`` round trip of ``model`` give the same outputs and counts.

    The trainable parameters are first moved off their initial values (e.g. the adapters' zero ``up``).
    """
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.1 * torch.randn_like(param))
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    with torch.no_grad():
        expected = model.eval()(images)
        assert expected.shape == (len(images), NUM_CLASSES)
        for other in (copy.deepcopy(model), loaded):
            torch.testing.assert_close(other.eval()(images), expected, rtol=0, atol=0)
            assert count_trainable(other).trainable == count_trainable(model).trainable


def check_rejects_misuse(
    apply: Callable[..., nn.Module],
    bad_option: dict[str, Any],
    already: str,
    backbone: str = TINY_TIMM,
    variant: Callable[..., nn.Module] | None = None,
) -> None:
    """A method refuses a bad option, a module that is not a backbone classifier, and a second application.

    Args:
        apply: the method's ``apply``; it is given the module that is not a classifier and the model applied twice.
        bad_option: one invalid option, ``{name: value}``; the error must name it.
        already: a pattern of the error the second application raises.
        backbone: the tiny backbone of the model applied twice.
        variant: another ``apply`` of the method (default ``apply``), given the bad option and applied second.
    """
    variant = variant or apply
    (name,) = bad_option
    with pytest.raises(ValueError, match=name):
        variant(tiny_model(TINY_TIMM), **bad_option)
    with pytest.raises(ValueError, match="backbone classifier"):
        apply(nn.Linear(2, 2))
    model = apply(tiny_model(backbone))
    with pytest.raises(ValueError, match=already):
        variant(model)
