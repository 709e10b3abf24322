"""Selective tuning with a fixed rule: full fine-tuning, linear probing (SGD or closed form), BitFit, attention-only.

These methods insert nothing; they choose which of the pretrained parameters train. The norm-layer method
(:mod:`monai_shpeft.methods.ln`) uses HF peft's LN tuning instead.
"""

from __future__ import annotations

import torch.nn as nn

from monai_shpeft.methods.base import MethodInfo, backbone_of, freeze_all_but, head_of

__all__ = [
    "apply_full",
    "apply_linear",
    "apply_bitfit",
    "apply_attention",
    "FULL",
    "LINEAR",
    "LINEAR_PROBE",
    "BITFIT",
    "ATTENTION",
]


def apply_full(model: nn.Module) -> nn.Module:
    """Full fine-tuning: every parameter trains.

    Args:
        model: a backbone classifier.

    Returns:
        ``model``.
    """
    head_of(model)
    for param in model.parameters():
        param.requires_grad_(True)
    return model


def apply_linear(model: nn.Module) -> nn.Module:
    """Linear probing: only the classification head trains.

    Args:
        model: a backbone classifier.

    Returns:
        ``model``.
    """
    return freeze_all_but(model, [])


def apply_bitfit(model: nn.Module) -> nn.Module:
    """BitFit: every bias of the backbone trains (Zaken et al., ACL 2022).

    Args:
        model: a backbone classifier.

    Returns:
        ``model``.

    Raises:
        ValueError: when the backbone has no bias.
    """
    backbone = backbone_of(model)
    biases = [p for n, p in backbone.named_parameters() if n.endswith("bias")]
    if not biases:
        raise ValueError(f"BitFit: the backbone {type(backbone).__name__} has no bias parameters.")
    return freeze_all_but(model, biases)


def attention_modules(backbone: nn.Module) -> list[nn.Module]:
    """The self-attention modules of a timm or open_clip vision transformer.

    timm blocks hold an ``attn`` module with ``qkv``/``proj`` linear layers; open_clip blocks hold an
    ``nn.MultiheadAttention``.

    Args:
        backbone: the backbone.

    Returns:
        the attention modules, in model order.
    """
    found: list[nn.Module] = []
    for module in backbone.modules():
        if isinstance(module, nn.MultiheadAttention):
            found.append(module)
        elif isinstance(getattr(module, "qkv", None), nn.Linear):
            found.append(module)
    return found


def apply_attention(model: nn.Module) -> nn.Module:
    """Attention-only tuning (Touvron et al., ECCV 2022): the query/key/value and output projections train.

    Args:
        model: a backbone classifier.

    Returns:
        ``model``.

    Raises:
        ValueError: when no attention module is found.
    """
    backbone = backbone_of(model)
    modules = attention_modules(backbone)
    if not modules:
        raise ValueError(f"attn: no attention module found in {type(backbone).__name__}.")
    return freeze_all_but(model, [p for m in modules for p in m.parameters()])


FULL = MethodInfo("full", "reference", "every weight of the backbone and the head", "upper reference", apply_full)
LINEAR = MethodInfo("linear", "reference", "the classification head only", "lower reference", apply_linear)
LINEAR_PROBE = MethodInfo(
    "linear_probe",
    "reference",
    "the head only, fitted in closed form: logistic regression (L-BFGS) on frozen features, no gradient epoch",
    "the floor every method must beat (monai_shpeft.linear_probe)",
    apply_linear,
)
BITFIT = MethodInfo(
    "bitfit", "selective", "every bias of the backbone, plus the head", "Zaken et al., BitFit, ACL 2022", apply_bitfit
)
ATTENTION = MethodInfo(
    "attn",
    "selective",
    "the attention layers' projections (weights and biases), plus the head",
    "Touvron et al., Three things everyone should know about ViTs, ECCV 2022",
    apply_attention,
)
