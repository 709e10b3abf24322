"""The set itself: per-parameter sorted flat indices, the shapes in scope, a header, and its safetensors file."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from monai_shpeft.errors import InputError
from monai_shpeft.sparse_set.selection import (
    block_of,
    layer_type_of,
    resolve_budget,
    select_top_k,
    select_top_k_per_row,
)
from monai_shpeft.utils import load_tagged_safetensors, save_tagged_safetensors

__all__ = ["SparseSetMismatchError", "SparseTrainableSet"]

FORMAT_NAME = "monai_shpeft.sparse_trainable_set"


FORMAT_VERSION = 1


_HEADER_KEY = "header"


class SparseSetMismatchError(InputError, ValueError):
    """A sparse trainable set does not fit the model it is applied to (other backbone, names or shapes)."""


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
        return save_tagged_safetensors(path, tensors, FORMAT_NAME, FORMAT_VERSION, header, _HEADER_KEY)

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
        info, tensors = load_tagged_safetensors(path, "sparse trainable set", FORMAT_NAME, FORMAT_VERSION, _HEADER_KEY)
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
