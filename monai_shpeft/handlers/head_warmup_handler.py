"""Ignite handler that fits the classification head on frozen features before fine-tuning starts (LP-FT)."""

from __future__ import annotations

import gc
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from monai.utils import min_version, optional_import

from monai_shpeft.backbones import L2NormLinearHead
from monai_shpeft.distributed import is_main_process
from monai_shpeft.errors import SettingsError
from monai_shpeft.handlers.trainer_access import engine_prepare_batch, trainer_autocast_dtype
from monai_shpeft.linear_probe import (
    DEFAULT_CS,
    ProbeFit,
    extract_features,
    fit_probe,
    load_probe_into_head,
    recipe_classifier,
)
from monai_shpeft.utils import atomic_write_json, unwrap

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
    from monai.engines import Evaluator, SupervisedTrainer
else:
    Engine, _ = optional_import("ignite.engine", "0.4.11", min_version, "Engine")

__all__ = ["HEAD_WARMUP_MODES", "HeadWarmupHandler"]

#: the values of the bundles' ``head_warmup`` knob
HEAD_WARMUP_MODES = ("lbfgs", "none")


class HeadWarmupHandler:
    """Fit the head as a logistic-regression probe on the frozen features, when training starts.

    Runs on ``Events.STARTED``, before importance estimation (attach it first, or list it first among the trainer's
    handlers): the features of ``data_loader`` (the training part, without augmentation) are computed once by the
    network as it is, :func:`~monai_shpeft.linear_probe.fit_probe` fits the head on them, and the fit is written
    into the head. Then, with ``validator``, the warmed network is validated as "epoch 0": with MONAI's
    ``CheckpointSaver(save_key_metric=True)`` on the validator it becomes the checkpoint to beat, so fine-tuning
    only replaces it when validation says it is better. With ``terminate``, training stops there: the model is the
    probe itself (the ``linear_probe`` method).

    A network without a separate head (FPT: its side network and head start from random weights and train
    together) is left untouched. The probe is then fitted on a classifier built from ``recipe`` (the same frozen
    backbone at the frozen branch's resolution), for the record only, so that evaluation still states the 20-second
    floor next to the model. Building it draws no random numbers from the training's stream.

    Args:
        mode: ``"lbfgs"`` (fit) or ``"none"`` (the handler does nothing: the head starts at random).
        data_loader: the training images without augmentation.
        validator: an evaluator to run once after the fit (``None``: none).
        terminate: stop the trainer after the fit (and the validation).
        Cs: candidate inverse L2 penalties, cross-validated on the training features.
        seed: seed of the cross-validation folds.
        record_file: where to write the fit's record (JSON: the probe's weights, C, cross-validated log-loss,
            training accuracy, validation metrics, seconds, and ``recipe``); ``None``: not written. Evaluation
            reads it to state the probe's test figures next to the model's
            (:class:`~monai_shpeft.handlers.ProbeComparisonHandler`).
        recipe: how the frozen backbone was built (``backbone``, ``pretrained``, ``image_size``, ``tiny``), kept in
            the record so that evaluation can rebuild the probe; with ``num_classes``, it is also what a network
            without a separate head (FPT) has the probe fitted on.
        skip: do nothing (a resumed run restores its trained head instead).
        progress: show a progress bar over the feature batches.
    """

    def __init__(
        self,
        mode: str = "lbfgs",
        data_loader: Iterable[Any] | None = None,
        validator: Evaluator | None = None,
        terminate: bool = False,
        Cs: Sequence[float] = DEFAULT_CS,
        seed: int = 0,
        record_file: str | os.PathLike | None = None,
        recipe: Mapping[str, Any] | None = None,
        skip: bool = False,
        progress: bool = True,
    ) -> None:
        if mode not in HEAD_WARMUP_MODES:
            raise SettingsError(f"head_warmup must be one of {list(HEAD_WARMUP_MODES)}, got {mode!r}.")
        if terminate and mode == "none":
            raise SettingsError("the linear probe needs head_warmup 'lbfgs': with 'none' its head would stay random.")
        self.mode = mode
        self.data_loader = data_loader
        self.validator = validator
        self.terminate = terminate
        self.Cs = tuple(float(c) for c in Cs)
        self.seed = seed
        self.record_file = Path(record_file) if record_file else None
        self.recipe = dict(recipe or {})
        self.skip = skip
        self.progress = progress
        self.logger = logging.getLogger(__name__)
        self.fit: ProbeFit | None = None

    def attach(self, engine: Engine) -> None:
        """Register the warm-up on ``Events.STARTED`` of ``engine``.

        Args:
            engine: a MONAI ``SupervisedTrainer``.
        """
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: SupervisedTrainer) -> None:
        """Fit the head, optionally validate the warmed network and stop.

        Args:
            engine: the trainer.
        """
        if self.mode == "none" or self.skip:
            return
        network = unwrap(engine.network)
        head = getattr(network, "head", None)
        record_only = head is None or not hasattr(network, "forward_features")
        if record_only and not self.recipe.get("backbone"):
            self.logger.info("Head warm-up skipped: %s has no separate head (FPT trains its own).", type(network))
            return
        start = time.perf_counter()
        if record_only:
            # the probe is a side record here: its copy's init and its loader's seed must not shift training's draws
            with torch.random.fork_rng(devices=[]):
                self.fit, num_images = self._fit_probe(engine, recipe_classifier(self.recipe).to(engine.state.device))
            gc.collect()  # the frozen copy was only needed for the features
            self.logger.info("%s trains its own head: the linear probe is fitted for the record only.", type(network))
        else:
            self.fit, num_images = self._fit_probe(engine, network)
            load_probe_into_head(cast(torch.nn.Module, head), self.fit)
        # every rank computed the same fit from the same (unsharded) loader, so the heads agree without a broadcast
        seconds = time.perf_counter() - start
        record: dict[str, Any] = {
            "C": self.fit.C,
            "cv_log_loss": self.fit.cv_log_loss,
            "train_accuracy": self.fit.train_accuracy,
            "num_images": num_images,
            "seconds": seconds,
            "recipe": self.recipe,
        }
        if self.validator is not None and not record_only:
            self.validator.run(0)  # "epoch 0": the warmed network becomes the checkpoint fine-tuning must beat
            record["validation"] = {k: _number(v) for k, v in self.validator.state.metrics.items()}
        self.logger.info("Head warm-up (linear probe) in %.1f s: %s", seconds, json.dumps(record))
        if self.record_file is not None and is_main_process():
            weights = {"weight": self.fit.weight.tolist(), "bias": self.fit.bias.tolist()}
            atomic_write_json(self.record_file, {**record, **weights})
        if self.terminate:
            self.logger.info("Linear probe: training stops after the fit (the model is the probe).")
            engine.terminate()

    def _fit_probe(self, engine: SupervisedTrainer, network: torch.nn.Module) -> tuple[ProbeFit, int]:
        """Fit the probe on ``network``'s features of the warm-up loader; returns the fit and the number of images."""
        features, labels = extract_features(
            network,
            self.data_loader if self.data_loader is not None else engine.data_loader,
            engine.state.device,
            prepare_batch=engine_prepare_batch(engine),
            autocast_dtype=trainer_autocast_dtype(engine),
            progress=self.progress,
        )
        classes = int(cast(L2NormLinearHead, network.head).num_classes)
        return fit_probe(features, labels, num_classes=classes, Cs=self.Cs, seed=self.seed), int(features.shape[0])


def _number(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return value
