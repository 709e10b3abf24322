"""Ignite handler that makes every epoch's randomness depend on the seed and the epoch only."""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from monai.data.utils import set_rnd
from monai.utils import min_version, optional_import

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", "0.4.11", min_version, "Engine")

__all__ = ["EpochSeedHandler"]


class EpochSeedHandler:
    """Reseed Python, NumPy, torch and the dataset's random transforms with ``seed + epoch`` at each epoch start.

    Without it, an epoch's shuffling and augmentation depend on every random draw made before it, so a run resumed
    from a checkpoint would see other batches than the uninterrupted run. With it, epoch ``e`` draws the same numbers
    whether the run started at epoch 1 or resumed at epoch ``e``. DataLoader workers take their seeds from torch's
    generator when the epoch's iterator is created, after this handler, so they follow too.

    Args:
        seed: the run's seed.
        data: the training dataset (or any object holding MONAI random transforms) whose transforms are reseeded;
            needed when the DataLoader has no workers, where the transforms' own generators carry over epochs.
    """

    def __init__(self, seed: int, data: Any | None = None) -> None:
        self.seed = int(seed)
        self.data = data
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        """Register on ``Events.EPOCH_STARTED`` of ``engine``.

        Args:
            engine: the trainer.
        """
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        """Reseed for the epoch that starts.

        Args:
            engine: the trainer.
        """
        epoch_seed = (self.seed + int(engine.state.epoch)) % (2**32)
        random.seed(epoch_seed)
        np.random.seed(epoch_seed)
        torch.manual_seed(epoch_seed)
        if self.data is not None:
            set_rnd(self.data, epoch_seed)
        self.logger.debug("Epoch %d seeded with %d.", engine.state.epoch, epoch_seed)
