"""GPS (monai_shpeft.methods.gps) on tiny real ViTs in a real MONAI trainer: the importance-estimation handler with
``method="gps"`` picks the K largest-gradient connections of every neuron, and the gradient mask trains exactly those
and the head."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
import torch.nn as nn

from monai_shpeft.backbones import TINY_DEPTH
from monai_shpeft.handlers import GradientMaskHandler, ImportanceEstimationHandler
from monai_shpeft.methods import count_trainable, method_info, prepare_network
from monai_shpeft.methods.gps import neuron_weight_names
from tests.helpers import TINY_OPEN_CLIP, TINY_TIMM, image_label_loader, make_trainer, tiny_classifier

IMAGE_SIZE = {TINY_TIMM: 28, TINY_OPEN_CLIP: 32}
BUDGET = 0.05
# with weight decay, so that the gradient mask must also put the frozen entries back after each step
ADAMW = partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.05)


def test_neuron_weights_are_the_linear_convolution_and_attention_input_matrices() -> None:
    per_block = {
        TINY_TIMM: ("attn.qkv.weight", "attn.proj.weight", "mlp.fc1.weight", "mlp.fc2.weight"),
        TINY_OPEN_CLIP: ("attn.in_proj_weight", "attn.out_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"),
    }
    blocks = {TINY_TIMM: "backbone.blocks", TINY_OPEN_CLIP: "backbone.transformer.resblocks"}
    patch = {TINY_TIMM: "backbone.patch_embed.proj.weight", TINY_OPEN_CLIP: "backbone.conv1.weight"}
    for backbone in (TINY_TIMM, TINY_OPEN_CLIP):
        names = neuron_weight_names(tiny_classifier(backbone, image_size=IMAGE_SIZE[backbone]))
        expected = [patch[backbone]] + [
            f"{blocks[backbone]}.{i}.{role}" for i in range(TINY_DEPTH) for role in per_block[backbone]
        ]
        assert sorted(names) == sorted(expected)  # no token, position embedding, bias, norm or head
    with pytest.raises(ValueError, match="no submodule 'backbone'"):
        neuron_weight_names(nn.Linear(2, 2))


def test_gps_is_registered_as_a_selective_method_chosen_when_training_starts() -> None:
    info = method_info("gps")
    assert info.kind == "selective" and "GPS" in info.reference and info.apply is None
    model = tiny_classifier()
    assert prepare_network(model, "gps") is model  # the handlers choose and mask its entries
    assert count_trainable(model).trainable == count_trainable(model).total


def _accumulated_gradient(network: nn.Module, loader: object) -> dict[str, torch.Tensor]:
    """``|sum_b dE_b/dw|`` over one pass, by plain backward passes: what GPS ranks the connections by."""
    network = copy.deepcopy(network).train()
    network.zero_grad(set_to_none=True)
    for batch in loader:  # type: ignore[attr-defined]
        nn.functional.cross_entropy(network(batch["image"]), batch["label"]).backward()
    return {n: p.grad.detach().abs() for n, p in network.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("backbone", [TINY_TIMM, TINY_OPEN_CLIP])
def test_gps_selects_the_top_k_gradients_of_every_neuron_and_trains_only_them(backbone: str) -> None:
    network = tiny_classifier(backbone, image_size=IMAGE_SIZE[backbone])
    loader = image_label_loader(image_size=IMAGE_SIZE[backbone])
    start = {n: p.detach().clone() for n, p in network.named_parameters()}
    gradient = _accumulated_gradient(network, loader)
    estimation = ImportanceEstimationHandler(budget=BUDGET, method="gps", progress=False)  # as the bundles run it
    trainer = make_trainer(network, loader, ADAMW, [estimation, GradientMaskHandler()], max_epochs=1)
    trainer.run()
    selected = estimation.trainable_set
    assert selected is not None and (selected.header["selection"], selected.header["mode"]) == (
        "per_neuron",
        "task_specific",
    )

    # every row of every weight matrix: exactly K entries, the K largest accumulated-gradient magnitudes
    matrices = neuron_weight_names(network)
    k = selected.header["k_per_row"]
    rows = sum(selected.shapes[n][0] for n in matrices)
    assert k >= 1 and selected.num_selected == k * rows
    assert abs(selected.num_selected - BUDGET * selected.num_total) <= rows / 2  # K is the rounded budget per row
    for name in matrices:
        mask = selected.mask(name).reshape(selected.shapes[name][0], -1)
        scores = gradient[name].reshape(mask.shape)
        assert (mask.sum(dim=1) == k).all(), name
        kept = scores.masked_fill(~mask, float("inf")).min(dim=1).values
        dropped = scores.masked_fill(mask, float("-inf")).max(dim=1).values
        assert (kept >= dropped * (1 - 1e-5)).all(), name  # float summation order may differ from the handler's
    # biases, norms, LayerScale, tokens and position embeddings are never selected
    assert set(selected.trainable_names()) == set(matrices)

    # after four AdamW steps exactly the selected entries moved in the backbone, and the head trained
    assert trainer.state.iteration == 4
    for name, param in network.named_parameters():
        moved = param.detach() != start[name]
        if name in selected.shapes:
            assert torch.equal(moved, selected.mask(name)), name
        else:
            assert name.startswith("head.") and moved.all(), name


def test_the_benchmark_runs_gps_once_at_one_percent_with_shpeft_learning_rate() -> None:
    from monai_shpeft.benchmark import PROTOCOLS, expand_runs

    runs = expand_runs(["gps", "spt_lora"], seeds=[0])
    assert [(r.method, r.budget, r.label, r.key) for r in runs] == [
        ("spt_lora", 0.01, "spt_lora", "spt_lora_seed0"),
        ("gps", 0.01, "gps", "gps_seed0"),
    ]
    for protocol in PROTOCOLS.values():
        assert protocol.learning_rates["gps"] == protocol.learning_rates["shpeft"]
