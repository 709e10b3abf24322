"""GPS (Zhang et al., "Gradient-based Parameter Selection for Efficient Fine-Tuning", CVPR 2024).

GPS trains a few connections of every neuron of the pretrained backbone:

1. *Gradients*: the gradient of the training loss with respect to every backbone weight, accumulated over a pass of
   the training data, in magnitude: ``|sum_b dE_b/dw|``. This is SH-PEFT's task-specific L1 term
   (:func:`~monai_shpeft.importance.estimate_importance` with ``strategy="l1"``, ``mode="task_specific"``).
2. *Per-neuron selection*: every output neuron of every weight matrix (a row of an ``nn.Linear`` weight, of the fused
   ``in_proj_weight`` of an ``nn.MultiheadAttention``, or an output channel of the patch-embedding convolution)
   keeps its top ``K`` incoming connections by that magnitude
   (:meth:`~monai_shpeft.sparse_set.SparseTrainableSet.from_importance_per_row`). ``K`` is the same for every neuron,
   chosen so that the total is about ``budget`` of the backbone's parameters (``K >= 1``).
3. *Training*: only those entries, plus the classification head, train, through the gradient mask of
   :class:`~monai_shpeft.handlers.GradientMaskHandler`.

Non-matrix parameters (biases, norms, LayerScale scales, position and class tokens) are never selected: GPS selects
weight connections. (The authors' released code also trains biases and LayerScale scales whole; this baseline keeps
to the paper's connections, so that its count is exactly the selected entries plus the head.) The authors' released
scripts compute the gradients with a supervised contrastive loss; here they come from the bundle's training loss, in
the same pass that SH-PEFT's importance estimation makes.

The bundles run it with :class:`~monai_shpeft.handlers.ImportanceEstimationHandler` (``method="gps"`` applies
:data:`RECIPE`) and :class:`~monai_shpeft.handlers.GradientMaskHandler`, the pair SH-PEFT uses; the network trains as
a whole until the mask chosen when training starts restricts it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import torch.nn as nn

from monai_shpeft.methods.base import MethodInfo
from monai_shpeft.utils import unwrap

__all__ = ["INFO", "METHOD_NAME", "RECIPE", "neuron_weight_names"]

#: the value of the bundles' ``method`` knob
METHOD_NAME = "gps"
#: the :class:`~monai_shpeft.handlers.ImportanceEstimationHandler` arguments that make its set GPS's:
#: ``|accumulated gradient|`` ranked per neuron
RECIPE: Mapping[str, str] = MappingProxyType({"strategy": "l1", "mode": "task_specific", "selection": "per_neuron"})


def neuron_weight_names(model: nn.Module, scope: str | None = "backbone") -> list[str]:
    """Full names of the weight matrices whose rows are neurons, in model order.

    These are the weights of ``nn.Linear`` layers and of convolutions (the patch embedding), and the input
    projections of ``nn.MultiheadAttention`` (open_clip's fused ``in_proj_weight``, or its separate ``q/k/v``
    weights), each of shape ``(out, ...)`` with one row per output neuron. Position embeddings, tokens, biases and
    norms are not among them, whatever their shape.

    Args:
        model: a backbone classifier (DDP / DataParallel wrappers are unwrapped).
        scope: the submodule whose weights are candidates; ``None`` takes the whole model.

    Returns:
        names such as ``"backbone.blocks.0.attn.qkv.weight"``.

    Raises:
        ValueError: when ``model`` has no submodule ``scope``.
    """
    network = unwrap(model)
    root = network if scope is None else getattr(network, scope, None)
    if not isinstance(root, nn.Module):
        raise ValueError(f"{type(network).__name__} has no submodule '{scope}'.")
    prefix = f"{scope}." if scope else ""
    names = []
    for module_name, module in root.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            attributes = ["weight"]
        elif isinstance(module, nn.MultiheadAttention):
            attributes = ["in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"]
        else:
            continue
        for attribute in attributes:
            if isinstance(getattr(module, attribute, None), nn.Parameter):
                names.append(f"{prefix}{module_name}.{attribute}" if module_name else f"{prefix}{attribute}")
    return names


INFO = MethodInfo(
    name=METHOD_NAME,
    kind="selective",
    summary=(
        "the same number of largest-gradient incoming connections of every neuron of the backbone's weight "
        "matrices (about 1% in all), plus the head"
    ),
    reference="Zhang et al., GPS, CVPR 2024",
    apply=None,
)
