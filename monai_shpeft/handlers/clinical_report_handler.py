"""Ignite handler that writes the clinical report of an evaluator's run: figures with intervals, and plots."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
from monai.utils import min_version, optional_import

from monai_shpeft.clinical import (
    brier_score,
    clinical_report,
    expected_calibration_error,
    operating_points,
    rescale_probabilities,
    save_clinical_report,
    softmax,
)
from monai_shpeft.distributed import is_main_process
from monai_shpeft.errors import SettingsError
from monai_shpeft.handlers.trainer_access import EvaluatorOutputs, engine_outputs

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
    from monai.engines import SupervisedEvaluator
else:
    Engine, _ = optional_import("ignite.engine", "0.4.11", min_version, "Engine")

__all__ = ["ClinicalReportHandler"]


class ClinicalReportHandler:
    """After evaluation, write the clinical report and its figures into ``output_dir``.

    ``report.json`` holds per-class and overall figures with bootstrap intervals, calibration and the confusion
    matrix; beside it a confusion matrix, ROC curves with the operating point and a reliability diagram (PNG).

    The figures are computed with scikit-learn from the probabilities the evaluator's network produced
    (``softmax`` of its outputs, gathered with ``decollate=False``), so they are those of the checkpoint evaluated.

    With ``positive_class`` (the class that matters, e.g. ``malignant``) the report gains ``operating_points``: the
    test sensitivity at fixed specificities, and a threshold chosen on ``validation_loader`` to reach
    ``target_sensitivity`` there, applied to the test split (see :func:`~monai_shpeft.clinical.operating_points`).

    Args:
        output_dir: the report's folder (``<output_dir>/eval`` in the bundles).
        classes: the class names, in label order.
        num_resamples: stratified bootstrap resamples for the 95% intervals (0: none).
        seed: the resampling's seed.
        positive_class: the positive class's name, or ``None``/``""`` for no operating points.
        specificities: the fixed specificities.
        target_sensitivity: the sensitivity the validation threshold must reach.
        validation_loader: the validation split, run through the evaluator's network for the threshold.
        temperature: the temperature the evaluator's inferer divides the logits by (1: none applied).
        fitted_temperature: the temperature training fitted on validation
            (:class:`~monai_shpeft.handlers.TemperatureScalingHandler`), applied or not; the report shows the test
            ECE and Brier score of the network's own probabilities (``before``) and scaled by it (``after``).
            ``None``: the applied one.

    Raises:
        SettingsError: when ``positive_class`` is not one of ``classes`` (the message lists them).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        classes: Sequence[str],
        num_resamples: int = 1000,
        seed: int = 0,
        positive_class: str | None = None,
        specificities: Sequence[float] = (0.90, 0.95),
        target_sensitivity: float = 0.95,
        validation_loader: Iterable | None = None,
        temperature: float = 1.0,
        fitted_temperature: float | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.classes = list(classes)
        self.num_resamples = int(num_resamples)
        self.seed = int(seed)
        self.positive_class = positive_class or None
        if self.positive_class is not None and self.positive_class not in self.classes:
            raise SettingsError(
                f"positive_class {self.positive_class!r} is not a class of this bundle; "
                f"choose one of: {', '.join(self.classes)}."
            )
        if not 0 < float(target_sensitivity) <= 1:
            raise SettingsError(f"target_sensitivity must be in (0, 1], got {target_sensitivity!r}.")
        self.specificities = [float(value) for value in specificities]
        self.target_sensitivity = float(target_sensitivity)
        self.validation_loader = validation_loader
        self.temperature = float(temperature)
        self.fitted_temperature = float(fitted_temperature) if fitted_temperature is not None else self.temperature
        self.report: dict | None = None
        self.logger = logging.getLogger(__name__)
        self._outputs = EvaluatorOutputs()

    def attach(self, engine: Engine) -> None:
        """Gather the evaluator's outputs and write the report on ``Events.COMPLETED``.

        Args:
            engine: the evaluator.
        """
        self._outputs.attach(engine)
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: SupervisedEvaluator) -> None:
        """Compute and write the report.

        Args:
            engine: the evaluator, after its run.
        """
        probabilities, labels = self._outputs.arrays()
        self.report = clinical_report(labels, probabilities, self.classes, self.num_resamples, seed=self.seed)
        self.report["temperature_scaling"] = self._calibration_before_and_after(labels, probabilities)
        if self.positive_class is not None:
            validation = self._validation_outputs(engine) if self.validation_loader is not None else (None, None)
            self.report["operating_points"] = {
                "positive_class": self.positive_class,
                **operating_points(
                    self.classes.index(self.positive_class),
                    labels,
                    probabilities,
                    validation[1],
                    validation[0],
                    self.specificities,
                    self.target_sensitivity,
                ),
            }
        if not is_main_process():
            return
        written = save_clinical_report(self.report, labels, probabilities, self.output_dir)
        overall = self.report["overall"]
        self.logger.info(
            "Clinical report (%d cases): macro-F1 %.3f [%.3f, %.3f], balanced accuracy %.3f, ECE %.3f -> %s",
            self.report["num_cases"],
            overall["macro_f1"]["value"],
            overall["macro_f1"]["low"],
            overall["macro_f1"]["high"],
            overall["balanced_accuracy"]["value"],
            overall["ece"]["value"],
            ", ".join(str(path) for path in written),
        )

    def _calibration_before_and_after(self, labels: np.ndarray, probabilities: np.ndarray) -> dict:
        """The fitted temperature, whether it was applied, and the test ECE and Brier score without and with it."""
        own = rescale_probabilities(probabilities, self.temperature) if self.temperature != 1.0 else probabilities
        if self.fitted_temperature == self.temperature:
            scaled = probabilities  # the evaluated probabilities are the scaled ones
        else:
            scaled = rescale_probabilities(own, 1.0 / self.fitted_temperature)
        return {
            "temperature": self.fitted_temperature,
            "applied": self.temperature != 1.0,
            "ece": {
                "before": expected_calibration_error(labels, own),
                "after": expected_calibration_error(labels, scaled),
            },
            "brier": {"before": brier_score(labels, own), "after": brier_score(labels, scaled)},
        }

    def _validation_outputs(self, engine: SupervisedEvaluator) -> tuple[np.ndarray, np.ndarray]:
        """``(probabilities, labels)`` of the evaluator's network, inferer and batch preparation on validation."""
        logits, labels = engine_outputs(engine, cast(Iterable, self.validation_loader))
        return softmax(logits), labels
