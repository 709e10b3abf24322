"""Tests of monai_shpeft.methods.vpt (visual prompt tuning, shallow and deep) on tiny real timm and open_clip ViTs."""

from __future__ import annotations

import copy
import io
import math
from collections.abc import Callable

import pytest
import torch
import torch.nn as nn

from monai_shpeft.backbones import TINY_DEPTH, TINY_WIDTH, build_classifier
from monai_shpeft.methods import vpt
from monai_shpeft.methods.base import count_trainable

# Not tests.helpers: it imports MONAI, which would double these tests' run time.
TINY_TIMM = "timm:vit_small_patch14_dinov2"
TINY_OPEN_CLIP = "open_clip:ViT-B-16"
REG_TIMM = "timm:vit_small_patch14_reg4_dinov2"
# A 2x2 patch grid: patch 14 for DINOv2, 16 for CLIP ViT-B-16; one class token in both.
IMAGE_SIZE = {TINY_TIMM: 28, TINY_OPEN_CLIP: 32}
PATCH_SIZE = {TINY_TIMM: 14, TINY_OPEN_CLIP: 16}
BACKBONES = list(IMAGE_SIZE)
NUM_CLASSES = 3
NUM_PROMPTS = 5
APPLY: dict[str, Callable[..., nn.Module]] = {"shallow": vpt.apply_shallow, "deep": vpt.apply_deep}
CASES = [(backbone, kind) for backbone in BACKBONES for kind in APPLY]


def _model(backbone: str) -> nn.Module:
    torch.manual_seed(0)
    # DINOv2's LayerScale starts at 1e-5, which makes a random model's blocks almost the identity: use 1.
    options = {"init_values": 1.0} if backbone == TINY_TIMM else {}
    return build_classifier(backbone, NUM_CLASSES, image_size=IMAGE_SIZE[backbone], tiny=True, **options)


def _images(backbone: str, batch: int = 4, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, IMAGE_SIZE[backbone], IMAGE_SIZE[backbone], generator=generator)


def _blocks(model: nn.Module) -> nn.Module:
    backbone = model.backbone
    return backbone.blocks if hasattr(backbone, "blocks") else backbone.transformer.resblocks


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


@pytest.mark.parametrize(("backbone", "kind"), CASES)
def test_trainable_count_and_init(backbone: str, kind: str) -> None:
    model = APPLY[kind](_model(backbone), num_prompts=NUM_PROMPTS)
    sets = TINY_DEPTH if kind == "deep" else 1
    head = TINY_WIDTH * NUM_CLASSES + NUM_CLASSES
    assert count_trainable(model).trainable == sets * NUM_PROMPTS * TINY_WIDTH + head
    prompts = [m.prompts for m in model.modules() if isinstance(m, vpt.PromptedBlock) and m.prompts is not None]
    assert len(prompts) == sets
    bound = math.sqrt(6.0 / (3 * PATCH_SIZE[backbone] ** 2 + TINY_WIDTH))
    for tensor in prompts:
        assert tensor.shape == (NUM_PROMPTS, TINY_WIDTH)
        assert tensor.abs().max() <= bound and tensor.abs().max() > bound / 2


@pytest.mark.parametrize(("backbone", "kind"), CASES)
def test_prompts_follow_the_prefix_tokens_and_are_removed_after_the_last_block(backbone: str, kind: str) -> None:
    original = _model(backbone).eval()
    model = APPLY[kind](copy.deepcopy(original), num_prompts=NUM_PROMPTS)
    _check_prompt_layout(original, model, _images(backbone), num_prefix=1, num_patches=4)


@pytest.mark.parametrize("kind", list(APPLY))
def test_register_tokens_stay_before_the_prompts(kind: str) -> None:
    torch.manual_seed(0)
    original = build_classifier(REG_TIMM, NUM_CLASSES, image_size=28, tiny=True, init_values=1.0).eval()
    assert original.backbone.num_prefix_tokens == 5  # class token and 4 registers
    model = APPLY[kind](copy.deepcopy(original), num_prompts=NUM_PROMPTS)
    _check_prompt_layout(original, model, _images(TINY_TIMM), num_prefix=5, num_patches=4)


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
    model = APPLY[kind](_model(backbone), num_prompts=NUM_PROMPTS).eval()
    images = _images(backbone)
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
    model = _model(backbone)
    frozen = {id(p): (name, p.detach().clone()) for name, p in model.backbone.named_parameters()}
    APPLY[kind](model, num_prompts=NUM_PROMPTS)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    _train(model, backbone)
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert changed == trainable
    assert {n.rsplit(".", 1)[-1] for n in trainable if not n.startswith("head.")} == {"prompts"}
    assert any(n.startswith("head.") for n in trainable)

    # Every pretrained tensor is still in the model and bit-identical, wherever the wrapper moved its name.
    assert set(frozen) <= {id(p) for p in model.parameters()}
    for param in model.parameters():
        if id(param) in frozen:
            name, value = frozen[id(param)]
            assert torch.equal(param, value), name


@pytest.mark.parametrize("kind", list(APPLY))
def test_sequence_first_open_clip_blocks(kind: str) -> None:
    # open_clip can run its blocks on [N, B, D] tokens (Transformer.batch_first=False): same result as batch first.
    batch_first = _model(TINY_OPEN_CLIP).eval()
    sequence_first = copy.deepcopy(batch_first)
    sequence_first.backbone.transformer.batch_first = False
    for block in sequence_first.backbone.transformer.resblocks:
        block.attn.batch_first = False
    for model in (batch_first, sequence_first):
        torch.manual_seed(3)
        APPLY[kind](model, num_prompts=NUM_PROMPTS)
    assert not _blocks(sequence_first)[0].batch_first
    images = _images(TINY_OPEN_CLIP)
    with torch.no_grad():
        torch.testing.assert_close(sequence_first(images), batch_first(images), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("backbone", "kind"), CASES)
def test_deepcopy_and_save_round_trip(backbone: str, kind: str) -> None:
    model = APPLY[kind](_model(backbone), num_prompts=NUM_PROMPTS)
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
        for other in (copy.deepcopy(model), loaded):
            torch.testing.assert_close(other.eval()(images), expected, rtol=0, atol=0)
            assert count_trainable(other).trainable == count_trainable(model).trainable


def test_single_block_inserts_and_removes() -> None:
    torch.manual_seed(0)
    model = build_classifier(TINY_TIMM, NUM_CLASSES, image_size=28, tiny=True, depth=1, init_values=1.0)
    vpt.apply_shallow(model, num_prompts=NUM_PROMPTS)
    (block,) = model.backbone.blocks
    assert block.insert and block.remove
    assert model(_images(TINY_TIMM)).shape == (4, NUM_CLASSES)


def test_rejects_bad_options_and_double_application() -> None:
    with pytest.raises(ValueError, match="num_prompts"):
        vpt.apply_shallow(_model(TINY_TIMM), num_prompts=0)
    with pytest.raises(ValueError, match="backbone classifier"):
        vpt.apply_deep(nn.Linear(2, 2))
    model = vpt.apply_deep(_model(TINY_OPEN_CLIP))
    with pytest.raises(ValueError, match="already has prompts"):
        vpt.apply_shallow(model)


def test_info() -> None:
    assert (vpt.SHALLOW_INFO.name, vpt.SHALLOW_INFO.kind) == ("vpt_shallow", "prompt")
    assert (vpt.DEEP_INFO.name, vpt.DEEP_INFO.kind) == ("vpt_deep", "prompt")
    assert vpt.SHALLOW_INFO.apply is vpt.apply_shallow
    assert vpt.DEEP_INFO.apply is vpt.apply_deep
