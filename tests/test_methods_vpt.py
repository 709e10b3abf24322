"""Tests of monai_shpeft.methods.vpt (visual prompt tuning, shallow and deep) on tiny real timm and open_clip ViTs."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import torch
import torch.nn as nn

from monai_shpeft.backbones import TINY_DEPTH, TINY_WIDTH, build_classifier
from monai_shpeft.methods import vpt
from monai_shpeft.methods.base import count_trainable
from tests.method_helpers import (
    BACKBONES,
    HEAD,
    NUM_CLASSES,
    TINY_OPEN_CLIP,
    TINY_TIMM,
    check_deepcopy_and_save_round_trip,
    check_rejects_misuse,
    frozen_backbone,
    random_images,
    tiny_model,
    train_and_check_changes,
)

REG_TIMM = "timm:vit_small_patch14_reg4_dinov2"
# Patch sizes of the backbones (IMAGE_SIZE gives them a 2x2 patch grid); one class token in both.
PATCH_SIZE = {TINY_TIMM: 14, TINY_OPEN_CLIP: 16}
NUM_PROMPTS = 5
APPLY: dict[str, Callable[..., nn.Module]] = {"shallow": vpt.apply_shallow, "deep": vpt.apply_deep}
CASES = [(backbone, kind) for backbone in BACKBONES for kind in APPLY]


def _blocks(model: nn.Module) -> nn.Module:
    backbone = model.backbone
    return backbone.blocks if hasattr(backbone, "blocks") else backbone.transformer.resblocks


@pytest.mark.parametrize(("backbone", "kind"), CASES)
def test_trainable_count_and_init(backbone: str, kind: str) -> None:
    model = APPLY[kind](tiny_model(backbone), num_prompts=NUM_PROMPTS)
    sets = TINY_DEPTH if kind == "deep" else 1
    assert count_trainable(model).trainable == sets * NUM_PROMPTS * TINY_WIDTH + HEAD
    prompts = [m.prompts for m in model.modules() if isinstance(m, vpt.PromptedBlock) and m.prompts is not None]
    assert len(prompts) == sets
    bound = math.sqrt(6.0 / (3 * PATCH_SIZE[backbone] ** 2 + TINY_WIDTH))
    for tensor in prompts:
        assert tensor.shape == (NUM_PROMPTS, TINY_WIDTH)
        assert tensor.abs().max() <= bound and tensor.abs().max() > bound / 2


@pytest.mark.parametrize(("backbone", "kind"), CASES)
def test_prompts_follow_the_prefix_tokens_and_are_removed_after_the_last_block(backbone: str, kind: str) -> None:
    original = tiny_model(backbone).eval()
    model = APPLY[kind](copy.deepcopy(original), num_prompts=NUM_PROMPTS)
    _check_prompt_layout(original, model, random_images(backbone), num_prefix=1, num_patches=4)


@pytest.mark.parametrize("kind", list(APPLY))
def test_register_tokens_stay_before_the_prompts(kind: str) -> None:
    torch.manual_seed(0)
    original = build_classifier(REG_TIMM, NUM_CLASSES, image_size=28, tiny=True, init_values=1.0).eval()
    assert original.backbone.num_prefix_tokens == 5  # class token and 4 registers
    model = APPLY[kind](copy.deepcopy(original), num_prompts=NUM_PROMPTS)
    _check_prompt_layout(original, model, random_images(TINY_TIMM), num_prefix=5, num_patches=4)


def _check_prompt_layout(
    original: nn.Module, model: nn.Module, images: torch.Tensor, num_prefix: int, num_patches: int
) -> None:
    """Each prompted block sees [prefix, its prompts, patches]; the last one hands on [prefix, patches]."""
    seen: dict[str, torch.Tensor] = {}

    # Test-only hooks (closures are fine here): the tokens entering the first original block and every inner block.
    _blocks(original)[0].register_forward_pre_hook(lambda m, args: seen.__setitem__("original", args[0]))
    prompted = [b for b in _blocks(model) if isinstance(b, vpt.PromptedBlock)]
    for index, block in enumerate(prompted):
        block.block.register_forward_pre_hook(lambda m, args, i=index: seen.__setitem__(f"inner{i}", args[0]))
    prompted[-1].register_forward_hook(lambda m, args, out: seen.__setitem__("after", out))
    with torch.no_grad():
        original(images)
        assert model(images).shape == (len(images), NUM_CLASSES)
        assert model.forward_features(images).shape == (len(images), TINY_WIDTH)

    start, stop = num_prefix, num_prefix + NUM_PROMPTS
    first = seen["inner0"]
    assert first.shape == (len(images), num_prefix + NUM_PROMPTS + num_patches, TINY_WIDTH)
    torch.testing.assert_close(first[:, :start], seen["original"][:, :start], rtol=0, atol=0)
    torch.testing.assert_close(first[:, stop:], seen["original"][:, start:], rtol=0, atol=0)
    for index, block in enumerate(prompted):
        if block.prompts is not None:
            expected = block.prompts.detach().expand(len(images), -1, -1)
            torch.testing.assert_close(seen[f"inner{index}"][:, start:stop], expected, rtol=0, atol=0)
    assert seen["after"].shape == (len(images), num_prefix + num_patches, TINY_WIDTH)


@pytest.mark.parametrize(("backbone", "kind"), CASES)
def test_output_depends_on_every_prompt_set(backbone: str, kind: str) -> None:
    model = APPLY[kind](tiny_model(backbone), num_prompts=NUM_PROMPTS).eval()
    images = random_images(backbone)
    with torch.no_grad():
        reference = model(images)
        for block in _blocks(model):
            if not isinstance(block, vpt.PromptedBlock) or block.prompts is None:
                continue
            saved = block.prompts.detach().clone()
            # Random, not constant: a constant shift of every channel is undone by the blocks' layer norms.
            block.prompts.add_(torch.randn_like(saved))
            assert not torch.allclose(model(images), reference)
            block.prompts.copy_(saved)
        torch.testing.assert_close(model(images), reference, rtol=0, atol=0)


@pytest.mark.parametrize(("backbone", "kind"), CASES)
def test_trains_only_prompts_and_head(backbone: str, kind: str) -> None:
    model = tiny_model(backbone)
    frozen = frozen_backbone(model)
    APPLY[kind](model, num_prompts=NUM_PROMPTS)
    trainable = train_and_check_changes(model, backbone, frozen)
    assert {n.rsplit(".", 1)[-1] for n in trainable if not n.startswith("head.")} == {"prompts"}


@pytest.mark.parametrize("kind", list(APPLY))
def test_sequence_first_open_clip_blocks(kind: str) -> None:
    # open_clip can run its blocks on [N, B, D] tokens (Transformer.batch_first=False): same result as batch first.
    batch_first = tiny_model(TINY_OPEN_CLIP).eval()
    sequence_first = copy.deepcopy(batch_first)
    sequence_first.backbone.transformer.batch_first = False
    for block in sequence_first.backbone.transformer.resblocks:
        block.attn.batch_first = False
    for model in (batch_first, sequence_first):
        torch.manual_seed(3)
        APPLY[kind](model, num_prompts=NUM_PROMPTS)
    assert not _blocks(sequence_first)[0].batch_first
    images = random_images(TINY_OPEN_CLIP)
    with torch.no_grad():
        torch.testing.assert_close(sequence_first(images), batch_first(images), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("backbone", "kind"), CASES)
def test_deepcopy_and_save_round_trip(backbone: str, kind: str) -> None:
    model = APPLY[kind](tiny_model(backbone), num_prompts=NUM_PROMPTS)
    check_deepcopy_and_save_round_trip(model, random_images(backbone))


def test_single_block_inserts_and_removes() -> None:
    torch.manual_seed(0)
    model = build_classifier(TINY_TIMM, NUM_CLASSES, image_size=28, tiny=True, depth=1, init_values=1.0)
    vpt.apply_shallow(model, num_prompts=NUM_PROMPTS)
    (block,) = model.backbone.blocks
    assert block.insert and block.remove
    assert model(random_images(TINY_TIMM)).shape == (4, NUM_CLASSES)


def test_rejects_bad_options_and_double_application() -> None:
    check_rejects_misuse(
        vpt.apply_deep, {"num_prompts": 0}, "already has prompts", backbone=TINY_OPEN_CLIP, variant=vpt.apply_shallow
    )


def test_info() -> None:
    assert (vpt.SHALLOW_INFO.name, vpt.SHALLOW_INFO.kind) == ("vpt_shallow", "prompt")
    assert (vpt.DEEP_INFO.name, vpt.DEEP_INFO.kind) == ("vpt_deep", "prompt")
    assert vpt.SHALLOW_INFO.apply is vpt.apply_shallow
    assert vpt.DEEP_INFO.apply is vpt.apply_deep
