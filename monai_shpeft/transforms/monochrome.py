"""MONOCHROME1 inversion, so that high values are bright (bone white) in every grey image."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends

from monai_shpeft.transforms._checks import as_image_tensor, working_float
from monai_shpeft.transforms.meta import SourceMetaKeys

__all__ = ["InvertMonochrome1", "InvertMonochrome1d"]


class InvertMonochrome1(Transform):
    """Invert an image whose photometric interpretation is ``MONOCHROME1`` (minimum value shown white).

    The interpretation comes from the argument of ``__call__`` or else from the ``MetaTensor`` metadata written by
    :class:`~monai_shpeft.transforms.LoadMedicalImage` (``PhotometricInterpretation``); any other interpretation
    (``MONOCHROME2``, ``RGB``, PNG/JPEG files) leaves the image unchanged. The inversion is ``low + high - x``
    over ``value_range``, or over the image's own minimum and maximum when it is ``None``. After it, the metadata
    says ``MONOCHROME2`` (so applying it twice inverts once) and ``monochrome1_inverted=True``.

    In a pipeline, invert after :class:`~monai_shpeft.transforms.DicomWindow` with ``value_range=(0, 1)``: DICOM
    windows are defined on the stored values and the inversion comes after them.

    Args:
        value_range: ``(low, high)`` of the values, e.g. ``(0, 1)`` after windowing; ``None`` uses the image's
            min and max.

    Raises:
        ValueError: if ``value_range`` is not two finite numbers with ``low < high``.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, value_range: Sequence[float] | None = None) -> None:
        if value_range is not None:
            if len(value_range) != 2 or not all(math.isfinite(float(v)) for v in value_range):
                raise ValueError(f"value_range must be two finite numbers (low, high), got {value_range}.")
            if float(value_range[0]) >= float(value_range[1]):
                raise ValueError(f"value_range needs low < high, got {value_range}.")
            value_range = (float(value_range[0]), float(value_range[1]))
        self.value_range = value_range

    def __call__(self, img: NdarrayOrTensor, photometric_interpretation: str | None = None) -> torch.Tensor:
        """Invert ``img`` if it is ``MONOCHROME1``.

        Args:
            img: channel-first image ``[C, *spatial]``.
            photometric_interpretation: overrides the metadata (e.g. for a plain array).

        Returns:
            the inverted image as float (float32 unless the input needed float64), or the image unchanged.

        Raises:
            InvalidImageError: for an input that is not a finite, non-empty channel-first image.
        """
        tensor, _ = as_image_tensor(img, type(self).__name__)
        if photometric_interpretation is None and isinstance(tensor, MetaTensor):
            photometric_interpretation = tensor.meta.get(SourceMetaKeys.PHOTOMETRIC_INTERPRETATION)
        if str(photometric_interpretation or "").strip().upper() != "MONOCHROME1":
            return tensor
        x = working_float(tensor)
        low, high = self.value_range if self.value_range is not None else (float(x.min()), float(x.max()))
        out = 2.0 * ((low / 2.0 + high / 2.0) - x / 2.0)  # low + high - x, without overflow for huge ranges
        if isinstance(out, MetaTensor):
            out.meta[SourceMetaKeys.PHOTOMETRIC_INTERPRETATION] = "MONOCHROME2"
            out.meta[SourceMetaKeys.MONOCHROME1_INVERTED] = True
        return out


class InvertMonochrome1d(MapTransform):
    """Dictionary version of :class:`InvertMonochrome1` (the interpretation is read from each image's metadata).

    Args:
        keys: keys of the images.
        value_range: ``(low, high)`` of the values, or ``None`` for each image's min and max.
        allow_missing_keys: do not fail when a key is absent.
    """

    backend = InvertMonochrome1.backend

    def __init__(
        self, keys: KeysCollection, value_range: Sequence[float] | None = None, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.inverter = InvertMonochrome1(value_range=value_range)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Invert the ``MONOCHROME1`` images among the keys.

        Args:
            data: a dictionary of images.

        Returns:
            a copy of ``data`` with those images inverted.
        """
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.inverter(d[key])
        return d
