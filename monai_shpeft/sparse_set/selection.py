"""Choosing the top entries: the budget as a count, global and per-row top-k, a parameter's block and layer type."""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Mapping

import torch

from monai_shpeft.errors import SettingsError

__all__ = ["block_of", "layer_type_of", "resolve_budget", "select_top_k", "select_top_k_per_row"]

# "blocks.3." (timm), "resblocks.3." (open_clip), "layers.3." / "layer.3." (other ViTs)
_BLOCK_PATTERN = re.compile(r"(?:^|\.)(?:blocks|resblocks|layers|layer)\.(\d+)\.")


def _strip_scope(name: str, scope: str | None) -> str:
    prefix = f"{scope}." if scope else ""
    return name[len(prefix) :] if prefix and name.startswith(prefix) else name


def block_of(name: str, scope: str | None = "backbone") -> str:
    """Return the block a parameter belongs to, for per-block counts.

    Transformer blocks are named ``blocks.<i>`` whatever the library calls them; everything else (patch and
    position embeddings, class token, final norm) is named by its first component.

    Args:
        name: full parameter name, e.g. ``backbone.blocks.3.attn.qkv.weight``.
        scope: prefix stripped before grouping (the backbone submodule's name).

    Returns:
        a block name such as ``blocks.3``, ``patch_embed`` or ``pos_embed``.
    """
    match = _BLOCK_PATTERN.search(name)
    if match:
        return f"blocks.{int(match.group(1))}"
    return _strip_scope(name, scope).split(".")[0]


def layer_type_of(name: str, scope: str | None = "backbone") -> str:
    """Return the parameter's role inside its block, e.g. ``attn.qkv.weight`` or ``norm1.bias``.

    Args:
        name: full parameter name.
        scope: prefix stripped from names outside transformer blocks.

    Returns:
        the part of the name after the block index, or the scope-stripped name outside blocks.
    """
    match = _BLOCK_PATTERN.search(name)
    if match:
        return name[match.end() :]
    return _strip_scope(name, scope)


def resolve_budget(budget: float | int, total: int) -> int:
    """Turn a budget into an exact number of trainable entries.

    Args:
        budget: a float in (0, 1] is a ratio of ``total`` (0.01 = 1%); an int >= 1 is an absolute count.
        total: number of entries in scope.

    Returns:
        the number of entries to select, at least 1.

    Raises:
        SettingsError: for a budget that is not positive, a ratio above 1, or a count above ``total``.
    """
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        raise SettingsError(f"budget must be a ratio (float in (0, 1]) or a count (int >= 1), got {budget!r}.")
    if isinstance(budget, float):
        if not 0.0 < budget <= 1.0:
            raise SettingsError(f"budget ratio must be in (0, 1] (0.01 means 1%), got {budget}.")
        return max(1, int(round(budget * total)))
    if not 1 <= budget <= total:
        raise SettingsError(f"budget count must be between 1 and the {total} weights in scope, got {budget}.")
    return int(budget)


def select_top_k(importance: Mapping[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """Pick exactly ``k`` entries with the largest importance over all tensors.

    The threshold ``tau`` is the k-th largest score; every entry above it is selected, and entries equal to it
    are taken in order of their position (parameter order, then flat index) until ``k`` are chosen, so the
    result is deterministic even with ties.

    Args:
        importance: per-parameter importance scores, in parameter order.
        k: how many entries to select.

    Returns:
        per-parameter sorted flat indices (int64, CPU) of the selected entries; every name is present.

    Raises:
        ValueError: if a score is NaN or ``k`` is out of range.
    """
    scores = {n: t.detach().reshape(-1).float().cpu() for n, t in importance.items()}
    total = sum(t.numel() for t in scores.values())
    if not 0 < k <= total:
        raise ValueError(f"cannot select {k} of {total} entries.")
    bad = next((n for n, t in scores.items() if torch.isnan(t).any()), None)
    if bad is not None:
        raise ValueError(f"importance of parameter '{bad}' contains NaN; the estimation is not usable.")
    tau = _kth_largest(list(scores.values()), k)
    chosen = {n: t > tau for n, t in scores.items()}
    missing = k - sum(int(c.sum()) for c in chosen.values())
    for name, flat in scores.items():  # ties at tau, in parameter order then position order
        if missing <= 0:
            break
        ties = torch.nonzero(flat == tau).flatten()[:missing]
        chosen[name][ties] = True
        missing -= int(ties.numel())
    return {n: torch.nonzero(c).flatten().to(torch.int64) for n, c in chosen.items()}


def _kth_largest(tensors: list[torch.Tensor], k: int) -> float:
    """The ``k``-th largest value over float32 ``tensors``, without concatenating or sorting them.

    Sorting the concatenation of every backbone weight's importance would hold several copies of it (values,
    int64 positions). Instead a strided sample of about a million scores brackets the ``k``-th largest; one counting
    pass checks the bracket, and the exact value is found among the few scores inside it. A bracket that misses (a
    sample unlike the whole) is widened; after a few misses an exact bisection over the values takes over.
    """
    total = sum(t.numel() for t in tensors)
    stride = max(1, total // 1_000_000)
    sample = torch.cat([t[::stride] for t in tensors])
    expected = k * sample.numel() / total  # the k-th largest's rank in the sample
    margin = 3.0 * math.sqrt(expected) + 2.0
    for _ in range(4):
        upper = _sample_rank_value(sample, math.floor(expected - margin), math.inf)
        lower = _sample_rank_value(sample, math.ceil(expected + margin), -math.inf)
        above = sum(int(torch.count_nonzero(t >= upper)) for t in tensors)
        from_lower = sum(int(torch.count_nonzero(t >= lower)) for t in tensors)
        if above < k <= from_lower:  # the k-th largest lies in [lower, upper)
            inside = torch.cat([t[(t >= lower) & (t < upper)] for t in tensors])
            return float(torch.kthvalue(inside, inside.numel() - (k - above) + 1).values)
        margin *= 4.0
    return _bisect_kth_largest(tensors, k)


def _sample_rank_value(sample: torch.Tensor, rank: int, beyond: float) -> float:
    """The ``rank``-th largest value of ``sample`` (1 = the largest), ``beyond`` when the rank falls outside it."""
    if rank < 1 or rank > sample.numel():
        return beyond
    return float(torch.kthvalue(sample, sample.numel() - rank + 1).values)


def _bisect_kth_largest(tensors: list[torch.Tensor], k: int) -> float:
    """The ``k``-th largest value by bisection over the order-preserving integer keys of float32 (about 32 passes)."""
    low = _float_key(min(float(t.min()) for t in tensors if t.numel()))
    high = _float_key(max(float(t.max()) for t in tensors if t.numel()))
    while low < high:  # the largest key whose value still has at least k entries at or above it
        middle = (low + high + 1) // 2
        threshold = _key_float(middle)
        if sum(int(torch.count_nonzero(t >= threshold)) for t in tensors) >= k:
            low = middle
        else:
            high = middle - 1
    return _key_float(low)


def _float_key(value: float) -> int:
    """An integer that orders like the float32 ``value`` (negative floats' bit patterns run backwards)."""
    bits = struct.unpack("<i", struct.pack("<f", value))[0]
    return bits if bits >= 0 else -(bits & 0x7FFFFFFF) - 1


def _key_float(key: int) -> float:
    """The float32 whose key (:func:`_float_key`) is ``key``."""
    bits = key if key >= 0 else (-key - 1) | 0x80000000
    return struct.unpack("<f", struct.pack("<I", bits))[0]


def select_top_k_per_row(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Pick the ``k`` entries with the largest importance in every row of a weight tensor.

    A row is an output neuron: dimension 0 of the tensor, every other dimension flattened into its incoming
    connections (a ``Linear`` weight ``(out, in)``: one row per output feature; a convolution ``(out, in, kh, kw)``:
    one row per output channel). A row with ``k`` or fewer entries is selected whole. Ties are taken in order of
    position, as in :func:`select_top_k`, so the result is deterministic.

    Args:
        scores: importance of each entry, at least 2-D.
        k: entries to select per row, at least 1.

    Returns:
        sorted flat indices (int64, CPU) into ``scores`` of the selected entries, ``min(k, row length)`` per row.

    Raises:
        ValueError: if ``scores`` has fewer than two dimensions, ``k`` is below 1, or a score is NaN.
    """
    if scores.dim() < 2:
        raise ValueError(f"per-row selection needs a tensor of two or more dimensions, got {list(scores.shape)}.")
    if isinstance(k, bool) or int(k) < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}.")
    rows = scores.detach().float().cpu().reshape(scores.shape[0], -1)
    if torch.isnan(rows).any():
        raise ValueError("importance contains NaN; the estimation is not usable.")
    k = min(int(k), rows.shape[1])
    # a stable descending sort keeps equal scores in position order, so ties go to the lowest column
    columns = torch.sort(rows, dim=1, descending=True, stable=True).indices[:, :k]
    flat = columns + torch.arange(rows.shape[0]).unsqueeze(1) * rows.shape[1]
    return torch.sort(flat.flatten()).values.to(torch.int64)
