"""Saliency maps drawn over the image the network read, with MONAI's :func:`~monai.visualize.blend_images`."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.visualize import blend_images

from monai_shpeft.utils import atomic_path

__all__ = ["denormalize", "overlay_file_name", "saliency_overlay", "save_overlay"]

# characters kept in an overlay's file name; anything else (spaces, brackets, separators) becomes "_"
_UNSAFE = re.compile(r"[^\w.-]+")


def denormalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo the channel-wise ``(x - mean) / std`` of the bundles' ``normalize`` transforms, clipped to ``[0, 1]``.

    Args:
        image: ``[C, H, W]`` normalised image.
        mean: per-channel mean that was subtracted.
        std: per-channel divisor.

    Returns:
        the image in ``[0, 1]``, ``[C, H, W]`` float32.
    """
    image = torch.as_tensor(image).detach().float().cpu()
    shape = (-1, *([1] * (image.ndim - 1)))
    mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(shape)
    std_t = torch.as_tensor(std, dtype=torch.float32).reshape(shape)
    return (image * std_t + mean_t).clamp(0.0, 1.0)


def saliency_overlay(image: torch.Tensor, saliency: torch.Tensor, alpha: float = 0.6, cmap: str = "jet") -> np.ndarray:
    """Blend a map over an image: the map's colour shows where it is high, the image where it is low.

    The map's opacity follows its value (``alpha * saliency``), so the image stays readable outside the salient
    region.

    Args:
        image: ``[1 or 3, H, W]`` image in ``[0, 1]``.
        saliency: ``[1, H, W]`` map in ``[0, 1]``.
        alpha: the opacity where the map is 1.
        cmap: a matplotlib colormap name.

    Returns:
        ``[H, W, 3]`` uint8 RGB.
    """
    image = torch.as_tensor(image).detach().float().cpu()
    saliency = torch.as_tensor(saliency).detach().float().cpu().clamp(0.0, 1.0)
    blended = blend_images(
        image,
        saliency,
        alpha=alpha * saliency.clone(),  # blend_images zeroes the opacity of zero pixels in place
        cmap=cmap,
        rescale_arrays=False,
        transparent_background=True,
    )
    rgb = torch.as_tensor(blended).permute(1, 2, 0).clamp(0.0, 1.0).numpy()
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def overlay_file_name(image_name: str, class_name: str) -> str:
    """``<image stem>_<class>.png``, with runs of characters unsafe in file names replaced by ``_``.

    Args:
        image_name: the image's path or name.
        class_name: the predicted class.

    Returns:
        the file name.
    """
    stem = Path(str(image_name)).name
    for suffix in (".gz", ".nii", ".png", ".jpg", ".jpeg", ".dcm", ".bmp", ".tif", ".tiff"):
        stem = stem[: -len(suffix)] if stem.lower().endswith(suffix) else stem
    return f"{_UNSAFE.sub('_', stem).strip('_') or 'image'}_{_UNSAFE.sub('_', class_name).strip('_')}.png"


def save_overlay(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Write an RGB overlay as a PNG (atomically: a killed run leaves no half-written file).

    Args:
        path: the PNG file.
        rgb: ``[H, W, 3]`` uint8.

    Returns:
        the path.
    """
    from PIL import Image

    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(rgb)).save(tmp, format="PNG")
    return path
