"""The interface every fine-tuning method shares: a description, and a function that adapts a classifier.

A method is one small module of :mod:`monai_shpeft.methods` holding an ``apply(model, **options)`` function and a
:class:`MethodInfo`. ``apply`` takes a :class:`~monai_shpeft.backbones.BackboneClassifier` (a pretrained backbone with
a new L2-normalised linear head), changes it in place (inserting modules where the method adds any) and leaves
``requires_grad=True`` on exactly the parameters the method trains; the classification head always trains.
Methods whose trainable entries are chosen from data (SH-PEFT, SPT) also train through a gradient mask, applied
by :class:`~monai_shpeft.handlers.GradientMaskHandler`; :func:`count_trainable` counts their selected entries.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from monai_shpeft.sparse_set import SparseTrainableSet

__all__ = [
    "MethodInfo",
    "TrainableCount",
    "DelegatingWrapper",
    "count_trainable",
    "freeze_all_but",
    "backbone_of",
    "head_of",
    "transformer_blocks",
]


@dataclass(frozen=True)
class MethodInfo:
    """What a method is, for tables, logs and the benchmark.

    Args:
        name: the value of the bundles' ``method`` knob.
        kind: ``"selective"``, ``"additive"``, ``"prompt"``, ``"selective+additive"``, ``"side network"`` or
            ``"reference"`` (full fine-tuning and linear probing).
        summary: one line saying what trains.
        reference: the paper that introduced it.
        apply: ``apply(model, **options) -> model`` (``None`` when the bundle's handlers or network factory do it).
    """

    name: str
    kind: str
    summary: str
    reference: str
    apply: Callable[..., nn.Module] | None = None


@dataclass(frozen=True)
class TrainableCount:
    """Trainable parameters of a network as a method trains it.

    Attributes:
        trainable: trainable scalars (masked tensors count their selected entries only), head included.
        total: all scalars of the network, including modules the method added and frozen ones.
    """

    trainable: int
    total: int

    @property
    def ratio(self) -> float:
        """``trainable / total``: the ratio ``r`` of the FPT paper's PPE score."""
        return self.trainable / max(self.total, 1)

    def as_dict(self) -> dict[str, float | int]:
        """JSON-friendly form."""
        return {"trainable": self.trainable, "total": self.total, "ratio": self.ratio}


def count_trainable(model: nn.Module, trainable_set: SparseTrainableSet | None = None) -> TrainableCount:
    """Count a network's trainable scalars.

    Args:
        model: the network (DDP/DataParallel wrappers are unwrapped).
        trainable_set: the sparse set masking the gradients, if any; its tensors count their selected entries
            (whatever their ``requires_grad``), the others count whole when they require a gradient.

    Returns:
        the count.
    """
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    masked = trainable_set.counts_per_tensor() if trainable_set is not None else {}
    trainable = total = 0
    for name, param in model.named_parameters():
        total += param.numel()
        if name in masked:
            trainable += masked[name]
        elif param.requires_grad:
            trainable += param.numel()
    return TrainableCount(trainable=trainable, total=total)


def head_of(model: nn.Module) -> nn.Module:
    """The classification head of a :class:`~monai_shpeft.backbones.BackboneClassifier`.

    Raises:
        ValueError: when the model has no ``head``/``backbone`` pair.
    """
    return _backbone_and_head(model)[1]


def backbone_of(model: nn.Module) -> nn.Module:
    """The backbone of a :class:`~monai_shpeft.backbones.BackboneClassifier`.

    Raises:
        ValueError: when the model has no ``head``/``backbone`` pair.
    """
    return _backbone_and_head(model)[0]


def _backbone_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """``(backbone, head)`` of a backbone classifier; raises ``ValueError`` when either is not a module."""
    head = getattr(model, "head", None)
    backbone = getattr(model, "backbone", None)
    if not isinstance(head, nn.Module) or not isinstance(backbone, nn.Module):
        raise ValueError(
            f"{type(model).__name__} is not a backbone classifier (no 'backbone' and 'head'); build it with "
            "monai_shpeft.backbones.build_classifier."
        )
    return backbone, head


def freeze_all_but(model: nn.Module, trainable: Iterable[torch.Tensor] | Callable[[str, nn.Parameter], bool]) -> Any:
    """Set ``requires_grad`` so that only the given parameters and the head train.

    Args:
        model: a backbone classifier.
        trainable: the parameters to train (parameters of ``model``; ``nn.Linear`` declares its weight a
            ``Tensor``), or a predicate ``(name, parameter) -> bool``.

    Returns:
        ``model``.
    """
    head_ids = {id(p) for p in head_of(model).parameters()}
    if callable(trainable):
        keep = {id(p) for n, p in model.named_parameters() if trainable(n, p)}
    else:
        keep = {id(p) for p in trainable}
    for param in model.parameters():
        param.requires_grad_(id(param) in keep or id(param) in head_ids)
    return model


def transformer_blocks(backbone: nn.Module) -> nn.ModuleList | nn.Sequential:
    """The blocks of a timm (``blocks``) or open_clip (``transformer.resblocks``) ViT, in depth order.

    Args:
        backbone: the backbone.

    Returns:
        the ``ModuleList``/``Sequential`` of blocks (replace entries in it to wrap a block).

    Raises:
        ValueError: when neither layout is found.
    """
    blocks = getattr(backbone, "blocks", None)
    if not isinstance(blocks, (nn.ModuleList, nn.Sequential)) or len(blocks) == 0:
        blocks = getattr(getattr(backbone, "transformer", None), "resblocks", None)
    if not isinstance(blocks, (nn.ModuleList, nn.Sequential)) or len(blocks) == 0:
        raise ValueError(
            f"{type(backbone).__name__} has no transformer blocks (expected timm 'blocks' or open_clip "
            "'transformer.resblocks')."
        )
    return blocks


class DelegatingWrapper(nn.Module):
    """A module that wraps another and passes attribute reads it does not have on to it.

    Library code reads attributes of the modules a method wraps (open_clip's ``get_weight_dtype`` reads
    ``mlp.c_fc.weight``; timm reads ``attn.qkv.in_features``), so wrappers must still answer them. Subclasses name
    the wrapped submodule in ``wrapped_attribute``.
    """

    wrapped_attribute = "base"

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == self.wrapped_attribute:  # not set yet (unpickling): no recursion
                raise
            return getattr(getattr(self, self.wrapped_attribute), name)
