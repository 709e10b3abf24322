"""The bundles' method switch as components: build_network and build_optimizer (monai_shpeft.methods.components)."""

from __future__ import annotations

import pytest
import torch
from monai.bundle import ConfigParser

from monai_shpeft.backbones import BackboneClassifier
from monai_shpeft.errors import SettingsError
from monai_shpeft.methods import (
    DEFAULT_HEAD_LEARNING_RATES,
    DEFAULT_LEARNING_RATES,
    build_network,
    build_optimizer,
    count_trainable,
)
from monai_shpeft.networks import FPTNetwork

TINY_TIMM = "timm:vit_small_patch14_dinov2"


def _network(method: str, **options: object) -> torch.nn.Module:
    torch.manual_seed(0)
    knobs = {"fpt_image_size": 56, "fpt_side_image_size": 28, "fpt_prompts": 4}
    return build_network(method, TINY_TIMM, 3, image_size=28, tiny="true", **knobs, **options)  # type: ignore[arg-type]


def test_a_classifier_method_gets_the_adapted_classifier() -> None:
    network = _network("bitfit", logit_scale=100.0)
    assert isinstance(network, BackboneClassifier) and float(network.head.logit_scale) == 100.0
    trainable = {name for name, p in network.backbone.named_parameters() if p.requires_grad}
    assert trainable and all(name.endswith("bias") for name in trainable)
    lora = _network("lora", method_options={"rank": 2})
    assert any("lora_A" in name for name, _ in lora.named_parameters())
    assert count_trainable(lora).trainable < count_trainable(_network("full")).trainable


def test_fpt_gets_its_own_network_at_both_resolutions() -> None:
    network = _network("fpt")
    assert isinstance(network, FPTNetwork)
    image, side = torch.rand(2, 3, 56, 56), torch.rand(2, 3, 28, 28)
    assert network(image, side).shape == (2, 3)


def test_an_unknown_method_is_refused_with_the_list() -> None:
    with pytest.raises(SettingsError, match=r"lorra"):
        _network("lorra")


def test_the_optimizer_follows_the_method_and_its_rates() -> None:
    network = _network("shpeft")
    default = build_optimizer(network, "shpeft")
    assert isinstance(default, torch.optim.AdamW) and default.defaults["weight_decay"] == 0.0
    rates = {group["name"]: group["lr"] for group in default.param_groups}
    assert rates == {"backbone": DEFAULT_LEARNING_RATES["shpeft"], "head": DEFAULT_HEAD_LEARNING_RATES["shpeft"]}
    sgd = build_optimizer(network, "shpeft", name="sgd", learning_rate="1e-3", momentum=0.8, weight_decay=1e-4)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.8
    assert {group["name"]: group["lr"] for group in sgd.param_groups} == {"backbone": 1e-3, "head": 1e-3}
    fpt = _network("fpt")
    adamw = build_optimizer(fpt, "fpt", name="sgd", fpt_learning_rate=2e-4, fpt_weight_decay=0.01)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["lr"] == 2e-4  # FPT's recipe, whatever the name
    trained = {id(p) for group in adamw.param_groups for p in group["params"]}
    assert trained == {id(p) for p in fpt.parameters() if p.requires_grad}
    with pytest.raises(SettingsError, match=r"adam"):
        build_optimizer(network, "shpeft", name="adam")
    with pytest.raises(SettingsError, match=r"learning_rate"):
        build_optimizer(network, "shpeft", learning_rate=-1)


def test_a_bundle_config_builds_them_from_its_knobs() -> None:
    """The components as a bundle's JSON names them: ``_target_`` and ``@`` references only."""
    parser = ConfigParser(
        {
            "method": "linear",
            "network_def": {
                "_target_": "monai_shpeft.methods.build_network",
                "method": "@method",
                "backbone": TINY_TIMM,
                "num_classes": 2,
                "image_size": 28,
                "tiny": True,
            },
            "optimizer": {
                "_target_": "monai_shpeft.methods.build_optimizer",
                "network": "@network_def",
                "method": "@method",
                "learning_rate": 0.01,
            },
        }
    )
    network, optimizer = parser.get_parsed_content("network_def"), parser.get_parsed_content("optimizer")
    assert network.head.linear.out_features == 2
    assert not any(p.requires_grad for p in network.backbone.parameters())  # 'linear' trains the head only
    assert [group["lr"] for group in optimizer.param_groups] == [0.01, 0.01]
