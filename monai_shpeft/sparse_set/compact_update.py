"""Train a sparse set through compact vectors: optimizer state and gradients only for the selected entries.

SH-PEFT's mask (Eq. 2) can be applied to dense gradients, but then every partly trainable tensor keeps a dense
gradient and dense optimizer state (AdamW: two more copies), so 1% of the weights costs as much memory as all of
them. :class:`CompactSparseUpdate` keeps, for each such tensor, one trainable vector holding its selected entries
(the *values*), and hands the optimizer those vectors in place of the dense tensors. In each step:

1. before the forward pass, the values are read from the dense weights (:meth:`CompactSparseUpdate.pull`), so that
   anything that changed the network between steps (a resumed checkpoint, weight averaging) is taken up;
2. during backward, as soon as autograd has accumulated a tensor's dense gradient, a hook gathers the selected
   entries into the values' gradient and drops the dense one (``register_post_accumulate_grad_hook``): at most one
   dense gradient of a frozen tensor lives at a time, instead of all of them until the step;
3. the optimizer updates the values only; they are scattered back into the dense weights
   (:meth:`CompactSparseUpdate.push`). Frozen entries are never written, so they stay bit-identical whatever the
   optimizer's momentum or (decoupled) weight decay, with no copy kept to restore them.

The network's parameters, names and state dict do not change; only the optimizer's parameter groups hold the
values, so its state dict (e.g. in a resume checkpoint) stores the compact state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from monai_shpeft.sparse_set.trainable_set import SparseTrainableSet

__all__ = ["CompactSlot", "CompactSparseUpdate"]


@dataclass
class CompactSlot:
    """One partly trainable tensor: the dense parameter, the flat indices of its selected entries and their values.

    Attributes:
        name: the parameter's name in the network.
        dense: the network's parameter.
        index: sorted flat indices (int64, on the parameter's device).
        values: the trainable vector of the selected entries, the one the optimizer updates.
    """

    name: str
    dense: nn.Parameter
    index: torch.Tensor
    values: nn.Parameter


class CompactSparseUpdate:
    """Route the training of a sparse set's tensors through compact value vectors (see the module docstring).

    Args:
        parameters: the network's parameters by name (those the set names must be contiguous).
        trainable_set: the set; only its :meth:`~SparseTrainableSet.trainable_names` are handled.
        optimizer: the optimizer whose parameter groups hold the dense tensors; each is replaced, in its own group
            and so with its group's learning rate and weight decay, by its values. State the optimizer already
            holds for a dense tensor is gathered to the selected entries.

    Raises:
        ValueError: if a parameter of the set is not contiguous (its flat indices would not address its storage).
    """

    def __init__(
        self,
        parameters: Mapping[str, nn.Parameter],
        trainable_set: SparseTrainableSet,
        optimizer: torch.optim.Optimizer | None,
    ) -> None:
        self.slots: list[CompactSlot] = []
        self._handles: list[RemovableHandle] = []
        for name in trainable_set.trainable_names():
            dense = parameters[name]
            if not dense.is_contiguous():
                raise ValueError(f"compact sparse update needs contiguous parameters; '{name}' is not.")
            index = trainable_set.indices[name].to(dense.device)
            values = nn.Parameter(dense.detach().reshape(-1).index_select(0, index))
            slot = CompactSlot(name=name, dense=dense, index=index, values=values)
            self.slots.append(slot)
            self._handles.append(dense.register_post_accumulate_grad_hook(partial(_gather_gradient, slot)))
        self.optimizer = optimizer
        if optimizer is not None:
            _swap_into(optimizer, {id(s.dense): s for s in self.slots})

    @property
    def num_values(self) -> int:
        """Trainable entries held in the value vectors."""
        return sum(int(s.values.numel()) for s in self.slots)

    def values(self) -> list[nn.Parameter]:
        """The value vectors, in the set's order."""
        return [s.values for s in self.slots]

    @torch.no_grad()
    def pull(self) -> None:
        """Read the selected entries of the dense weights into the values."""
        for slot in self.slots:
            slot.values.copy_(slot.dense.detach().reshape(-1).index_select(0, slot.index))

    @torch.no_grad()
    def push(self) -> None:
        """Write the values into the selected entries of the dense weights (frozen entries are not touched)."""
        for slot in self.slots:
            slot.dense.detach().view(-1).index_copy_(0, slot.index, slot.values.detach())

    def remove(self) -> None:
        """Detach the hooks and give the optimizer its dense tensors back (their compact state is dropped)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self.optimizer is not None:
            by_values = {id(s.values): s for s in self.slots}
            for group in self.optimizer.param_groups:
                group["params"] = [by_values[id(p)].dense if id(p) in by_values else p for p in group["params"]]
            for slot in self.slots:
                self.optimizer.state.pop(slot.values, None)


def _gather_gradient(slot: CompactSlot, dense: torch.Tensor) -> None:
    """Post-accumulate hook: move the selected entries of ``dense.grad`` into the values' gradient, drop the rest."""
    grad = dense.grad
    if grad is None:
        return
    selected = grad.reshape(-1).index_select(0, slot.index).to(slot.values.dtype)
    if slot.values.grad is None:
        slot.values.grad = selected
    else:
        slot.values.grad.add_(selected)  # gradient accumulation over several backward passes
    dense.grad = None


def _swap_into(optimizer: torch.optim.Optimizer, slots: Mapping[int, CompactSlot]) -> None:
    """Replace each dense tensor by its values in the optimizer's groups, gathering any state it already holds."""
    for group in optimizer.param_groups:
        swapped = []
        for param in group["params"]:
            slot = slots.get(id(param))
            if slot is None:
                swapped.append(param)
                continue
            state: dict[str, Any] = optimizer.state.pop(param, {})
            if state:
                optimizer.state[slot.values] = {key: _gathered(value, param, slot) for key, value in state.items()}
            swapped.append(slot.values)
        group["params"] = swapped


def _gathered(value: Any, param: torch.Tensor, slot: CompactSlot) -> Any:
    """Per-entry state (a tensor of the parameter's shape) restricted to the selected entries; scalars as they are."""
    if isinstance(value, torch.Tensor) and value.shape == param.shape:
        return value.detach().reshape(-1).index_select(0, slot.index.to(value.device))
    return value
