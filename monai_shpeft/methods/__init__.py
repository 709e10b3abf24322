"""Fine-tuning methods selectable by the bundles' and the benchmark's ``method`` knob.

Every method lives in its own small module behind the interface of :mod:`monai_shpeft.methods.base`; this
package maps names to them (imported lazily, so that peft is only loaded when a peft method is used).

=============  =====================  ==========================================================================
name           kind                   what trains
=============  =====================  ==========================================================================
linear_probe   reference              the head, fitted by logistic regression on frozen features (no epoch)
full           reference              every weight
linear         reference              the head only, by gradient steps
bitfit         selective              biases
ln             selective              LayerNorm scales and shifts (HF peft LN tuning)
attn           selective              attention projections
lora           additive               low-rank updates of the attention projections (HF peft LoRA)
adapter        additive               AdaptFormer parallel adapters beside every MLP
ssf            additive               per-channel scale and shift after every operation
vpt_shallow    prompt                 prompt tokens at the input of the first block
vpt_deep       prompt                 prompt tokens at the input of every block
spt_lora       selective+additive     sensitivity-chosen weights, LoRA where they cluster (SPT)
gps            selective              the largest-gradient incoming connections of every neuron (GPS)
shpeft         selective              importance-chosen weights, hybrid task-specific/agnostic (SH-PEFT)
fpt            side network           a light side network fed by the frozen model through prompts (FPT)
=============  =====================  ==========================================================================

The head trains in every method, and starts from the linear probe's fit in all but FPT (``head_warmup``,
:class:`~monai_shpeft.handlers.HeadWarmupHandler`). ``shpeft``, ``gps`` and ``spt_lora`` choose their weights from
data when training starts (:class:`~monai_shpeft.handlers.ImportanceEstimationHandler`,
:class:`~monai_shpeft.handlers.SPTLoRAHandler`);
``fpt`` is a network of its own (:func:`~monai_shpeft.networks.build_fpt`).
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Mapping
from typing import Any

import torch.nn as nn

from monai_shpeft.errors import SettingsError
from monai_shpeft.methods.base import MethodInfo, TrainableCount, count_trainable

__all__ = [
    "METHODS",
    "OPTIMIZERS",
    "MethodInfo",
    "TrainableCount",
    "check_method",
    "check_optimizer",
    "CHECKPOINT_RULES",
    "DEFAULT_CHECKPOINT_RULES",
    "DEFAULT_HEAD_LEARNING_RATES",
    "DEFAULT_LEARNING_RATES",
    "resolve_checkpoint_rule",
    "default_learning_rate",
    "count_trainable",
    "method_info",
    "resolve_learning_rates",
    "prepare_network",
    "build_network",
    "build_optimizer",
]

logger = logging.getLogger(__name__)

#: every method, in the order of the benchmark's tables
METHODS = (
    "linear_probe",
    "full",
    "linear",
    "bitfit",
    "ln",
    "attn",
    "lora",
    "adapter",
    "ssf",
    "vpt_shallow",
    "vpt_deep",
    "spt_lora",
    "gps",
    "shpeft",
    "fpt",
)

#: each method's default AdamW learning rate (the bundles' ``learning_rate: null``, the benchmark's protocols).
#: Methods that move pretrained weights take a small rate: AdamW moves every trained entry by about the rate per
#: step whatever its gradient, and the head starts from the linear probe (LP-FT), so the backbone only needs to
#: refine. SH-PEFT's 3e-5 (head 1e-5) was the best mean validation macro-F1 of 1e-5, 3e-5 and 1e-4 on BUSI folds 0
#: and 1 (docs/bundles.md, "The recipe"); GPS, the other sparse 1% set, takes the same. Methods that train new
#: parameters from zero or near zero take 1e-3, as their papers do. FPT's side network starts from random weights:
#: 3e-3 for 20 epochs beat 1e-3 on the validation parts of BUSI folds 0-2 (benchmarks/fpt_recipe.py,
#: docs/benchmarks/fpt_recipe_cpu.json); 5e-4 for 5 epochs never left the majority class.
DEFAULT_LEARNING_RATES = {
    "linear_probe": 1e-3,
    "full": 1e-5,
    "linear": 1e-3,
    "bitfit": 1e-3,
    "ln": 1e-3,
    "attn": 2e-5,
    "lora": 1e-3,
    "adapter": 1e-3,
    "ssf": 1e-3,
    "vpt_shallow": 1e-3,
    "vpt_deep": 1e-3,
    "spt_lora": 5e-4,
    "gps": 3e-5,
    "shpeft": 3e-5,
    "fpt": 3e-3,
}

#: the head's default rate where it differs from the backbone's: the sparse methods move the warmed head slowly
#: (it is already the fitted probe) while their few backbone entries move at the larger rate above.
DEFAULT_HEAD_LEARNING_RATES = {
    "gps": 1e-5,
    "shpeft": 1e-5,
}

#: which weights a run keeps: ``best`` (the validation with the best key metric, the warmed probe as epoch 0
#: included) or ``average`` (the mean of the weights after every epoch, stochastic weight averaging)
CHECKPOINT_RULES = ("best", "average")

#: per-method rule where it differs from ``best``, chosen on BUSI validation folds: for SH-PEFT the average of
#: epochs 1-5 scored 0.769 macro-F1 against 0.740 for the best epoch, each rule selecting on one half of every
#: validation part and scored on the other (docs/benchmarks/checkpoint_selection.json)
DEFAULT_CHECKPOINT_RULES = {
    "gps": "average",
    "shpeft": "average",
}

#: optimizers the bundles' ``optimizer_name`` knob offers to the classifier methods (FPT always uses AdamW)
OPTIMIZERS = ("sgd", "adamw")

# name -> "module:attribute" of its MethodInfo
_REGISTRY = {
    "full": "selective:FULL",
    "linear": "selective:LINEAR",
    "linear_probe": "selective:LINEAR_PROBE",
    "bitfit": "selective:BITFIT",
    "attn": "selective:ATTENTION",
    "ln": "peft_tuners:LN",
    "lora": "peft_tuners:LORA",
    "adapter": "adapter:INFO",
    "ssf": "ssf:INFO",
    "vpt_shallow": "vpt:SHALLOW_INFO",
    "vpt_deep": "vpt:DEEP_INFO",
    "spt_lora": "spt_lora:INFO",
    "gps": "gps:INFO",
    "shpeft": "shpeft:INFO",
    "fpt": "fpt:INFO",
}


def check_method(method: str) -> str:
    """Return ``method`` when it is supported.

    Args:
        method: the bundle's ``method`` knob.

    Returns:
        the method.

    Raises:
        ValueError: naming the supported methods when ``method`` is not one of them.
    """
    if method not in METHODS:
        raise SettingsError(f"Unknown method {method!r}; supported methods: {', '.join(METHODS)}.")
    return method


def check_optimizer(name: str) -> str:
    """Return ``name`` when it is one of :data:`OPTIMIZERS`.

    Args:
        name: the bundle's ``optimizer_name`` knob.

    Returns:
        the name.

    Raises:
        ValueError: naming the supported optimizers otherwise.
    """
    if name not in OPTIMIZERS:
        raise SettingsError(f"Unknown optimizer_name {name!r}; supported: {', '.join(OPTIMIZERS)}.")
    return name


def default_learning_rate(method: str) -> float:
    """The default learning rate of ``method`` (:data:`DEFAULT_LEARNING_RATES`).

    Args:
        method: a name of :data:`METHODS`.

    Returns:
        the rate.
    """
    return DEFAULT_LEARNING_RATES[check_method(method)]


def resolve_learning_rates(
    method: str, learning_rate: float | str | None = None, head_learning_rate: float | str | None = None
) -> tuple[float, float]:
    """The backbone's and the head's learning rates of a run, as the bundles and the benchmark resolve them.

    Args:
        method: a name of :data:`METHODS`.
        learning_rate: the ``learning_rate`` knob; ``None``: the method's default (:data:`DEFAULT_LEARNING_RATES`).
        head_learning_rate: the ``head_learning_rate`` knob; ``None``: the method's default head rate
            (:data:`DEFAULT_HEAD_LEARNING_RATES`, else the backbone's) when ``learning_rate`` is also ``None``, and
            the given ``learning_rate`` otherwise, so one knob sets both as the papers' recipes do.

    Returns:
        ``(backbone rate, head rate)``.

    Raises:
        ValueError: when ``method`` is unknown or a rate is not a positive number.
    """
    method = check_method(method)
    learning_rate = _positive_rate("learning_rate", learning_rate)
    head_learning_rate = _positive_rate("head_learning_rate", head_learning_rate)
    backbone = DEFAULT_LEARNING_RATES[method] if learning_rate is None else learning_rate
    if head_learning_rate is not None:
        return backbone, head_learning_rate
    if learning_rate is None:
        return backbone, DEFAULT_HEAD_LEARNING_RATES.get(method, backbone)
    return backbone, learning_rate


def _positive_rate(knob: str, rate: float | str | None) -> float | None:
    # the command line hands numbers over as strings ("1e-4"); booleans are refused, not read as 1.0
    if rate is None:
        return None
    try:
        value = float(rate) if not isinstance(rate, bool) else float("nan")
    except (TypeError, ValueError):
        value = float("nan")
    if not value > 0:
        raise SettingsError(f"{knob} must be a positive number, got {rate!r}.")
    return value


def method_info(method: str) -> MethodInfo:
    """The description of a method.

    Args:
        method: a name of :data:`METHODS`.

    Returns:
        its :class:`MethodInfo`.
    """
    module, attribute = _REGISTRY[check_method(method)].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), attribute)


def prepare_network(
    model: nn.Module,
    method: str,
    options: Mapping[str, Any] | None = None,
    structure_file: str | os.PathLike | None = None,
) -> nn.Module:
    """Adapt a backbone classifier for ``method``: insert its modules and set what trains.

    Args:
        model: a :class:`~monai_shpeft.backbones.BackboneClassifier`.
        method: a name of :data:`METHODS` other than ``fpt`` (an FPT network is built by its own factory).
        options: the method's keyword options (e.g. ``{"rank": 8}`` for ``lora``); ``None`` uses its defaults.
        structure_file: for ``spt_lora``, a saved trainable set whose LoRA modules are re-created (evaluation and
            inference, before loading the trained weights). During training leave it ``None``: the structure is
            chosen from data when training starts.

    Returns:
        the adapted model (the same object).

    Raises:
        ValueError: for ``fpt`` or an unknown method.
    """
    if check_method(method) == "fpt":
        raise ValueError("method 'fpt' builds its own network: use monai_shpeft.networks.build_fpt.")
    info = method_info(method)
    if method == "spt_lora":
        if structure_file is None:
            return model  # SPTLoRAHandler inserts the LoRA modules once the sensitivity is known
        from monai_shpeft.methods.spt_lora import apply_from_file

        return apply_from_file(model, structure_file)
    if info.apply is None:
        return model
    model = info.apply(model, **dict(options or {}))
    count = count_trainable(model)
    logger.info(
        "Method %s (%s): %s trainable of %s parameters (%.3f%%), head included.",
        method,
        info.summary,
        f"{count.trainable:,}",
        f"{count.total:,}",
        100 * count.ratio,
    )
    return model


def resolve_checkpoint_rule(method: str, checkpoint_rule: str | None = None) -> str:
    """The checkpoint rule a run uses.

    Args:
        method: a method name.
        checkpoint_rule: the ``checkpoint_rule`` knob; ``None`` takes the method's default
            (:data:`DEFAULT_CHECKPOINT_RULES`, else ``best``).

    Returns:
        ``"best"`` or ``"average"``.

    Raises:
        SettingsError: for an unknown rule.
    """
    method = check_method(method)
    if checkpoint_rule is None:
        return DEFAULT_CHECKPOINT_RULES.get(method, "best")
    if checkpoint_rule not in CHECKPOINT_RULES:
        raise SettingsError(
            f"checkpoint_rule must be one of {list(CHECKPOINT_RULES)} or null (the method's default), got "
            f"{checkpoint_rule!r} (e.g. --checkpoint_rule average)."
        )
    return checkpoint_rule


# the bundle components build on everything above (and on the backbones and FPT); imported last for that reason
from monai_shpeft.methods.components import build_network, build_optimizer  # noqa: E402
