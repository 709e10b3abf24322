"""Gradient checkpointing, the bundles' ``grad_checkpointing`` knob: the same training step, with recomputed blocks.

Each case trains one step of a tiny real network through MONAI's ``SupervisedTrainer`` twice, with the knob off and
on, with the bundles' optimizer and (SH-PEFT, GPS, SPT-LoRA) their importance and gradient-mask handlers; the
loss, the gradients, the chosen set and the updated weights must agree, and every trained block must have run its
forward twice per forward pass with the knob on (forward pre-hooks count the calls: the recomputation in backward
calls the block again; forward hooks would not tell, since recomputation stops once the saved tensors are back).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import timm.layers
import torch
import torch.nn as nn
from monai.data import DataLoader
from monai.engines import SupervisedTrainer
from monai.inferers import SimpleInferer

from monai_shpeft.amp import AutocastInferer, resolve_amp
from monai_shpeft.backbones import build_classifier
from monai_shpeft.clinical.saliency import saliency_maps
from monai_shpeft.errors import SettingsError
from monai_shpeft.handlers import GradientMaskHandler, ImportanceEstimationHandler, SPTLoRAHandler
from monai_shpeft.methods import build_network, build_optimizer
from monai_shpeft.methods.base import transformer_blocks
from monai_shpeft.networks import FPTNetwork
from monai_shpeft.sparse_set import SparseTrainableSet
from tests.method_helpers import BACKBONES, IMAGE_SIZE, NUM_CLASSES, TINY_OPEN_CLIP, TINY_TIMM

#: every method on both towers; ``linear`` trains no block, so nothing is recomputed there
TRAINED = ("full", "linear", "lora", "ssf", "vpt_deep", "shpeft", "gps", "spt_lora", "fpt")
#: the other methods, checked on a plain forward and backward
OTHERS = ("bitfit", "ln", "attn", "adapter", "vpt_shallow")
BUDGET = 0.05


@dataclass
class Step:
    """What one training step left behind."""

    loss: float
    grads: dict[str, torch.Tensor]
    state: dict[str, torch.Tensor]
    calls: list[int]
    trainable_set: SparseTrainableSet | None
    network: nn.Module


def build(method: str, backbone: str, checkpointing: bool | str) -> nn.Module:
    """A tiny seeded network of ``method``; FPT reads images at twice the side network's size."""
    torch.manual_seed(0)
    size = IMAGE_SIZE[backbone]
    return build_network(
        method,
        backbone,
        NUM_CLASSES,
        image_size=size,
        tiny=True,
        fpt_image_size=2 * size,
        fpt_side_image_size=size,
        fpt_prompts=4,
        grad_checkpointing=checkpointing,
    )


def count_block_calls(network: nn.Module) -> list[int]:
    """Calls of each trained transformer block (the side network's for FPT), counted as they happen."""
    blocks = network.side.blocks if isinstance(network, FPTNetwork) else transformer_blocks(network.backbone)
    calls = [0] * len(blocks)

    def counter(index: int) -> Callable[..., None]:
        return lambda module, args: calls.__setitem__(index, calls[index] + 1)

    for index, block in enumerate(blocks):
        block.register_forward_pre_hook(counter(index))
    return calls


def loader(method: str, backbone: str) -> DataLoader:
    """One batch of four images with labels that depend on them."""
    size = IMAGE_SIZE[backbone] * (2 if method == "fpt" else 1)
    generator = torch.Generator().manual_seed(1)
    items = [
        {"image": torch.randn(3, size, size, generator=generator) * 0.5 + i % NUM_CLASSES, "label": i % NUM_CLASSES}
        for i in range(4)
    ]
    return DataLoader(items, batch_size=4, shuffle=False, num_workers=0)


def handlers_of(method: str, compact: bool | None = None) -> list[Any]:
    """The bundles' handlers that choose a method's trainable set from data and mask the gradients.

    ``compact=False`` masks dense gradients, which then stay on the network for the test to compare.
    """
    mask = GradientMaskHandler(compact=compact)
    if method in ("shpeft", "gps"):
        estimation = ImportanceEstimationHandler(budget=BUDGET, num_iterations=1, method=method, progress=False)
        return [estimation, mask]
    if method == "spt_lora":
        return [SPTLoRAHandler(budget=BUDGET, rank=2, alpha=4, num_iterations=1, progress=False), mask]
    return []


def train_step(
    method: str, backbone: str, checkpointing: bool, autocast: bool = False, compact: bool | None = None
) -> Step:
    """One ``SupervisedTrainer`` iteration with the bundles' optimizer (AdamW, weight decay) and handlers."""
    network = build(method, backbone, checkpointing)
    calls = count_block_calls(network)
    handlers = handlers_of(method, compact)
    optimizer = build_optimizer(network, method, learning_rate=1e-2, weight_decay=0.01, fpt_learning_rate=1e-2)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=loader(method, backbone),
        network=network,
        optimizer=optimizer,
        loss_function=nn.CrossEntropyLoss(),
        inferer=AutocastInferer(resolve_amp("bf16", "cpu")) if autocast else SimpleInferer(),
        train_handlers=handlers,
        decollate=False,
    )
    trainer.run()
    grads = {n: p.grad.detach().clone() for n, p in network.named_parameters() if p.grad is not None}
    state = {k: v.detach().clone() for k, v in network.state_dict().items()}
    trainable_set = getattr(trainer.state, "sparse_trainable_set", None)
    return Step(float(trainer.state.output["loss"].detach()), grads, state, calls, trainable_set, network)


def assert_same(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=1e-5, atol=1e-8, msg=name)


@pytest.mark.parametrize("method", TRAINED)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_a_checkpointed_step_equals_the_plain_one_and_recomputes_every_block(method: str, backbone: str) -> None:
    plain = train_step(method, backbone, checkpointing=False)
    checkpointed = train_step(method, backbone, checkpointing=True)

    assert checkpointed.loss == pytest.approx(plain.loss, rel=1e-6)
    assert plain.grads, "nothing was trained"
    assert_same(plain.grads, checkpointed.grads)  # the sparse methods' compact update leaves the head's only
    assert_same(plain.state, checkpointed.state)  # updated weights; the same keys: checkpoints do not change
    if method in ("shpeft", "gps", "spt_lora"):
        assert plain.trainable_set is not None and checkpointed.trainable_set is not None
        assert plain.trainable_set.num_selected == checkpointed.trainable_set.num_selected
        for name in plain.trainable_set.trainable_names():
            assert torch.equal(plain.trainable_set.mask(name), checkpointed.trainable_set.mask(name)), name
    # each forward (the importance pass included) runs a trained block once more in backward
    assert all(count > 0 for count in plain.calls)
    factor = 1 if method == "linear" else 2
    assert checkpointed.calls == [factor * count for count in plain.calls]


@pytest.mark.parametrize(("method", "backbone"), [("shpeft", TINY_TIMM), ("lora", TINY_OPEN_CLIP), ("fpt", TINY_TIMM)])
def test_recomputation_runs_under_the_bfloat16_autocast_of_the_forward(method: str, backbone: str) -> None:
    plain = train_step(method, backbone, checkpointing=False, autocast=True, compact=False)
    checkpointed = train_step(method, backbone, checkpointing=True, autocast=True, compact=False)
    assert checkpointed.loss == pytest.approx(plain.loss, rel=1e-6)
    assert_same(plain.grads, checkpointed.grads)
    assert_same(plain.state, checkpointed.state)
    assert checkpointed.calls == [2 * count for count in plain.calls]
    # the autocast is in effect: a recomputation in float32 could not have matched these bfloat16 gradients
    float32 = train_step(method, backbone, checkpointing=False, compact=False)
    assert any(not torch.allclose(plain.grads[n], float32.grads[n], rtol=1e-3, atol=0) for n in plain.grads)


@pytest.mark.parametrize("method", OTHERS)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_other_method_recomputes_its_blocks_to_the_same_gradients(method: str, backbone: str) -> None:
    images = next(iter(loader(method, backbone)))
    results = []
    for checkpointing in (False, True):
        network = build(method, backbone, checkpointing).train()
        calls = count_block_calls(network)
        nn.functional.cross_entropy(network(images["image"]), images["label"]).backward()
        results.append(({n: p.grad for n, p in network.named_parameters() if p.grad is not None}, calls))
    (plain, plain_calls), (checkpointed, checkpointed_calls) = results
    assert_same(plain, checkpointed)
    assert plain_calls == [1] * len(plain_calls) and checkpointed_calls == [2] * len(plain_calls)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_a_checkpoint_trained_with_the_knob_loads_into_the_network_built_without_it(backbone: str) -> None:
    trained = train_step("vpt_deep", backbone, checkpointing=True).network
    assert trained.grad_checkpointing
    rebuilt = build("vpt_deep", backbone, checkpointing=False)
    assert not rebuilt.grad_checkpointing
    rebuilt.load_state_dict(trained.state_dict(), strict=True)
    image = next(iter(loader("vpt_deep", backbone)))["image"]
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(image), trained.eval()(image))


@pytest.mark.parametrize("saliency", ["gradcam", "rollout"])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_saliency_maps_are_the_same_with_the_knob(saliency: str, backbone: str) -> None:
    image = next(iter(loader("lora", backbone)))["image"]
    plain = saliency_maps(saliency, build("lora", backbone, False).eval(), image)
    checkpointed = saliency_maps(saliency, build("lora", backbone, True).eval(), image)
    torch.testing.assert_close(checkpointed, plain)


def test_the_knob_reads_command_line_spellings_and_refuses_others() -> None:
    assert build("full", TINY_TIMM, "true").grad_checkpointing
    assert not build("full", TINY_TIMM, "False").grad_checkpointing
    assert build("fpt", TINY_OPEN_CLIP, "yes").grad_checkpointing
    with pytest.raises(SettingsError, match="grad_checkpointing"):
        build("full", TINY_TIMM, "sometimes")


def test_timm_set_to_reentrant_checkpointing_is_refused() -> None:
    # reentrant checkpointing gives no gradient to prompts or LoRA factors behind a frozen patch embedding
    timm.layers.set_reentrant_ckpt(True)
    try:
        with pytest.raises(SettingsError, match="TIMM_REENTRANT_CKPT"):
            build("vpt_deep", TINY_TIMM, True)
        assert not build("vpt_deep", TINY_TIMM, False).grad_checkpointing
    finally:
        timm.layers.set_reentrant_ckpt(False)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_a_network_built_with_the_knob_still_scripts_as_ckpt_export_needs(backbone: str) -> None:
    network = build("full", backbone, True).eval()
    image = next(iter(loader("full", backbone)))["image"]
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(network)(image), network(image))


def test_stochastic_depth_draws_the_same_masks_when_a_block_is_recomputed() -> None:
    """Non-reentrant checkpointing restores the random-number state before recomputing (a backbone option here)."""
    images = next(iter(loader("full", TINY_TIMM)))
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        network = build_classifier(
            TINY_TIMM, NUM_CLASSES, image_size=IMAGE_SIZE[TINY_TIMM], tiny=True, drop_path_rate=0.5
        )
        network.set_grad_checkpointing(checkpointing)
        torch.manual_seed(3)  # the same drop-path draws in the forward of both
        nn.functional.cross_entropy(network.train()(images["image"]), images["label"]).backward()
        grads.append({n: p.grad for n, p in network.named_parameters() if p.grad is not None})
    assert_same(grads[0], grads[1])
