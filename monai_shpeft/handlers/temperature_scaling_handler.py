"""Ignite handler that fits temperature scaling on the validation split once training is done, beside the model."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from monai.handlers import CheckpointLoader
from monai.utils import min_version, optional_import

from monai_shpeft.clinical.temperature import fit_temperature, save_temperature, temperature_record
from monai_shpeft.distributed import is_main_process
from monai_shpeft.handlers.trainer_access import engine_outputs
from monai_shpeft.utils import unwrap

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
    from monai.engines import SupervisedTrainer
else:
    Engine, _ = optional_import("ignite.engine", "0.4.11", min_version, "Engine")

__all__ = ["TemperatureScalingHandler"]


class TemperatureScalingHandler:
    """Fit one temperature for the model training saved, on the validation split, and write it beside the model.

    On ``Events.COMPLETED`` of the trainer (attach it after every handler that saves the model, e.g. the final
    ``CheckpointSaver`` of weight averaging): the saved model (``load_path``, MONAI's ``CheckpointLoader`` format) is
    loaded into the trainer's network, so the temperature belongs to the weights evaluation and inference read; its
    logits on ``data_loader`` (the whole validation split, through the trainer's batch preparation and inferer) give
    the temperature that minimises their negative log-likelihood
    (:func:`~monai_shpeft.clinical.temperature.fit_temperature`); ``save_path`` receives it with the negative
    log-likelihood, ECE and Brier score before and after. A record left by an earlier run is removed when training
    starts, so a model is never paired with another model's temperature.

    Args:
        data_loader: the validation split, unshuffled and not split across ranks (run on the main process).
        save_path: the record (``models/temperature.json`` in the bundles).
        load_path: the model file training wrote (``models/model.pt``); ``None`` or missing: the network as it is.
        enabled: ``False`` (the ``temperature_scaling`` knob off) fits nothing, and still removes a stale record.
    """

    def __init__(
        self,
        data_loader: Iterable,
        save_path: str | os.PathLike,
        load_path: str | os.PathLike | None = None,
        enabled: bool = True,
    ) -> None:
        self.data_loader = data_loader
        self.save_path = Path(save_path)
        self.load_path = Path(load_path) if load_path else None
        self.enabled = bool(enabled)
        self.temperature: float | None = None
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        """Remove a stale record on ``STARTED``; fit on ``COMPLETED``.

        Args:
            engine: the trainer.
        """
        engine.add_event_handler(Events.STARTED, self._remove_stale_record)
        engine.add_event_handler(Events.COMPLETED, self)

    def _remove_stale_record(self, engine: Engine) -> None:
        if is_main_process() and self.save_path.is_file():
            self.save_path.unlink()

    def __call__(self, engine: SupervisedTrainer) -> None:
        """Load the saved model, fit the temperature on validation and write the record.

        Args:
            engine: the trainer, at ``COMPLETED``.
        """
        if not self.enabled or not is_main_process():
            return
        if self.load_path is not None and self.load_path.is_file():
            CheckpointLoader(load_path=str(self.load_path), load_dict={"model": unwrap(engine.network)})(engine)
        logits, labels = engine_outputs(engine, self.data_loader)
        if len(labels) == 0:
            self.logger.warning("Temperature scaling skipped: the validation split is empty.")
            return
        self.temperature = fit_temperature(logits, labels)
        record = temperature_record(logits, labels, self.temperature)
        save_temperature(self.save_path, record)
        self.logger.info(
            "Temperature scaling on %d validation cases: T = %.3f, NLL %.3f -> %.3f, ECE %.3f -> %.3f -> %s",
            record["num_cases"],
            self.temperature,
            record["nll"]["before"],
            record["nll"]["after"],
            record["ece"]["before"],
            record["ece"]["after"],
            self.save_path,
        )
