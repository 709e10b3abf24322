"""Fine-grained Prompt Tuning (FPT; Huang et al., "FPT: Fine-grained Prompt Tuning for Parameter and Memory
Efficient Fine Tuning in High-resolution Medical Image Classification", MICCAI 2024).

A frozen pretrained ViT reads the high-resolution image; a light side ViT (same depth, ``1/k`` of the width) reads a
low-resolution copy. Before each side layer ``l``, the layer's fine-grained prompts gather the frozen layer ``l``'s
keys and values of its most-attended tokens through a cross-attention fusion module; the fused prompts are appended
to the side tokens for that layer and dropped after it. The class token of the side network is classified.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, cast

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from monai_shpeft.networks.frozen_features import FrozenFeatureExtractor
from monai_shpeft.networks.fusion import FineGrainedFusion
from monai_shpeft.networks.side_vit import SideViT

__all__ = ["FPTNetwork", "build_fpt"]

logger = logging.getLogger(__name__)


class FPTNetwork(nn.Module):
    """FPT classifier: frozen high-resolution branch, fusion modules, side network and a linear head.

    ``forward`` accepts three kinds of input, so that MONAI's trainers, ``verify_net_in_out``, inference and the
    preloading cache all use the same network:

    - ``forward(image, image_lr)``: the high-resolution image for the frozen model and the (augmented)
      low-resolution copy for the side network, as ``PrepareBatchExtraInput(extra_keys={"image_lr": "image_lr"})``
      passes them;
    - ``forward(image)``: the low-resolution copy is made here (bilinear, antialiased);
    - ``forward(features, image_lr)``: ``features`` are preloaded frozen features ``[B, L, 2, n, D]`` (from
      :class:`~monai_shpeft.feature_cache.FrozenFeatureCache`), and the frozen model does not run at all.

    Args:
        extractor: the frozen branch.
        num_classes: number of output logits.
        side_image_size: input size of the side network (224 in the paper).
        reduction: width reduction factor ``k`` of the side network (8 in the paper).
        num_prompts: fine-grained prompts per layer (16 in the paper).
        side_num_heads: heads of the side network; by default the frozen model's, or fewer when they do not divide
            the side width.
        patch_size: patch size of the side network; by default that of the frozen model.
        shared_projections: share the fusion's ``f_in``/``f_out`` across layers (see :class:`FineGrainedFusion`).

    With preloaded features in a storage dtype (float16 from the cache) each layer's fusion is recomputed in backward
    (``recompute_feature_casts``, on by default), so autograd keeps the float16 slice instead of the layer's float32
    copy of its keys and values (242 MB for ViT-B/16 at 512 px, batch 16); the gradients are the same bits.

    Raises:
        ValueError: when the frozen width is not divisible by ``reduction``.
    """

    def __init__(
        self,
        extractor: FrozenFeatureExtractor,
        num_classes: int,
        side_image_size: int = 224,
        reduction: int = 8,
        num_prompts: int = 16,
        side_num_heads: int | None = None,
        patch_size: int | None = None,
        shared_projections: bool = True,
    ) -> None:
        super().__init__()
        if extractor.width % reduction:
            raise ValueError(f"frozen width {extractor.width} is not divisible by the reduction factor {reduction}.")
        self.extractor = extractor
        self.backbone_name = extractor.backbone_name
        self.image_size = extractor.image_size
        self.num_classes = num_classes
        side_width = extractor.width // reduction
        heads = side_num_heads or math.gcd(side_width, extractor.num_heads)
        self.side = SideViT(
            image_size=side_image_size,
            patch_size=patch_size or _patch_size(extractor.backbone),
            width=side_width,
            depth=extractor.num_layers,
            num_heads=heads,
        )
        self.fusion = FineGrainedFusion(
            extractor.num_layers, side_width, extractor.width, extractor.num_heads, num_prompts, shared_projections
        )
        self.head = nn.Linear(side_width, num_classes)
        self.num_prompts = num_prompts
        self.grad_checkpointing = False
        # preloaded features (float16 from the cache): recompute each layer's cast in backward instead of keeping it
        self.recompute_feature_casts = True

    @property
    def side_image_size(self) -> int:
        """Input size of the side network."""
        return self.side.image_size

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Checkpoint the side network's layers: each keeps only its input tokens and runs again in backward.

        A layer here is the fusion of that layer's frozen features into its prompts plus the side block, so neither
        the fusion's nor the block's activations are kept. The frozen branch is not concerned: it runs without
        gradient anyway. Non-reentrant checkpointing recomputes under the forward's autocast and random-number
        state; only a flag changes, so the state dict is the same with and without.

        Args:
            enable: on or off.
        """
        self.grad_checkpointing = bool(enable)

    def release_frozen_backbone(self, snapshot_dir: str | os.PathLike) -> dict[str, Any]:
        """Free the frozen backbone's weights while the features come from a cache.

        The state dict is unchanged (the values are read back from a snapshot file) and the frozen branch restores
        them if it is called (:meth:`FrozenFeatureExtractor.release`).

        Args:
            snapshot_dir: folder of the weights' snapshot file.

        Returns:
            ``{"tensors": ..., "bytes": ..., "snapshot": ...}``.
        """
        return self.extractor.release(snapshot_dir)

    def frozen_features(self, image: torch.Tensor) -> torch.Tensor:
        """Run the frozen branch: ``[B, L, 2, n, D]`` key/value features of the important tokens."""
        return self.extractor(image)

    def forward(self, image: torch.Tensor, image_lr: torch.Tensor | None = None) -> torch.Tensor:
        """Classify a batch.

        Args:
            image: high-resolution images ``[B, C, H, W]`` (``H = W = image_size``), or preloaded frozen features
                ``[B, L, 2, n, D]``.
            image_lr: low-resolution images ``[B, C, h, w]`` (``h = w = side_image_size``) for the side network;
                required with preloaded features, made from ``image`` when omitted otherwise.

        Returns:
            logits ``[B, num_classes]``.

        Raises:
            ValueError: on inputs of the wrong shape, or preloaded features without ``image_lr``.
        """
        if image.ndim == 5:
            expected = self.extractor.feature_shape
            if tuple(image.shape[1:]) != expected:
                raise ValueError(
                    f"Preloaded frozen features have shape {tuple(image.shape[1:])} per image, this network expects "
                    f"{expected} (layers, key/value, tokens, width): were they made with another backbone, image "
                    "size or token ratio?"
                )
            if image_lr is None:
                raise ValueError("Preloaded frozen features need the low-resolution image 'image_lr' as well.")
            features = image  # stays in its storage dtype (float16 from the cache); cast one layer at a time below
        else:
            features = self.extractor(image)
            if image_lr is None:
                image_lr = F.interpolate(
                    image, size=(self.side_image_size,) * 2, mode="bilinear", align_corners=False, antialias=True
                )
        tokens = self.side.embed(image_lr)
        recompute = self.grad_checkpointing and torch.is_grad_enabled()
        for layer in range(len(self.side.blocks)):
            if recompute:
                tokens = checkpoint(self._side_layer, tokens, features[:, layer], layer, use_reentrant=False)
            else:
                tokens = self._side_layer(tokens, features[:, layer], layer, recompute_cast=True)
        return self.head(self.side.norm(tokens)[:, 0])

    def _side_layer(
        self, tokens: torch.Tensor, features: torch.Tensor, layer: int, recompute_cast: bool = False
    ) -> torch.Tensor:
        """Side layer ``layer``: its prompts from the frozen ``[B, 2, n, D]`` features, appended for the block only."""
        if recompute_cast and self.recompute_feature_casts and features.dtype != self.head.weight.dtype:
            if torch.is_grad_enabled():
                # the attention would keep this layer's full-precision copy of the keys and values for backward
                # (20 MB a layer for ViT-B/16 at 512 px, batch 16); recomputing the fusion keeps only the
                # stored-dtype slice, a view of the batch, and gives the same gradients
                prompts = checkpoint(self._fuse, features, layer, use_reentrant=False)
            else:
                prompts = self._fuse(features, layer)
        else:
            prompts = self._fuse(features, layer)
        block = self.side.blocks[layer]
        return block(torch.cat([tokens, prompts], dim=1))[:, : tokens.shape[1]]

    def _fuse(self, features: torch.Tensor, layer: int) -> torch.Tensor:
        """Layer ``layer``'s fused prompts; cached features are cast from their storage dtype one layer at a time."""
        return self.fusion(features.to(self.head.weight.dtype), layer)


def build_fpt(
    backbone: str,
    num_classes: int,
    pretrained: str | os.PathLike | None = None,
    image_size: int = 512,
    side_image_size: int = 224,
    reduction: int = 8,
    num_prompts: int = 16,
    token_ratio: float = 0.2,
    shared_projections: bool = True,
    tiny: bool = False,
    **backbone_kwargs: Any,
) -> FPTNetwork:
    """Build an :class:`FPTNetwork` around a backbone of the factory.

    Args:
        backbone: ``"open_clip:<model>"`` or ``"timm:<model>"``, as for
            :func:`~monai_shpeft.backbones.build_classifier`.
        num_classes: number of output logits.
        pretrained: pretrained tag or local weights file of the frozen backbone.
        image_size: high-resolution input size of the frozen backbone (512 in the paper).
        side_image_size: low-resolution input size of the side network (224 in the paper).
        reduction: side width reduction factor ``k``.
        num_prompts: fine-grained prompts per layer.
        token_ratio: fraction of important tokens passed to the fusion modules (0.2 in the paper).
        shared_projections: share the fusion's ``f_in``/``f_out`` across layers.
        tiny: build the tiny configuration of the backbone (tests).
        backbone_kwargs: passed on to the backbone factory.

    Returns:
        the network; only the side network, the fusion modules and the head are trainable.
    """
    from monai_shpeft.backbones import build_classifier

    classifier = build_classifier(
        backbone, num_classes, pretrained, image_size=image_size, tiny=tiny, **backbone_kwargs
    )
    extractor = FrozenFeatureExtractor(classifier.backbone, backbone, image_size, token_ratio)
    network = FPTNetwork(
        extractor, num_classes, side_image_size, reduction, num_prompts, shared_projections=shared_projections
    )
    trainable = sum(p.numel() for p in network.parameters() if p.requires_grad)
    total = sum(p.numel() for p in network.parameters())
    logger.info(
        "FPT: frozen %s at %d px (%d layers, width %d, %d of %d tokens to the fusion), side ViT width %d at %d px; "
        "%.2fM trainable of %.2fM parameters (%.2f%%).",
        backbone,
        image_size,
        extractor.num_layers,
        extractor.width,
        extractor.num_selected,
        extractor.num_tokens,
        network.side.width,
        side_image_size,
        trainable / 1e6,
        total / 1e6,
        100.0 * trainable / total,
    )
    return network


def _patch_size(backbone: nn.Module) -> int:
    size: Any  # an int or an int pair, as the library stores it
    if hasattr(backbone, "patch_embed"):  # timm
        size = cast(nn.Module, backbone.patch_embed).patch_size
    else:  # open_clip
        size = backbone.patch_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)
