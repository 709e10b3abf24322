"""Methods that HF peft provides for our backbones: LoRA and norm-layer (LN) tuning.

peft injects its layers into the model in place (:func:`peft.inject_adapter_in_model`) and freezes everything
else, the new classification head included; the head is unfrozen again here.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch.nn as nn

from monai_shpeft.methods.base import MethodInfo, backbone_of, head_of

__all__ = ["apply_lora", "apply_ln", "lora_target_modules", "LORA", "LN"]


def lora_target_modules(backbone: nn.Module, prefix: str = "backbone") -> list[str]:
    """Full names of the attention projections that LoRA adapts.

    timm blocks: the fused ``attn.qkv`` linear layer. open_clip blocks: the ``nn.MultiheadAttention`` itself (peft
    adapts its fused input projection).

    Args:
        backbone: the backbone.
        prefix: the backbone's name inside the classifier.

    Returns:
        module names such as ``"backbone.blocks.0.attn.qkv"``.
    """
    names = []
    for name, module in backbone.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            names.append(name)
        elif isinstance(module, nn.Linear) and name.endswith("attn.qkv"):
            names.append(name)
    return [f"{prefix}.{n}" for n in names]


def _unfreeze_head(model: nn.Module) -> nn.Module:
    for param in head_of(model).parameters():
        param.requires_grad_(True)
    return model


def apply_lora(
    model: nn.Module, rank: int = 8, alpha: float = 8.0, dropout: float = 0.0, targets: Sequence[str] | None = None
) -> nn.Module:
    """LoRA (Hu et al., ICLR 2022) with HF peft on the attention projections.

    Args:
        model: a backbone classifier.
        rank: rank ``r`` of the update.
        alpha: scaling numerator (the update is scaled by ``alpha / rank``).
        dropout: dropout on the LoRA branch.
        targets: module names to adapt; default :func:`lora_target_modules`.

    Returns:
        ``model``, with ``lora_A``/``lora_B`` parameters and the head trainable.

    Raises:
        ValueError: when there is nothing to adapt.
    """
    from peft import LoraConfig, inject_adapter_in_model

    backbone = backbone_of(model)
    targets = list(targets) if targets is not None else lora_target_modules(backbone)
    if not targets:
        raise ValueError(f"lora: no attention projection found in {type(backbone).__name__}.")
    config = LoraConfig(
        r=int(rank),
        lora_alpha=float(alpha),  # type: ignore[arg-type]  # peft annotates lora_alpha as int; it only divides by r
        lora_dropout=float(dropout),
        target_modules=targets,
    )
    inject_adapter_in_model(config, model)
    return _unfreeze_head(model)


def norm_modules(model: nn.Module, prefix: str = "backbone") -> list[str]:
    """Full names of the backbone's LayerNorm modules."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.LayerNorm) and n.startswith(prefix + ".")]


def apply_ln(model: nn.Module) -> nn.Module:
    """Norm-layer tuning (Basu et al., 2023) with HF peft's LN tuning: every LayerNorm's scale and shift train.

    peft keeps the pretrained LayerNorm and trains a copy of it, so the network holds the norm parameters twice.

    Args:
        model: a backbone classifier.

    Returns:
        ``model``.

    Raises:
        ValueError: when the backbone has no LayerNorm.
    """
    from peft import LNTuningConfig, inject_adapter_in_model

    head_of(model)
    targets = norm_modules(model)
    if not targets:
        raise ValueError(f"ln: the backbone {type(model.backbone).__name__} has no LayerNorm.")
    with warnings.catch_warnings():
        # peft warns on LayerNorm subclasses (timm's, open_clip's); they are nn.LayerNorm and are tested to work
        warnings.filterwarnings("ignore", message="Unsupported layer type", category=UserWarning)
        inject_adapter_in_model(LNTuningConfig(target_modules=targets), model)
    return _unfreeze_head(model)


LORA = MethodInfo(
    "lora",
    "additive",
    "rank-8 low-rank updates of the attention projections (HF peft), plus the head",
    "Hu et al., LoRA, ICLR 2022",
    apply_lora,
)
LN = MethodInfo(
    "ln",
    "selective",
    "every LayerNorm's scale and shift (HF peft LN tuning), plus the head",
    "Basu et al., Strong baselines for parameter efficient few-shot fine-tuning, 2023",
    apply_ln,
)
