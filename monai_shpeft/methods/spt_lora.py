"""SPT-LoRA (He et al., "Sensitivity-Aware Visual Parameter-Efficient Fine-Tuning", ICCV 2023).

SPT spends a fixed budget of trainable parameters where the task needs them:

1. *Sensitivity*: the task-specific importance of every entry of the backbone's weight matrices (the weights of
   its ``nn.Linear`` layers), accumulated squared gradients over a calibration pass
   (:func:`~monai_shpeft.importance.estimate_importance` with ``strategy="l2"``, ``mode="task_specific"``).
2. *Selection*: the top ``budget`` entries over all those matrices are the sensitive ones.
3. *Allocation*: a matrix ``W`` of shape ``(out, in)`` whose number of sensitive entries is at least the cost of a
   rank-``r`` LoRA on it, ``r * (in + out)``, gets *structured* tuning: a LoRA update (HF peft), with ``W`` itself
   frozen. Every other matrix gets *unstructured* tuning: exactly its sensitive entries train, through the gradient
   mask of :class:`~monai_shpeft.handlers.GradientMaskHandler`.

The classification head always trains fully. Biases, norms, embeddings and non-linear layers of the backbone stay
frozen. The whole choice is saved as a :class:`~monai_shpeft.sparse_set.SparseTrainableSet` over the backbone *after*
LoRA injection (LoRA parameters fully selected, LoRA-ed base weights frozen, unstructured matrices their entries), its
header naming the LoRA modules, rank and alpha so that :func:`apply_from_file` can rebuild the structure before a
checkpoint is loaded.

``nn.Linear`` layers inside an ``nn.MultiheadAttention`` (open_clip's ``attn.out_proj``) are candidates for
unstructured tuning only: the attention calls their weight functionally, so a LoRA wrapped around them would never
run. The fused ``in_proj_weight`` of such an attention is not an ``nn.Linear`` weight and is not a candidate.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from monai_shpeft.importance import scoped_parameters, unwrap
from monai_shpeft.methods.base import MethodInfo, freeze_all_but, head_of
from monai_shpeft.sparse_set import SparseSetMismatchError, SparseTrainableSet, resolve_budget, select_top_k

__all__ = [
    "INFO",
    "METHOD_NAME",
    "SPTSelection",
    "apply",
    "apply_from_file",
    "build_trainable_set",
    "linear_weight_names",
    "lora_cost",
    "lora_parameters",
    "select_spt",
]

#: the value of the bundles' ``method`` knob, and of the ``method`` field of a saved set's header
METHOD_NAME = "spt_lora"
#: peft's name for the single adapter SPT-LoRA injects
ADAPTER_NAME = "default"
_WEIGHT_SUFFIX = ".weight"


@dataclass
class SPTSelection:
    """Where SPT puts its budget: LoRA on some weight matrices, sensitive entries of the others.

    Attributes:
        lora_modules: full module names of the matrices that get LoRA (e.g. ``"backbone.blocks.0.attn.qkv"``), in
            model order.
        sparse: full weight name -> sorted flat indices (int64, CPU) of the entries tuned unstructured; only
            matrices with at least one such entry appear.
        rank: LoRA rank ``r`` the allocation was made for.
        budget: the budget as given (ratio of the candidate entries, or an absolute count).
        num_candidates: entries of all candidate matrices.
        num_sensitive: sensitive entries selected by the budget.
        num_lora_parameters: parameters the LoRA updates add, ``sum r * (in + out)`` over ``lora_modules``.
        sensitive_per_matrix: weight name -> its number of sensitive entries, for every candidate matrix.
    """

    lora_modules: list[str]
    sparse: dict[str, torch.Tensor]
    rank: int
    budget: float | int
    num_candidates: int
    num_sensitive: int
    num_lora_parameters: int
    sensitive_per_matrix: dict[str, int] = field(default_factory=dict)

    @property
    def num_unstructured(self) -> int:
        """Entries tuned through the gradient mask."""
        return sum(int(i.numel()) for i in self.sparse.values())

    @property
    def num_trainable(self) -> int:
        """Trainable backbone parameters: LoRA parameters plus unstructured entries (the head is not counted)."""
        return self.num_lora_parameters + self.num_unstructured

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly counts (no indices)."""
        return {
            "rank": self.rank,
            "budget": self.budget,
            "candidates": self.num_candidates,
            "sensitive": self.num_sensitive,
            "lora_modules": list(self.lora_modules),
            "lora_parameters": self.num_lora_parameters,
            "unstructured": self.num_unstructured,
            "unstructured_matrices": len(self.sparse),
        }


def lora_cost(shape: Sequence[int], rank: int) -> int:
    """Parameters of a rank-``rank`` LoRA on a weight of shape ``(out, in)``: ``rank * (in + out)``.

    Args:
        shape: the weight's shape.
        rank: the LoRA rank.

    Returns:
        the number of LoRA parameters.

    Raises:
        ValueError: when the shape is not that of a matrix.
    """
    if len(shape) != 2:
        raise ValueError(f"LoRA adapts weight matrices; got a tensor of shape {list(shape)}.")
    return int(rank) * (int(shape[0]) + int(shape[1]))


def linear_weight_names(model: nn.Module, scope: str = "backbone", lora_capable_only: bool = False) -> list[str]:
    """Full names of the weights of the ``nn.Linear`` layers in ``model.<scope>``, in model order.

    Args:
        model: a backbone classifier (DDP / DataParallel wrappers are unwrapped).
        scope: the submodule whose layers are candidates.
        lora_capable_only: leave out layers peft's LoRA cannot adapt (those inside an ``nn.MultiheadAttention``,
            whose weight the attention uses functionally).

    Returns:
        names such as ``"backbone.blocks.0.attn.qkv.weight"``.

    Raises:
        ValueError: when ``model`` has no submodule ``scope``.
    """
    network = unwrap(model)
    root = getattr(network, scope, None)
    if not isinstance(root, nn.Module):
        raise ValueError(f"{type(network).__name__} has no submodule '{scope}'.")
    inside_attention: set[str] = set()
    for name, module in root.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            inside_attention.update(f"{name}.{child}" if name else child for child, _ in module.named_modules())
    names = []
    for name, module in root.named_modules():
        if not isinstance(module, nn.Linear) or not isinstance(module.weight, nn.Parameter):
            continue
        if lora_capable_only and name in inside_attention:
            continue
        names.append(f"{scope}.{name}{_WEIGHT_SUFFIX}")
    return names


def select_spt(
    importance: Mapping[str, torch.Tensor],
    budget: float | int = 0.01,
    rank: int = 8,
    lora_capable: Collection[str] | None = None,
) -> SPTSelection:
    """Allocate the budget between LoRA and unstructured tuning (SPT's Algorithm 1).

    The top ``budget`` entries of ``importance`` over all matrices are the sensitive ones (ties broken by position,
    see :func:`~monai_shpeft.sparse_set.select_top_k`). A matrix with at least ``rank * (in + out)`` sensitive
    entries gets LoRA; the sensitive entries of every other matrix are tuned unstructured.

    Args:
        importance: weight name (``"<module>.weight"``) -> sensitivity of each entry, for every candidate matrix
            (2-D), in model order.
        budget: sensitive entries, as a ratio of all candidate entries (float in (0, 1]) or a count (int).
        rank: LoRA rank ``r``.
        lora_capable: weight names that may get LoRA; ``None`` allows every matrix. The others are always tuned
            unstructured.

    Returns:
        the allocation.

    Raises:
        ValueError: for an empty importance, a tensor that is not a matrix or not a ``.weight``, a rank below 1,
            or a budget out of range.
    """
    if isinstance(rank, bool) or int(rank) < 1:
        raise ValueError(f"rank must be a positive integer, got {rank!r}.")
    rank = int(rank)
    if not importance:
        raise ValueError("SPT needs the sensitivity of at least one weight matrix; got none.")
    for name, scores in importance.items():
        if scores.dim() != 2 or not name.endswith(_WEIGHT_SUFFIX):
            raise ValueError(
                f"SPT allocates over weight matrices named '<module>.weight'; got '{name}' of shape "
                f"{list(scores.shape)}."
            )
    total = sum(int(t.numel()) for t in importance.values())
    k = resolve_budget(budget, total)
    chosen = select_top_k(importance, k)
    lora_modules: list[str] = []
    sparse: dict[str, torch.Tensor] = {}
    lora_parameters = 0
    per_matrix: dict[str, int] = {}
    for name, indices in chosen.items():
        count = int(indices.numel())
        per_matrix[name] = count
        if count == 0:
            continue
        cost = lora_cost(importance[name].shape, rank)
        if count >= cost and (lora_capable is None or name in lora_capable):
            lora_modules.append(name[: -len(_WEIGHT_SUFFIX)])
            lora_parameters += cost
        else:
            sparse[name] = indices
    return SPTSelection(
        lora_modules=lora_modules,
        sparse=sparse,
        rank=rank,
        budget=budget,
        num_candidates=total,
        num_sensitive=k,
        num_lora_parameters=lora_parameters,
        sensitive_per_matrix=per_matrix,
    )


def apply(model: nn.Module, lora_modules: Sequence[str] = (), rank: int = 8, alpha: float = 8.0) -> nn.Module:
    """Inject the LoRA updates of an SPT allocation (HF peft) and freeze the rest of the backbone.

    Afterwards ``requires_grad`` is set on the LoRA parameters and the head only; the unstructured entries of an
    allocation train through :class:`~monai_shpeft.handlers.GradientMaskHandler`, which enables their tensors.

    Args:
        model: a backbone classifier (DDP / DataParallel wrappers are unwrapped); changed in place.
        lora_modules: full names of the ``nn.Linear`` modules to adapt; empty injects nothing.
        rank: LoRA rank ``r``.
        alpha: LoRA ``alpha`` (the update is scaled by ``alpha / r``).

    Returns:
        ``model``.

    Raises:
        ValueError: when ``model`` is not a backbone classifier, or a name is not an adaptable ``nn.Linear``.
    """
    network = unwrap(model)
    head_of(network)
    names = list(dict.fromkeys(lora_modules))
    if names:
        if isinstance(rank, bool) or int(rank) < 1:
            raise ValueError(f"rank must be a positive integer, got {rank!r}.")
        modules = dict(network.named_modules())
        capable = {n[: -len(_WEIGHT_SUFFIX)] for n in linear_weight_names(network, lora_capable_only=True)}
        for name in names:
            if name not in capable:
                found = type(modules[name]).__name__ if name in modules else "no such module"
                raise ValueError(
                    f"spt_lora: cannot put LoRA on '{name}' ({found}); it must be an nn.Linear of the backbone "
                    "outside any nn.MultiheadAttention, not adapted already."
                )
        from peft import LoraConfig, inject_adapter_in_model

        config = LoraConfig(
            r=int(rank),
            lora_alpha=float(alpha),  # type: ignore[arg-type]  # peft annotates lora_alpha as int; it only divides by r
            lora_dropout=0.0,
            target_modules=names,
        )
        inject_adapter_in_model(config, network, adapter_name=ADAPTER_NAME)
    freeze_all_but(network, lora_parameters(network, names).values())
    return model


def lora_parameters(model: nn.Module, lora_modules: Sequence[str]) -> dict[str, nn.Parameter]:
    """The parameters LoRA added to the named modules (everything but their ``base_layer``), by full name.

    Args:
        model: the network after :func:`apply` (DDP / DataParallel wrappers are unwrapped).
        lora_modules: the adapted modules' full names.

    Returns:
        name -> parameter, in model order.

    Raises:
        ValueError: when a named module carries no LoRA.
    """
    network = unwrap(model)
    modules = dict(network.named_modules())
    result: dict[str, nn.Parameter] = {}
    for module_name in lora_modules:
        module = modules.get(module_name)
        if module is None or not isinstance(getattr(module, "base_layer", None), nn.Module):
            raise ValueError(
                f"spt_lora: module '{module_name}' carries no LoRA; inject it with monai_shpeft.methods.spt_lora.apply "
                "first."
            )
        for name, param in module.named_parameters(prefix=module_name):
            if not name.startswith(f"{module_name}.base_layer."):
                result[name] = param
    return result


def build_trainable_set(
    model: nn.Module, selection: SPTSelection, header: Mapping[str, Any] | None = None
) -> SparseTrainableSet:
    """The sparse trainable set of an SPT allocation, over the backbone of the network *after* :func:`apply`.

    LoRA parameters are fully selected; the base weights (and biases) of LoRA-ed layers, and every other backbone
    parameter (biases, norms, embeddings, non-linear layers), have no entry; unstructured matrices have their
    sensitive entries.

    Args:
        model: the network with the allocation's LoRA injected (DDP / DataParallel wrappers are unwrapped).
        selection: the allocation, from :func:`select_spt`.
        header: extra description (backbone, estimation iterations, ``alpha``...). ``method``, ``rank``,
            ``lora_modules`` and the counts are filled in; ``alpha`` defaults to the injected layers' own.

    Returns:
        the set, with scope ``"backbone"``; it passes ``check_compatible(model.named_parameters())``.

    Raises:
        ValueError: when a LoRA module carries no LoRA or an unstructured matrix is not in the backbone with the
            indices' range.
    """
    network = unwrap(model)
    params = scoped_parameters(network, "backbone")
    indices: dict[str, torch.Tensor] = {
        name: torch.arange(param.numel(), dtype=torch.int64)
        for name, param in lora_parameters(network, selection.lora_modules).items()
    }
    for name, entries in selection.sparse.items():
        if name not in params:
            raise ValueError(
                f"spt_lora: the unstructured matrix '{name}' is not a parameter of the backbone (LoRA put on it, "
                "or another model?)."
            )
        indices[name] = entries
    info: dict[str, Any] = {"method": METHOD_NAME, **dict(header or {})}
    if "backbone" not in info and hasattr(network, "backbone_name"):
        info["backbone"] = network.backbone_name
    info.setdefault("alpha", _injected_alpha(network, selection.lora_modules))
    info.update(selection.as_dict())
    info["method"] = METHOD_NAME
    trainable_set = SparseTrainableSet(
        indices=indices, shapes={n: tuple(p.shape) for n, p in params.items()}, header=info, scope="backbone"
    )
    trainable_set.check_compatible(network.named_parameters())
    return trainable_set


def apply_from_file(model: nn.Module, set_file: str | os.PathLike) -> nn.Module:
    """Rebuild the SPT-LoRA structure a saved set describes, e.g. before loading a trained checkpoint.

    Injects the LoRA modules named in the set's header with its rank and alpha, checks that the set fits the
    resulting network, and enables ``requires_grad`` on exactly the tensors the set trains (plus the head).

    Args:
        model: a fresh backbone classifier of the same architecture; changed in place.
        set_file: the ``.safetensors`` set saved by :class:`~monai_shpeft.handlers.SPTLoRAHandler`.

    Returns:
        ``model``.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: naming the file, when it is not an SPT-LoRA set or its header is incomplete.
        SparseSetMismatchError: naming the file, when the set was made for another architecture.
    """
    trainable_set = SparseTrainableSet.load(set_file)
    header = trainable_set.header
    if header.get("method") != METHOD_NAME:
        raise ValueError(
            f"{os.fspath(set_file)} is not an SPT-LoRA trainable set (its header says method="
            f"{header.get('method')!r}, expected {METHOD_NAME!r}); pass the set saved by SPTLoRAHandler."
        )
    try:
        lora_modules = _as_name_list(header.get("lora_modules", []))
        rank = int(header["rank"])
        alpha = float(header["alpha"]) if lora_modules else 8.0
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(
            f"{os.fspath(set_file)} has an incomplete SPT-LoRA header (lora_modules, rank, alpha): {error!r}"
        ) from error
    try:
        apply(model, lora_modules, rank=rank, alpha=alpha)
    except ValueError as error:
        made_for = header.get("backbone", "an unknown backbone")
        raise SparseSetMismatchError(
            f"The SPT-LoRA set {os.fspath(set_file)} was made for {made_for} and does not fit this model: {error}"
        ) from error
    network = unwrap(model)
    trainable_set.check_compatible(network.named_parameters(), source=os.fspath(set_file))
    params = dict(network.named_parameters())
    for name in trainable_set.trainable_names():
        params[name].requires_grad_(True)
    return model


def _injected_alpha(network: nn.Module, lora_modules: Sequence[str]) -> float | None:
    """The ``alpha`` of the first injected LoRA layer, or ``None`` when there is none."""
    modules = dict(network.named_modules())
    for name in lora_modules:
        alphas = getattr(modules.get(name), "lora_alpha", None)
        if isinstance(alphas, Mapping) and ADAPTER_NAME in alphas:
            return float(alphas[ADAPTER_NAME])
    return None


def _as_name_list(value: Any) -> list[str]:
    """A header's module list, stored as a JSON list (or, from other writers, a JSON string of one)."""
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"lora_modules must be a list of module names, got {value!r}")
    return list(value)


INFO = MethodInfo(
    name=METHOD_NAME,
    kind="selective+additive",
    summary=(
        "the backbone's most sensitive linear weights (squared gradients, top 1%): rank-8 LoRA on matrices with "
        "enough of them, the sensitive entries of the others, plus the head"
    ),
    reference="He et al., SPT, ICCV 2023",
    apply=apply,
)
