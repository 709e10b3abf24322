"""Weight changes ``dW = |W_ft - W_ori|``, their top ``k`` positions, and putting them into the pretrained model."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from monai_shpeft.importance import scoped_parameters, unwrap
from monai_shpeft.sparse_set import (
    SparseTrainableSet,
    resolve_budget,
    select_top_k,
)

__all__ = ["WeightSource", "weight_changes", "top_changed_positions", "transplant_top_changes"]

#: a model, or its state dict (only the floating-point entries under the scope are used)
WeightSource = nn.Module | Mapping[str, torch.Tensor]


# ---------------------------------------------------------------------------------------------- weight changes
def _scoped_weights(source: WeightSource, scope: str | None) -> dict[str, torch.Tensor]:
    """The weights in scope of a model (its parameters) or of a state dict (its floating-point entries)."""
    if isinstance(source, nn.Module):
        return {name: param.detach() for name, param in scoped_parameters(source, scope).items()}
    prefix = f"{scope}." if scope else ""
    return {
        name: tensor.detach()
        for name, tensor in source.items()
        if name.startswith(prefix) and torch.is_tensor(tensor) and tensor.is_floating_point()
    }


def _check_same_layout(
    first: Mapping[str, torch.Tensor | tuple[int, ...]],
    second: Mapping[str, torch.Tensor | tuple[int, ...]],
    first_label: str,
    second_label: str,
) -> None:
    """Raise a ValueError naming the first parameter that one side lacks or that differs in shape."""

    def shape_of(value: torch.Tensor | tuple[int, ...]) -> tuple[int, ...]:
        return tuple(value.shape) if torch.is_tensor(value) else tuple(value)

    if not first:
        raise ValueError(f"the {first_label} has no weight in scope; check the scope (the backbone submodule's name).")
    for name, value in first.items():
        if name not in second:
            raise ValueError(
                f"parameter '{name}' of the {first_label} is not in the {second_label}: they are not the same "
                "architecture (a model of another backbone?)."
            )
        if shape_of(value) != shape_of(second[name]):
            raise ValueError(
                f"parameter '{name}' has shape {list(shape_of(value))} in the {first_label} but "
                f"{list(shape_of(second[name]))} in the {second_label} (another backbone or image size?)."
            )
    extra = [name for name in second if name not in first]
    if extra:
        raise ValueError(
            f"parameter '{extra[0]}' of the {second_label} is not in the {first_label} ({len(extra)} such "
            "parameters): they are not the same architecture."
        )


def weight_changes(
    pretrained: WeightSource, finetuned: WeightSource, scope: str | None = "backbone"
) -> dict[str, torch.Tensor]:
    """The change of every weight in scope by fine-tuning: ``|W_ft - W_ori|`` (the paper's ``dW^ft``).

    Args:
        pretrained: the pretrained model, or its state dict.
        finetuned: the fine-tuned model of the same architecture, or its state dict.
        scope: submodule whose parameters are compared (``"backbone"``; ``None``: every parameter). For a state
            dict, every floating-point entry whose name starts with ``"<scope>."`` is a weight.

    Returns:
        name -> absolute change (float32, CPU), in the pretrained model's parameter order.

    Raises:
        ValueError: naming the parameter when the two have different names or shapes (e.g. models of two
            backbones), or when nothing is in scope.
    """
    original = _scoped_weights(pretrained, scope)
    tuned = _scoped_weights(finetuned, scope)
    _check_same_layout(original, tuned, "pretrained model", "fine-tuned model")
    return {name: (tuned[name].float().cpu() - weight.float().cpu()).abs() for name, weight in original.items()}


# ---------------------------------------------------------------------------------------------- sparsity
def _top_set(
    scores: Mapping[str, torch.Tensor], fraction: float, scope: str | None, header: Mapping[str, Any]
) -> SparseTrainableSet:
    """The global top ``fraction`` of ``scores`` as a set; ``fraction == 0`` gives an empty set."""
    fraction = float(fraction)  # an int 1 must mean 100%, not one entry (resolve_budget reads ints as counts)
    if not 0.0 <= fraction <= 1.0:  # also False for NaN
        raise ValueError(f"fraction must be in [0, 1] (0.01 means 1%), got {fraction}.")
    shapes = {name: tuple(tensor.shape) for name, tensor in scores.items()}
    if not shapes:
        raise ValueError("no score is given: nothing to rank.")
    info = {**header, "fraction": fraction}
    if fraction == 0.0:
        return SparseTrainableSet(indices={}, shapes=shapes, header=info, scope=scope)
    total = sum(tensor.numel() for tensor in scores.values())
    indices = select_top_k(scores, resolve_budget(fraction, total))
    return SparseTrainableSet(indices=indices, shapes=shapes, header=info, scope=scope)


def top_changed_positions(
    changes: Mapping[str, torch.Tensor], fraction: float, scope: str | None = "backbone"
) -> SparseTrainableSet:
    """The positions of the top ``fraction`` of the weight changes, ranked over all tensors at once.

    Exactly ``round(fraction * total)`` entries are selected (at least one for a positive fraction); ties are
    broken by position (see :func:`~monai_shpeft.sparse_set.select_top_k`), so the sets of growing fractions
    are nested.

    Args:
        changes: name -> weight change, e.g. from :func:`weight_changes`.
        fraction: share of the entries to keep, in ``[0, 1]`` (0.1 = 10%); 0 keeps none.
        scope: the submodule the names belong to (for per-block grouping).

    Returns:
        the selected positions as a :class:`~monai_shpeft.sparse_set.SparseTrainableSet` (``.indices[name]``
        holds sorted flat indices).

    Raises:
        ValueError: for a fraction outside ``[0, 1]``, no tensor, or NaN changes.
    """
    return _top_set(changes, fraction, scope, {"analysis": "top weight changes"})


def transplant_top_changes(
    pretrained_model: WeightSource,
    finetuned_model: nn.Module,
    fraction: float,
    scope: str | None = "backbone",
    changes: Mapping[str, torch.Tensor] | None = None,
) -> nn.Module:
    """The pretrained model with its ``fraction`` most changed weights set to their fine-tuned values.

    This is the paper's ``W_ori <- ft@k%``. The in-scope weights are the pretrained ones except at the top
    positions; everything outside the scope (the head, and any buffer) is the fine-tuned model's, because a
    pretrained backbone has no head for the task. The result is built from a copy of the fine-tuned model,
    so that its head may differ from the one (if any) of ``pretrained_model``. ``fraction = 0`` gives the
    pretrained backbone under the fine-tuned head, ``fraction = 1`` the fine-tuned model itself.

    Args:
        pretrained_model: the pretrained model, or its state dict.
        finetuned_model: the fine-tuned model (left untouched).
        fraction: share of the in-scope entries taken from the fine-tuned model, in ``[0, 1]``.
        scope: the submodule whose weights are mixed.
        changes: precomputed :func:`weight_changes` of the two models (saves recomputing them per fraction).

    Returns:
        a new model, on the fine-tuned model's device, in eval mode.

    Raises:
        ValueError: when the models do not match (see :func:`weight_changes`) or ``fraction`` is out of range.
    """
    if changes is None:
        changes = weight_changes(pretrained_model, finetuned_model, scope)
    return _transplant(pretrained_model, finetuned_model, top_changed_positions(changes, fraction, scope))


def _transplant(pretrained_model: WeightSource, finetuned_model: nn.Module, positions: SparseTrainableSet) -> nn.Module:
    """A copy of the fine-tuned model whose in-scope weights are the pretrained ones outside ``positions``."""
    original = _scoped_weights(pretrained_model, positions.scope)
    _check_same_layout(original, positions.shapes, "pretrained model", "selected positions")
    transplanted = copy.deepcopy(unwrap(finetuned_model))
    target = scoped_parameters(transplanted, positions.scope)
    _check_same_layout(positions.shapes, dict(target), "selected positions", "fine-tuned model")
    with torch.no_grad():
        for name, parameter in target.items():
            chosen = positions.indices[name].to(parameter.device)
            # built flat and copied back whole, so that a non-contiguous parameter is written correctly too
            mixed = original[name].to(device=parameter.device, dtype=parameter.dtype).reshape(-1).clone()
            mixed[chosen] = parameter.detach().reshape(-1)[chosen]
            parameter.copy_(mixed.view(parameter.shape))
    return transplanted.eval()
