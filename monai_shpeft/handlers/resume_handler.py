"""Ignite handler that makes a training run resumable after it is killed at any moment."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from monai.utils import min_version, optional_import

from monai_shpeft.distributed import is_main_process
from monai_shpeft.errors import InputError
from monai_shpeft.handlers.gradient_mask_handler import STATE_KEY
from monai_shpeft.utils import atomic_path, unwrap

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", "0.4.11", min_version, "Engine")

__all__ = ["ResumeError", "ResumeHandler"]

#: methods whose network changes structure during STARTED in a way this handler cannot replay yet
_NOT_RESUMABLE = ("spt_lora",)


class ResumeError(InputError, RuntimeError):
    """A resume checkpoint that does not fit the run it is loaded into."""


class ResumeHandler:
    """Save the whole training state after every epoch, atomically, and restore it when the run starts again.

    The checkpoint holds the network, the optimizer (momentum / Adam moments), the LR scheduler, the trainer's epoch
    and iteration, the best-model saver's record of the best score so far, and the fingerprint of the sparse
    trainable set. It is written with a rename, so a run killed at any moment (even during the save) leaves the
    previous complete checkpoint. A killed epoch is run again from its start: with
    :class:`~monai_shpeft.handlers.EpochSeedHandler` the data order and augmentation of every epoch depend on the
    seed and the epoch only, so the resumed run ends where an uninterrupted run ends.

    Attach it after every other handler of the trainer (the bundles do it in ``run``): its ``EPOCH_COMPLETED`` save
    must come after the LR scheduler step and the validation, and its ``STARTED`` load after the sparse trainable set
    is ready (the estimation handler reloads the saved set instead of estimating again: ``reuse_saved``).

    Args:
        checkpoint_file: the resume checkpoint (e.g. ``models/resume/checkpoint.pt``).
        objects: ``name -> object with state_dict()/load_state_dict()`` (network, optimizer, lr_scheduler).
        key_metric_saver: the validator's MONAI ``CheckpointSaver`` that keeps the best model, whose record of the
            best score must survive the restart (otherwise the first validation after it would always overwrite
            the best model).
        resume: load ``checkpoint_file`` at ``STARTED`` if it exists.
        method: the bundle's method; resuming ``spt_lora`` is refused (its LoRA modules are created from a fresh
            sensitivity pass, which this handler does not replay).
    """

    def __init__(
        self,
        checkpoint_file: str | os.PathLike,
        objects: Mapping[str, Any],
        key_metric_saver: Any | None = None,
        resume: bool = False,
        method: str | None = None,
    ) -> None:
        self.checkpoint_file = Path(checkpoint_file)
        self.objects = {name: obj for name, obj in objects.items() if obj is not None}
        self.key_metric_saver = key_metric_saver
        self.resume = bool(resume)
        if self.resume and method in _NOT_RESUMABLE:
            raise ValueError(
                f"--resume is not supported for --method {method}: start again without it "
                f"(or delete {self.checkpoint_file})."
            )
        self.logger = logging.getLogger(__name__)
        self.resumed_from_epoch: int | None = None

    def attach(self, engine: Engine) -> None:
        """Load at ``STARTED`` (when resuming) and save at every ``EPOCH_COMPLETED`` of ``engine``.

        Args:
            engine: the trainer.
        """
        if self.resume and self.checkpoint_file.is_file():
            engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """Save the training state (main process only).

        Args:
            engine: the trainer.
        """
        if not is_main_process():
            return
        state = {name: self._unwrapped(obj).state_dict() for name, obj in self.objects.items()}
        state["trainer"] = engine.state_dict()
        state["epoch"] = engine.state.epoch
        key_metric_checkpoint = self._key_metric_checkpoint()
        if key_metric_checkpoint is not None:
            state["key_metric_saver"] = key_metric_checkpoint.state_dict()
        trainable_set = getattr(engine.state, STATE_KEY, None)
        if trainable_set is not None:
            state["sparse_set_fingerprint"] = trainable_set.fingerprint()
        with atomic_path(self.checkpoint_file) as tmp:
            torch.save(state, tmp)
        self.logger.debug("Saved the resume checkpoint of epoch %d to %s.", engine.state.epoch, self.checkpoint_file)

    def load(self, engine: Engine) -> None:
        """Restore the training state saved by a previous run.

        Args:
            engine: the trainer.

        Raises:
            ResumeError: if the checkpoint is unreadable, was made with another sparse trainable set, or does not
                fit the network, optimizer or schedule of this run.
        """
        try:
            state = torch.load(self.checkpoint_file, map_location="cpu", weights_only=True)
        except Exception as error:  # a truncated or foreign file
            raise ResumeError(
                f"The resume checkpoint {self.checkpoint_file} cannot be read ({error}); delete it to start again."
            ) from error
        trainable_set = getattr(engine.state, STATE_KEY, None)
        saved_fingerprint = state.get("sparse_set_fingerprint")
        if trainable_set is not None and saved_fingerprint and trainable_set.fingerprint() != saved_fingerprint:
            raise ResumeError(
                f"The resume checkpoint {self.checkpoint_file} was trained with another sparse trainable set than the "
                "one this run uses. Resume with the same sparse set file, or delete the checkpoint to start again."
            )
        prior_max_epochs = engine.state.max_epochs
        try:
            for name, obj in self.objects.items():
                self._unwrapped(obj).load_state_dict(state[name])
            engine.load_state_dict(state["trainer"])
        except (KeyError, RuntimeError, ValueError) as error:
            raise ResumeError(
                f"The resume checkpoint {self.checkpoint_file} does not fit this run ({str(error).splitlines()[0]}). "
                "Resume with the knobs of the interrupted run, or delete the checkpoint to start again."
            ) from error
        if prior_max_epochs is not None:
            if engine.state.epoch > prior_max_epochs:
                raise ResumeError(
                    f"The resume checkpoint {self.checkpoint_file} is at epoch {engine.state.epoch}, past "
                    f"--max_epochs {prior_max_epochs}; raise --max_epochs to train further."
                )
            engine.state.max_epochs = prior_max_epochs  # a longer schedule may continue a shorter finished run
        key_metric_checkpoint = self._key_metric_checkpoint()
        if "key_metric_saver" in state and key_metric_checkpoint is not None:
            key_metric_checkpoint.load_state_dict(state["key_metric_saver"])
        self.resumed_from_epoch = int(state.get("epoch", engine.state.epoch))
        self.logger.info(
            "Resumed from %s: epoch %d of %d done, iteration %d.",
            self.checkpoint_file,
            self.resumed_from_epoch,
            engine.state.max_epochs,
            engine.state.iteration,
        )

    @staticmethod
    def _unwrapped(obj: Any) -> Any:
        return unwrap(obj) if isinstance(obj, torch.nn.Module) else obj

    def _key_metric_checkpoint(self) -> Any | None:
        # MONAI's CheckpointSaver keeps its best-score record in an ignite Checkpoint it does not expose publicly
        return getattr(self.key_metric_saver, "_key_metric_checkpoint", None)
