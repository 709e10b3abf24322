"""Saliency maps of a classifier's decision: Grad-CAM and attention rollout on the bundles' networks.

- :func:`grad_cam` (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
  Localization", ICCV 2017) runs MONAI's :class:`monai.visualize.GradCAM`: the gradient of the class's logit
  weights the channels of a layer's activations. On a ViT that layer is the normalised input of the last block's
  attention (timm ``norm1``, open_clip ``ln_1``): the last place where patch tokens still reach the class token
  (after the last attention the patch tokens no longer change the pooled class token, so their gradient is zero). Its
  tokens are reshaped to the patch grid (class, register and prompt tokens dropped) before MONAI weighs them; a
  convolutional backbone's last stage is used as it is.
- :func:`attention_rollout` (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020) multiplies the
  head-averaged attention of every block, each mixed half and half with the identity for the residual connection,
  and reads how much of the class token (or, without one, of the mean patch token) flows from each patch. It does
  not depend on the class. timm blocks attend with ``F.scaled_dot_product_attention``, which keeps no attention
  map, so a pre-hook recomputes the probabilities from the block's own ``qkv`` projection (LoRA and SSF included);
  ``torch.nn.MultiheadAttention`` (open_clip) is asked for its head-averaged weights.

For FPT both are computed on the side network (its class token is what the head classifies): the low-resolution
image's patches, the last side block for Grad-CAM. The fine-grained prompts that carry the frozen high-resolution
branch into each side block are not image patches: they are dropped from the maps, and attention that goes to them
counts as leaving the image (the same holds for VPT's prompts).

Maps are ``[B, 1, H, W]`` at the input image's size, each scaled to ``[0, 1]`` with its top 2% clipped
(:func:`~monai_shpeft.clinical.saliency_targets.scale_maps`). The layers come from
:func:`~monai_shpeft.clinical.saliency_targets.saliency_target`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any, cast

import torch
import torch.nn as nn
from monai.visualize import GradCAM, ModelWithHooks
from monai.visualize.visualizer import default_upsampler

from monai_shpeft.clinical.saliency_targets import (
    OUTLIER_PERCENT,
    SALIENCY_METHODS,
    SaliencyTarget,
    TokenLayout,
    check_saliency,
    require_attention,
    saliency_target,
    scale_maps,
    tokens_to_grid,
)
from monai_shpeft.errors import SettingsError
from monai_shpeft.utils import unwrap

__all__ = ["attention_rollout", "grad_cam", "saliency_maps"]


class _LayerHooks(ModelWithHooks):
    """MONAI's :class:`~monai.visualize.ModelWithHooks` for one layer, with its hooks removable and per-image scores.

    The activations and their gradients are passed through ``reshape`` (ViT tokens to a feature map) before MONAI's
    :class:`~monai.visualize.GradCAM` weighs them. The gradient is caught by a hook on the activation tensor rather
    than a module backward hook, so wrapped layers (SSF, LN tuning) need nothing special.
    """

    def __init__(self, network: nn.Module, layer: str, reshape: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__(network, layer, register_forward=False, register_backward=False)
        self.register_forward = self.register_backward = True
        self.reshape = reshape
        self._handle = network.get_submodule(layer).register_forward_hook(self._store)

    def _store(self, module: nn.Module, args: Any, output: Any) -> None:
        name = self.target_layers[0]
        tensor = output[0] if isinstance(output, tuple) else output
        self.activations[name] = self.reshape(tensor)
        self.gradients.pop(name, None)
        if tensor.requires_grad:
            tensor.register_hook(lambda grad: self.gradients.__setitem__(name, self.reshape(grad)))

    def class_score(self, logits: torch.Tensor, class_idx: Any) -> torch.Tensor:
        """Each image's logit of its own class (MONAI's ``logits[:, idx]`` mixes the images of a batch)."""
        index = torch.as_tensor(class_idx, device=logits.device).long().reshape(-1, 1).expand(logits.shape[0], 1)
        return logits.gather(1, index).squeeze(1)

    def remove(self) -> None:
        """Remove the hook from the network."""
        self._handle.remove()


@contextmanager
def _gradients_to_inputs_only(network: nn.Module) -> Iterator[None]:
    """Freeze every weight for the duration (no weight gradients are computed or kept), then restore the flags."""
    flags = [(p, p.requires_grad) for p in network.parameters()]
    try:
        for param, _ in flags:
            param.requires_grad_(False)
        yield
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)


def grad_cam(
    network: nn.Module,
    image: torch.Tensor,
    class_index: int | Sequence[int] | torch.Tensor | None = None,
    target: SaliencyTarget | None = None,
    outlier_percent: float = OUTLIER_PERCENT,
    **inputs: torch.Tensor,
) -> torch.Tensor:
    """Grad-CAM maps of a batch, with MONAI's :class:`~monai.visualize.GradCAM`.

    Runs with gradients enabled (also inside ``torch.no_grad()``) in float32, in eval mode; the network's weights
    get no gradient (the inputs carry it) and its ``requires_grad`` flags are restored.

    Args:
        network: a bundle network (see :func:`saliency_target`).
        image: the network's input ``[B, C, H, W]`` (normalised as in training).
        class_index: the class whose evidence is mapped, per image or for all; ``None``: the predicted class.
        target: the layers, :func:`saliency_target` of ``network`` by default.
        outlier_percent: the top share of each map's pixels clipped before scaling (see :func:`scale_maps`).
        inputs: further forward keywords (FPT's ``image_lr``).

    Returns:
        maps ``[B, 1, H, W]`` in ``[0, 1]``.
    """
    network = unwrap(network)
    target = target or saliency_target(network)
    layout = target.layout
    grid = layout.grid_for(image) if layout is not None else (0, 0)
    reshape = (lambda t: tokens_to_grid(t, layout, grid)) if layout is not None else (lambda t: t)
    hooks = _LayerHooks(network, target.gradcam_layer, reshape)
    inputs = {k: v.detach().float().requires_grad_(True) for k, v in inputs.items()}
    try:
        with _gradients_to_inputs_only(network), torch.enable_grad(), _autocast_off(image):
            scale = partial(scale_maps, outlier_percent=outlier_percent)
            # GradCAM takes a ModelWithHooks as it is (its annotation says nn.Module)
            cam = GradCAM(cast(nn.Module, hooks), target.gradcam_layer, postprocessing=scale)
            maps = cam(image.detach().float().requires_grad_(True), class_idx=class_index, **inputs)
    finally:
        hooks.remove()
    return maps.detach()


@contextmanager
def _autocast_off(image: torch.Tensor) -> Iterator[None]:
    # the maps are computed in float32 whatever the evaluator's precision: gradients of bfloat16 logits are coarse
    with torch.autocast(device_type=image.device.type, enabled=False):
        yield


class _Rollout:
    """Forward hooks on every attention module that multiply the head-averaged attention maps in depth order."""

    def __init__(self, network: nn.Module, target: SaliencyTarget, grid: tuple[int, int]) -> None:
        self.layout = cast(TokenLayout, target.layout)
        self.num_patches = grid[0] * grid[1]
        self.flow: torch.Tensor | None = None
        self.handles = []
        for name in target.attention_layers:
            module = network.get_submodule(name)
            if hasattr(module, "qkv"):  # timm: fused attention keeps no map, recompute it from the projection
                self.handles.append(module.register_forward_pre_hook(self._timm, with_kwargs=True))
            else:  # nn.MultiheadAttention (possibly wrapped): ask it for its head-averaged weights
                self.handles.append(module.register_forward_pre_hook(self._ask_weights, with_kwargs=True))
                self.handles.append(module.register_forward_hook(self._weights))

    def _timm(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        tokens = cast(torch.Tensor, args[0] if args else kwargs["x"])
        batch, length, _ = tokens.shape
        heads = int(cast(int, module.num_heads))
        qkv = cast(nn.Module, module.qkv)(tokens)
        head_dim = qkv.shape[-1] // (3 * heads)
        query, key, _ = qkv.reshape(batch, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        query, key = cast(nn.Module, module.q_norm)(query), cast(nn.Module, module.k_norm)(key)
        scale = float(getattr(module, "scale", head_dim**-0.5))
        mean = torch.zeros(batch, length, length, device=tokens.device)
        for head in range(heads):  # one head at a time: [B, N, N] rather than [B, H, N, N] in memory
            mean += torch.softmax((query[:, head].float() @ key[:, head].float().transpose(1, 2)) * scale, dim=-1)
        self._add(mean / heads)

    def _ask_weights(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return args, {**kwargs, "need_weights": True, "average_attn_weights": True}

    def _weights(self, module: nn.Module, args: Any, output: Any) -> None:
        self._add(output[1].float())

    def _add(self, attention: torch.Tensor) -> None:
        """Fold one layer's ``[B, N, N]`` attention into the flow, over the prefix and patch tokens only."""
        positions = self.layout.patch_positions(attention.shape[-1], self.num_patches)
        keep = torch.cat([torch.arange(self.layout.prefix), torch.arange(positions.start, positions.stop)])
        keep = keep.to(attention.device)
        kept = attention[:, keep][:, :, keep]
        # half the residual stream, half the attention; with prompts dropped a row sums below one: what went to
        # the prompts leaves the image
        mixed = 0.5 * kept + 0.5 * torch.eye(kept.shape[-1], device=kept.device)
        self.flow = mixed if self.flow is None else mixed @ self.flow

    def remove(self) -> None:
        """Remove the hooks from the network."""
        for handle in self.handles:
            handle.remove()


def attention_rollout(
    network: nn.Module,
    image: torch.Tensor,
    target: SaliencyTarget | None = None,
    outlier_percent: float = OUTLIER_PERCENT,
    **inputs: torch.Tensor,
) -> torch.Tensor:
    """Attention rollout maps of a batch (class-independent).

    Args:
        network: a bundle network with a ViT (see :func:`saliency_target`).
        image: the network's input ``[B, C, H, W]``.
        target: the layers, :func:`saliency_target` of ``network`` by default.
        outlier_percent: the top share of each map's pixels clipped before scaling (see :func:`scale_maps`).
        inputs: further forward keywords (FPT's ``image_lr``).

    Returns:
        maps ``[B, 1, H, W]`` in ``[0, 1]``.

    Raises:
        SettingsError: for a network without attention (a convolutional backbone).
    """
    network = unwrap(network)
    target = target or saliency_target(network, "rollout")
    require_attention(target)
    layout = cast(TokenLayout, target.layout)
    grid = layout.grid_for(image)
    rollout = _Rollout(network, target, grid)
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad():
            network(image, **inputs)
    finally:
        rollout.remove()
        network.train(was_training)
    flow = cast(torch.Tensor, rollout.flow)
    prefix = layout.prefix
    if layout.class_token:
        scores = flow[:, 0, prefix:]
    else:
        scores = flow[:, prefix:, prefix:].mean(dim=1)
    maps = scores.reshape(-1, 1, *grid)
    return scale_maps(default_upsampler(image.shape[2:])(maps), outlier_percent)


def saliency_maps(
    method: str,
    network: nn.Module,
    image: torch.Tensor,
    class_index: int | Sequence[int] | torch.Tensor | None = None,
    target: SaliencyTarget | None = None,
    outlier_percent: float = OUTLIER_PERCENT,
    **inputs: torch.Tensor,
) -> torch.Tensor:
    """The maps of ``method`` (``"gradcam"`` or ``"rollout"``; rollout ignores ``class_index``).

    Args:
        method: a value of :data:`SALIENCY_METHODS`.
        network: the network.
        image: its input ``[B, C, H, W]``.
        class_index: Grad-CAM's class per image (``None``: the predicted one).
        target: the layers, :func:`saliency_target` of ``network`` by default.
        outlier_percent: the top share of each map's pixels clipped before scaling (see :func:`scale_maps`).
        inputs: further forward keywords.

    Returns:
        maps ``[B, 1, H, W]`` in ``[0, 1]``.

    Raises:
        SettingsError: for an unknown method or one the network does not support.
    """
    method = check_saliency(method)
    if method == "rollout":
        return attention_rollout(network, image, target, outlier_percent, **inputs)
    if method == "gradcam":
        return grad_cam(network, image, class_index, target, outlier_percent, **inputs)
    raise SettingsError("saliency_maps needs a method: " + ", ".join(SALIENCY_METHODS) + ".")
