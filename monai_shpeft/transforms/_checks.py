"""Input checks shared by the array transforms: every rejected input raises InvalidImageError with the reason."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor, get_track_meta
from monai.utils import ImageMetaKey, convert_to_tensor

from monai_shpeft.transforms.errors import InvalidImageError
from monai_shpeft.transforms.meta import SourceMetaKeys

_FLOAT32_SAFE = 1e30


def dtype_name(dtype: np.dtype | torch.dtype) -> str:
    """``uint8``, ``float32``, ... for a numpy or torch dtype."""
    if isinstance(dtype, torch.dtype):
        return str(dtype).removeprefix("torch.")
    return np.dtype(dtype).name


def source_file(img: Any) -> str | None:
    """The file a loaded image came from (``MetaTensor`` metadata), or ``None`` for a bare array.

    Args:
        img: any image.

    Returns:
        the path recorded by the loader, if any.
    """
    if isinstance(img, MetaTensor):
        name = img.meta.get(ImageMetaKey.FILENAME_OR_OBJ)
        if isinstance(name, str) and name:
            return name
    return None


def invalid_image(message: str, img: Any) -> InvalidImageError:
    """Build an :class:`InvalidImageError` whose message ends with the image's file, when it is known.

    A transform deep in a pipeline only sees an array; the file name is what a user needs to find the bad image.

    Args:
        message: what is wrong, in words a user can act on.
        img: the image the transform was given.

    Returns:
        the error (not raised), with ``path`` set.
    """
    path = source_file(img)
    return InvalidImageError(f"{message} (file '{path}')" if path else message, path=path)


def as_image_tensor(
    img: Any, transform: str, min_spatial_dims: int = 1, max_spatial_dims: int | None = None
) -> tuple[torch.Tensor, str]:
    """Check a channel-first image and convert it to a tensor (a ``MetaTensor`` while MONAI tracks metadata).

    Args:
        img: numpy array or torch tensor ``[C, *spatial]``.
        transform: name of the calling transform, for the messages.
        min_spatial_dims: fewest spatial dimensions accepted.
        max_spatial_dims: most spatial dimensions accepted (``None``: no limit).

    Returns:
        ``(tensor, dtype)``: the tensor and the name of the input's dtype (before MONAI widens ``uint16``).

    Raises:
        InvalidImageError: for a non-array, a non-numeric dtype, too few or too many dimensions, an empty image,
            or NaN/infinite values.
    """
    if not isinstance(img, np.ndarray | torch.Tensor):
        raise invalid_image(f"{transform} expects a numpy array or torch tensor, got {type(img).__name__}.", img)
    if isinstance(img, np.ndarray) and img.dtype.kind not in "biuf":
        raise invalid_image(f"{transform} expects a numeric image, got dtype {img.dtype}.", img)
    if isinstance(img, torch.Tensor) and img.is_complex():
        raise invalid_image(f"{transform} expects a real-valued image, got dtype {img.dtype}.", img)
    name = dtype_name(img.dtype)
    shape = tuple(img.shape)
    if len(shape) < 1 + min_spatial_dims or (max_spatial_dims is not None and len(shape) > 1 + max_spatial_dims):
        wanted = f"{min_spatial_dims}" if max_spatial_dims == min_spatial_dims else f"{min_spatial_dims}+"
        if max_spatial_dims is not None and max_spatial_dims != min_spatial_dims:
            wanted = f"{min_spatial_dims} to {max_spatial_dims}"
        raise invalid_image(
            f"{transform} expects a channel-first image [C, *spatial] with {wanted} spatial dimensions, "
            f"got shape {shape}.",
            img,
        )
    if 0 in shape:
        raise invalid_image(f"{transform} got an empty image (shape {shape}).", img)
    if isinstance(img, np.ndarray) and not img.dtype.isnative:
        img = img.astype(img.dtype.newbyteorder("="))
    try:
        tensor = convert_to_tensor(img, track_meta=get_track_meta())
    except (TypeError, RuntimeError) as e:
        raise invalid_image(f"{transform} cannot use an image of dtype {name}: {e}", img) from e
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        count = int((~torch.isfinite(tensor)).sum())
        # float64 files loaded as float32 turn values beyond float32's range into infinities
        wide = source_dtype(tensor, name) == "float64"
        overflow = " (or float64 values beyond float32's range, 3.4e38)" if wide else ""
        raise invalid_image(
            f"{transform} got {count} NaN or infinite value(s){overflow} (shape {shape}, dtype {name}); replace "
            "them in the file (e.g. by the background value) or leave the image out.",
            img,
        )
    return tensor, name


def source_dtype(tensor: torch.Tensor, input_dtype: str) -> str:
    """The dtype the values were stored in: the input's own for integers, else the loader's record, if any."""
    if not input_dtype.startswith("float") and input_dtype != "bfloat16":
        return input_dtype
    if isinstance(tensor, MetaTensor):
        recorded = tensor.meta.get(SourceMetaKeys.SOURCE_DTYPE)
        if isinstance(recorded, str) and recorded:
            return recorded
    return input_dtype


def working_float(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` as float32, or float64 where float32 arithmetic on its values could overflow."""
    if tensor.dtype == torch.float64:
        return tensor
    tensor = tensor.to(torch.float32)  # integers (even int64) and half precision fit float32's range
    peak = float(tensor.abs().max())
    return tensor.to(torch.float64) if peak >= _FLOAT32_SAFE else tensor


def finish_unit(result: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] and return float32 (NaN cannot occur: inputs are finite and spans are checked)."""
    return torch.clamp(result, 0.0, 1.0).to(torch.float32)
