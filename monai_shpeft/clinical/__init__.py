"""What a clinical reader asks of a classifier's test predictions, computed with scikit-learn.

Per-class sensitivity, specificity, PPV, NPV, F1 and support, the confusion matrix, macro-F1, accuracy, balanced
accuracy and one-vs-rest AUCs (:func:`classification_report`), stratified bootstrap confidence intervals for each
of them (:func:`bootstrap_intervals`), and how far the probabilities can be trusted: expected calibration error,
Brier score and the reliability curve (:mod:`monai_shpeft.clinical.calibration`), and temperature scaling fitted on
validation data (:mod:`monai_shpeft.clinical.temperature`); :func:`save_clinical_report`
writes them as ``report.json`` with a confusion matrix, ROC curves and a reliability diagram. Where the network
looked: Grad-CAM and attention-rollout maps (:mod:`monai_shpeft.clinical.saliency`, on the layers
:mod:`monai_shpeft.clinical.saliency_targets` finds) drawn over the image (:mod:`monai_shpeft.clinical.overlay`).
"""

from __future__ import annotations

from monai_shpeft.clinical.bootstrap import bootstrap_intervals
from monai_shpeft.clinical.calibration import brier_score, expected_calibration_error, reliability_curve
from monai_shpeft.clinical.figures import classification_report, flatten_figures
from monai_shpeft.clinical.operating_point import operating_points
from monai_shpeft.clinical.overlay import denormalize, overlay_file_name, saliency_overlay, save_overlay
from monai_shpeft.clinical.report import REPORT_FIGURES, clinical_report, save_clinical_report
from monai_shpeft.clinical.saliency import attention_rollout, grad_cam, saliency_maps
from monai_shpeft.clinical.saliency_targets import (
    SALIENCY_METHODS,
    SaliencyTarget,
    TokenLayout,
    check_saliency,
    saliency_target,
    scale_maps,
)
from monai_shpeft.clinical.temperature import (
    TEMPERATURE_MODES,
    fit_temperature,
    fitted_temperature,
    load_temperature,
    rescale_probabilities,
    save_temperature,
    softmax,
    temperature_mode,
    temperature_record,
)

__all__ = [
    "REPORT_FIGURES",
    "clinical_report",
    "save_clinical_report",
    "bootstrap_intervals",
    "brier_score",
    "classification_report",
    "expected_calibration_error",
    "TEMPERATURE_MODES",
    "fit_temperature",
    "fitted_temperature",
    "load_temperature",
    "flatten_figures",
    "operating_points",
    "reliability_curve",
    "SALIENCY_METHODS",
    "SaliencyTarget",
    "TokenLayout",
    "attention_rollout",
    "check_saliency",
    "denormalize",
    "grad_cam",
    "overlay_file_name",
    "saliency_maps",
    "saliency_overlay",
    "saliency_target",
    "save_overlay",
    "scale_maps",
    "rescale_probabilities",
    "save_temperature",
    "softmax",
    "temperature_mode",
    "temperature_record",
]
