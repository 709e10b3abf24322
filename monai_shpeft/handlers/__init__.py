"""Ignite handlers that bring SH-PEFT into MONAI's trainers."""

from __future__ import annotations

from monai_shpeft.handlers.feature_preload_handler import FeaturePreloadHandler
from monai_shpeft.handlers.gradient_mask_handler import GradientMaskHandler
from monai_shpeft.handlers.importance_estimation_handler import ImportanceEstimationHandler
from monai_shpeft.handlers.prediction_writer_handler import PredictionWriter
from monai_shpeft.handlers.sparse_set_record_handler import SparseSetRecordHandler
from monai_shpeft.handlers.spt_lora_handler import SPTLoRAHandler

__all__ = [
    "FeaturePreloadHandler",
    "GradientMaskHandler",
    "ImportanceEstimationHandler",
    "PredictionWriter",
    "SPTLoRAHandler",
    "SparseSetRecordHandler",
]
