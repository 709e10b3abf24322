"""The light side network of FPT: a ViT with the frozen model's depth and a fraction of its width."""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block

__all__ = ["SideViT"]


class SideViT(nn.Module):
    """A randomly initialised ViT built from timm's layers, run layer by layer by :class:`FPTNetwork`.

    Args:
        image_size: side (low-resolution) input size; must be a multiple of ``patch_size``.
        patch_size: patch size, that of the frozen model by default in :func:`build_fpt`.
        width: hidden width (the frozen width divided by the reduction factor ``k``).
        depth: number of blocks (the frozen model's depth).
        num_heads: attention heads; must divide ``width``.
        mlp_ratio: hidden width of each MLP relative to ``width``.
        in_channels: image channels.

    Raises:
        ValueError: on a size that is not a multiple of the patch size or a width not divisible by the heads.
    """

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        width: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"side image_size {image_size} is not a multiple of the patch size {patch_size}.")
        if width % num_heads:
            raise ValueError(f"side width {width} is not divisible by {num_heads} heads.")
        self.image_size = image_size
        self.width = width
        self.patch_embed = PatchEmbed(img_size=image_size, patch_size=patch_size, in_chans=in_channels, embed_dim=width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, width))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        self.blocks = nn.ModuleList(
            Block(dim=width, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=True) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.apply(_init_linear)

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """Patch tokens plus class token, with position embeddings: ``[B, 1 + patches, width]``.

        Raises:
            ValueError: when the image is not ``[B, C, image_size, image_size]``.
        """
        if image.ndim != 4 or tuple(image.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"The side network expects low-resolution images [B, C, {self.image_size}, {self.image_size}], "
                f"got {tuple(image.shape)}."
            )
        tokens = self.patch_embed(image)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1) + self.pos_embed


def _init_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
