"""Ignite handler that states the linear probe's test figures next to the evaluated model's."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from monai.utils import min_version, optional_import

from monai_shpeft.clinical import classification_report
from monai_shpeft.handlers.trainer_access import EvaluatorOutputs, trainer_autocast_dtype
from monai_shpeft.linear_probe import ProbeFit, extract_features, recipe_classifier
from monai_shpeft.utils import atomic_write_json

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
    from monai.engines import SupervisedEvaluator
else:
    Engine, _ = optional_import("ignite.engine", "0.4.11", min_version, "Engine")

__all__ = ["ProbeComparisonHandler", "classification_figures"]

# the evaluator's metric names -> the figures computed here
_METRICS = {"f1": "macro-F1", "accuracy": "accuracy", "auc": "AUC"}


def classification_figures(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Macro-F1, accuracy and macro one-vs-rest AUC, as the clinical report computes them.

    Args:
        labels: ``[N]`` class indices.
        probabilities: ``[N, C]`` class probabilities.

    Returns:
        ``{"f1", "accuracy", "auc"}`` (``auc`` is ``nan`` when a class has no case).
    """
    report = classification_report(labels, probabilities)
    return {"f1": report["macro_f1"], "accuracy": report["accuracy"], "auc": report["macro_auc"]}


class ProbeComparisonHandler:
    """After evaluation, run the training's linear probe on the same images and report both side by side.

    The probe is the logistic regression the head warm-up fitted on the *pretrained* backbone's features of the
    training part (its record, written by :class:`~monai_shpeft.handlers.HeadWarmupHandler`, holds the weights and
    how the backbone was built). This handler rebuilds that frozen backbone, computes the probe's predictions on
    the evaluator's loader, writes ``{"model": ..., "linear_probe": ..., "difference": ...}`` to ``output_file``
    and logs one line, so that a user sees whether fine-tuning beat the 20-second baseline on this split.

    Both sides are scored by one function (:func:`classification_figures`) on the probabilities each produced: the
    model's are gathered from the evaluator's outputs (``decollate=False``), and the probe's features are computed
    under the evaluator's autocast (bfloat16 on a CPU that has it). So when the kept model *is* the probe
    (``checkpoint_rule best`` kept epoch 0) the two figures are equal to the last bit, and a difference is never a
    rounding artefact of two metric implementations.

    Args:
        record_file: the warm-up's record (``<ckpt_dir>/linear_probe.json``). Missing (FPT, ``head_warmup none``):
            the handler says so and does nothing.
        output_file: where the comparison is written (JSON).
        metric_prefix: prefix of the evaluator's metric names (``"test_"``: ``test_f1``, ``test_accuracy``,
            ``test_auc``).
        pretrained: the frozen backbone's weights, overriding the record's (e.g. the file moved).
    """

    def __init__(
        self,
        record_file: str | os.PathLike,
        output_file: str | os.PathLike,
        metric_prefix: str = "test_",
        pretrained: str | os.PathLike | None = None,
    ) -> None:
        self.record_file = Path(record_file)
        self.output_file = Path(output_file)
        self.metric_prefix = metric_prefix
        self.pretrained = pretrained
        self.logger = logging.getLogger(__name__)
        self.comparison: dict[str, Any] | None = None
        self._outputs = EvaluatorOutputs()

    def attach(self, engine: Engine) -> None:
        """Gather the model's outputs at every iteration and compare on ``Events.COMPLETED`` of the evaluator.

        Args:
            engine: the evaluator.
        """
        self._outputs.attach(engine)
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: SupervisedEvaluator) -> None:
        """Compute and report the probe's figures on the evaluator's data.

        Args:
            engine: the evaluator, after its run.
        """
        if not self.record_file.is_file():
            self.logger.info("No linear-probe record at %s (FPT or head_warmup none): no comparison.", self.record_file)
            return
        record = json.loads(self.record_file.read_text())
        weight, bias = np.asarray(record["weight"]), np.asarray(record["bias"])
        fit = ProbeFit(weight, bias, float(record["C"]), float(record["cv_log_loss"]), float(record["train_accuracy"]))
        recipe = record.get("recipe") or {}
        network = recipe_classifier(recipe, weight.shape[0], self.pretrained).to(engine.state.device)
        # in the evaluator's precision: with bfloat16 autocast, float32 features would move the probe's
        # probabilities past each other and a model that is the probe would no longer tie it
        features, labels = extract_features(
            network,
            engine.data_loader,
            engine.state.device,
            prepare_batch=engine.prepare_batch,
            autocast_dtype=trainer_autocast_dtype(engine),
            progress=False,
        )
        logits = fit.logits(features)
        probabilities = np.exp(logits - logits.max(1, keepdims=True))
        probabilities /= probabilities.sum(1, keepdims=True)
        probe = classification_figures(labels, probabilities)
        model_probabilities, model_labels = self._outputs.arrays()
        if not np.array_equal(model_labels, labels):
            raise RuntimeError("the probe's pass over the evaluator's data met other labels, or another order.")
        model_figures = classification_figures(model_labels, model_probabilities)
        # the figures the evaluator computes (its metric names tell which), each scored as the probe's are
        model = {
            name: model_figures[name] for name in _METRICS if f"{self.metric_prefix}{name}" in engine.state.metrics
        }
        self.comparison = {
            "model": model,
            "linear_probe": probe,
            "difference": {name: model[name] - probe[name] for name in model},
            "num_images": int(labels.size),
            "probe_record": str(self.record_file),
        }
        atomic_write_json(self.output_file, self.comparison)
        parts = [f"{_METRICS[n]} {model[n]:.3f} vs {probe[n]:.3f} ({model[n] - probe[n]:+.3f})" for n in model]
        self.logger.info(
            "This model vs the linear probe on the frozen backbone, same %d images: %s. Written to %s.",
            labels.size,
            "; ".join(parts),
            self.output_file,
        )
