"""Important-token selection of FPT (Huang et al., 2024, Sec. 2.4).

A token is important when the frozen model attends to it: its score is the attention it receives, averaged over
every head and every query of the layer's self-attention map. Only the top ``ratio`` of the tokens reach the fusion
module, which bounds the memory of the cross-attention at high resolution.
"""

from __future__ import annotations

import math

import torch

__all__ = ["attention_received", "num_selected_tokens", "select_important_tokens"]

# Queries processed at once when the attention map is only needed for its column means: the full [B, H, N, N] map
# of a 512-pixel ViT-B (N = 1025) would cost ~800 MB at batch 16.
_QUERY_CHUNK = 256


def attention_received(
    query: torch.Tensor, key: torch.Tensor, scale: float | None = None, query_chunk: int = _QUERY_CHUNK
) -> torch.Tensor:
    """Mean attention each token receives: ``softmax(q k^T * scale)`` averaged over heads and queries.

    Args:
        query: ``[B, H, N, d]`` queries of a self-attention layer.
        key: ``[B, H, N, d]`` keys of the same layer.
        scale: logit scale; ``d ** -0.5`` when ``None``.
        query_chunk: queries whose attention rows are materialised at once.

    Returns:
        ``[B, N]`` scores; each row sums to one.

    Raises:
        ValueError: when the shapes of ``query`` and ``key`` do not match.
    """
    if query.ndim != 4 or query.shape != key.shape:
        raise ValueError(
            f"query and key must both be [B, H, N, d] of the same shape, got {tuple(query.shape)} and "
            f"{tuple(key.shape)}."
        )
    batch, heads, tokens, dim = query.shape
    scale = dim**-0.5 if scale is None else scale
    received = torch.zeros(batch, tokens, dtype=torch.float32, device=query.device)
    key_t = key.transpose(-2, -1).float()
    for start in range(0, tokens, query_chunk):
        rows = torch.softmax((query[:, :, start : start + query_chunk].float() @ key_t) * scale, dim=-1)
        received += rows.sum(dim=(1, 2))
    return received / (heads * tokens)


def num_selected_tokens(num_tokens: int, ratio: float) -> int:
    """How many of ``num_tokens`` tokens a selection ratio keeps: ``ceil(ratio * num_tokens)``, at least one.

    Args:
        num_tokens: tokens of the frozen layer (class and register tokens included).
        ratio: fraction to keep, in ``(0, 1]``.

    Returns:
        the number of selected tokens.

    Raises:
        ValueError: when ``ratio`` is outside ``(0, 1]`` or ``num_tokens`` is not positive.
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"token ratio must be in (0, 1], got {ratio}.")
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be positive, got {num_tokens}.")
    return max(1, min(num_tokens, math.ceil(ratio * num_tokens - 1e-9)))


def select_important_tokens(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Indices of the top ``ratio`` tokens by score, in ascending position order.

    Ties are broken by position (the earlier token wins), so the selection is deterministic.

    Args:
        scores: ``[B, N]`` token scores (see :func:`attention_received`).
        ratio: fraction of tokens to keep, in ``(0, 1]``.

    Returns:
        ``[B, n]`` long indices with ``n = num_selected_tokens(N, ratio)``.
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be [B, N], got shape {tuple(scores.shape)}.")
    count = num_selected_tokens(scores.shape[1], ratio)
    # A stable descending sort breaks ties by position, which torch.topk does not promise.
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :count]
    return torch.sort(order, dim=1).values
