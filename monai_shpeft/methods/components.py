"""The method switch of a bundle as two components: the network and the optimizer a ``method`` needs.

A bundle's config names them with ``_target_`` and passes its knobs, so the JSON lists what is built and the choice
between the classifier methods and FPT lives here, tested, rather than in config expressions::

    "network_def": {"_target_": "monai_shpeft.methods.build_network", "method": "@method", ...},
    "optimizer": {"_target_": "monai_shpeft.methods.build_optimizer", "network": "@network", ...}
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from monai_shpeft.backbones import build_classifier, parameter_groups
from monai_shpeft.methods import check_method, check_optimizer, prepare_network, resolve_learning_rates
from monai_shpeft.networks import FPTNetwork, build_fpt
from monai_shpeft.utils import as_flag

__all__ = ["build_network", "build_optimizer"]

logger = logging.getLogger(__name__)


def build_network(
    method: str,
    backbone: str,
    num_classes: int,
    pretrained: str | os.PathLike | None = None,
    image_size: int = 224,
    tiny: bool | str = False,
    logit_scale: float = 1.0,
    method_options: Mapping[str, Any] | None = None,
    structure_file: str | os.PathLike | None = None,
    fpt_image_size: int = 512,
    fpt_side_image_size: int = 224,
    fpt_reduction: int = 8,
    fpt_prompts: int = 16,
    fpt_token_ratio: float = 0.2,
    grad_checkpointing: bool | str = False,
) -> nn.Module:
    """The network of ``method``: an FPT network, or the backbone classifier adapted for a classifier method.

    Args:
        method: a name of :data:`~monai_shpeft.methods.METHODS`.
        backbone: ``"open_clip:<model>"`` or ``"timm:<model>"``.
        num_classes: output logits.
        pretrained: a library tag, a local weights file, or ``None`` for random weights.
        image_size: the classifier's input size (classifier methods).
        tiny: a tiny model of the same family, for tests (the command line's ``"true"`` is read too).
        logit_scale: the classifier head's fixed logit scale.
        method_options: the method's options (e.g. ``{"rank": 8}``).
        structure_file: ``spt_lora``'s saved structure, for evaluation and inference.
        fpt_image_size: FPT's high-resolution input size (the frozen backbone's).
        fpt_side_image_size: FPT's low-resolution input size (the side network's).
        fpt_reduction: FPT's side width reduction.
        fpt_prompts: FPT's fine-grained prompts per layer.
        fpt_token_ratio: FPT's share of important tokens.
        grad_checkpointing: recompute the trained blocks' activations in backward instead of keeping them: the
            backbone's blocks for a classifier method, the side network's layers for FPT (the command line's
            ``"true"`` is read too). The state dict is the same either way, so evaluation and inference build
            without it.

    Returns:
        the network, with only what the method trains left trainable.

    Raises:
        SettingsError: for an unknown method, or a ``grad_checkpointing`` that is not a flag.
    """
    tiny = as_flag(tiny, "tiny_backbone")
    checkpointing = as_flag(grad_checkpointing, "grad_checkpointing")
    network: nn.Module
    if check_method(method) == "fpt":
        network = build_fpt(
            backbone,
            num_classes,
            pretrained=pretrained,
            image_size=fpt_image_size,
            side_image_size=fpt_side_image_size,
            reduction=fpt_reduction,
            num_prompts=fpt_prompts,
            token_ratio=fpt_token_ratio,
            tiny=tiny,
        )
    else:
        classifier = build_classifier(
            backbone, num_classes, pretrained=pretrained, image_size=image_size, tiny=tiny, logit_scale=logit_scale
        )
        if checkpointing:
            # the flag is on the tower, whose forward calls the blocks: modules a method inserts later (SPT-LoRA's,
            # when training starts) are inside the checkpointed blocks too
            classifier.set_grad_checkpointing(True)
        network = prepare_network(classifier, method, method_options, structure_file)
    if checkpointing:
        if isinstance(network, FPTNetwork):
            network.set_grad_checkpointing(True)
        logger.info(
            "Gradient checkpointing on: %s recompute their activations in backward.",
            "the side network's layers" if isinstance(network, FPTNetwork) else "the backbone's blocks",
        )
    return network


def build_optimizer(
    network: nn.Module,
    method: str,
    name: str = "adamw",
    learning_rate: float | str | None = None,
    head_learning_rate: float | str | None = None,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    fpt_learning_rate: float = 3e-3,
    fpt_weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    """The optimizer of ``method``.

    FPT trains its side network, prompts and head with AdamW (the paper's optimizer) at ``fpt_learning_rate``. A
    classifier method trains the backbone's trainable weights at the method's rate and the head at its own
    (:func:`~monai_shpeft.methods.resolve_learning_rates`), with AdamW or SGD (momentum ``momentum``).

    Args:
        network: the built network (a DDP wrapper is unwrapped for the parameter groups).
        method: a name of :data:`~monai_shpeft.methods.METHODS`.
        name: ``"adamw"`` or ``"sgd"`` (classifier methods).
        learning_rate: the backbone's rate; ``None``: the method's default.
        head_learning_rate: the head's rate; ``None``: the method's default head rate.
        momentum: SGD momentum.
        weight_decay: weight decay of the classifier methods.
        fpt_learning_rate: FPT's rate.
        fpt_weight_decay: FPT's weight decay.

    Returns:
        the optimizer.

    Raises:
        SettingsError: for an unknown method or optimizer, or a rate that is not a positive number.
    """
    if check_method(method) == "fpt":
        return torch.optim.AdamW(parameter_groups(network), lr=float(fpt_learning_rate), weight_decay=fpt_weight_decay)
    backbone_rate, head_rate = resolve_learning_rates(method, learning_rate, head_learning_rate)
    groups = parameter_groups(network, head_lr=head_rate)
    if check_optimizer(name) == "sgd":
        return torch.optim.SGD(groups, lr=backbone_rate, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.AdamW(groups, lr=backbone_rate, weight_decay=weight_decay)
