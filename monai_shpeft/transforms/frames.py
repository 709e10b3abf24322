"""Pick one 2-D frame of a multi-frame DICOM or one slice of a 3-D NIfTI volume."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import MetaKeys, TransformBackends

from monai_shpeft.transforms._checks import as_image_tensor, invalid_image
from monai_shpeft.transforms.errors import InvalidImageError
from monai_shpeft.transforms.meta import SourceMetaKeys

__all__ = ["FRAME_NAMES", "SelectFrame", "SelectFramed"]

#: named frame positions accepted besides an integer index
FRAME_NAMES: tuple[str, ...] = ("first", "middle", "last")


class SelectFrame(Transform):
    """Reduce a channel-first image with three spatial axes to one 2-D frame; 2-D images pass unchanged.

    The frame axis is ``spatial_axis`` if given, else the loader's ``meta["frame_axis"]`` (0 for DICOM frames,
    2 for NIfTI slices), else 0. An enhanced multi-frame DICOM keeps the window of the frame it keeps (its
    functional groups give each frame its own).

    Args:
        index: frame to keep: an integer (negative counts from the end) or ``"first"``, ``"middle"``
            (``n // 2``) or ``"last"``.
        spatial_axis: spatial axis holding the frames (0, 1 or 2; the channel axis is not counted), or ``None``.

    Raises:
        ValueError: for an unknown frame name or a spatial axis outside 0..2.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, index: int | str = "middle", spatial_axis: int | None = None) -> None:
        if isinstance(index, str) and index not in FRAME_NAMES:
            raise ValueError(f"index must be an integer or one of {list(FRAME_NAMES)}, got '{index}'.")
        if not isinstance(index, str | int | np.integer) or isinstance(index, bool):
            raise ValueError(f"index must be an integer or one of {list(FRAME_NAMES)}, got {index!r}.")
        if spatial_axis is not None and spatial_axis not in (0, 1, 2):
            raise ValueError(f"spatial_axis must be 0, 1, 2 or None, got {spatial_axis}.")
        self.index = index if isinstance(index, str) else int(index)
        self.spatial_axis = spatial_axis

    def __call__(self, img: NdarrayOrTensor, index: int | str | None = None) -> torch.Tensor:
        """Keep one frame of ``img``.

        Args:
            img: ``[C, H, W]`` (returned as is) or ``[C, D0, D1, D2]``.
            index: overrides the index given at construction.

        Returns:
            ``[C, H, W]``; a ``MetaTensor`` records ``selected_frame`` and the new spatial shape.

        Raises:
            InvalidImageError: for an image without 2 or 3 spatial axes, or an index outside the frames.
        """
        tensor, _ = as_image_tensor(img, type(self).__name__, min_spatial_dims=2, max_spatial_dims=3)
        if tensor.ndim == 3:
            return tensor
        axis = self.spatial_axis
        if axis is None and isinstance(tensor, MetaTensor):
            recorded = tensor.meta.get(SourceMetaKeys.FRAME_AXIS)
            axis = int(recorded) if isinstance(recorded, int | np.integer) and 0 <= int(recorded) <= 2 else None
        axis = 0 if axis is None else axis
        count = tensor.shape[axis + 1]
        try:
            position = self._resolve(self.index if index is None else index, count)
        except InvalidImageError as error:
            raise invalid_image(str(error), tensor) from None
        out = tensor.select(axis + 1, position)
        if isinstance(out, MetaTensor):
            out.meta[SourceMetaKeys.SELECTED_FRAME] = position
            out.meta[MetaKeys.SPATIAL_SHAPE] = np.asarray(out.shape[1:])
            _keep_frame_window(out.meta, position)
        return out

    @staticmethod
    def _resolve(index: int | str, count: int) -> int:
        if isinstance(index, str):
            if index not in FRAME_NAMES:
                raise InvalidImageError(f"frame index must be an integer or one of {list(FRAME_NAMES)}: '{index}'.")
            return {"first": 0, "middle": count // 2, "last": count - 1}[index]
        if not -count <= int(index) < count:
            raise InvalidImageError(f"frame {index} requested but the image has {count} frames.")
        return int(index) % count


def _keep_frame_window(meta: dict, position: int) -> None:
    """Make the kept frame's own window (enhanced multi-frame DICOM) the image's window; drop the per-frame lists."""
    centers = meta.pop(SourceMetaKeys.FRAME_WINDOW_CENTERS, None)
    widths = meta.pop(SourceMetaKeys.FRAME_WINDOW_WIDTHS, None)
    if centers is not None and widths is not None and position < min(len(centers), len(widths)):
        meta[SourceMetaKeys.WINDOW_CENTER] = float(centers[position])
        meta[SourceMetaKeys.WINDOW_WIDTH] = float(widths[position])


class SelectFramed(MapTransform):
    """Dictionary version of :class:`SelectFrame`.

    Args:
        keys: keys of the images.
        index: frame to keep: an integer or ``"first"``, ``"middle"``, ``"last"``.
        spatial_axis: spatial axis holding the frames, or ``None`` for the loader's ``frame_axis``.
        allow_missing_keys: do not fail when a key is absent.
    """

    backend = SelectFrame.backend

    def __init__(
        self,
        keys: KeysCollection,
        index: int | str = "middle",
        spatial_axis: int | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.selector = SelectFrame(index=index, spatial_axis=spatial_axis)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Keep one frame of the image of every key.

        Args:
            data: a dictionary of images.

        Returns:
            a copy of ``data`` with 2-D images.
        """
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.selector(d[key])
        return d
