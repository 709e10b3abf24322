"""VPT: learnable prompt tokens in the token sequence of a frozen ViT, shallow or deep.

Jia et al., "Visual Prompt Tuning", ECCV 2022. ``num_prompts`` learnable tokens of width ``D`` are placed right after
the prefix (class/register) tokens:

- shallow (:func:`apply_shallow`): one set, inserted before the first block; the blocks carry them along;
- deep (:func:`apply_deep`): a fresh set per block, replacing the previous block's output at the prompts' positions.

Either way the prompts are removed after the last block, so the final norm, the pooling and the head see the same
token layout as without prompts. Each block is wrapped in a :class:`PromptedBlock` that holds its prompts (if any);
only the prompts and the classification head train.

Prompts are drawn uniformly from ``[-v, v]`` with ``v = sqrt(6 / (fan_in + D))`` and ``fan_in`` the fan-in of the
patch embedding (``3 * patch_size**2``): VPT's Xavier-uniform initialisation, which puts them on the scale of the
patch tokens' embeddings.

Limitations: an attention mask passed to the backbone is forwarded unchanged to the blocks (it does not cover the
prompts), and intermediate-feature APIs (``forward_intermediates``) see the prompts in their token sequences.
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

__all__ = ["PromptedBlock", "SHALLOW_INFO", "DEEP_INFO", "apply_shallow", "apply_deep"]

# open_clip's VisionTransformer always puts exactly one class token before the patch tokens.
_OPEN_CLIP_PREFIX_TOKENS = 1


class PromptedBlock(DelegatingWrapper):
    """A transformer block that inserts, replaces and/or removes prompt tokens around its computation.

    The prompts occupy positions ``[num_prefix_tokens, num_prefix_tokens + num_prompts)`` of the sequence. Before
    the block, ``prompts`` (when given) are inserted there (``insert=True``) or overwrite what is there (deep VPT's
    later blocks); after it, those positions are dropped when ``remove=True``. Attributes the wrapper does not have
    (``attn``, ``mlp``, ...) are read from the wrapped block.

    Args:
        block: the wrapped block, kept frozen by the ``apply`` functions; called as ``block(x, *args, **kwargs)``.
        num_prompts: the number of prompt tokens.
        num_prefix_tokens: the number of class/register tokens before the patch tokens.
        prompts: ``[num_prompts, D]`` prompts to insert or substitute before the block, or ``None``.
        insert: insert ``prompts`` (the sequence has none yet) rather than replace the existing prompt tokens.
        remove: drop the prompt tokens from the block's output.
        batch_first: whether the block's tokens are ``[B, N, D]`` (timm, open_clip's default) or ``[N, B, D]``.

    Raises:
        ValueError: when ``num_prompts`` is not positive, ``num_prefix_tokens`` is negative, ``insert`` is set
            without prompts, or ``prompts`` is not ``[num_prompts, D]``.
    """

    wrapped_attribute = "block"

    def __init__(
        self,
        block: nn.Module,
        num_prompts: int,
        num_prefix_tokens: int,
        prompts: nn.Parameter | None = None,
        insert: bool = False,
        remove: bool = False,
        batch_first: bool = True,
    ) -> None:
        super().__init__()
        if num_prompts <= 0 or num_prefix_tokens < 0:
            raise ValueError(
                f"num_prompts must be positive and num_prefix_tokens not negative, got {num_prompts} and "
                f"{num_prefix_tokens}."
            )
        if insert and prompts is None:
            raise ValueError("insert=True needs prompts.")
        if prompts is not None and (prompts.ndim != 2 or prompts.shape[0] != num_prompts):
            raise ValueError(f"prompts must be [num_prompts={num_prompts}, D], got {tuple(prompts.shape)}.")
        self.block = block
        self.prompts = prompts
        self.num_prompts = int(num_prompts)
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.insert = bool(insert)
        self.remove = bool(remove)
        self.batch_first = bool(batch_first)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Run the block on the prompted sequence.

        Args:
            x: tokens ``[B, N, D]`` (``[N, B, D]`` when not ``batch_first``).
            args: further positional arguments of the block (e.g. an attention mask).
            kwargs: keyword arguments of the block.

        Returns:
            the block's output tokens, without the prompts when ``remove`` is set.
        """
        if not self.batch_first:
            x = x.transpose(0, 1)
        start, stop = self.num_prefix_tokens, self.num_prefix_tokens + self.num_prompts
        if self.prompts is not None:
            prompts = self.prompts.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
            rest = x[:, start:] if self.insert else x[:, stop:]
            x = torch.cat([x[:, :start], prompts, rest], dim=1)
        if not self.batch_first:
            x = x.transpose(0, 1)
        y = self.block(x, *args, **kwargs)
        if not self.remove:
            return y
        if not self.batch_first:
            return torch.cat([y[:start], y[stop:]], dim=0)
        return torch.cat([y[:, :start], y[:, stop:]], dim=1)


def apply_shallow(model: nn.Module, num_prompts: int = 10) -> nn.Module:
    """VPT-shallow: one set of prompts inserted before the first block, removed after the last.

    Args:
        model: a :class:`~monai_shpeft.backbones.BackboneClassifier` with a timm or open_clip ViT backbone; changed
            in place.
        num_prompts: the number of prompt tokens.

    Returns:
        ``model``, with ``num_prompts * D`` prompt parameters plus the head trainable.

    Raises:
        ValueError: when ``num_prompts`` is not positive, the model is not a backbone classifier, its backbone is
            not a recognised ViT, or it already has prompts.
    """
    return _apply(model, num_prompts, deep=False)


def apply_deep(model: nn.Module, num_prompts: int = 10) -> nn.Module:
    """VPT-deep: a fresh set of prompts at the input of every block, removed after the last.

    Args:
        model: a :class:`~monai_shpeft.backbones.BackboneClassifier` with a timm or open_clip ViT backbone; changed
            in place.
        num_prompts: the number of prompt tokens per block.

    Returns:
        ``model``, with ``depth * num_prompts * D`` prompt parameters plus the head trainable.

    Raises:
        ValueError: when ``num_prompts`` is not positive, the model is not a backbone classifier, its backbone is
            not a recognised ViT, or it already has prompts.
    """
    return _apply(model, num_prompts, deep=True)


def _apply(model: nn.Module, num_prompts: int, deep: bool) -> nn.Module:
    """Wrap the blocks of ``model``'s backbone in :class:`PromptedBlock` s and train only the prompts and head."""
    if num_prompts <= 0:
        raise ValueError(f"num_prompts must be positive, got {num_prompts}.")
    backbone = backbone_of(model)
    blocks, num_prefix_tokens, batch_first = _layout(backbone)
    if any(isinstance(block, PromptedBlock) for block in blocks):
        raise ValueError("The backbone already has prompts; apply the method to a fresh model.")
    width, fan_in = _patch_embedding_shape(backbone)
    bound = math.sqrt(6.0 / (fan_in + width))
    reference = next(iter(backbone.parameters()))
    depth = len(blocks)
    new_params: list[nn.Parameter] = []
    for index in range(depth):
        first, last = index == 0, index == depth - 1
        if not (deep or first or last):
            continue  # shallow prompts pass through the middle blocks untouched
        prompts = None
        if deep or first:
            prompts = nn.Parameter(torch.empty(num_prompts, width, device=reference.device, dtype=reference.dtype))
            nn.init.uniform_(prompts, -bound, bound)
            new_params.append(prompts)
        blocks[index] = PromptedBlock(
            blocks[index],
            num_prompts,
            num_prefix_tokens,
            prompts=prompts,
            insert=first,
            remove=last,
            batch_first=batch_first,
        )
    return freeze_all_but(model, new_params)


def _layout(backbone: nn.Module) -> tuple[nn.ModuleList | nn.Sequential, int, bool]:
    """``(blocks, prefix tokens, batch_first)`` of a timm (``blocks``) or open_clip (``transformer.resblocks``) ViT."""
    blocks = transformer_blocks(backbone)
    transformer = getattr(backbone, "transformer", None)
    if transformer is None:
        return blocks, int(getattr(backbone, "num_prefix_tokens", 1)), True  # timm blocks are batch first
    return blocks, _OPEN_CLIP_PREFIX_TOKENS, bool(getattr(transformer, "batch_first", True))


def _patch_embedding_shape(backbone: nn.Module) -> tuple[int, int]:
    """``(width D, fan-in)`` of the patch-embedding convolution of a timm or open_clip ViT."""
    conv = getattr(getattr(backbone, "patch_embed", None), "proj", None)  # timm
    if not isinstance(conv, nn.Conv2d):
        conv = getattr(backbone, "conv1", None)  # open_clip
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(
            f"{type(backbone).__name__} has no recognised patch embedding (timm 'patch_embed.proj' or open_clip "
            "'conv1')."
        )
    fan_in = conv.in_channels // conv.groups * math.prod(conv.kernel_size)
    return int(conv.out_channels), int(fan_in)


SHALLOW_INFO = MethodInfo(
    name="vpt_shallow",
    kind="prompt",
    summary="learnable prompt tokens inserted after the class token before the first block, plus the head",
    reference="Jia et al., Visual Prompt Tuning, ECCV 2022",
    apply=apply_shallow,
)

DEEP_INFO = MethodInfo(
    name="vpt_deep",
    kind="prompt",
    summary="a fresh set of learnable prompt tokens at the input of every block, plus the head",
    reference="Jia et al., Visual Prompt Tuning, ECCV 2022",
    apply=apply_deep,
)
