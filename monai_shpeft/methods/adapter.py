"""AdaptFormer: a parallel bottleneck adapter beside the MLP of every transformer block.

Chen et al., "AdaptFormer: Adapting Vision Transformers for Scalable Visual Recognition", NeurIPS 2022. Every block's
MLP ``f`` becomes ``x -> f(x) + s * up(relu(down(x)))`` (:class:`AdaptedMlp`), where ``x`` is the MLP's input (the
block's normalised tokens, as in the paper's equation), ``down: D -> b`` and ``up: b -> D`` are linear layers and
``s`` is a fixed scale. ``up`` starts at zero, so the adapted network computes exactly what the pretrained one did
until training moves it. Only the adapters and the classification head train.

In blocks with a LayerScale after the MLP (DINOv2), the adapter's output is scaled by it too, as the MLP's is.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from monai_shpeft.methods.base import (
    DelegatingWrapper,
    MethodInfo,
    backbone_of,
    freeze_all_but,
    transformer_blocks,
)

__all__ = ["AdaptedMlp", "INFO", "apply"]


class AdaptedMlp(DelegatingWrapper):
    """An MLP with a parallel bottleneck adapter: ``mlp(x) + scale * up(relu(down(x)))``.

    Attributes the wrapper does not have (``fc1``, ``c_fc``, ...) are read from the wrapped MLP, so code that reaches
    into a block's MLP (e.g. open_clip's ``get_weight_dtype``) keeps working.

    Args:
        mlp: the block's MLP, kept frozen by :func:`apply`.
        dim: its input and output width ``D``.
        bottleneck: the adapter's hidden width ``b``.
        scale: the fixed factor ``s`` of the adapter's output (0.1 in AdaptFormer).

    Raises:
        ValueError: when ``dim`` or ``bottleneck`` is not positive.
    """

    wrapped_attribute = "mlp"

    def __init__(self, mlp: nn.Module, dim: int, bottleneck: int = 64, scale: float = 0.1) -> None:
        super().__init__()
        if dim <= 0 or bottleneck <= 0:
            raise ValueError(f"dim and bottleneck must be positive, got {dim} and {bottleneck}.")
        self.mlp = mlp
        self.scale = float(scale)
        reference = next(iter(mlp.parameters()), None)
        factory: dict[str, Any] = {} if reference is None else {"device": reference.device, "dtype": reference.dtype}
        self.down = nn.Linear(dim, bottleneck, **factory)
        self.act = nn.ReLU()
        self.up = nn.Linear(bottleneck, dim, **factory)
        self.reset_adapter()

    def reset_adapter(self) -> None:
        """Initialise the adapter as AdaptFormer does: ``down`` Kaiming-uniform, ``up`` and both biases zero."""
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        # A zero `up` makes the adapter's output zero: the adapted network starts as the pretrained one.
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP and add the scaled adapter output.

        Args:
            x: the MLP's input tokens ``[..., D]``.

        Returns:
            ``[..., D]``.
        """
        return self.mlp(x) + self.scale * self.up(self.act(self.down(x)))


def apply(model: nn.Module, bottleneck: int = 64, scale: float = 0.1) -> nn.Module:
    """Insert an AdaptFormer adapter beside every block's MLP and train only the adapters and the head.

    Args:
        model: a :class:`~monai_shpeft.backbones.BackboneClassifier` with a timm or open_clip ViT backbone; changed
            in place.
        bottleneck: the adapters' hidden width ``b`` (64 in AdaptFormer).
        scale: the fixed scale ``s`` of the adapters' output (0.1 in AdaptFormer).

    Returns:
        ``model``, with ``blocks * (2 * D * b + b + D)`` adapter parameters plus the head trainable.

    Raises:
        ValueError: when ``bottleneck`` is not positive, the model is not a backbone classifier, its backbone has no
            transformer blocks, or it already has adapters.
    """
    if bottleneck <= 0:
        raise ValueError(f"bottleneck must be positive, got {bottleneck}.")
    backbone = backbone_of(model)
    new_params: list[torch.Tensor] = []
    for index, block in enumerate(transformer_blocks(backbone)):
        mlp = getattr(block, "mlp", None)
        if not isinstance(mlp, nn.Module):
            raise ValueError(f"Block {index} ({type(block).__name__}) has no 'mlp' module to put an adapter beside.")
        if isinstance(mlp, AdaptedMlp):
            raise ValueError(f"Block {index} already has an adapter; apply the method to a fresh model.")
        adapted = AdaptedMlp(mlp, _mlp_width(mlp, index), bottleneck=bottleneck, scale=scale)
        block.mlp = adapted
        new_params.extend([adapted.down.weight, adapted.down.bias, adapted.up.weight, adapted.up.bias])
    return freeze_all_but(model, new_params)


def _mlp_width(mlp: nn.Module, index: int) -> int:
    """The input width of an MLP: that of its first linear layer."""
    first = next((m for m in mlp.modules() if isinstance(m, nn.Linear)), None)
    if first is None:
        raise ValueError(f"The MLP of block {index} ({type(mlp).__name__}) has no linear layer.")
    return int(first.in_features)


INFO = MethodInfo(
    name="adapter",
    kind="additive",
    summary="a zero-initialised bottleneck adapter (ReLU, scale 0.1) parallel to every block's MLP, plus the head",
    reference="Chen et al., AdaptFormer, NeurIPS 2022",
    apply=apply,
)
