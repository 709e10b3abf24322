"""The frozen high-resolution branch of FPT: per-layer key/value features of the important tokens.

:class:`FrozenFeatureExtractor` runs a pretrained ViT of the backbone factory (``timm:<model>`` or
``open_clip:<model>``) without gradient. A forward pre-hook on every self-attention module reads the layer's
normalised input and recomputes, with the layer's own projections, its keys and values and the attention each token
receives; only the keys and values of the top ``token_ratio`` tokens are kept. The result, ``[B, L, 2, n, D]``
(layer, key/value, token, width), is exactly what the fusion modules consume and what the preloading cache stores.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from monai_shpeft.errors import SettingsError
from monai_shpeft.networks.frozen_release import (
    ReleasedParameter,
    read_snapshot,
    release_parameters,
    restore_parameters,
    state_digest,
    write_snapshot,
)
from monai_shpeft.networks.token_selection import attention_received, num_selected_tokens, select_important_tokens

__all__ = ["FrozenFeatureExtractor", "UnsupportedBackboneError"]

logger = logging.getLogger(__name__)

# the attribute of an attention layer through which its hook finds the collector of its extractor
_COLLECTOR_ATTRIBUTE = "_fpt_collector"


class UnsupportedBackboneError(SettingsError, TypeError):
    """Raised when a backbone's attention layers are not of a kind the extractor knows how to read."""


class FrozenFeatureExtractor(nn.Module):
    """Frozen ViT whose forward returns the key/value features of its important tokens, layer by layer.

    Every parameter is frozen (``requires_grad=False``), the module always stays in eval mode, and the backbone runs
    under ``torch.no_grad()``, so neither gradients nor activations of the backbone are kept for backward.

    When the features come from a cache, :meth:`release` frees the backbone's weights (kept in a snapshot file on
    disk): its state dict still holds them, read back from the snapshot, a state dict holding the same weights loads
    without bringing them back, and a call of the branch restores them first.

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
        self._released: list[ReleasedParameter] = []
        self._snapshot: Path | None = None
        self._fingerprint: str | None = None  # of the released weights
        self._device: torch.device | None = None  # where the released weights lived
        self.register_state_dict_post_hook(_supply_released_weights)
        self.register_load_state_dict_pre_hook(_load_over_released_weights)

    @property
    def released(self) -> bool:
        """Whether the backbone's weights are released (see :meth:`release`)."""
        return bool(self._released)

    @property
    def device(self) -> torch.device:
        """Where the backbone's weights live (or lived before :meth:`release`)."""
        if self._device is not None:
            return self._device
        return next(iter(self.backbone.parameters())).device

    def release(self, snapshot_dir: str | os.PathLike) -> dict[str, Any]:
        """Free the backbone's weights until the branch is called again (training on preloaded features).

        The weights are first written to ``<snapshot_dir>/<sha256[:16]>.safetensors`` (kept when a sound snapshot
        of the same weights is there), then every parameter becomes a storage-less ``meta`` tensor. What keeps
        working: ``state_dict()`` (the values read back from the snapshot, checked against their SHA-256, on the
        CPU), ``load_state_dict`` (a state dict with the same frozen weights leaves them released; other frozen
        weights bring the backbone back and are copied in), :meth:`fingerprint`, ``.to(device)`` (remembered for
        the restore) and a call of the branch (which restores the weights first, with a warning). Does nothing when
        already released.

        Args:
            snapshot_dir: folder of the snapshot (the bundles use ``<feature_cache_dir>/frozen_backbones``).

        Returns:
            ``{"tensors": ..., "bytes": ..., "snapshot": ...}`` (zeros when nothing was released).
        """
        if self.released:
            return {"tensors": 0, "bytes": 0, "snapshot": str(self._snapshot)}
        state = self.backbone.state_dict()
        fingerprint = state_digest(self.backbone_name, state.items())
        snapshot = Path(snapshot_dir) / f"{fingerprint[:16]}.safetensors"
        write_snapshot(snapshot, self.backbone_name, state, fingerprint)
        device = self.device
        del state  # its tensors are the parameters' storage: no reference may outlive the release
        self._released, freed = release_parameters(self.backbone)
        self._snapshot, self._fingerprint, self._device = snapshot, fingerprint, device
        logger.info(
            "FPT: released the frozen backbone's weights (%d tensors, %.1f MB) for training on preloaded features; "
            "they are read back from %s where a state dict is taken, and restored if the frozen branch runs.",
            len(self._released),
            freed / 1e6,
            snapshot,
        )
        return {"tensors": len(self._released), "bytes": freed, "snapshot": str(snapshot)}

    def restore(self) -> None:
        """Bring released weights back from the snapshot (nothing to do when they are not released).

        Raises:
            FrozenSnapshotError: when the snapshot is missing or holds other weights.
        """
        if not self.released:
            return
        restore_parameters(self._released, self._read_snapshot(), self.device)
        self._released, self._snapshot, self._fingerprint, self._device = [], None, None, None

    def _read_snapshot(self) -> dict[str, torch.Tensor]:
        keys = list(self.backbone.state_dict().keys())  # released parameters are meta: names, no values
        return read_snapshot(cast(Path, self._snapshot), self.backbone_name, keys, cast(str, self._fingerprint))

    def _apply(self, fn: Any, recurse: bool = True) -> FrozenFeatureExtractor:
        """``Module._apply`` that skips released (meta) weights and remembers the device they should come back to."""
        if not self.released:
            return cast(FrozenFeatureExtractor, super()._apply(fn, recurse))
        self._device = fn(torch.empty(0, device=self.device)).device
        return cast(FrozenFeatureExtractor, super()._apply(lambda t: t if t.is_meta else fn(t), recurse))

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
        if self.released:
            logger.warning(
                "FPT: the frozen branch is called with its weights released; restoring them from %s.", self._snapshot
            )
            self.restore()
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
        e.g. from a checkpoint, are always what the feature cache's identity describes. Released weights (see
        :meth:`release`) are those of the snapshot, whose SHA-256 this is.
        """
        if self.released:
            return cast(str, self._fingerprint)
        return state_digest(self.backbone_name, self.backbone.state_dict().items())


def _supply_released_weights(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any]
) -> None:
    """State-dict post-hook: released (meta) backbone entries get their values from the snapshot."""
    extractor = cast(FrozenFeatureExtractor, module)
    if not extractor.released:
        return
    values = extractor._read_snapshot()
    for _, _, name in extractor._released:
        key = f"{prefix}backbone.{name}"
        if key in state_dict:
            state_dict[key] = values[name]


def _load_over_released_weights(
    module: nn.Module,
    state_dict: dict[str, Any],
    prefix: str,
    local_metadata: dict[str, Any],
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    """Load-state-dict pre-hook: the released weights stay released when the incoming ones are the same.

    Incoming frozen entries are compared by their SHA-256 with the released weights; equal, they are replaced by
    ``meta`` tensors (nothing to copy, no storage); different, the backbone is restored and the load copies them in.
    Missing entries are left to the load's own strict check.
    """
    extractor = cast(FrozenFeatureExtractor, module)
    if not extractor.released:
        return
    names = list(extractor.backbone.state_dict().keys())
    keys = [f"{prefix}backbone.{name}" for name in names]
    present = [key for key in keys if key in state_dict]
    if not present:
        return  # no frozen entry: the strict check reports them missing, a non-strict load leaves them released
    complete = len(present) == len(keys) and not any(getattr(state_dict[k], "is_meta", True) for k in keys)
    if not complete or (
        state_digest(extractor.backbone_name, ((n, state_dict[k]) for n, k in zip(names, keys)))
        != extractor._fingerprint
    ):
        extractor.restore()  # some or other frozen values: the backbone comes back and the load copies them in
        return
    for _, _, name in extractor._released:
        key = f"{prefix}backbone.{name}"
        state_dict[key] = torch.empty_like(state_dict[key], device="meta")


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
