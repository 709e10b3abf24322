"""Ignite handler that writes one prediction per input image (class and probabilities) to a CSV file."""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from monai.utils import min_version, optional_import

from monai_shpeft.utils import atomic_path

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", "0.4.11", min_version, "Engine")

__all__ = ["PREDICTION_COLUMNS", "PredictionWriter", "add_prediction_column"]

#: the ``engine.state`` attribute through which other handlers add columns to the CSV: ``{column: {image: value}}``
PREDICTION_COLUMNS = "prediction_columns"


def add_prediction_column(engine: Engine, column: str, image: str, value: str) -> None:
    """Give ``image`` a ``value`` in the extra ``column`` of the predictions CSV written at the end of the run.

    Args:
        engine: the evaluator a :class:`PredictionWriter` is attached to.
        column: the column's name.
        image: the image's name, as the writer reads it (its path from the batch).
        value: the cell.
    """
    columns = getattr(engine.state, PREDICTION_COLUMNS, None)
    if columns is None:
        columns = {}
        setattr(engine.state, PREDICTION_COLUMNS, columns)
    columns.setdefault(column, {})[image] = value


class PredictionWriter:
    """Collect the evaluator's predictions and write ``image, predicted_class, p_<class>...`` rows.

    The evaluator must run with ``decollate=False`` so that ``engine.state.output["pred"]`` holds the batch's
    logits ``[B, C]``. Image names come from the batch's ``image_key`` entry (keep the path with
    ``CopyItemsd`` before loading) or, failing that, from the image's MONAI metadata. The file is written
    atomically when the run completes. Other handlers add columns with :func:`add_prediction_column` (the
    :class:`~monai_shpeft.handlers.SaliencyHandler`'s overlay files), in any handler order.

    Args:
        output_file: the CSV file to write.
        classes: class names in label order (column names and predicted class names).
        image_key: batch key holding the image paths.
    """

    def __init__(self, output_file: str | os.PathLike, classes: Sequence[str], image_key: str = "image_path") -> None:
        self.output_file = Path(output_file)
        self.classes = list(classes)
        self.image_key = image_key
        self.rows: list[list[Any]] = []
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        """Register with ``engine``.

        Args:
            engine: an evaluator.
        """
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def _reset(self, engine: Engine) -> None:
        self.rows = []
        setattr(engine.state, PREDICTION_COLUMNS, {})

    def __call__(self, engine: Engine) -> None:
        """Add the rows of the current batch.

        Args:
            engine: the evaluator.
        """
        output = engine.state.output
        logits = torch.as_tensor(output["pred"]).detach().float() if isinstance(output, dict) else None
        if logits is None or logits.ndim != 2 or logits.shape[1] != len(self.classes):
            raise ValueError(
                f"PredictionWriter expects logits [B, {len(self.classes)}] (evaluator with decollate=False), got "
                f"{'a list of per-image outputs' if logits is None else tuple(logits.shape)}."
            )
        probabilities = torch.softmax(logits, dim=1).cpu()
        names = self._image_names(engine, probabilities.shape[0])
        for name, row in zip(names, probabilities.tolist()):
            best = max(range(len(row)), key=row.__getitem__)
            self.rows.append([name, self.classes[best], *[f"{p:.6f}" for p in row]])

    def _image_names(self, engine: Engine, count: int) -> list[str]:
        batch = getattr(engine.state, "batch", None)
        if isinstance(batch, dict) and self.image_key in batch:
            return [str(name) for name in batch[self.image_key]]
        output = engine.state.output  # a dict: __call__ checked it
        image = output.get("image") if isinstance(output, dict) else None
        meta = getattr(image, "meta", {}) or {}
        if "filename_or_obj" in meta:
            return [str(name) for name in meta["filename_or_obj"]]
        start = len(self.rows)
        return [f"image_{start + i}" for i in range(count)]

    def write(self, engine: Engine | None = None) -> Path:
        """Write the collected rows.

        Args:
            engine: the evaluator whose handlers added columns (:func:`add_prediction_column`), if any.

        Returns:
            the CSV path.
        """
        extra: dict[str, dict[str, str]] = getattr(getattr(engine, "state", None), PREDICTION_COLUMNS, None) or {}
        with atomic_path(self.output_file) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", "predicted_class", *[f"p_{name}" for name in self.classes], *extra])
            writer.writerows([*row, *[cells.get(row[0], "") for cells in extra.values()]] for row in self.rows)
        self.logger.info("Wrote %d predictions to %s.", len(self.rows), self.output_file)
        return self.output_file
