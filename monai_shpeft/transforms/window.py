"""DICOM VOI windowing (window center/width) to [0, 1], from explicit values or the file's own window."""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends

from monai_shpeft.transforms._checks import as_image_tensor, finish_unit, invalid_image, source_file, working_float
from monai_shpeft.transforms.intensity import SCALE_MODES, ScaleToUnitRange
from monai_shpeft.transforms.meta import SourceMetaKeys

logger = logging.getLogger(__name__)

__all__ = ["VOI_LUT_FUNCTIONS", "DicomWindow", "DicomWindowd", "apply_window"]

#: VOI LUT functions of DICOM PS3.3 C.11.2.1.2
VOI_LUT_FUNCTIONS: tuple[str, ...] = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


def apply_window(x: torch.Tensor, center: float, width: float, function: str = "LINEAR") -> torch.Tensor:
    """Apply a DICOM VOI window to modality values (e.g. HU), giving [0, 1].

    ``LINEAR`` is DICOM's formula: values at or below ``center - 0.5 - (width - 1) / 2`` map to 0, values above
    ``center - 0.5 + (width - 1) / 2`` to 1, linearly in between; ``LINEAR_EXACT`` maps
    ``center - width / 2 .. center + width / 2`` linearly; ``SIGMOID`` is ``1 / (1 + exp(-4 (x - center) / width))``.

    Args:
        x: float tensor of values in the units the window was defined in (after the modality rescale).
        center: window center.
        width: window width (> 0; ``LINEAR`` treats widths below 1 as 1, a threshold at ``center - 0.5``).
        function: ``LINEAR``, ``LINEAR_EXACT`` or ``SIGMOID``.

    Returns:
        tensor of the same shape and dtype with values in [0, 1].

    Raises:
        ValueError: for a non-finite center/width, a width <= 0, or an unknown function.
    """
    if not (math.isfinite(center) and math.isfinite(width)) or width <= 0:
        raise ValueError(f"a window needs a finite center and a width > 0, got center={center}, width={width}.")
    function = function.upper()
    if function == "LINEAR":
        if width <= 1.0:
            return (x > center - 0.5).to(x.dtype)
        return torch.clamp((x - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)
    if function == "LINEAR_EXACT":
        return torch.clamp((x - center) / width + 0.5, 0.0, 1.0)
    if function == "SIGMOID":
        return torch.sigmoid(4.0 * (x - center) / width)
    raise ValueError(f"unknown VOI LUT function '{function}'; known: {list(VOI_LUT_FUNCTIONS)}.")


class DicomWindow(Transform):
    """Window an image to [0, 1] with an explicit window or the file's own ``WindowCenter``/``WindowWidth``.

    The window is, in order: the ``center``/``width`` given to ``__call__``, those given here, or the file's
    window from the metadata of :class:`~monai_shpeft.transforms.LoadMedicalImage` (first window when the file
    lists several, with the file's ``VOILUTFunction``). The values must be in the units the window refers to:
    after the modality rescale, which the loader has applied once (``meta["rescale_applied"]``). When no window is
    available (PNG/JPEG input, or a DICOM without a usable window), ``fallback`` decides: ``"error"`` raises, or
    a :class:`~monai_shpeft.transforms.ScaleToUnitRange` mode (``auto``, ``minmax``, ``percentile``) scales
    instead. ``MONOCHROME1`` is not inverted here: invert the [0, 1] result with
    :class:`~monai_shpeft.transforms.InvertMonochrome1` (the window is defined on the stored values, the inversion
    applies after it, as in DICOM's display pipeline).

    Args:
        center: window center, or ``None`` to use the file's window.
        width: window width (> 0), given together with ``center``.
        function: VOI LUT function for an explicit window (``LINEAR``, ``LINEAR_EXACT``, ``SIGMOID``).
        fallback: ``"error"`` or a scaling mode (``auto``, ``minmax``, ``percentile``) for images without a window.

    Raises:
        ValueError: if only one of ``center``/``width`` is given, the width is not > 0, or an option is unknown.
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        center: float | None = None,
        width: float | None = None,
        function: str = "LINEAR",
        fallback: str = "error",
    ) -> None:
        self.center, self.width = self._check_window(center, width)
        if function.upper() not in VOI_LUT_FUNCTIONS:
            raise ValueError(f"function must be one of {list(VOI_LUT_FUNCTIONS)}, got '{function}'.")
        if fallback != "error" and fallback not in SCALE_MODES:
            raise ValueError(f"fallback must be 'error' or one of {list(SCALE_MODES)}, got '{fallback}'.")
        self.function = function.upper()
        self.fallback = fallback

    @staticmethod
    def _check_window(center: float | None, width: float | None) -> tuple[float | None, float | None]:
        if (center is None) != (width is None):
            raise ValueError(f"give both center and width, or neither; got center={center}, width={width}.")
        if center is None or width is None:
            return None, None
        if not (math.isfinite(float(center)) and math.isfinite(float(width))) or float(width) <= 0:
            raise ValueError(f"window center must be finite and width > 0, got center={center}, width={width}.")
        return float(center), float(width)

    def __call__(self, img: NdarrayOrTensor, center: float | None = None, width: float | None = None) -> torch.Tensor:
        """Window ``img``.

        Args:
            img: channel-first image ``[C, *spatial]``; a ``MetaTensor`` from the loader carries the file's window.
            center: window center overriding the others.
            width: window width overriding the others.

        Returns:
            float32 tensor of the same shape in [0, 1]; a ``MetaTensor`` records the window used under
            ``applied_window_center``/``applied_window_width`` (NaN when it was scaled by the fallback).

        Raises:
            InvalidImageError: for an invalid image, or no window with ``fallback="error"``.
            ValueError: for an invalid explicit window.
        """
        tensor, _ = as_image_tensor(img, type(self).__name__)
        window_center, window_width = self._check_window(center, width)
        function = self.function
        if window_center is None:
            window_center, window_width = self.center, self.width
        if window_center is None and isinstance(tensor, MetaTensor):
            file_center = _as_float(tensor.meta.get(SourceMetaKeys.WINDOW_CENTER))
            file_width = _as_float(tensor.meta.get(SourceMetaKeys.WINDOW_WIDTH))
            file_function = str(tensor.meta.get(SourceMetaKeys.VOI_LUT_FUNCTION, "LINEAR") or "LINEAR").upper()
            if math.isfinite(file_center) and math.isfinite(file_width) and file_width > 0:
                window_center, window_width = file_center, file_width
                function = file_function if file_function in VOI_LUT_FUNCTIONS else "LINEAR"
        colour = _is_colour_dicom(tensor)
        if colour and window_center is not None:
            # PS3.3 C.11.2: the VOI LUT is for MONOCHROME data; a window on RGB pixels gives a near-constant image
            logger.warning(
                "%s is a colour DICOM image: its pixels are not windowed (window %g/%g ignored) but scaled%s.",
                source_file(tensor) or "the image",
                window_center,
                window_width,
                "" if self.fallback != "error" else " by min/max",
            )
            window_center = window_width = None
        if window_center is None or window_width is None:
            if self.fallback == "error" and not colour:
                raise invalid_image(
                    "DicomWindow has no window: pass center/width, or load a DICOM file with WindowCenter/"
                    "WindowWidth, or set fallback to a scaling mode.",
                    tensor,
                )
            out = ScaleToUnitRange(mode="minmax" if self.fallback == "error" else self.fallback)(tensor)
            window_center = window_width = math.nan
        else:
            x = working_float(tensor)
            if max(abs(window_center), window_width) >= 1e30:  # window values beyond float32's range
                x = x.to(torch.float64)
            out = finish_unit(apply_window(x, window_center, window_width, function))
            _warn_when_the_window_misses(tensor, out, window_center, window_width)
        if isinstance(out, MetaTensor):
            out.meta[SourceMetaKeys.APPLIED_WINDOW_CENTER] = window_center
            out.meta[SourceMetaKeys.APPLIED_WINDOW_WIDTH] = window_width
        return out


def _is_colour_dicom(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` holds a colour DICOM image (its metadata says so)."""
    if not isinstance(tensor, MetaTensor) or tensor.meta.get(SourceMetaKeys.SOURCE_FORMAT) != "dicom":
        return False
    return str(tensor.meta.get(SourceMetaKeys.PHOTOMETRIC_INTERPRETATION, "")).upper() not in (
        "MONOCHROME1",
        "MONOCHROME2",
    )


# a windowed image with (almost) every pixel at one end of [0, 1] shows nothing a model can learn from
_NEAR_CONSTANT_SHARE = 0.99


def _warn_when_the_window_misses(source: torch.Tensor, out: torch.Tensor, center: float, width: float) -> None:
    """Log a warning naming the file when the window maps nearly every pixel of a varied image to 0 or to 1."""
    values = torch.as_tensor(source).float()
    if values.numel() == 0 or float(values.max() - values.min()) == 0.0:
        return  # a constant image stays constant whatever the window
    windowed = torch.as_tensor(out).float()
    share = max(float((windowed <= 0.0).float().mean()), float((windowed >= 1.0).float().mean()))
    if share >= _NEAR_CONSTANT_SHARE:
        logger.warning(
            "%s: the window %g/%g (center/width) does not fit the image's values %g..%g: %.1f%% of the pixels come "
            "out at one end and the image is near-constant. Pass the right window (presets: window=(center, width)) "
            "or check the file's rescale.",
            source_file(source) or "the image",
            center,
            width,
            float(values.min()),
            float(values.max()),
            100 * share,
        )


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


class DicomWindowd(MapTransform):
    """Dictionary version of :class:`DicomWindow`.

    Args:
        keys: keys of the images to window.
        center: window center, or ``None`` to use each file's window.
        width: window width, given together with ``center``.
        function: VOI LUT function for an explicit window.
        fallback: ``"error"`` or a scaling mode for images without a window.
        allow_missing_keys: do not fail when a key is absent.
    """

    backend = DicomWindow.backend

    def __init__(
        self,
        keys: KeysCollection,
        center: float | None = None,
        width: float | None = None,
        function: str = "LINEAR",
        fallback: str = "error",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.window = DicomWindow(center=center, width=width, function=function, fallback=fallback)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Window the image of every key.

        Args:
            data: a dictionary of images.

        Returns:
            a copy of ``data`` with the images windowed.
        """
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.window(d[key])
        return d
