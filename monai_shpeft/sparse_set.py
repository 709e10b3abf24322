"""The sparse trainable set: which entries of which backbone tensors SH-PEFT trains.

SH-PEFT (Liu et al., Sec. 2.2) ranks every weight of the backbone by its importance and trains only the
top ``budget`` of them through a binary mask ``M`` (Eq. 2). :class:`SparseTrainableSet` is that mask in a
compact form: for each parameter, the sorted flat indices of its trainable entries, plus the shapes of every
parameter in scope (so a set can be checked against a model before it is used) and a small header that says
how it was made (backbone, strategy, lambda, budget).

A set is chosen globally (:meth:`SparseTrainableSet.from_importance`: the top entries over the whole scope, as
SH-PEFT does) or per neuron (:meth:`SparseTrainableSet.from_importance_per_row`: the same number of top entries in
every row of every weight matrix, as GPS does).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from monai_shpeft.errors import InputError, SettingsError
from monai_shpeft.utils import atomic_path, read_safetensors

__all__ = [
    "SparseSetMismatchError",
    "SparseTrainableSet",
    "block_of",
    "layer_type_of",
    "resolve_budget",
    "select_top_k",
    "select_top_k_per_row",
]

FORMAT_NAME = "monai_shpeft.sparse_trainable_set"
FORMAT_VERSION = "1"
_HEADER_KEY = "header"
# "blocks.3." (timm), "resblocks.3." (open_clip), "layers.3." / "layer.3." (other ViTs)
_BLOCK_PATTERN = re.compile(r"(?:^|\.)(?:blocks|resblocks|layers|layer)\.(\d+)\.")


class SparseSetMismatchError(InputError, ValueError):
    """A sparse trainable set does not fit the model it is applied to (other backbone, names or shapes)."""


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
    names = list(importance)
    flat = torch.cat([importance[n].detach().reshape(-1).float().cpu() for n in names])
    total = flat.numel()
    if not 0 < k <= total:
        raise ValueError(f"cannot select {k} of {total} entries.")
    if torch.isnan(flat).any():
        bad = next(n for n in names if torch.isnan(importance[n]).any())
        raise ValueError(f"importance of parameter '{bad}' contains NaN; the estimation is not usable.")
    tau = torch.kthvalue(flat, total - k + 1).values
    chosen = flat > tau
    missing = k - int(chosen.sum())
    if missing > 0:
        ties = torch.nonzero(flat == tau).flatten()[:missing]  # nonzero is in ascending position order
        chosen[ties] = True
    result: dict[str, torch.Tensor] = {}
    offset = 0
    for name in names:
        numel = importance[name].numel()
        result[name] = torch.nonzero(chosen[offset : offset + numel]).flatten().to(torch.int64)
        offset += numel
    return result


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


@dataclass
class SparseTrainableSet:
    """Per-parameter trainable entries of a backbone, with the header that says how they were chosen.

    Args:
        indices: parameter name -> sorted flat indices (int64) of its trainable entries. Names without an
            entry (or with an empty tensor) have no trainable entry.
        shapes: parameter name -> shape, for every parameter in scope, in model order.
        header: free-form description (backbone, strategy, lambda, budget, ...), saved with the set.
        scope: name of the submodule the set covers; parameters outside it (the head) are not masked.
    """

    indices: dict[str, torch.Tensor]
    shapes: dict[str, tuple[int, ...]]
    header: dict[str, Any] = field(default_factory=dict)
    scope: str | None = "backbone"

    def __post_init__(self) -> None:
        unknown = [n for n in self.indices if n not in self.shapes]
        if unknown:
            raise ValueError(f"indices given for parameters without a shape: {unknown[:3]}")
        for name, shape in self.shapes.items():
            idx = self.indices.get(name)
            numel = _numel(shape)
            if idx is None or idx.numel() == 0:
                self.indices[name] = torch.zeros(0, dtype=torch.int64)
                continue
            idx = idx.detach().cpu().to(torch.int64).flatten()
            if idx.min() < 0 or idx.max() >= numel:
                raise ValueError(f"indices of '{name}' fall outside its {numel} entries.")
            self.indices[name] = torch.unique(idx)  # sorted and deduplicated
        self.indices = {n: self.indices[n] for n in self.shapes}  # keep model order

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_importance(
        cls,
        importance: Mapping[str, torch.Tensor],
        budget: float | int,
        header: Mapping[str, Any] | None = None,
        scope: str | None = "backbone",
    ) -> SparseTrainableSet:
        """Select the top ``budget`` entries of ``importance`` (see :func:`select_top_k`).

        Args:
            importance: per-parameter importance, in model order.
            budget: ratio (float) or count (int) of entries to train.
            header: extra description to keep with the set.
            scope: the submodule the parameters belong to.

        Returns:
            the sparse trainable set.
        """
        total = sum(t.numel() for t in importance.values())
        k = resolve_budget(budget, total)
        indices = select_top_k(importance, k)
        shapes = {n: tuple(t.shape) for n, t in importance.items()}
        info = dict(header or {})
        info.setdefault("budget", budget)
        return cls(indices=indices, shapes=shapes, header=info, scope=scope)

    @classmethod
    def from_importance_per_row(
        cls,
        importance: Mapping[str, torch.Tensor],
        budget: float | int,
        matrices: Collection[str] | None = None,
        header: Mapping[str, Any] | None = None,
        scope: str | None = "backbone",
    ) -> SparseTrainableSet:
        """Select the top ``K`` entries of every row of every weight matrix (GPS's per-neuron selection).

        Each row of a matrix in ``matrices`` is an output neuron and keeps its ``K`` most important incoming
        connections (see :func:`select_top_k_per_row`). ``K`` is the same for every neuron, chosen so that the total
        is about ``budget`` of *all* entries of ``importance``: ``K = max(1, round(resolve_budget(budget, total) /
        rows))`` with ``rows`` the number of rows of the matrices; rows shorter than ``K`` are selected whole, so the
        total can fall below the budget. Tensors of ``importance`` outside ``matrices`` (biases, norms, position and
        class tokens) are in the set's scope but get no entry.

        Args:
            importance: per-parameter importance, in model order (every parameter in scope).
            budget: ratio (float) or count (int) of the entries of ``importance`` to train, about.
            matrices: names of the weights whose rows are neurons (e.g. ``Linear`` and convolution weights); ``None``
                takes every tensor of two or more dimensions.
            header: extra description to keep with the set; ``budget`` and ``k_per_row`` are recorded.
            scope: the submodule the parameters belong to.

        Returns:
            the sparse trainable set.

        Raises:
            ValueError: if a name of ``matrices`` is not in ``importance`` or has fewer than two dimensions, no
                matrix is given, the budget is out of range, or a score is NaN.
        """
        names = [n for n, t in importance.items() if t.dim() >= 2] if matrices is None else list(matrices)
        for name in names:
            if name not in importance or importance[name].dim() < 2:
                found = list(importance[name].shape) if name in importance else "not in the importance"
                raise ValueError(f"per-row selection needs weight matrices; '{name}' is {found}.")
        if not names:
            raise ValueError("per-row selection needs at least one weight matrix; got none.")
        total = sum(t.numel() for t in importance.values())
        rows = sum(int(importance[n].shape[0]) for n in names)
        k = max(1, round(resolve_budget(budget, total) / rows))
        bad = next((n for n in names if torch.isnan(importance[n]).any()), None)
        if bad is not None:
            raise ValueError(f"importance of parameter '{bad}' contains NaN; the estimation is not usable.")
        indices = {name: select_top_k_per_row(importance[name], k) for name in names}
        shapes = {n: tuple(t.shape) for n, t in importance.items()}
        info = dict(header or {})
        info.setdefault("budget", budget)
        info["k_per_row"] = k
        return cls(indices=indices, shapes=shapes, header=info, scope=scope)

    # ------------------------------------------------------------------ counts
    @property
    def num_selected(self) -> int:
        """Number of trainable entries."""
        return sum(int(i.numel()) for i in self.indices.values())

    @property
    def num_total(self) -> int:
        """Number of entries in scope."""
        return sum(_numel(s) for s in self.shapes.values())

    @property
    def ratio(self) -> float:
        """Trainable fraction of the entries in scope."""
        return self.num_selected / max(self.num_total, 1)

    def counts_per_tensor(self) -> dict[str, int]:
        """Selected entries per parameter, in model order."""
        return {n: int(i.numel()) for n, i in self.indices.items()}

    def counts_per_block(self) -> dict[str, tuple[int, int]]:
        """``(selected, total)`` per block (see :func:`block_of`), in model order."""
        return self._group(lambda n: block_of(n, self.scope))

    def counts_per_layer_type(self) -> dict[str, tuple[int, int]]:
        """``(selected, total)`` per role inside a block (see :func:`layer_type_of`)."""
        return self._group(lambda n: layer_type_of(n, self.scope))

    def _group(self, key_of: Any) -> dict[str, tuple[int, int]]:
        groups: dict[str, list[int]] = {}
        for name, shape in self.shapes.items():
            counts = groups.setdefault(key_of(name), [0, 0])
            counts[0] += int(self.indices[name].numel())
            counts[1] += _numel(shape)
        return {k: (v[0], v[1]) for k, v in groups.items()}

    def trainable_names(self) -> list[str]:
        """Parameters with at least one trainable entry."""
        return [n for n, i in self.indices.items() if i.numel() > 0]

    def frozen_names(self) -> list[str]:
        """Parameters in scope with no trainable entry (they need no gradient at all)."""
        return [n for n, i in self.indices.items() if i.numel() == 0]

    # ------------------------------------------------------------------ masks
    def mask(self, name: str, device: torch.device | str | None = None) -> torch.Tensor:
        """Dense boolean mask of parameter ``name`` (True = trainable).

        Args:
            name: parameter name.
            device: where to build the mask.

        Returns:
            a bool tensor of the parameter's shape.
        """
        shape = self.shapes[name]
        flat = torch.zeros(_numel(shape), dtype=torch.bool, device=device)
        flat[self.indices[name].to(flat.device)] = True
        return flat.reshape(shape)

    # ------------------------------------------------------------------ checking
    def check_compatible(self, named_parameters: Iterable[tuple[str, torch.Tensor]], source: str = "") -> None:
        """Check that the parameters in scope have exactly the names and shapes of this set.

        Args:
            named_parameters: the model's ``named_parameters()``.
            source: where the set came from, quoted in the error (e.g. its file).

        Raises:
            SparseSetMismatchError: naming the first parameter that is missing, extra or of another shape.
        """
        origin = f" (from {source})" if source else ""
        made_for = self.header.get("backbone", "an unknown backbone")
        prefix = f"{self.scope}." if self.scope else ""
        model_shapes = {n: tuple(p.shape) for n, p in named_parameters if n.startswith(prefix)}
        for name, shape in self.shapes.items():
            if name not in model_shapes:
                raise SparseSetMismatchError(
                    f"The sparse trainable set{origin} was made for {made_for}: its parameter '{name}' is not in "
                    "the model. Use a set estimated for this backbone, or re-run importance estimation."
                )
            if model_shapes[name] != shape:
                raise SparseSetMismatchError(
                    f"The sparse trainable set{origin} was made for {made_for}: parameter '{name}' has shape "
                    f"{list(shape)} in the set but {list(model_shapes[name])} in the model (another image size or "
                    "architecture?). Re-run importance estimation for this model."
                )
        extra = [n for n in model_shapes if n not in self.shapes]
        if extra:
            raise SparseSetMismatchError(
                f"The sparse trainable set{origin} was made for {made_for}: the model's parameter '{extra[0]}' "
                f"is not covered by it ({len(extra)} such parameters). Re-run importance estimation for this model."
            )

    def fingerprint(self) -> str:
        """SHA-256 of the names, shapes and indices: equal fingerprints mean the same trainable entries."""
        digest = hashlib.sha256()
        for name, shape in self.shapes.items():
            digest.update(f"{name}{list(shape)}".encode())
            digest.update(self.indices[name].numpy().tobytes())
        return digest.hexdigest()

    # ------------------------------------------------------------------ reporting
    def to_record(self) -> dict[str, Any]:
        """A JSON-serialisable summary: header, counts and per-block counts (no indices)."""
        return {
            **self.header,
            "selected": self.num_selected,
            "total": self.num_total,
            "ratio": self.ratio,
            "tensors_with_trainable_entries": len(self.trainable_names()),
            "tensors_in_scope": len(self.shapes),
            "counts_per_block": {k: v[0] for k, v in self.counts_per_block().items()},
        }

    def summary(self) -> str:
        """A readable table of trainable entries per block, with the overall ratio."""
        rows = [(block, sel, tot) for block, (sel, tot) in self.counts_per_block().items()]
        width = max([len("block")] + [len(r[0]) for r in rows])
        lines = [f"{'block':<{width}}  {'selected':>10}  {'total':>12}  {'ratio':>9}"]
        lines.append("-" * len(lines[0]))
        for block, sel, tot in rows:
            lines.append(f"{block:<{width}}  {sel:>10,}  {tot:>12,}  {sel / max(tot, 1):>9.4%}")
        lines.append("-" * len(lines[0]))
        lines.append(f"{'all':<{width}}  {self.num_selected:>10,}  {self.num_total:>12,}  {self.ratio:>9.4%}")
        described = ", ".join(f"{k}={v}" for k, v in self.header.items() if not isinstance(v, (dict, list)))
        return (f"Sparse trainable set ({described})\n" if described else "") + "\n".join(lines)

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        """Save to ``.safetensors`` atomically: one index tensor per trainable parameter, JSON header.

        Indices are stored as int32 where the tensor is small enough, halving the file size.

        Args:
            path: destination file.

        Returns:
            the path written.
        """
        tensors = {}
        for name, idx in self.indices.items():
            if idx.numel():
                small = _numel(self.shapes[name]) < 2**31
                tensors[name] = idx.to(torch.int32 if small else torch.int64).contiguous()
        header = {
            "scope": self.scope,
            "header": self.header,
            "shapes": {n: list(s) for n, s in self.shapes.items()},
            "counts": self.counts_per_tensor(),
            "selected": self.num_selected,
            "total": self.num_total,
        }
        metadata = {"format": FORMAT_NAME, "version": FORMAT_VERSION, _HEADER_KEY: json.dumps(header)}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SparseTrainableSet:
        """Load a set saved by :meth:`save`.

        Args:
            path: the ``.safetensors`` file.

        Returns:
            the sparse trainable set.

        Raises:
            FileNotFoundError: if the file does not exist.
            ValueError: if the file is not a sparse trainable set.
        """
        path = Path(path)
        metadata, tensors = read_safetensors(path, "sparse trainable set")
        if metadata.get("format") != FORMAT_NAME:
            raise ValueError(f"{path} is a safetensors file but not a sparse trainable set (format tag missing).")
        info = json.loads(metadata[_HEADER_KEY])
        shapes = {n: tuple(s) for n, s in info["shapes"].items()}
        loaded = cls(indices=dict(tensors), shapes=shapes, header=info.get("header", {}), scope=info.get("scope"))
        if loaded.num_selected != info.get("selected", loaded.num_selected):
            raise ValueError(
                f"{path} is inconsistent: header says {info['selected']} entries, file holds {loaded.num_selected}."
            )
        return loaded

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SparseTrainableSet):
            return NotImplemented
        return (
            self.shapes == other.shapes
            and self.scope == other.scope
            and all(torch.equal(self.indices[n], other.indices[n]) for n in self.shapes)
        )


def _numel(shape: Iterable[int]) -> int:
    total = 1
    for dim in shape:
        total *= int(dim)
    return total
