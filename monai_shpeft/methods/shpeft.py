"""SH-PEFT described for the shared method table.

Its machinery lives in :mod:`monai_shpeft.importance`, :mod:`monai_shpeft.sparse_set` and the importance-estimation
and gradient-mask handlers: the network trains as a whole and the gradient mask chosen when training starts
restricts it to the top budget of backbone weights.
"""

from __future__ import annotations

from monai_shpeft.methods.base import MethodInfo

__all__ = ["INFO"]

INFO = MethodInfo(
    "shpeft",
    "selective",
    "the top budget of backbone weights by hybrid task-specific + task-agnostic importance, plus the head",
    "SH-PEFT (sparsity- and hybridity-inspired visual PEFT for medical diagnosis)",
    None,
)
