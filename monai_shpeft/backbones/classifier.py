"""A backbone with the L2-normalised linear head, built from a backbone name, and its parameter groups."""

from __future__ import annotations

import logging
import os
from typing import Any, cast

import torch
import torch.nn as nn

from monai_shpeft.backbones.head import L2NormLinearHead
from monai_shpeft.backbones.names import OPEN_CLIP_PREFIX, _parse_backbone, check_image_size, patch_size_of
from monai_shpeft.backbones.open_clip_models import _build_open_clip
from monai_shpeft.backbones.timm_models import _build_timm
from monai_shpeft.backbones.weights import _classify_pretrained, load_backbone_weights
from monai_shpeft.errors import SettingsError

__all__ = ["BackboneClassifier", "build_classifier", "backbone_parameter_names", "parameter_groups"]

logger = logging.getLogger(__name__)


class BackboneClassifier(nn.Module):
    """A feature backbone followed by an :class:`L2NormLinearHead`.

    Args:
        backbone: module mapping images ``[B, C, H, W]`` to pooled features ``[B, feature_dim]``.
        feature_dim: width of the pooled features.
        num_classes: number of output logits.
        backbone_name: the ``"<library>:<model>"`` string the backbone was built from.
        image_size: the input size the backbone (and its position table) is configured for.
        logit_scale: the head's fixed logit scale (see :class:`L2NormLinearHead`).
    """

    # TorchScript compiles properties unless told otherwise; ckpt_export scripts the network
    __jit_unused_properties__ = ["grad_checkpointing"]

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        num_classes: int,
        backbone_name: str,
        image_size: int,
        logit_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = L2NormLinearHead(feature_dim, num_classes, logit_scale=logit_scale)
        self.backbone_name = backbone_name
        self.feature_dim = feature_dim
        self.image_size = image_size
        self.num_classes = num_classes

    @property
    def grad_checkpointing(self) -> bool:
        """Whether the backbone's blocks recompute their activations in backward (:meth:`set_grad_checkpointing`)."""
        return bool(getattr(self._checkpointing_owner(), "grad_checkpointing", False))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Turn the library's own gradient checkpointing of the backbone's blocks on or off.

        Each block then keeps only its input for backward and runs its forward again there: less memory for about
        one more forward pass. timm checkpoints ``blocks`` in ``forward_features`` (``checkpoint_seq``), open_clip
        every block of its ``transformer``; both call the block modules, so blocks a method wrapped (VPT's prompts)
        or modified (LoRA, SSF, LN tuning) are checkpointed as they are. Both use non-reentrant checkpointing, which
        recomputes under the forward's autocast state and random-number state, and gives gradients to weights
        inside a block even when the block's input needs none (prompts, LoRA factors behind a frozen patch
        embedding). Only a flag changes: the state dict is the same with and without.

        Args:
            enable: on or off.

        Raises:
            SettingsError: when the backbone offers no gradient checkpointing, or timm is set to reentrant
                checkpointing (``TIMM_REENTRANT_CKPT``), which would leave such weights without gradient.
        """
        setter = getattr(self.backbone, "set_grad_checkpointing", None)
        if not callable(setter):
            raise SettingsError(
                f"grad_checkpointing: the backbone {self.backbone_name} offers no gradient checkpointing."
            )
        if enable and not self.backbone_name.startswith(f"{OPEN_CLIP_PREFIX}:"):  # open_clip is always non-reentrant
            from timm.layers import use_reentrant_ckpt

            if use_reentrant_ckpt():
                raise SettingsError(
                    "grad_checkpointing: timm is set to reentrant checkpointing (TIMM_REENTRANT_CKPT), which gives no "
                    "gradient to trained weights inside a block whose input needs none; unset TIMM_REENTRANT_CKPT."
                )
        setter(bool(enable))

    def _checkpointing_owner(self) -> nn.Module:
        """The module holding the library's ``grad_checkpointing`` flag (open_clip: the tower's ``transformer``)."""
        if self.backbone_name.startswith(f"{OPEN_CLIP_PREFIX}:"):
            return cast(nn.Module, self.backbone.transformer)
        return self.backbone

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features.

        Args:
            x: images ``[B, C, H, W]``.

        Returns:
            features ``[B, feature_dim]``.
        """
        features = self.backbone(x)
        if isinstance(features, (tuple, list)):  # open_clip towers return (pooled, tokens) when output_tokens is set
            features = features[0]
        return features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify a batch of images.

        Args:
            x: images ``[B, C, H, W]``.

        Returns:
            logits ``[B, num_classes]``.
        """
        return self.head(self.forward_features(x))


def build_classifier(
    backbone: str,
    num_classes: int,
    pretrained: str | os.PathLike | None = None,
    image_size: int = 224,
    tiny: bool = False,
    logit_scale: float = 1.0,
    **backbone_kwargs: Any,
) -> BackboneClassifier:
    """Build a :class:`BackboneClassifier` from a backbone string.

    Args:
        backbone: ``"open_clip:<model>"`` or ``"timm:<model>"``.
        num_classes: number of output logits.
        pretrained: ``None`` for random initialisation; a path to a local weights file (``.safetensors`` or a torch
            checkpoint), loaded strictly by :func:`load_backbone_weights`; otherwise a pretrained tag of the library
            (e.g. ``"openai"`` for open_clip, ``"lvd142m"`` for timm DINOv2) fetched by the library's hub code.
        image_size: input size; the position table is built (and loaded weights are resized) for it.
        tiny: build a tiny model of the same family (2 layers, width 64, 2 heads, same patch size) for tests.
        logit_scale: the head's fixed logit scale (the bundles' ``head_logit_scale`` knob).
        backbone_kwargs: extra keyword arguments for ``open_clip.create_model`` / ``timm.create_model``
            (e.g. ``force_quick_gelu=True`` for OpenAI CLIP weights, ``cache_dir=...``, ``drop_path_rate=0.1``).

    Returns:
        the classifier; its ``backbone`` returns pooled features and its ``head`` is an :class:`L2NormLinearHead`.

    Raises:
        ValueError: unknown library prefix, model name or pretrained tag, unsupported model, or a weights file that
            does not match the model.
        FileNotFoundError: ``pretrained`` looks like a path but no such file exists.
        PretrainedWeightsUnavailableError: a pretrained tag's weights cannot be downloaded (offline?).
    """
    library, name = _parse_backbone(backbone)
    patch = patch_size_of(backbone)
    check_image_size(image_size, None)
    if patch and image_size % patch:
        # the bundles refuse this up front (monai_shpeft.settings); here the library's own behaviour is kept
        logger.warning(
            "image_size %d is not a multiple of the patch size %d of %s: the last %d pixel rows and columns are "
            "never seen. Use %d.",
            image_size,
            patch,
            backbone,
            image_size % patch,
            (image_size // patch + 1) * patch,
        )
    weights_file, tag = _classify_pretrained(pretrained)
    if tiny and tag is not None:
        raise ValueError(f"A tiny {backbone} model cannot load the pretrained tag {tag!r}; pass a local file or None.")

    if library == OPEN_CLIP_PREFIX:
        net, feature_dim = _build_open_clip(
            name, image_size, tiny, tag, quiet=weights_file is not None, **backbone_kwargs
        )
    else:
        net, feature_dim = _build_timm(name, image_size, tiny, tag, **backbone_kwargs)

    model = BackboneClassifier(
        net, feature_dim, num_classes, backbone_name=backbone, image_size=image_size, logit_scale=logit_scale
    )
    n_params = sum(p.numel() for p in net.parameters())
    logger.info(
        "Built %s%s backbone (%.2fM parameters, feature_dim=%d, image_size=%d) with a %d-class L2-norm linear head; "
        "weights: %s.",
        backbone,
        " (tiny)" if tiny else "",
        n_params / 1e6,
        feature_dim,
        image_size,
        num_classes,
        f"tag {tag!r}" if tag else (os.fspath(weights_file) if weights_file else "random initialisation"),
    )
    if weights_file is not None:
        load_backbone_weights(model, weights_file)
    return model


def backbone_parameter_names(model: nn.Module) -> list[str]:
    """Full names of every parameter of the model's backbone, in model order.

    Args:
        model: a :class:`BackboneClassifier`, or any module holding one (names are then relative to ``model``).

    Returns:
        names such as ``"backbone.blocks.0.attn.qkv.weight"``, in ``model.named_parameters()`` order, excluding the
        head.

    Raises:
        ValueError: when ``model`` holds no backbone.
    """
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module):
        backbone = next((m.backbone for m in model.modules() if isinstance(m, BackboneClassifier)), None)
    if backbone is None:
        raise ValueError(f"{type(model).__name__} has no 'backbone' submodule.")
    backbone_ids = {id(p) for p in backbone.parameters()}
    return [name for name, param in model.named_parameters() if id(param) in backbone_ids]


def parameter_groups(model: nn.Module, head_lr: float | None = None) -> list[dict[str, Any]]:
    """Optimizer parameter groups: the backbone at the optimizer's learning rate, the head at ``head_lr``.

    The paper's head L2-normalises the features, so its logits are bounded by the norm of its weight; in short
    schedules that weight must grow faster than the backbone may move, hence a separate, larger learning rate.

    Args:
        model: a :class:`BackboneClassifier` (DDP / DataParallel wrappers are unwrapped).
        head_lr: learning rate of the head; ``None`` keeps the optimizer's for every parameter.

    Returns:
        ``[{"params": backbone, "name": "backbone"}, {"params": head, "lr": head_lr, "name": "head"}]``; for a model
        without a backbone/head pair (an FPT network), one group of its trainable parameters,
        ``[{"params": trainable, "name": "trainable"}]``.
    """
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    backbone_module = getattr(model, "backbone", None)
    if not isinstance(backbone_module, nn.Module):
        return [{"params": [p for p in model.parameters() if p.requires_grad], "name": "trainable"}]
    backbone: dict[str, Any] = {"params": list(backbone_module.parameters()), "name": "backbone"}
    head: dict[str, Any] = {"params": list(cast(nn.Module, model.head).parameters()), "name": "head"}
    if head_lr is not None:
        head["lr"] = float(head_lr)
    return [backbone, head]
