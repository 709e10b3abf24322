"""FPT described for the shared method table; the network itself is :func:`monai_shpeft.networks.build_fpt`."""

from __future__ import annotations

from monai_shpeft.methods.base import MethodInfo

__all__ = ["INFO"]

INFO = MethodInfo(
    "fpt",
    "side network",
    "a 1/k-width side network, fine-grained prompts and fusion modules, plus the head; the backbone is frozen",
    "FPT (fine-grained prompt tuning for high-resolution medical images)",
    None,
)
