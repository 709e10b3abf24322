"""8-bit storage of FPT's frozen features: int8 values with one absmax scale per token, layer and key/value.

A token's key (or value) vector of one layer, ``x`` (``D`` numbers), is stored as ``q = round(x / s)`` in int8 with
``s = max|x| / 127`` (float32): the error of every entry is at most ``s / 2 = max|x| / 254``, relative to the largest
entry of its own vector, so tokens of small and large norm are equally well kept. The scale adds 4 bytes per vector
(0.5% for ``D = 768``), so an entry takes a little over half of float16's bytes.
"""

from __future__ import annotations

import torch

__all__ = ["INT8_MAX", "dequantize_int8", "quantize_int8"]

INT8_MAX = 127  # symmetric: -128 is never used, so that q and -q are both representable


def quantize_int8(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise features along their last dimension.

    Args:
        features: ``[..., D]`` floating-point features.

    Returns:
        ``(values, scales)``: int8 values of the same shape and float32 scales ``[..., 1]``; an all-zero vector gets
        scale 1 (its values are 0 anyway).
    """
    x = features.detach().to("cpu", torch.float32)
    absmax = x.abs().amax(dim=-1, keepdim=True)
    scales = torch.where(absmax > 0, absmax / INT8_MAX, torch.ones_like(absmax))
    values = torch.round(x / scales).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return values.contiguous(), scales.contiguous()


def dequantize_int8(values: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """Features back from :func:`quantize_int8`'s output.

    Args:
        values: int8 values ``[..., D]``.
        scales: float32 scales ``[..., 1]``.
        dtype: the result's dtype; float16 (the default) keeps a batch as small as float16 storage does, and its
            rounding (at most ``2**-11`` relative) is far below the int8 step.

    Returns:
        ``values * scales`` in ``dtype``.
    """
    return (values.to(torch.float32) * scales.to(torch.float32)).to(dtype)
