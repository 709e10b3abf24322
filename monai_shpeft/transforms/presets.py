"""Modality presets: from ``{"image": path}`` to a normalised ``[3, S, S]`` float32 tensor for a pretrained ViT.

Every preset is the same chain with per-modality choices::

    LoadMedicalImaged -> VolumeToImaged -> DicomWindowd | ScaleToUnitRanged -> [InvertMonochrome1d] -> ToRGBd
      -> Resized -> [training: RandFlipd (+ RandFlipd), RandAffined] -> NormalizeIntensityd

=============  =====================================================================================
modality       intensity to [0, 1]
=============  =====================================================================================
ct             file's VOI window (or ``window=``), else auto scaling; MONOCHROME1 inverted
xray           file's VOI window, else auto scaling; MONOCHROME1 inverted
mammography    file's VOI window, else 0.5-99.5 percentile scaling; MONOCHROME1 inverted
ultrasound     auto scaling (8-bit / 255, 16-bit / max)
oct, fundus,   auto scaling
endoscopy,
natural
pathology,     auto scaling; training also flips vertically (no canonical orientation)
dermoscopy
=============  =====================================================================================

:func:`modality_transforms` builds the ``Compose``; :func:`modality_transform_config` gives the same pipeline as
MONAI bundle config items (``{"_target_": ..., ...}``, JSON-serialisable) that ``monai.bundle.ConfigParser``
instantiates into an equal ``Compose``.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from monai.config import KeysCollection
from monai.transforms import Compose, NormalizeIntensityd, RandAffined, RandFlipd, Resized

from monai_shpeft.transforms.channels import ToRGBd
from monai_shpeft.transforms.compose import ReportingCompose
from monai_shpeft.transforms.frames import VolumeToImaged
from monai_shpeft.transforms.intensity import ScaleToUnitRanged
from monai_shpeft.transforms.load import LoadMedicalImaged
from monai_shpeft.transforms.monochrome import InvertMonochrome1d
from monai_shpeft.transforms.window import DicomWindowd

__all__ = [
    "MODALITIES",
    "MODALITY_RECIPES",
    "ModalityRecipe",
    "NORMALIZATIONS",
    "modality_transform_config",
    "modality_transforms",
]

#: (mean, std) per channel of the pretraining data of the backbones
NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
}

#: training augmentation: rotation range (radians) and scale range of RandAffined, probability of each step
_ROTATE_RANGE = 0.1
_SCALE_RANGE = 0.1
_AUGMENT_PROB = 0.5


@dataclass(frozen=True)
class ModalityRecipe:
    """The per-modality choices of a preset (read by the bundle templates of :mod:`monai_shpeft.zoo`)."""

    window: bool  # DicomWindowd (file's window, fallback scaling) instead of ScaleToUnitRanged
    scale_mode: str  # ScaleToUnitRange mode (the fallback when windowing)
    invert_monochrome1: bool
    flip_axes: tuple[int, ...]  # spatial axes flipped at random in training (1 = left-right)


MODALITY_RECIPES: dict[str, ModalityRecipe] = {
    "ultrasound": ModalityRecipe(window=False, scale_mode="auto", invert_monochrome1=False, flip_axes=(1,)),
    "ct": ModalityRecipe(window=True, scale_mode="auto", invert_monochrome1=True, flip_axes=(1,)),
    "xray": ModalityRecipe(window=True, scale_mode="auto", invert_monochrome1=True, flip_axes=(1,)),
    "mammography": ModalityRecipe(window=True, scale_mode="percentile", invert_monochrome1=True, flip_axes=(1,)),
    "oct": ModalityRecipe(window=False, scale_mode="auto", invert_monochrome1=False, flip_axes=(1,)),
    "fundus": ModalityRecipe(window=False, scale_mode="auto", invert_monochrome1=False, flip_axes=(1,)),
    "pathology": ModalityRecipe(window=False, scale_mode="auto", invert_monochrome1=False, flip_axes=(1, 0)),
    "dermoscopy": ModalityRecipe(window=False, scale_mode="auto", invert_monochrome1=False, flip_axes=(1, 0)),
    "endoscopy": ModalityRecipe(window=False, scale_mode="auto", invert_monochrome1=False, flip_axes=(1,)),
    "natural": ModalityRecipe(window=False, scale_mode="auto", invert_monochrome1=False, flip_axes=(1,)),
}

#: the modalities with a preset
MODALITIES: tuple[str, ...] = tuple(MODALITY_RECIPES)


def _target(cls: type) -> str:
    package = "monai.transforms" if cls.__module__.startswith("monai.") else "monai_shpeft.transforms"
    return f"{package}.{cls.__name__}"


def _channel_triplet(values: Sequence[float], name: str) -> list[float]:
    triplet = [float(v) for v in values]
    if len(triplet) != 3 or not all(math.isfinite(v) for v in triplet):
        raise ValueError(f"{name} must be three finite numbers (one per RGB channel), got {values}.")
    return triplet


def _steps(
    modality: str,
    image_size: int,
    train: bool,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    normalization: str,
    window: Sequence[float] | None,
    frame: int | str,
    keys: KeysCollection,
) -> list[tuple[type, dict[str, Any]]]:
    name = str(modality).strip().lower()
    if name not in MODALITY_RECIPES:
        raise ValueError(f"unknown modality '{modality}'; valid modalities: {list(MODALITIES)}.")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}.")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {list(NORMALIZATIONS)}, got '{normalization}'.")
    default_mean, default_std = NORMALIZATIONS[normalization]
    mean_ = _channel_triplet(default_mean if mean is None else mean, "mean")
    std_ = _channel_triplet(default_std if std is None else std, "std")
    if min(std_) <= 0:
        raise ValueError(f"std must be > 0 for every channel, got {std_}.")
    if window is not None and (len(window) != 2 or not float(window[1]) > 0):
        raise ValueError(f"window must be (center, width) with width > 0, got {window}.")
    keys_ = keys if isinstance(keys, str) else list(cast(Collection[Hashable], keys))
    recipe = MODALITY_RECIPES[name]

    steps: list[tuple[type, dict[str, Any]]] = [
        (LoadMedicalImaged, {"keys": keys_}),
        (VolumeToImaged, {"keys": keys_, "policy": frame}),
    ]
    if window is not None:
        center, width = float(window[0]), float(window[1])
        steps.append((DicomWindowd, {"keys": keys_, "center": center, "width": width}))
    elif recipe.window:
        steps.append((DicomWindowd, {"keys": keys_, "fallback": recipe.scale_mode}))
    else:
        steps.append((ScaleToUnitRanged, {"keys": keys_, "mode": recipe.scale_mode}))
    if recipe.invert_monochrome1:
        steps.append((InvertMonochrome1d, {"keys": keys_, "value_range": [0.0, 1.0]}))
    steps += [
        (ToRGBd, {"keys": keys_}),
        (Resized, {"keys": keys_, "spatial_size": [image_size, image_size], "mode": "bilinear", "anti_aliasing": True}),
    ]
    if train:
        steps += [
            (RandFlipd, {"keys": keys_, "prob": _AUGMENT_PROB, "spatial_axis": axis}) for axis in recipe.flip_axes
        ]
        steps.append(
            (
                RandAffined,
                {
                    "keys": keys_,
                    "prob": _AUGMENT_PROB,
                    "rotate_range": _ROTATE_RANGE,
                    "scale_range": _SCALE_RANGE,
                    "mode": "bilinear",
                    "padding_mode": "zeros",
                },
            )
        )
    steps.append((NormalizeIntensityd, {"keys": keys_, "subtrahend": mean_, "divisor": std_, "channel_wise": True}))
    return steps


def modality_transforms(
    modality: str,
    image_size: int = 224,
    train: bool = False,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    normalization: str = "imagenet",
    window: Sequence[float] | None = None,
    frame: int | str = "middle",
    keys: KeysCollection = "image",
) -> Compose:
    """The preprocessing of one modality, as a MONAI ``Compose`` over dictionaries.

    Args:
        modality: one of :data:`MODALITIES` (case-insensitive).
        image_size: side of the square output.
        train: add light augmentation (random flips, small rotation and scaling) after resizing.
        mean: per-channel mean subtracted at the end; ``None`` takes it from ``normalization``.
        std: per-channel std divided by at the end; ``None`` takes it from ``normalization``.
        normalization: ``"imagenet"`` or ``"clip"``: the statistics of the backbone's pretraining.
        window: explicit VOI window ``(center, width)`` in the file's units (e.g. HU for CT DICOM/NIfTI) used
            instead of the modality's default intensity step; ``None`` keeps it (the file's own window for
            ``ct``, ``xray`` and ``mammography``). Only meaningful for files in modality units, not PNG/JPEG.
        frame: how a volume (multi-frame DICOM, DICOM series folder, NIfTI, MetaImage, NRRD) becomes 2-D: a slice
            index, ``"first"``, ``"middle"``, ``"last"``, ``"adjacent"`` (three slices as channels) or ``"mip"``
            (:class:`~monai_shpeft.transforms.VolumeToImage`); an item's ``slice`` entry overrides the slice.
        keys: key(s) holding the image paths.

    Returns:
        a :class:`~monai_shpeft.transforms.compose.ReportingCompose` (a MONAI ``Compose`` that raises our errors as
        themselves) mapping ``{"image": path}`` to ``{"image": [3, image_size, image_size] float32}``.

    Raises:
        ValueError: for an unknown modality (the message lists the valid ones) or an invalid option.
    """
    steps = _steps(modality, image_size, train, mean, std, normalization, window, frame, keys)
    return ReportingCompose([cls(**kwargs) for cls, kwargs in steps])


def modality_transform_config(
    modality: str,
    image_size: int = 224,
    train: bool = False,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    normalization: str = "imagenet",
    window: Sequence[float] | None = None,
    frame: int | str = "middle",
    keys: KeysCollection = "image",
) -> list[dict[str, Any]]:
    """The pipeline of :func:`modality_transforms` as MONAI bundle config items.

    Write the list under a ``Compose`` in a bundle (``{"_target_": "Compose", "transforms": [...]}``); every
    value is JSON-serialisable and our transforms are referenced by full dotted path.

    Args:
        modality: one of :data:`MODALITIES`.
        image_size: side of the square output.
        train: add the training augmentation.
        mean: per-channel mean, or ``None`` for ``normalization``'s.
        std: per-channel std, or ``None`` for ``normalization``'s.
        normalization: ``"imagenet"`` or ``"clip"``.
        window: explicit VOI window ``(center, width)``, or ``None``.
        frame: the volume policy (see :func:`modality_transforms`).
        keys: key(s) holding the image paths.

    Returns:
        a list of ``{"_target_": "<dotted class path>", **arguments}`` dictionaries.

    Raises:
        ValueError: as :func:`modality_transforms`.
    """
    steps = _steps(modality, image_size, train, mean, std, normalization, window, frame, keys)
    return [{"_target_": _target(cls), **kwargs} for cls, kwargs in steps]
