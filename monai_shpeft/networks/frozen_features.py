"""The frozen high-resolution branch of FPT: per-layer key/value features of the important tokens.

:class:`FrozenFeatureExtractor` runs a pretrained ViT of the backbone factory (``timm:<model>`` or
``open_clip:<model>``) without gradient. A forward pre-hook on every self-attention module reads the layer's
normalised input and recomputes, with the layer's own projections, its keys and values and the attention each token
receives; only the keys and values of the top ``token_ratio`` tokens are kept. The result, ``[B, L, 2, n, D]``
(layer, key/value, token, width), is exactly what the fusion modules consume and what the preloading cache stores.
"""

from __future__ import annotations

import hashlib
from typing import Any, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from monai_shpeft.errors import SettingsError
from monai_shpeft.networks.token_selection import attention_received, num_selected_tokens, select_important_tokens

__all__ = ["FrozenFeatureExtractor", "UnsupportedBackboneError"]

# the attribute of an attention layer through which its hook finds the collector of its extractor
_COLLECTOR_ATTRIBUTE = "_fpt_collector"


class UnsupportedBackboneError(SettingsError, TypeError):
    """Raised when a backbone's attention layers are not of a kind the extractor knows how to read."""


class FrozenFeatureExtractor(nn.Module):
    """Frozen ViT whose forward returns the key/value features of its important tokens, layer by layer.

    Every parameter is frozen (``requires_grad=False``), the module always stays in eval mode, and the backbone runs
    under ``torch.no_grad()``, so neither gradients nor activations of the backbone are kept for backward.

    Args:
        backbone: a timm ``VisionTransformer`` or an open_clip ``VisionTransformer`` (visual tower), e.g.
            ``build_classifier(...).backbone``.
        backbone_name: the ``"<library>:<model>"`` string it was built from (part of the cache identity).
        image_size: the input size the backbone's position table is configured for.
        token_ratio: fraction of tokens whose features are kept (FPT's ``m``, 0.2 by default).

    Raises:
        UnsupportedBackboneError: when the backbone has no attention layers the extractor can read.
    """

    def __init__(self, backbone: nn.Module, backbone_name: str, image_size: int, token_ratio: float = 0.2) -> None:
        super().__init__()
        self.backbone = backbone
        self.backbone_name = backbone_name
        self.image_size = int(image_size)
        self.token_ratio = float(token_ratio)
        attention_layers = _attention_layers(backbone)
        if not attention_layers:
            raise UnsupportedBackboneError(
                f"{backbone_name}: no self-attention layer found (expected timm 'Attention' or "
                "torch.nn.MultiheadAttention blocks)."
            )
        self.num_layers = len(attention_layers)
        first = attention_layers[0]
        if hasattr(first, "qkv"):  # timm Attention: a fused q/k/v projection
            width = cast(nn.Linear, first.qkv).in_features
        else:  # _attention_layers let only torch.nn.MultiheadAttention through without qkv
            width = cast(nn.MultiheadAttention, first).embed_dim
        self.width = int(width)
        self.num_heads = int(cast(int, first.num_heads))
        self.num_tokens = _num_tokens(backbone)
        self.num_selected = num_selected_tokens(self.num_tokens, self.token_ratio)
        for param in self.backbone.parameters():
            param.requires_grad_(False)
        self._collector = _Collector(self.token_ratio)
        for layer in attention_layers:
            # The hook is a module-level function that finds its collector on the layer, not a closure over this
            # extractor: a deep copy of the network (EMA / SWA models, copy.deepcopy) then collects into its own copy.
            setattr(layer, _COLLECTOR_ATTRIBUTE, self._collector)
            layer.register_forward_pre_hook(_collect_key_values, with_kwargs=True)
        self.backbone.eval()

    @property
    def feature_shape(self) -> tuple[int, int, int, int]:
        """Shape of one image's features: ``(num_layers, 2, num_selected, width)``."""
        return (self.num_layers, 2, self.num_selected, self.width)

    def train(self, mode: bool = True) -> FrozenFeatureExtractor:
        """Keep the frozen backbone in eval mode whatever the mode of the enclosing network."""
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Key/value features of the important tokens of every layer.

        Args:
            image: ``[B, C, H, W]`` high-resolution images, ``H = W = image_size``.

        Returns:
            ``[B, num_layers, 2, num_selected, width]`` features (index 0 = keys, 1 = values), without gradient.

        Raises:
            ValueError: when the image is not ``[B, C, image_size, image_size]``.
        """
        if image.ndim != 4 or tuple(image.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"The frozen backbone {self.backbone_name} expects images [B, C, {self.image_size}, "
                f"{self.image_size}], got {tuple(image.shape)}."
            )
        self._collector.features = []
        try:
            with torch.no_grad():
                self.backbone(image)
            features = torch.stack(self._collector.features, dim=1)
        finally:
            self._collector.features = None
        return features

    def fingerprint(self) -> str:
        """SHA-256 of the backbone's name and every tensor of its state dict (names, shapes, dtypes, values).

        Computed afresh on every call (about a second for ViT-B), so weights loaded after the network was built,
        e.g. from a checkpoint, are always what the feature cache's identity describes.
        """
        digest = hashlib.sha256(self.backbone_name.encode())
        for name, tensor in self.backbone.state_dict().items():
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()


class _Collector:
    """What the attention hooks of one extractor share: its token ratio and, during its forward, the features."""

    def __init__(self, token_ratio: float) -> None:
        self.token_ratio = token_ratio
        self.features: list[torch.Tensor] | None = None


def _collect_key_values(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Forward pre-hook of an attention layer: keep the keys/values of its important tokens."""
    collector = getattr(module, _COLLECTOR_ATTRIBUTE, None)
    if collector is None or collector.features is None:  # the backbone is being used on its own
        return
    tokens = cast(torch.Tensor, args[0] if args else kwargs.get("x", kwargs.get("query")))
    query, key, value, scale = _project(module, tokens)
    scores = attention_received(query, key, scale)
    index = select_important_tokens(scores, collector.token_ratio)
    batch, heads, _, head_dim = key.shape
    gather = index[:, None, :, None].expand(batch, heads, index.shape[1], head_dim)
    selected = [torch.gather(t, 2, gather).transpose(1, 2).reshape(batch, -1, heads * head_dim) for t in (key, value)]
    collector.features.append(torch.stack(selected, dim=1))


def _attention_layers(backbone: nn.Module) -> list[nn.Module]:
    """The self-attention module of every block, in depth order."""
    blocks = getattr(backbone, "blocks", None)
    if blocks is None and hasattr(backbone, "transformer"):
        blocks = getattr(backbone.transformer, "resblocks", None)
    if blocks is None:
        return []
    layers = [getattr(block, "attn", None) for block in blocks]
    for index, layer in enumerate(layers):
        readable = (hasattr(layer, "qkv") and hasattr(layer, "num_heads")) or isinstance(layer, nn.MultiheadAttention)
        if not readable:
            raise UnsupportedBackboneError(
                f"Block {index} attention is {type(layer).__name__}; FPT reads timm 'Attention' (fused qkv) or "
                "torch.nn.MultiheadAttention layers."
            )
    return cast(list[nn.Module], layers)  # every one is a timm Attention or an nn.MultiheadAttention


def _num_tokens(backbone: nn.Module) -> int:
    """Tokens of one image in the backbone's blocks (patches plus class/register tokens)."""
    if hasattr(backbone, "patch_embed"):  # timm
        num_patches = cast(int, cast(nn.Module, backbone.patch_embed).num_patches)
        return int(num_patches) + int(getattr(backbone, "num_prefix_tokens", 1))
    grid = cast(tuple[int, int], backbone.grid_size)  # open_clip
    return int(grid[0] * grid[1]) + 1


def _project(module: nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Queries, keys and values ``[B, H, N, d]`` (and the logit scale) of a layer's normalised input."""
    if isinstance(module, nn.MultiheadAttention):
        if not module.batch_first:
            tokens = tokens.transpose(0, 1)
        batch, length, width = tokens.shape
        heads = module.num_heads
        qkv = F.linear(tokens, module.in_proj_weight, module.in_proj_bias)
        qkv = qkv.reshape(batch, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2], (width // heads) ** -0.5
    batch, length, width = tokens.shape
    heads = cast(int, module.num_heads)  # timm Attention
    qkv = cast(nn.Module, module.qkv)(tokens).reshape(batch, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    query, key, value = qkv.unbind(0)
    query = cast(nn.Module, module.q_norm)(query) if hasattr(module, "q_norm") else query
    key = cast(nn.Module, module.k_norm)(key) if hasattr(module, "k_norm") else key
    return query, key, value, float(getattr(module, "scale", (width // heads) ** -0.5))
