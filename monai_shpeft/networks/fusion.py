"""The fine-grained fusion module of FPT (Huang et al., 2024, Sec. 2.3, Eq. 3-4)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["FineGrainedFusion"]


class FineGrainedFusion(nn.Module):
    """Fine-grained prompts that gather each frozen layer's features by cross-attention.

    Every layer ``l`` has its own prompts ``z_p^l`` (``num_prompts`` learnable embeddings of the side network's
    width). They are mapped to the frozen model's width by ``f_in`` and used as queries; keys and values are the
    frozen layer's own, computed by its key and value projections (see
    :class:`~monai_shpeft.networks.FrozenFeatureExtractor`); the result is mapped back to the side width by
    ``f_out``: ``f_out(Attn(f_in(z_p^l), K_M^l(z_M^l), V_M^l(z_M^l)))``.

    ``f_in`` and ``f_out`` are shared by all layers by default: for ViT-B/16 they then cost 0.15M parameters instead
    of 1.8M, and FPT's trainable share comes out near the paper's 1.81% (per-layer projections give 3.6%).

    Args:
        num_layers: layers of the frozen model (one set of prompts each).
        side_width: hidden width of the side network (and of the prompts).
        frozen_width: hidden width of the frozen model.
        num_heads: attention heads, those of the frozen layers so that their key/value heads are used as they are.
        num_prompts: prompts per layer.
        shared_projections: one ``f_in``/``f_out`` pair for all layers (``True``) or one per layer.

    Raises:
        ValueError: when ``frozen_width`` is not divisible by ``num_heads``.
    """

    def __init__(
        self,
        num_layers: int,
        side_width: int,
        frozen_width: int,
        num_heads: int,
        num_prompts: int = 16,
        shared_projections: bool = True,
    ) -> None:
        super().__init__()
        if frozen_width % num_heads:
            raise ValueError(f"frozen_width {frozen_width} is not divisible by num_heads {num_heads}.")
        self.num_heads = num_heads
        self.prompts = nn.Parameter(torch.empty(num_layers, num_prompts, side_width))
        nn.init.trunc_normal_(self.prompts, std=0.02)
        pairs = 1 if shared_projections else num_layers
        self.f_in = nn.ModuleList(nn.Linear(side_width, frozen_width) for _ in range(pairs))
        self.f_out = nn.ModuleList(nn.Linear(frozen_width, side_width) for _ in range(pairs))

    def forward(self, key_value: torch.Tensor, layer: int) -> torch.Tensor:
        """Fuse one frozen layer's features into that layer's prompts.

        Args:
            key_value: ``[B, 2, n, frozen_width]`` keys (index 0) and values (index 1) of the selected tokens.
            layer: index of the layer.

        Returns:
            fused prompts ``[B, num_prompts, side_width]``.
        """
        batch, _, tokens, width = key_value.shape
        heads = self.num_heads
        pair = layer if len(self.f_in) > 1 else 0
        query = self.f_in[pair](self.prompts[layer]).reshape(1, -1, heads, width // heads).transpose(1, 2)
        key, value = (t.reshape(batch, tokens, heads, width // heads).transpose(1, 2) for t in key_value.unbind(1))
        fused = F.scaled_dot_product_attention(query.expand(batch, -1, -1, -1), key, value)
        return self.f_out[pair](fused.transpose(1, 2).reshape(batch, -1, width))
