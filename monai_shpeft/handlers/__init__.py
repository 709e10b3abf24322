"""Ignite handlers that bring SH-PEFT into MONAI's trainers."""

from __future__ import annotations

from monai_shpeft.handlers.checkpoint_check_handler import (
    CheckpointCheckHandler,
    CheckpointMismatchError,
    check_checkpoint,
)
from monai_shpeft.handlers.clinical_report_handler import ClinicalReportHandler
from monai_shpeft.handlers.epoch_seed_handler import EpochSeedHandler
from monai_shpeft.handlers.feature_preload_handler import FeaturePreloadHandler
from monai_shpeft.handlers.gradient_mask_handler import GradientMaskHandler
from monai_shpeft.handlers.head_warmup_handler import HEAD_WARMUP_MODES, HeadWarmupHandler
from monai_shpeft.handlers.importance_estimation_handler import ImportanceEstimationHandler
from monai_shpeft.handlers.memory_profile_handler import MemoryProfileHandler
from monai_shpeft.handlers.prediction_writer_handler import PredictionWriter
from monai_shpeft.handlers.probe_comparison_handler import ProbeComparisonHandler, classification_figures
from monai_shpeft.handlers.resume_handler import ResumeError, ResumeHandler
from monai_shpeft.handlers.saliency_handler import SaliencyHandler
from monai_shpeft.handlers.sparse_set_record_handler import SparseSetRecordHandler
from monai_shpeft.handlers.spt_lora_handler import SPTLoRAHandler
from monai_shpeft.handlers.temperature_scaling_handler import TemperatureScalingHandler
from monai_shpeft.handlers.tracking_handler import TrackingHandler, check_tracking, default_tracking_uri
from monai_shpeft.handlers.weight_averaging_handler import WeightAveragingHandler

__all__ = [
    "MemoryProfileHandler",
    "CheckpointCheckHandler",
    "CheckpointMismatchError",
    "ClinicalReportHandler",
    "EpochSeedHandler",
    "FeaturePreloadHandler",
    "GradientMaskHandler",
    "HEAD_WARMUP_MODES",
    "HeadWarmupHandler",
    "ImportanceEstimationHandler",
    "PredictionWriter",
    "ProbeComparisonHandler",
    "ResumeError",
    "ResumeHandler",
    "SaliencyHandler",
    "SPTLoRAHandler",
    "SparseSetRecordHandler",
    "TemperatureScalingHandler",
    "TrackingHandler",
    "WeightAveragingHandler",
    "check_checkpoint",
    "check_tracking",
    "classification_figures",
    "default_tracking_uri",
]
