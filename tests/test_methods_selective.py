"""Tests of monai_shpeft.methods.selective (full, linear, bitfit, attn) and peft_tuners (lora, ln) on tiny real ViTs.

For each method: the trainable count equals its definition counted independently from the model's modules, and
after a few AdamW steps (weight decay on, every parameter given to the optimizer) exactly the intended parameters
changed.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from monai_shpeft.backbones import TINY_DEPTH, TINY_WIDTH
from monai_shpeft.methods import count_trainable, prepare_network
from monai_shpeft.methods.peft_tuners import lora_target_modules
from tests.method_helpers import (
    BACKBONES,
    HEAD,
    IMAGE_SIZE,
    TINY_OPEN_CLIP,
    TINY_TIMM,
    changed_parameters,
    snapshot,
    tiny_model,
    train,
)

WEIGHT_DECAY = 0.05


def _expected_names(model: nn.Module, method: str) -> set[str]:
    """The parameters each selective method trains, found from the module types, not from the method's code."""
    names = set()
    for module_name, module in model.backbone.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            full = f"backbone.{module_name}.{param_name}" if module_name else f"backbone.{param_name}"
            if method == "bitfit" and param_name.endswith("bias"):
                names.add(full)
            if method == "attn":
                is_attention = isinstance(module, nn.MultiheadAttention) or module_name.endswith(
                    ("attn.qkv", "attn.proj")
                )
                in_attention = ".attn." in f".{module_name}." and not module_name.endswith(("norm", "drop"))
                if is_attention or in_attention:
                    names.add(full)
    return names


@pytest.mark.parametrize("backbone", BACKBONES)
def test_full_trains_everything(backbone: str) -> None:
    model = prepare_network(tiny_model(backbone), "full")
    count = count_trainable(model)
    assert count.trainable == count.total == sum(p.numel() for p in model.parameters())
    before = snapshot(model)
    train(model, backbone, weight_decay=WEIGHT_DECAY)
    with_gradient = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_gradient == set(before)  # every parameter took part
    assert changed_parameters(before, model) == with_gradient


@pytest.mark.parametrize("backbone", BACKBONES)
def test_linear_trains_the_head_only(backbone: str) -> None:
    model = prepare_network(tiny_model(backbone), "linear")
    assert count_trainable(model).trainable == HEAD
    before = snapshot(model)
    train(model, backbone, weight_decay=WEIGHT_DECAY)
    assert changed_parameters(before, model) == {n for n, _ in model.head.named_parameters(prefix="head")}


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("method", ["bitfit", "attn"])
def test_selective_methods_train_their_parameters_and_the_head(backbone: str, method: str) -> None:
    model = prepare_network(tiny_model(backbone), method)
    expected = _expected_names(model, method)
    assert expected, "the rule must select something on a real ViT"
    sizes = dict((n, p.numel()) for n, p in model.named_parameters())
    assert count_trainable(model).trainable == sum(sizes[n] for n in expected) + HEAD
    before = snapshot(model)
    train(model, backbone, weight_decay=WEIGHT_DECAY)
    head = {n for n, _ in model.head.named_parameters(prefix="head")}
    assert changed_parameters(before, model) == expected | head


@pytest.mark.parametrize("backbone", BACKBONES)
def test_lora_adds_low_rank_factors_to_every_attention_layer(backbone: str) -> None:
    model = tiny_model(backbone)
    targets = lora_target_modules(model.backbone)
    assert len(targets) == TINY_DEPTH
    rank = 4
    model = prepare_network(model, "lora", {"rank": rank, "alpha": 8})
    # fused query/key/value input projection: width -> 3 x width
    expected = TINY_DEPTH * rank * (TINY_WIDTH + 3 * TINY_WIDTH) + HEAD
    if backbone == TINY_OPEN_CLIP:  # peft also adapts the MultiheadAttention's output projection
        expected += TINY_DEPTH * rank * (TINY_WIDTH + TINY_WIDTH)
    assert count_trainable(model).trainable == expected
    before = snapshot(model)
    train(model, backbone, weight_decay=WEIGHT_DECAY)
    changed = changed_parameters(before, model)
    assert any("lora_B" in n for n in changed)  # B starts at zero and must move for LoRA to do anything
    drifted = {n for n in changed if "lora_" not in n and not n.startswith("head.")}
    if backbone == TINY_TIMM:
        assert not drifted  # frozen weights bit-identical
    else:
        # peft's LoRA for nn.MultiheadAttention merges the update into the frozen weight for each forward and
        # subtracts it afterwards: the frozen weights drift by float rounding only
        params = dict(model.named_parameters())
        assert all((params[n].detach() - before[n]).abs().max() < 1e-6 for n in drifted)
        assert not any(params[n].requires_grad for n in drifted)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_ln_tunes_every_layer_norm_through_peft(backbone: str) -> None:
    model = tiny_model(backbone)
    norms = [m for m in model.backbone.modules() if isinstance(m, nn.LayerNorm)]
    expected = sum(p.numel() for m in norms for p in m.parameters()) + HEAD
    with torch.no_grad():
        reference = model(torch.ones(1, 3, IMAGE_SIZE[backbone], IMAGE_SIZE[backbone]))
    model = prepare_network(model, "ln")
    assert count_trainable(model).trainable == expected
    with torch.no_grad():  # the trained copies start equal to the pretrained norms
        assert torch.allclose(model(torch.ones(1, 3, IMAGE_SIZE[backbone], IMAGE_SIZE[backbone])), reference)
    before = snapshot(model)
    train(model, backbone, weight_decay=WEIGHT_DECAY)
    changed = changed_parameters(before, model)
    assert changed and all("ln_tuning_layers" in n or n.startswith("head.") for n in changed)


def test_bitfit_rejects_a_backbone_without_biases() -> None:
    model = tiny_model(TINY_TIMM)
    for module in model.backbone.modules():
        for name, _ in list(module.named_parameters(recurse=False)):
            if name == "bias":
                delattr(module, name)
                module.register_parameter(name, None)
    with pytest.raises(ValueError, match="no bias"):
        prepare_network(model, "bitfit")
