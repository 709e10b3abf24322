"""Vision-transformer backbones for SH-PEFT: open_clip and timm towers with an L2-normalised linear head.

A backbone is named ``"<library>:<model>"``:

- ``open_clip:<model>`` (e.g. ``open_clip:ViT-B-16``): the visual tower of an open_clip CLIP model, built with
  :func:`open_clip.create_model`; the text tower and the visual projection ``proj`` are dropped, so the tower returns
  the pooled class token of width ``D``.
- ``timm:<model>`` (e.g. ``timm:vit_small_patch14_dinov2``): a timm model built with ``num_classes=0``, so it returns
  pooled features.

Following the paper, the final projection is replaced by L2 normalisation plus a linear layer
(:class:`L2NormLinearHead`). Weights come either from a local file (loaded strictly by
:func:`load_backbone_weights`, position tables resized to the model's image size) or from a pretrained tag downloaded
by the library's own hub code; when the download is impossible (no network) a
:class:`PretrainedWeightsUnavailableError` explains how to pass a local file instead.

Building (``classifier``) is kept apart from the libraries' model code (``open_clip_models``, ``timm_models``),
loading (``weights``), names (``names``), the head (``head``) and the offline errors (``errors``).
"""

from __future__ import annotations

from monai_shpeft.backbones.classifier import (
    BackboneClassifier,
    backbone_parameter_names,
    build_classifier,
    parameter_groups,
)
from monai_shpeft.backbones.errors import PretrainedWeightsUnavailableError
from monai_shpeft.backbones.head import L2NormLinearHead
from monai_shpeft.backbones.names import (
    TINY_DEPTH,
    TINY_HEADS,
    TINY_WIDTH,
    check_image_size,
    normalization_stats,
    patch_size_of,
)
from monai_shpeft.backbones.weights import load_backbone_weights

__all__ = [
    "PretrainedWeightsUnavailableError",
    "L2NormLinearHead",
    "BackboneClassifier",
    "build_classifier",
    "load_backbone_weights",
    "backbone_parameter_names",
    "normalization_stats",
    "check_image_size",
    "parameter_groups",
    "patch_size_of",
    "TINY_DEPTH",
    "TINY_HEADS",
    "TINY_WIDTH",
]
