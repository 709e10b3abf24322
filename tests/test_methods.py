"""Tests of the method registry and the shared interface (monai_shpeft.methods, monai_shpeft.methods.base)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from monai_shpeft.backbones import build_classifier
from monai_shpeft.methods import (
    DEFAULT_HEAD_LEARNING_RATES,
    DEFAULT_LEARNING_RATES,
    METHODS,
    OPTIMIZERS,
    check_method,
    check_optimizer,
    count_trainable,
    method_info,
    prepare_network,
    resolve_learning_rates,
)
from monai_shpeft.methods.base import freeze_all_but, head_of
from monai_shpeft.sparse_set import SparseTrainableSet

TINY_TIMM = "timm:vit_small_patch14_dinov2"


def _model() -> nn.Module:
    torch.manual_seed(0)
    return build_classifier(TINY_TIMM, 3, image_size=28, tiny=True)


def test_every_method_of_both_papers_tables_is_registered_with_a_description() -> None:
    expected = {"full", "linear", "bitfit", "ln", "attn", "lora", "adapter", "ssf", "vpt_shallow", "vpt_deep"}
    assert expected | {"linear_probe", "spt_lora", "gps", "shpeft", "fpt"} == set(METHODS)
    kinds = {"reference", "selective", "additive", "prompt", "selective+additive", "side network"}
    for name in METHODS:
        info = method_info(name)
        assert info.name == name
        assert info.kind in kinds and info.summary and info.reference


@pytest.mark.parametrize("method", [m for m in METHODS if m not in ("fpt", "spt_lora", "gps", "shpeft")])
def test_prepare_network_leaves_the_head_and_only_the_method_trainable(method: str) -> None:
    model = prepare_network(_model(), method)
    count = count_trainable(model)
    head = sum(p.numel() for p in model.head.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    if method in ("linear", "linear_probe"):  # the probe's head is fitted in closed form, then kept
        assert count.trainable == head
    elif method == "full":
        assert count.trainable == count.total
    else:
        assert head < count.trainable < count.total
    with torch.no_grad():
        assert model(torch.randn(2, 3, 28, 28)).shape == (2, 3)


def test_shpeft_gps_and_spt_lora_choose_their_weights_when_training_starts() -> None:
    model = _model()
    assert prepare_network(model, "shpeft") is model
    assert prepare_network(model, "gps") is model  # the importance-estimation handler selects per neuron
    assert prepare_network(model, "spt_lora") is model  # structure comes from data, in SPTLoRAHandler
    assert count_trainable(model).trainable == count_trainable(model).total


def test_fpt_and_unknown_names_are_refused_with_the_supported_list() -> None:
    with pytest.raises(ValueError, match="build_fpt"):
        prepare_network(_model(), "fpt")
    with pytest.raises(ValueError, match="supported methods: linear_probe, full, linear"):
        check_method("prefix_tuning")
    assert check_optimizer("adamw") == "adamw" and "sgd" in OPTIMIZERS
    with pytest.raises(ValueError, match="supported: sgd, adamw"):
        check_optimizer("adam")


def test_count_trainable_counts_selected_entries_of_masked_tensors() -> None:
    model = _model()
    names = [n for n, _ in model.named_parameters() if n.startswith("backbone.")]
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters() if n in names}
    chosen = names[3]
    indices = {chosen: torch.tensor([0, 2, 5])}
    trainable_set = SparseTrainableSet(indices=indices, shapes=shapes, scope="backbone")
    count = count_trainable(model, trainable_set)  # every parameter requires grad; the set restricts the backbone
    head = sum(p.numel() for p in model.head.parameters())
    assert count.trainable == 3 + head
    assert count.total == sum(p.numel() for p in model.parameters())
    assert count.ratio == pytest.approx((3 + head) / count.total)
    assert count.as_dict() == {"trainable": 3 + head, "total": count.total, "ratio": count.ratio}


def test_count_trainable_unwraps_data_parallel() -> None:
    model = prepare_network(_model(), "linear")
    assert count_trainable(nn.DataParallel(model)).trainable == count_trainable(model).trainable


def test_freeze_all_but_always_keeps_the_head() -> None:
    model = freeze_all_but(_model(), lambda name, _: name.endswith("norm.weight"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"backbone.norm.weight", "head.linear.weight", "head.linear.bias"}


def test_a_model_without_a_head_is_refused_with_a_pointer_to_the_factory() -> None:
    with pytest.raises(ValueError, match="build_classifier"):
        head_of(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="build_classifier"):
        prepare_network(nn.Sequential(nn.Linear(2, 2)), "bitfit")


def test_learning_rates_resolve_per_method_and_one_knob_sets_both() -> None:
    # the sparse methods keep the warmed head slower than their few backbone entries
    backbone, head = resolve_learning_rates("shpeft")
    assert (backbone, head) == (DEFAULT_LEARNING_RATES["shpeft"], DEFAULT_HEAD_LEARNING_RATES["shpeft"])
    assert head < backbone
    assert resolve_learning_rates("full") == (DEFAULT_LEARNING_RATES["full"],) * 2
    # a user's learning_rate sets the head too (the papers' one-rate recipes); the head knob still wins
    assert resolve_learning_rates("shpeft", "1e-3") == (1e-3, 1e-3)
    assert resolve_learning_rates("shpeft", 1e-3, 0.1) == (1e-3, 0.1)
    assert resolve_learning_rates("lora", None, 2e-4) == (DEFAULT_LEARNING_RATES["lora"], 2e-4)
    for bad in (0, -1e-3, "fast", True):
        with pytest.raises(ValueError, match="learning_rate must be a positive number"):
            resolve_learning_rates("shpeft", bad)
    with pytest.raises(ValueError, match="Unknown method"):
        resolve_learning_rates("sgd_everything")
