"""Intensity scaling to [0, 1] that reads the stored bit depth instead of assuming 8-bit."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from typing import Any, cast

import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.transforms.utils_pytorch_numpy_unification import percentile
from monai.utils import TransformBackends

from monai_shpeft.transforms._checks import as_image_tensor, finish_unit, source_dtype, working_float

__all__ = ["SCALE_MODES", "ScaleToUnitRange", "ScaleToUnitRanged", "minmax_to_unit"]

#: the modes of :class:`ScaleToUnitRange`
SCALE_MODES: tuple[str, ...] = ("auto", "minmax", "percentile")


def minmax_to_unit(x: torch.Tensor) -> torch.Tensor:
    """Map the range of ``x`` (a float tensor of finite values) linearly onto [0, 1]; a constant image gives 0.

    Args:
        x: float32 or float64 tensor.

    Returns:
        a tensor of the same dtype with values in [0, 1].
    """
    low, high = float(x.min()), float(x.max())
    if not math.isfinite(high - low):  # only float64 data spanning more than 1.8e308
        x, low, high = x / 2, low / 2, high / 2
    if high <= low:
        return torch.zeros_like(x)
    return (x - low) / (high - low)


class ScaleToUnitRange(Transform):
    """Scale intensities to [0, 1] according to how they were stored.

    ``mode="auto"`` (default):

    * values already within [0, 1] are kept (so the transform is idempotent);
    * 8-bit data (a ``uint8`` array, or float data the loader recorded as ``uint8`` in ``meta["source_dtype"]``)
      within [0, 255] is divided by 255 (``int8``: shifted by 128 first);
    * other integer data (16-bit PNG/TIFF, DICOM, ...) is divided by its actual maximum when it has no negative
      value, so 16-bit keeps its whole dynamic range instead of being clipped at 255; with negative values (CT in
      HU) it is min-max scaled;
    * other float data is min-max scaled.

    ``mode="minmax"`` always maps [min, max] to [0, 1]; ``mode="percentile"`` maps the ``lower``..``upper``
    percentiles to [0, 1] and clips (robust to burned-in labels and hot pixels), falling back to min-max when those
    percentiles coincide. Scaling is global over channels, so colour balance is kept. A constant image gives zeros.

    Args:
        mode: ``auto``, ``minmax`` or ``percentile``.
        lower: lower percentile for ``percentile`` mode, in [0, 100).
        upper: upper percentile for ``percentile`` mode, in (lower, 100].

    Raises:
        ValueError: for an unknown mode or percentiles out of order.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, mode: str = "auto", lower: float = 0.5, upper: float = 99.5) -> None:
        if mode not in SCALE_MODES:
            raise ValueError(f"mode must be one of {list(SCALE_MODES)}, got '{mode}'.")
        if not 0.0 <= lower < upper <= 100.0:
            raise ValueError(f"need 0 <= lower < upper <= 100, got lower={lower}, upper={upper}.")
        self.mode = mode
        self.lower = float(lower)
        self.upper = float(upper)

    def __call__(self, img: NdarrayOrTensor) -> torch.Tensor:
        """Scale ``img``.

        Args:
            img: channel-first image ``[C, *spatial]`` (array or tensor, any real dtype).

        Returns:
            float32 tensor of the same shape with values in [0, 1] (a ``MetaTensor`` keeps its metadata).

        Raises:
            InvalidImageError: for an input that is not a finite, non-empty channel-first image.
        """
        tensor, input_dtype = as_image_tensor(img, type(self).__name__)
        stored = source_dtype(tensor, input_dtype)
        x = working_float(tensor)
        if self.mode == "minmax":
            return finish_unit(minmax_to_unit(x))
        if self.mode == "percentile":
            return finish_unit(self._percentile(x))
        return finish_unit(self._auto(x, stored))

    def _percentile(self, x: torch.Tensor) -> torch.Tensor:
        bounds = cast(torch.Tensor, percentile(x.flatten(), [self.lower, self.upper]))  # a tensor in, a tensor out
        low, high = (float(v) for v in bounds)
        if not (math.isfinite(low) and math.isfinite(high) and math.isfinite(high - low)) or high <= low:
            return minmax_to_unit(x)
        return (x - low) / (high - low)

    @staticmethod
    def _auto(x: torch.Tensor, stored: str) -> torch.Tensor:
        low, high = float(x.min()), float(x.max())
        if low >= 0.0 and high <= 1.0:
            return x
        if stored == "uint8" and low >= 0.0 and high <= 255.0:
            return x / 255.0
        if stored == "int8" and low >= -128.0 and high <= 127.0:
            return (x + 128.0) / 255.0
        if stored.startswith(("uint", "int")) and low >= 0.0:
            return x / high  # high > 1 here
        return minmax_to_unit(x)


class ScaleToUnitRanged(MapTransform):
    """Dictionary version of :class:`ScaleToUnitRange`.

    Args:
        keys: keys of the images to scale.
        mode: ``auto``, ``minmax`` or ``percentile``.
        lower: lower percentile for ``percentile`` mode.
        upper: upper percentile for ``percentile`` mode.
        allow_missing_keys: do not fail when a key is absent.
    """

    backend = ScaleToUnitRange.backend

    def __init__(
        self,
        keys: KeysCollection,
        mode: str = "auto",
        lower: float = 0.5,
        upper: float = 99.5,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.scaler = ScaleToUnitRange(mode=mode, lower=lower, upper=upper)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Scale the image of every key.

        Args:
            data: a dictionary of images.

        Returns:
            a copy of ``data`` with the images scaled.
        """
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.scaler(d[key])
        return d
