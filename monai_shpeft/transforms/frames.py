"""Turn a volume (multi-frame DICOM, DICOM series, NIfTI, MetaImage, NRRD) into the 2-D image a ViT reads.

:class:`SelectFrame` keeps one frame or slice; :class:`VolumeToImage` applies a selectable policy: one slice (by
index, by name, or given per image by the datalist), three adjacent slices as the three channels, or a
maximum-intensity projection.
"""

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

__all__ = ["FRAME_NAMES", "VOLUME_POLICIES", "SelectFrame", "SelectFramed", "VolumeToImage", "VolumeToImaged"]

#: named frame positions accepted besides an integer index
FRAME_NAMES: tuple[str, ...] = ("first", "middle", "last")
#: policies of :class:`VolumeToImage` besides a slice index or name
VOLUME_POLICIES: tuple[str, ...] = ("adjacent", "mip")


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
        axis = self.frame_axis(tensor)
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

    def frame_axis(self, tensor: torch.Tensor) -> int:
        """The spatial axis holding the frames: ``spatial_axis``, else the loader's ``frame_axis``, else 0."""
        axis = self.spatial_axis
        if axis is None and isinstance(tensor, MetaTensor):
            recorded = tensor.meta.get(SourceMetaKeys.FRAME_AXIS)
            axis = int(recorded) if isinstance(recorded, int | np.integer) and 0 <= int(recorded) <= 2 else None
        return 0 if axis is None else axis

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


class VolumeToImage(Transform):
    """Reduce a channel-first volume ``[1, D0, D1, D2]`` to a 2-D image by a documented policy; 2-D images pass.

    Policies:

    * an integer, ``"first"``, ``"middle"`` or ``"last"``: that slice (:class:`SelectFrame`, which keeps the slice's
      own window where the file gives one per slice);
    * ``"adjacent"``: the slice and its two neighbours as three channels (``[3, H, W]``, the 2.5-D input of CT
      classifiers; edge slices repeat); :class:`~monai_shpeft.transforms.ToRGB` keeps them as they are;
    * ``"mip"``: the maximum-intensity projection along the slice axis (vessels, nodules, calcifications).

    ``index`` given to ``__call__`` (the datalist's ``slice`` in :class:`VolumeToImaged`) is the slice kept by the
    index policies and the centre of ``"adjacent"``.

    Args:
        policy: one of the above.
        spatial_axis: spatial axis holding the slices, or ``None`` for the loader's ``frame_axis``.

    Raises:
        ValueError: for an unknown policy.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, policy: int | str = "middle", spatial_axis: int | None = None) -> None:
        if isinstance(policy, str) and policy not in (*FRAME_NAMES, *VOLUME_POLICIES):
            raise ValueError(
                f"policy must be a slice index or one of {[*FRAME_NAMES, *VOLUME_POLICIES]}, got '{policy}'."
            )
        self.policy = policy
        self.selector = SelectFrame(index="middle" if policy in VOLUME_POLICIES else policy, spatial_axis=spatial_axis)

    def __call__(self, img: NdarrayOrTensor, index: int | str | None = None) -> torch.Tensor:
        """Reduce ``img``.

        Args:
            img: ``[C, H, W]`` (returned as is) or ``[C, D0, D1, D2]``.
            index: a slice given per image; overrides the policy's slice (not used by ``"mip"``).

        Returns:
            ``[C, H, W]``, or ``[3, H, W]`` for ``"adjacent"`` on a one-channel volume.

        Raises:
            InvalidImageError: for an index outside the slices, or ``"adjacent"`` on a multi-channel volume.
        """
        tensor, _ = as_image_tensor(img, type(self).__name__, min_spatial_dims=2, max_spatial_dims=3)
        if tensor.ndim == 3:
            return tensor
        if self.policy not in VOLUME_POLICIES:
            return self.selector(tensor, index=index)
        axis = self.selector.frame_axis(tensor)
        count = tensor.shape[axis + 1]
        if self.policy == "mip":
            out = tensor.amax(dim=axis + 1)
            kept: Any = "mip"
        else:
            if tensor.shape[0] != 1:
                raise invalid_image(
                    f"'adjacent' stacks slices of a one-channel volume, got {tensor.shape[0]} channels", tensor
                )
            try:
                centre = SelectFrame._resolve("middle" if index is None else index, count)
            except InvalidImageError as error:
                raise invalid_image(str(error), tensor) from None
            positions = [min(max(centre + step, 0), count - 1) for step in (-1, 0, 1)]
            out = torch.cat([tensor.select(axis + 1, p) for p in positions], dim=0)
            kept = centre
            if isinstance(out, MetaTensor):
                _keep_frame_window(out.meta, centre)
        if isinstance(out, MetaTensor):
            out.meta[SourceMetaKeys.SELECTED_FRAME] = kept
            out.meta[MetaKeys.SPATIAL_SHAPE] = np.asarray(out.shape[1:])
            out.meta.pop(SourceMetaKeys.FRAME_WINDOW_CENTERS, None)
            out.meta.pop(SourceMetaKeys.FRAME_WINDOW_WIDTHS, None)
        return out


class VolumeToImaged(MapTransform):
    """Dictionary version of :class:`VolumeToImage`; an item's ``slice_key`` entry (if present) gives its slice.

    Args:
        keys: keys of the images.
        policy: see :class:`VolumeToImage`.
        slice_key: datalist entry holding a per-image slice index (e.g. the slice a radiologist marked).
        spatial_axis: spatial axis holding the slices, or ``None`` for the loader's ``frame_axis``.
        allow_missing_keys: do not fail when a key is absent.
    """

    backend = VolumeToImage.backend

    def __init__(
        self,
        keys: KeysCollection,
        policy: int | str = "middle",
        slice_key: str | None = "slice",
        spatial_axis: int | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.reducer = VolumeToImage(policy=policy, spatial_axis=spatial_axis)
        self.slice_key = slice_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Reduce the image of every key.

        Args:
            data: a dictionary of images (and optionally the slice index under ``slice_key``).

        Returns:
            a copy of ``data`` with 2-D images.
        """
        d = dict(data)
        index = d.get(self.slice_key) if self.slice_key is not None else None
        if index is not None and not isinstance(index, str):
            index = int(index)
        for key in self.key_iterator(d):
            d[key] = self.reducer(d[key], index=index)
        return d
