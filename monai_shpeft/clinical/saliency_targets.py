"""What a saliency map of a bundle network is computed on: the ``saliency`` knob, the layers, the token layout.

:func:`saliency_target` finds, in a backbone classifier (any method: LoRA, SSF, LN tuning and VPT wrap or replace
modules, so layers are found through the blocks rather than by name), an FPT network or a timm CNN, the layer
Grad-CAM reads and the attention modules rollout reads, and :class:`TokenLayout` says where the patch tokens sit in
the sequence those layers see. :mod:`monai_shpeft.clinical.saliency` computes the maps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn as nn

from monai_shpeft.errors import SettingsError
from monai_shpeft.methods.base import transformer_blocks
from monai_shpeft.networks import FPTNetwork
from monai_shpeft.utils import unwrap

__all__ = [
    "OUTLIER_PERCENT",
    "SALIENCY_METHODS",
    "SaliencyTarget",
    "TokenLayout",
    "check_saliency",
    "require_attention",
    "saliency_target",
    "scale_maps",
    "tokens_to_grid",
]

#: the values of the bundles' ``saliency`` knob ("" or null: no maps)
SALIENCY_METHODS = ("gradcam", "rollout")


def check_saliency(saliency: str | None) -> str:
    """The ``saliency`` knob's method, ``""`` when off.

    Args:
        saliency: ``"gradcam"``, ``"rollout"``, or ``""``/``None`` for none.

    Returns:
        the method, or ``""``.

    Raises:
        SettingsError: naming the knob and the valid values for anything else.
    """
    if saliency is None or saliency == "":
        return ""
    if not isinstance(saliency, str) or saliency not in SALIENCY_METHODS:
        raise SettingsError(
            f"saliency {saliency!r} is not a saliency method; use one of: {', '.join(SALIENCY_METHODS)} "
            '(or "" for none), e.g. --saliency gradcam.'
        )
    return saliency


@dataclass(frozen=True)
class TokenLayout:
    """Where a ViT's patch tokens sit in the sequence its blocks see.

    Attributes:
        patch_size: the patch size (the grid follows from the input size when ``grid`` is ``None``).
        grid: the fixed patch grid ``(rows, columns)``, or ``None``.
        prefix: class and register tokens at the start.
        patches_last: the patch tokens are the last ones (prompts, if any, sit between the prefix and the patches:
            timm, open_clip, VPT); otherwise they follow the prefix (FPT's side prompts are appended after them).
        class_token: the network classifies the first token (else the mean of the patch tokens).
        batch_first: the tokens are ``[B, N, D]`` (else ``[N, B, D]``).
    """

    patch_size: int
    grid: tuple[int, int] | None
    prefix: int
    patches_last: bool
    class_token: bool
    batch_first: bool = True

    def grid_for(self, image: torch.Tensor) -> tuple[int, int]:
        """The patch grid of the branch that reads ``image`` (``[B, C, H, W]``)."""
        return self.grid or (image.shape[-2] // self.patch_size, image.shape[-1] // self.patch_size)

    def patch_positions(self, num_tokens: int, num_patches: int) -> slice:
        """The positions of the patch tokens in a sequence of ``num_tokens``."""
        start = num_tokens - num_patches if self.patches_last else self.prefix
        if start < self.prefix or start + num_patches > num_tokens:
            raise ValueError(f"{num_tokens} tokens cannot hold {self.prefix} prefix and {num_patches} patch tokens.")
        return slice(start, start + num_patches)


@dataclass(frozen=True)
class SaliencyTarget:
    """What a network's maps are computed on.

    Attributes:
        gradcam_layer: the name (in ``network.named_modules()``) of Grad-CAM's layer.
        attention_layers: the names of the blocks' attention modules, in depth order (empty for a CNN).
        layout: the token layout of a ViT, ``None`` for a convolutional layer ``[B, C, h, w]``.
        description: what the maps cover, for logs and messages.
    """

    gradcam_layer: str
    attention_layers: tuple[str, ...]
    layout: TokenLayout | None
    description: str


def saliency_target(network: nn.Module, method: str = "gradcam") -> SaliencyTarget:
    """Find the layers the maps of a bundle network are computed on.

    Args:
        network: an :class:`~monai_shpeft.networks.FPTNetwork`, or a backbone classifier (any method) with a timm
            or open_clip ViT or a timm convolutional backbone.
        method: the maps wanted (a value of :data:`SALIENCY_METHODS`): rollout needs attention layers.

    Returns:
        the target.

    Raises:
        SettingsError: for a network of another kind, or rollout on a network without attention.
    """
    target = _find_target(unwrap(network))
    if check_saliency(method) == "rollout":
        require_attention(target)
    return target


def require_attention(target: SaliencyTarget) -> None:
    """Stop when rollout cannot be computed on ``target`` (no attention layers).

    Raises:
        SettingsError: naming the knob and the method that works.
    """
    if target.layout is None or not target.attention_layers:
        raise SettingsError(
            f"saliency 'rollout' needs a vision transformer's attention and this network has none; Grad-CAM works on "
            f"it (on its {target.description}): use --saliency gradcam."
        )


def _find_target(network: nn.Module) -> SaliencyTarget:
    names = {id(module): name for name, module in network.named_modules()}
    if isinstance(network, FPTNetwork):
        blocks = list(network.side.blocks)
        grid = cast(tuple[int, int], tuple(network.side.patch_embed.grid_size))
        layout = TokenLayout(_patch_size(network.side.patch_embed), grid, 1, False, True)
        return SaliencyTarget(
            names[id(blocks[-1].norm1)],
            tuple(names[id(block.attn)] for block in blocks),
            layout,
            f"FPT side network, {grid[0]}x{grid[1]} patches of the low-resolution image ({len(blocks)} blocks)",
        )
    backbone = getattr(network, "backbone", None)
    if not isinstance(backbone, nn.Module):
        raise SettingsError(f"saliency: {type(network).__name__} is neither a backbone classifier nor an FPT network.")
    if hasattr(backbone, "patch_embed") or hasattr(backbone, "transformer"):
        blocks = list(transformer_blocks(backbone))
        if hasattr(backbone, "transformer"):  # open_clip: one class token, 'tok' pooling unless configured otherwise
            norm = "ln_1"
            patch = int(_first(backbone.patch_size))
            layout = TokenLayout(
                patch,
                None,
                1,
                True,
                getattr(backbone, "pool_type", "tok") == "tok",
                bool(getattr(backbone.transformer, "batch_first", True)),
            )
        else:
            norm = "norm1"
            prefix = int(getattr(backbone, "num_prefix_tokens", 1))
            pooled = getattr(backbone, "global_pool", "token") == "token" and prefix > 0
            layout = TokenLayout(_patch_size(cast(nn.Module, backbone.patch_embed)), None, prefix, True, pooled)
        last = names[id(getattr(blocks[-1], norm))]  # a prompted block passes the read on to the block it wraps
        return SaliencyTarget(
            last,
            tuple(names[id(block.attn)] for block in blocks),
            layout,
            f"ViT patch tokens ({len(blocks)} blocks)",
        )
    info = getattr(backbone, "feature_info", None)
    if info:  # a timm CNN: its last stage, [B, C, h, w], is what MONAI's GradCAM expects
        stage = info[-1]["module"] if isinstance(info, list) else info.get_dicts()[-1]["module"]
        return SaliencyTarget(names[id(backbone.get_submodule(stage))], (), None, f"last stage '{stage}'")
    raise SettingsError(
        f"saliency: no ViT blocks or convolutional stages found in the backbone {type(backbone).__name__}."
    )


def _first(size: Any) -> int:
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def _patch_size(patch_embed: nn.Module) -> int:
    return _first(patch_embed.patch_size)


#: the share of each map's highest pixels shown at full strength (Captum's ``outlier_perc`` does the same)
OUTLIER_PERCENT = 2.0


def scale_maps(maps: torch.Tensor, outlier_percent: float = OUTLIER_PERCENT) -> torch.Tensor:
    """Every map of ``[B, 1, H, W]`` scaled to ``[0, 1]``, its top ``outlier_percent`` % of pixels clipped to 1.

    Clipping keeps a handful of extreme tokens (DINOv2's high-norm background tokens draw most of the attention,
    Darcet et al., ICLR 2024) from washing out the rest of the map; they still show, at full strength. MONAI's
    default post-processing is not used: it flips the maps. A flat map becomes zero.

    Args:
        maps: ``[B, 1, H, W]`` raw maps.
        outlier_percent: the percentage of pixels clipped at the top (0: plain min-max scaling).

    Returns:
        the scaled maps, float32.
    """
    maps = maps.detach().float()
    flat = maps.flatten(1)
    low = flat.amin(dim=1)
    high = flat.amax(dim=1) if outlier_percent <= 0 else torch.quantile(flat, 1.0 - outlier_percent / 100.0, dim=1)
    low, high = low.view(-1, 1, 1, 1), high.view(-1, 1, 1, 1)
    span = high - low
    scaled = ((maps - low) / span.clamp_min(torch.finfo(maps.dtype).tiny)).clamp(0.0, 1.0)
    return torch.where(span > 0, scaled, torch.zeros_like(maps))


def tokens_to_grid(tokens: torch.Tensor, layout: TokenLayout, grid: tuple[int, int]) -> torch.Tensor:
    """Patch tokens ``[B, N, D]`` (or ``[N, B, D]``) as a feature map ``[B, D, rows, columns]``."""
    if not layout.batch_first:
        tokens = tokens.transpose(0, 1)
    patches = tokens[:, layout.patch_positions(tokens.shape[1], grid[0] * grid[1])]
    return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)
