"""Ignite handler that writes the clinical report of an evaluator's run: figures with intervals, and plots."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from monai.utils import min_version, optional_import

from monai_shpeft.clinical import clinical_report, save_clinical_report
from monai_shpeft.distributed import is_main_process
from monai_shpeft.handlers.trainer_access import EvaluatorOutputs

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", "0.4.11", min_version, "Engine")

__all__ = ["ClinicalReportHandler"]


class ClinicalReportHandler:
    """After evaluation, write the clinical report and its figures into ``output_dir``.

    ``report.json`` holds per-class and overall figures with bootstrap intervals, calibration and the confusion
    matrix; beside it a confusion matrix, ROC curves with the operating point and a reliability diagram (PNG).

    The figures are computed with scikit-learn from the probabilities the evaluator's network produced
    (``softmax`` of its outputs, gathered with ``decollate=False``), so they are those of the checkpoint evaluated.

    Args:
        output_dir: the report's folder (``<output_dir>/eval`` in the bundles).
        classes: the class names, in label order.
        num_resamples: stratified bootstrap resamples for the 95% intervals (0: none).
        seed: the resampling's seed.
    """

    def __init__(
        self, output_dir: str | os.PathLike, classes: Sequence[str], num_resamples: int = 1000, seed: int = 0
    ) -> None:
        self.output_dir = Path(output_dir)
        self.classes = list(classes)
        self.num_resamples = int(num_resamples)
        self.seed = int(seed)
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

    def __call__(self, engine: Engine) -> None:
        """Compute and write the report.

        Args:
            engine: the evaluator, after its run.
        """
        probabilities, labels = self._outputs.arrays()
        self.report = clinical_report(labels, probabilities, self.classes, self.num_resamples, seed=self.seed)
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
