"""Ignite handler that writes a saliency overlay (Grad-CAM or attention rollout) per image an evaluator predicts."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from monai.utils import min_version, optional_import

from monai_shpeft.clinical import (
    SaliencyTarget,
    check_saliency,
    denormalize,
    overlay_file_name,
    saliency_maps,
    saliency_overlay,
    saliency_target,
    save_overlay,
)
from monai_shpeft.errors import SettingsError
from monai_shpeft.handlers.prediction_writer_handler import add_prediction_column

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")
if TYPE_CHECKING:
    from monai.engines import SupervisedEvaluator
else:
    SupervisedEvaluator = Any

__all__ = ["SaliencyHandler"]

#: the predictions CSV's column holding each image's overlay
SALIENCY_COLUMN = "saliency"


class SaliencyHandler:
    """After every iteration, map what the evaluator's network based its prediction on and save it over the image.

    For each image of the batch the map (:func:`~monai_shpeft.clinical.grad_cam` for ``"gradcam"``, of the
    predicted class; :func:`~monai_shpeft.clinical.attention_rollout` for ``"rollout"``) is blended over the
    network's input, denormalised, and written to ``<output_dir>/<image stem>_<predicted class>.png`` (a name met
    twice gets ``_2``, ``_3``, ...). The path is added to the :class:`PredictionWriter`'s CSV as the ``saliency``
    column. The maps are computed with gradients enabled in float32, from the batch as the evaluator's
    ``prepare_batch`` gives it to the network (FPT's ``image_lr`` included); the evaluator must run with
    ``decollate=False`` so that ``engine.state.output["pred"]`` holds the batch's logits.

    Args:
        method: ``"gradcam"`` or ``"rollout"`` (``""``/``None``: the handler does nothing).
        output_dir: the overlays' folder.
        classes: class names in label order (the files name the predicted class).
        normalization: ``(mean, std)`` per channel, as the bundles' ``normalize`` transforms used them, to show the
            image as it was read; ``None``: each image is rescaled to ``[0, 1]``.
        image_key: batch key holding the image paths.
        alpha: the overlay's opacity where the map is highest.
        cmap: matplotlib colormap of the map.

    Raises:
        SettingsError: for an unknown method (the message lists the valid ones); when the run starts, for rollout on
            a network without attention or a batch whose images are not ``[B, C, H, W]`` (preloaded features).
    """

    def __init__(
        self,
        method: str | None,
        output_dir: str | os.PathLike,
        classes: Sequence[str],
        normalization: Sequence[Sequence[float]] | None = None,
        image_key: str = "image_path",
        alpha: float = 0.6,
        cmap: str = "jet",
    ) -> None:
        self.method = check_saliency(method)
        self.output_dir = Path(output_dir)
        self.classes = list(classes)
        self.normalization = None if normalization is None else (list(normalization[0]), list(normalization[1]))
        self.image_key = image_key
        self.alpha = float(alpha)
        self.cmap = cmap
        self.files: dict[str, Path] = {}
        self.seconds = 0.0
        self._taken: set[str] = set()
        self._target: SaliencyTarget | None = None
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: SupervisedEvaluator) -> None:
        """Register with ``engine`` (nothing when the method is off).

        Args:
            engine: an evaluator.
        """
        if not self.method:
            return
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self._report)

    def _start(self, engine: SupervisedEvaluator) -> None:
        # checked before the first batch, so that rollout on a CNN stops the run at once
        self._target = saliency_target(engine.network, self.method)
        self.files = {}
        self.seconds = 0.0
        self._taken = set()
        self.logger.info("Saliency %s on the %s -> %s", self.method, self._target.description, self.output_dir)

    def __call__(self, engine: SupervisedEvaluator) -> None:
        """Compute the batch's maps and write one overlay per image.

        Args:
            engine: the evaluator, after an iteration.
        """
        start = time.perf_counter()
        output = engine.state.output
        logits = output.get("pred") if isinstance(output, dict) else None
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
            raise ValueError("SaliencyHandler expects the batch's logits [B, C] (an evaluator with decollate=False).")
        predicted = logits.detach().argmax(dim=1)
        prepared = engine.prepare_batch(engine.state.batch, engine.state.device, engine.non_blocking)
        image = prepared[0]
        inputs = dict(prepared[3]) if len(prepared) > 3 else {}
        if not isinstance(image, torch.Tensor) or image.ndim != 4:
            shape = tuple(getattr(image, "shape", ()))
            raise SettingsError(
                f"saliency draws over the images [B, C, H, W] the network reads, got {shape} (preloaded features?): "
                "run inference with --preloading false."
            )
        image = torch.as_tensor(image)  # a plain tensor: MetaTensor bookkeeping is not needed for the maps
        inputs = {key: torch.as_tensor(value) for key, value in inputs.items()}
        maps = saliency_maps(self.method, engine.network, image, predicted, self._target, **inputs).cpu()
        for name, picture, saliency, label in zip(
            self._image_names(engine, len(maps)), image.cpu(), maps, predicted.tolist()
        ):
            shown = denormalize(picture, *self.normalization) if self.normalization else _rescaled(picture)
            path = self._unique_path(overlay_file_name(name, self.classes[label]))
            save_overlay(path, saliency_overlay(shown, saliency, self.alpha, self.cmap))
            self.files[name] = path
            add_prediction_column(engine, SALIENCY_COLUMN, name, str(path))
        self.seconds += time.perf_counter() - start

    def _report(self, engine: SupervisedEvaluator) -> None:
        count = len(self._taken)
        self.logger.info(
            "Wrote %d %s overlays to %s in %.1f s (%.2f s per image).",
            count,
            self.method,
            self.output_dir,
            self.seconds,
            self.seconds / max(count, 1),
        )

    def _unique_path(self, file_name: str) -> Path:
        """``output_dir/file_name``, numbered when an earlier image of this run took the name."""
        stem, suffix = os.path.splitext(file_name)
        candidate, number = file_name, 1
        while candidate in self._taken:
            number += 1
            candidate = f"{stem}_{number}{suffix}"
        self._taken.add(candidate)
        return self.output_dir / candidate

    def _image_names(self, engine: SupervisedEvaluator, count: int) -> list[str]:
        """The images' names as :class:`PredictionWriter` reads them (the batch's paths, else their metadata)."""
        batch = engine.state.batch
        if isinstance(batch, dict) and self.image_key in batch:
            return [str(name) for name in batch[self.image_key]]
        meta = getattr(batch.get("image") if isinstance(batch, dict) else None, "meta", {}) or {}
        if "filename_or_obj" in meta:
            return [str(name) for name in meta["filename_or_obj"]]
        start = len(self.files)
        return [f"image_{start + i}" for i in range(count)]


def _rescaled(image: torch.Tensor) -> torch.Tensor:
    """An image scaled to ``[0, 1]`` when its normalisation is unknown."""
    image = image.float()
    low, high = image.min(), image.max()
    return (image - low) / (high - low) if high > low else torch.zeros_like(image)
