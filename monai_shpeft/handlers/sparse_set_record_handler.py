"""Ignite handler that records the sparse trainable set in a bundle's metadata and shows it in TensorBoard."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monai.utils import min_version, optional_import

from monai_shpeft.distributed import is_main_process
from monai_shpeft.handlers.gradient_mask_handler import STATE_KEY
from monai_shpeft.sparse_set import SparseTrainableSet
from monai_shpeft.utils import atomic_write_json, read_run_metadata, sha256_of_file

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", "0.4.11", min_version, "Engine")

__all__ = ["COUNT_HEATMAP_TAG", "RATIO_HEATMAP_TAG", "RECORD_KEY", "SparseSetRecordHandler"]

#: key of the record in ``metadata.json``
RECORD_KEY = "sparse_trainable_set"
#: TensorBoard tag of the heatmap of the trainable fraction per block and layer type
RATIO_HEATMAP_TAG = "sparse_trainable_set/ratio_per_block_and_layer"
#: TensorBoard tag of the heatmap of the number of trainable entries per block and layer type
COUNT_HEATMAP_TAG = "sparse_trainable_set/count_per_block_and_layer"


class SparseSetRecordHandler:
    """Write the sparse trainable set's record into the run's ``metadata.json`` and draw where its weights sit.

    The record holds the strategy, lambda, budget, selected count, ratio, counts per block, and the set's file
    name and SHA-256, so the metadata of the trained bundle says exactly which weights its model trains. It goes
    into the run's copy of the bundle's metadata beside the checkpoint (``models/metadata.json``; started from
    ``template_file`` the first time), never into the bundle's tracked ``configs/metadata.json``: a run leaves the
    checkout as it was, and ``python -m monai_shpeft.zoo package`` puts the record into the shared bundle. The file
    is written atomically (a run killed at any moment leaves the old or the new file). With ``tensorboard_dir``
    two heatmaps are logged as images: the trainable ratio and the number of trainable entries per block and
    layer type.

    Runs once, as soon as the set is on ``engine.state`` (after :class:`ImportanceEstimationHandler`), on the
    main process only when training is distributed.

    Args:
        metadata_file: the run's metadata file (the bundles: ``<ckpt_dir>/metadata.json``).
        template_file: the bundle's ``configs/metadata.json``, copied into ``metadata_file`` when that does not
            exist yet (read only).
        set_file: the saved set (its name and hash go into the record); ``None`` records no file.
        tensorboard_dir: where to log the heatmaps; ``None`` skips them.
        summary_writer: an existing ``SummaryWriter`` to log with instead of ``tensorboard_dir``.
    """

    def __init__(
        self,
        metadata_file: str | os.PathLike,
        set_file: str | os.PathLike | None = None,
        template_file: str | os.PathLike | None = None,
        tensorboard_dir: str | os.PathLike | None = None,
        summary_writer: Any | None = None,
    ) -> None:
        self.metadata_file = Path(metadata_file)
        self.template_file = Path(template_file) if template_file else None
        self.set_file = Path(set_file) if set_file else None
        self.tensorboard_dir = tensorboard_dir
        self.summary_writer = summary_writer
        self.logger = logging.getLogger(__name__)
        self.record: dict[str, Any] | None = None

    def attach(self, engine: Engine) -> None:
        """Register with ``engine``: on start if the set is ready, otherwise before the first iteration.

        Args:
            engine: the trainer.
        """
        engine.add_event_handler(Events.STARTED, self)
        engine.add_event_handler(Events.ITERATION_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        """Record the set once it is available.

        Args:
            engine: the trainer.
        """
        trainable_set = getattr(engine.state, STATE_KEY, None)
        if trainable_set is None or self.record is not None:
            return
        if is_main_process():
            self.record = self.write_record(trainable_set)
            self.log_heatmap(trainable_set, engine.state.iteration)
        else:
            self.record = {}

    def write_record(self, trainable_set: SparseTrainableSet) -> dict[str, Any]:
        """Add the record to the metadata file (atomically) and return it.

        Args:
            trainable_set: the set to record.

        Returns:
            the record written.

        Raises:
            FileNotFoundError: if the metadata file does not exist.
            ValueError: if it is not valid JSON.
        """
        record = trainable_set.to_record()
        if self.set_file is not None and self.set_file.is_file():
            record["file"] = self.set_file.name
            record["sha256"] = sha256_of_file(self.set_file)
        metadata = read_run_metadata(self.metadata_file, self.template_file)
        metadata[RECORD_KEY] = record
        atomic_write_json(self.metadata_file, metadata)
        self.logger.info("Recorded the sparse trainable set in %s.", self.metadata_file)
        return record

    def log_heatmap(self, trainable_set: SparseTrainableSet, step: int) -> None:
        """Log the trainable-ratio and trainable-count heatmaps to TensorBoard, if a writer or directory was given.

        Args:
            trainable_set: the set to draw.
            step: the global step the images are logged at.
        """
        writer = self.summary_writer
        if writer is None and self.tensorboard_dir is None:
            return
        from monai_shpeft.plots import trainable_count_heatmap_figure, trainable_heatmap_figure

        owns_writer = writer is None
        if writer is None:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=str(self.tensorboard_dir))
        writer.add_figure(RATIO_HEATMAP_TAG, trainable_heatmap_figure(trainable_set), global_step=step)
        # the ratio alone hides how many weights a cell holds: a fully trained bias can be fewer than 0.1% of a matrix
        writer.add_figure(COUNT_HEATMAP_TAG, trainable_count_heatmap_figure(trainable_set), global_step=step)
        writer.flush()
        if owns_writer:
            writer.close()
