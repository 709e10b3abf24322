"""The sparse trainable set: which entries of which backbone tensors SH-PEFT trains.

SH-PEFT (Liu et al., Sec. 2.2) ranks every weight of the backbone by its importance and trains only the
top ``budget`` of them through a binary mask ``M`` (Eq. 2). :class:`SparseTrainableSet` is that mask in a
compact form: for each parameter, the sorted flat indices of its trainable entries, plus the shapes of every
parameter in scope (so a set can be checked against a model before it is used) and a small header that says
how it was made (backbone, strategy, lambda, budget).

A set is chosen globally (:meth:`SparseTrainableSet.from_importance`: the top entries over the whole scope, as
SH-PEFT does) or per neuron (:meth:`SparseTrainableSet.from_importance_per_row`: the same number of top entries in
every row of every weight matrix, as GPS does). :class:`CompactSparseUpdate` trains a set with gradients and
optimizer state for its selected entries only.
"""

from __future__ import annotations

from monai_shpeft.sparse_set.compact_update import CompactSlot, CompactSparseUpdate
from monai_shpeft.sparse_set.selection import (
    block_of,
    layer_type_of,
    resolve_budget,
    select_top_k,
    select_top_k_per_row,
)
from monai_shpeft.sparse_set.trainable_set import SparseSetMismatchError, SparseTrainableSet

__all__ = [
    "CompactSlot",
    "CompactSparseUpdate",
    "SparseSetMismatchError",
    "SparseTrainableSet",
    "block_of",
    "layer_type_of",
    "resolve_budget",
    "select_top_k",
    "select_top_k_per_row",
]
