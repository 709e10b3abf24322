"""Backbone names (``"<library>:<model>"``) and what a name implies.

The normalisation statistics, the patch size the image size must be a multiple of, and the tiny configurations
(same family, same code path) that unit tests build.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

from monai_shpeft.errors import SettingsError

__all__ = ["normalization_stats", "patch_size_of", "check_image_size"]

OPEN_CLIP_PREFIX = "open_clip"


TIMM_PREFIX = "timm"


_ACCEPTED_FORMS = (
    "'open_clip:<model>' (e.g. 'open_clip:ViT-B-16') or 'timm:<model>' (e.g. 'timm:vit_small_patch14_dinov2')"
)


# Tiny configurations (same family, same patch size, same code path) so unit tests run in milliseconds on a CPU.
TINY_DEPTH = 2


TINY_WIDTH = 64


TINY_HEADS = 2


def normalization_stats(backbone: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation the backbone's pretrained weights expect.

    open_clip models use the statistics of their default pretrained configuration (OpenAI CLIP's for
    ``ViT-B-16``); timm models use their default pretrained configuration (ImageNet's for DINOv2).

    Args:
        backbone: ``"open_clip:<model>"`` or ``"timm:<model>"``.

    Returns:
        ``(mean, std)`` for RGB images scaled to [0, 1].
    """
    library, name = _parse_backbone(backbone)
    if library == OPEN_CLIP_PREFIX:
        import open_clip

        tags = open_clip.list_pretrained_tags_by_model(name)
        cfg = open_clip.get_pretrained_cfg(name, tags[0]) if tags else {}
        mean = cfg.get("mean") or open_clip.constants.OPENAI_DATASET_MEAN
        std = cfg.get("std") or open_clip.constants.OPENAI_DATASET_STD
        return tuple(float(v) for v in mean), tuple(float(v) for v in std)
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    mean = getattr(cfg, "mean", None) or (0.485, 0.456, 0.406)
    std = getattr(cfg, "std", None) or (0.229, 0.224, 0.225)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


# "vit_small_patch14_dinov2", "vit_base_patch16_224": timm names its ViTs by patch size
_TIMM_PATCH = re.compile(r"patch(\d+)")


def patch_size_of(backbone: str) -> int | None:
    """The patch size of a backbone string, read from its library's configuration without building it.

    Args:
        backbone: ``"open_clip:<model>"`` or ``"timm:<model>"``.

    Returns:
        the patch size, or ``None`` when the configuration does not say (the network checks it when built).
    """
    library, _, name = backbone.partition(":")
    if library == "open_clip":
        import open_clip

        config = open_clip.get_model_config(name.replace("/", "-")) or {}
        patch = (config.get("vision_cfg") or {}).get("patch_size")
        return int(patch) if isinstance(patch, int) else None
    if library == "timm":
        match = _TIMM_PATCH.search(name)
        return int(match.group(1)) if match else None
    return None


def check_image_size(image_size: object, patch_size: int | None, knob: str = "image_size", backbone: str = "") -> int:
    """Refuse an input size the backbone's patches do not tile.

    Args:
        image_size: the size to check (any value: knobs come from command lines and configs).
        patch_size: the backbone's patch size (``None``: only positivity is checked).
        knob: the knob's name, quoted in the message.
        backbone: the backbone string, quoted in the message.

    Returns:
        ``image_size`` as an ``int``.

    Raises:
        SettingsError: when the size is not a positive integer or not a multiple of ``patch_size``.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
        raise SettingsError(f"{knob} must be a positive whole number of pixels, got {image_size!r}.")
    if patch_size and image_size % patch_size:
        lower = image_size // patch_size * patch_size
        upper = lower + patch_size
        fits = f"{lower} or {upper}" if lower > 0 else str(upper)
        raise SettingsError(
            f"{knob} {image_size} is not a multiple of the patch size {patch_size} of {backbone or 'the backbone'}: "
            f"the patches would not tile the image. Use {fits} (bundles: --{knob} {upper})."
        )
    return image_size


def _parse_backbone(backbone: str) -> tuple[str, str]:
    """Split ``"<library>:<model>"`` and check that the library and the model exist."""
    library, sep, name = backbone.partition(":")
    if not sep or library not in (OPEN_CLIP_PREFIX, TIMM_PREFIX) or not name:
        raise ValueError(f"Unknown backbone {backbone!r}: expected {_ACCEPTED_FORMS}.")
    if library == OPEN_CLIP_PREFIX:
        import open_clip

        known = open_clip.list_models()
        if name.replace("/", "-") not in known:
            raise ValueError(_unknown_model_message(backbone, name, known, "open_clip.list_models()"))
    else:
        import timm

        if not timm.is_model(name):
            known = timm.list_models()
            raise ValueError(_unknown_model_message(backbone, name, known, "timm.list_models()"))
    return library, name


def _unknown_model_message(backbone: str, name: str, known: Sequence[str], lister: str) -> str:
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f" Close matches: {', '.join(close)}." if close else ""
    return (
        f"Unknown backbone {backbone!r}: model {name!r} is not one of the {len(known)} models of {lister}.{hint} "
        f"Accepted forms: {_ACCEPTED_FORMS}."
    )
