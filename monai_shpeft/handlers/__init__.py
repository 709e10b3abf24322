"""Ignite handlers that bring SH-PEFT into MONAI's trainers."""

from __future__ import annotations

from monai_shpeft.handlers.gradient_mask_handler import GradientMaskHandler
from monai_shpeft.handlers.importance_estimation_handler import ImportanceEstimationHandler

__all__ = ["GradientMaskHandler", "ImportanceEstimationHandler"]
