"""The paper's classification head: L2 normalisation of the pooled features, then a linear layer."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["L2NormLinearHead"]


class L2NormLinearHead(nn.Module):
    """Classification head of the paper: L2-normalise the pooled feature, then apply a linear layer.

    The logits are ``logit_scale * (W x / |x| + b)``. On unit-length features a linear layer initialised at the
    usual small scale gives logits near zero and a flat loss; a fixed scale (as CLIP's, whose learned value is
    100) lets the head reach confident logits in a few steps; 1 is the paper's plain head. The scale is a buffer,
    so a checkpoint carries it and a network loaded from one computes what was trained.

    Args:
        in_features: width of the pooled backbone feature.
        num_classes: number of output logits.
        logit_scale: the fixed factor applied to the logits (not trained; saved in the state dict).

    Raises:
        ValueError: when ``in_features`` or ``num_classes`` is not positive, or ``logit_scale`` is not positive.
    """

    def __init__(self, in_features: int, num_classes: int, logit_scale: float = 1.0) -> None:
        super().__init__()
        if in_features <= 0 or num_classes <= 0:
            raise ValueError(f"in_features and num_classes must be positive, got {in_features} and {num_classes}.")
        if not float(logit_scale) > 0:
            raise ValueError(f"logit_scale must be a positive number, got {logit_scale!r}.")
        self.in_features = in_features
        self.num_classes = num_classes
        self.register_buffer("logit_scale", torch.tensor(float(logit_scale)))
        self.linear = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compute logits.

        Args:
            x: pooled features ``[B, in_features]``.

        Returns:
            logits ``[B, num_classes]``, in float32 even under autocast.
        """
        if torch.jit.is_scripting() or torch.jit.is_tracing():  # exported graphs run without autocast
            return self._logits(x)
        return self._float32_logits(x)

    @torch.jit.unused
    def _float32_logits(self, x: torch.Tensor) -> torch.Tensor:
        # the head is tiny, and bfloat16 logits (3 significant digits, times the scale) flip near-tied classes: a
        # model whose head is the probe would then not predict what the probe predicts from the same features
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self._logits(x.float())

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(F.normalize(x, dim=-1)) * self.logit_scale.to(x.dtype)

    def extra_repr(self) -> str:
        return f"logit_scale={float(cast(torch.Tensor, self.logit_scale)):g}"
