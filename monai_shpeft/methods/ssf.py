"""SSF: scale and shift the features of every operation of a frozen backbone.

Lian et al., "Scaling & Shifting Your Features: A New Baseline for Efficient Model Tuning", NeurIPS 2022. The output
``y`` of every linear layer, every layer norm and the patch embedding becomes ``gamma * y + beta`` with one learnable
``gamma`` and ``beta`` per output channel (:class:`ScaleShift`); only those and the classification head train. SSF's
factors are linear, so after training they can be merged into the preceding weights (not done here).

open_clip's blocks use :class:`torch.nn.MultiheadAttention`, which reads its projection weights directly (its
``out_proj`` is never called as a module), so there the attention's output is scaled and shifted instead of its
inner projections.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from monai_shpeft.methods.base import DelegatingWrapper, MethodInfo, backbone_of, freeze_all_but

__all__ = ["ScaleShift", "INFO", "apply"]


class ScaleShift(DelegatingWrapper):
    """A module followed by a per-channel affine map: ``base(...) * scale + shift``.

    When ``base`` returns a tuple (:class:`torch.nn.MultiheadAttention` returns ``(output, weights)``), its first
    element is transformed and the others are passed on. Attributes the wrapper does not have (``weight``,
    ``in_features``, ``embed_dim``, ...) are read from ``base``, so code that inspects the layer keeps working.

    Args:
        base: the wrapped layer, kept frozen by :func:`apply`.
        channels: the number of output channels.
        channel_dim: the dimension of ``base``'s output that holds the channels (``-1`` for tokens, ``1`` for the
            ``[B, C, H, W]`` output of a convolution).
        init_std: the standard deviation of the initialisation ``scale ~ N(1, init_std)``,
            ``shift ~ N(0, init_std)`` (0.02 in SSF); ``0`` gives the identity map.

    Raises:
        ValueError: when ``channels`` is not positive or ``init_std`` is negative.
    """

    wrapped_attribute = "base"

    def __init__(self, base: nn.Module, channels: int, channel_dim: int = -1, init_std: float = 0.02) -> None:
        super().__init__()
        if channels <= 0:
            raise ValueError(f"channels must be positive, got {channels}.")
        if init_std < 0:
            raise ValueError(f"init_std must not be negative, got {init_std}.")
        self.base = base
        self.channel_dim = int(channel_dim)
        reference = next(iter(base.parameters()), None)
        factory: dict[str, Any] = {} if reference is None else {"device": reference.device, "dtype": reference.dtype}
        self.scale = nn.Parameter(torch.empty(channels, **factory))
        self.shift = nn.Parameter(torch.empty(channels, **factory))
        self.reset_scale_shift(init_std)

    def reset_scale_shift(self, init_std: float = 0.02) -> None:
        """Draw ``scale ~ N(1, init_std)`` and ``shift ~ N(0, init_std)``, as SSF does."""
        nn.init.normal_(self.scale, mean=1.0, std=init_std)
        nn.init.normal_(self.shift, mean=0.0, std=init_std)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the wrapped layer and scale and shift its output's channels.

        Args:
            args: positional arguments of the wrapped layer.
            kwargs: keyword arguments of the wrapped layer.

        Returns:
            the wrapped layer's output, transformed (its first element when it is a tuple).
        """
        out = self.base(*args, **kwargs)
        if isinstance(out, tuple):
            return (self._transform(out[0]), *out[1:])
        return self._transform(out)

    def _transform(self, y: torch.Tensor) -> torch.Tensor:
        if self.channel_dim in (-1, y.ndim - 1):
            return y * self.scale + self.shift
        shape = [1] * y.ndim
        shape[self.channel_dim] = -1
        return y * self.scale.view(shape) + self.shift.view(shape)


def apply(model: nn.Module, init_std: float = 0.02) -> nn.Module:
    """Scale and shift the output of every linear layer, layer norm, attention and the patch embedding.

    Wrapped: every :class:`torch.nn.Linear` and :class:`torch.nn.LayerNorm` of the backbone (timm's and
    open_clip's ``LayerNorm`` subclasses included), every :class:`torch.nn.MultiheadAttention` (its output; the
    linear layers inside it are left alone) and the patch-embedding convolution (timm ``patch_embed.proj``,
    open_clip ``conv1``).

    Args:
        model: a :class:`~monai_shpeft.backbones.BackboneClassifier` with a timm or open_clip ViT backbone; changed
            in place.
        init_std: standard deviation of the initial scales (around 1) and shifts (around 0); ``0`` makes the
            adapted network compute exactly what the original one does.

    Returns:
        ``model``, with ``2 * (sum of the wrapped layers' output channels)`` parameters plus the head trainable.

    Raises:
        ValueError: when the model is not a backbone classifier, ``init_std`` is negative, the backbone has no
            recognised patch embedding, it was already adapted, or a layer norm normalises more than one dimension.
    """
    if init_std < 0:
        raise ValueError(f"init_std must not be negative, got {init_std}.")
    backbone = backbone_of(model)
    if any(isinstance(m, ScaleShift) for m in backbone.modules()):
        raise ValueError("The backbone already has SSF layers; apply the method to a fresh model.")
    targets = _targets(backbone)
    new_params: list[nn.Parameter] = []
    for name, (module, channels, channel_dim) in targets.items():
        wrapped = ScaleShift(module, channels, channel_dim=channel_dim, init_std=init_std)
        _set_submodule(backbone, name, wrapped)
        new_params.extend([wrapped.scale, wrapped.shift])
    return freeze_all_but(model, new_params)


def _targets(backbone: nn.Module) -> dict[str, tuple[nn.Module, int, int]]:
    """``{name: (module, output channels, channel dimension)}`` of the layers SSF follows, in model order."""
    patch_name = _patch_embedding_name(backbone)
    targets: dict[str, tuple[nn.Module, int, int]] = {}
    inside_attention: list[str] = []
    for name, module in backbone.named_modules():
        # MultiheadAttention uses its out_proj's weight directly: wrapping it would change nothing (or break it).
        if any(name.startswith(prefix + ".") for prefix in inside_attention):
            continue
        if name == patch_name:
            targets[name] = (module, int(module.out_channels), 1)
        elif isinstance(module, nn.MultiheadAttention):
            inside_attention.append(name)
            targets[name] = (module, int(module.embed_dim), -1)
        elif isinstance(module, nn.Linear):
            targets[name] = (module, int(module.out_features), -1)
        elif isinstance(module, nn.LayerNorm):
            if len(module.normalized_shape) != 1:
                raise ValueError(f"LayerNorm '{name}' normalises {module.normalized_shape}; SSF expects one dim.")
            targets[name] = (module, int(module.normalized_shape[0]), -1)
    return targets


def _patch_embedding_name(backbone: nn.Module) -> str:
    """The name of the patch-embedding convolution of a timm or open_clip ViT."""
    patch_embed = getattr(backbone, "patch_embed", None)
    if isinstance(getattr(patch_embed, "proj", None), nn.Conv2d):
        return "patch_embed.proj"  # timm
    if isinstance(getattr(backbone, "conv1", None), nn.Conv2d):
        return "conv1"  # open_clip
    raise ValueError(
        f"{type(backbone).__name__} has no recognised patch embedding (timm 'patch_embed.proj' or open_clip 'conv1')."
    )


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule ``name`` (dotted) of ``root``."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


INFO = MethodInfo(
    name="ssf",
    kind="additive",
    summary="per-channel scale and shift after every linear layer, layer norm, attention and the patch embedding, "
    "plus the head",
    reference="Lian et al., SSF, NeurIPS 2022",
    apply=apply,
)
