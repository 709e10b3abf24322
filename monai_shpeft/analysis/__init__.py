"""The statistical evidence of SH-PEFT (Liu et al., Sec. 2.1, Fig. 2): sparsity and hybridity of weight changes.

Given pretrained weights ``W_ori`` and weights ``W_ft`` fully fine-tuned on a medical task, the change of each
weight is ``dW = |W_ft - W_ori|`` (:func:`weight_changes`).

* **Sparsity**: keep only the top ``k`` of the changes, i.e. put the fine-tuned value of the ``k`` most changed
  entries into the pretrained model (``W_ori <- ft@k``, :func:`transplant_top_changes`) and evaluate it. If a
  small ``k`` recovers most of the fine-tuned performance (the paper: ~10% for ~95%), training a few selected
  weights is enough (:func:`sparsity_curve`, :func:`sparsity_figure`).
* **Hybridity**: the positions of the top ``k`` changes of two tasks partly coincide. The shared part is
  task-agnostic, the rest task-specific (:func:`hybridity`, :func:`set_overlap`, :func:`hybridity_figure`).

Everything works on the parameters of one submodule (``scope``, the backbone by default): the head of a
classifier is new for every task, so it has no pretrained value to compare with.
"""

from __future__ import annotations

from monai_shpeft.analysis.changes import WeightSource, top_changed_positions, transplant_top_changes, weight_changes
from monai_shpeft.analysis.hybridity import (
    HYBRIDITY_FRACTIONS,
    BlockOverlap,
    HybridityPoint,
    hybridity,
    hybridity_figure,
    set_overlap,
)
from monai_shpeft.analysis.sparsity import FULL_PERFORMANCE_SHARE, SparsityPoint, sparsity_curve, sparsity_figure

__all__ = [
    "FULL_PERFORMANCE_SHARE",
    "HYBRIDITY_FRACTIONS",
    "BlockOverlap",
    "HybridityPoint",
    "SparsityPoint",
    "WeightSource",
    "hybridity",
    "hybridity_figure",
    "set_overlap",
    "sparsity_curve",
    "sparsity_figure",
    "top_changed_positions",
    "transplant_top_changes",
    "weight_changes",
]
