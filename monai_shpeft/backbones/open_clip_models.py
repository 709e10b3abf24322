"""Build the visual tower of an open_clip CLIP model (text tower and projection dropped)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch.nn as nn

from monai_shpeft.backbones.errors import (
    PretrainedWeightsUnavailableError,
    _hub_unreachable_reason,
    _is_download_failure,
    _unavailable_error,
)
from monai_shpeft.backbones.names import TINY_DEPTH, TINY_HEADS, TINY_WIDTH


def _build_open_clip(
    name: str, image_size: int, tiny: bool, tag: str | None, quiet: bool = False, **kwargs: Any
) -> tuple[nn.Module, int]:
    """Build an open_clip visual tower without its projection; returns ``(tower, feature_dim)``."""
    import open_clip
    from open_clip.transformer import VisionTransformer

    name = name.replace("/", "-")
    config = open_clip.get_model_config(name)
    vision_cfg = dict(config["vision_cfg"])
    if "timm_model_name" in vision_cfg or not isinstance(vision_cfg.get("layers"), int):
        raise ValueError(
            f"open_clip:{name} does not use open_clip's own VisionTransformer (its vision tower is "
            f"{vision_cfg.get('timm_model_name') or 'a ResNet'}); use a native open_clip ViT such as "
            f"open_clip:ViT-B-16, or the timm backbone directly (timm:<model>)."
        )

    create_kwargs: dict[str, Any] = dict(kwargs)
    if tiny:
        # Same family and patch size, passed through create_model's public override of the config sections.
        vision_cfg.update(
            layers=TINY_DEPTH, width=TINY_WIDTH, head_width=TINY_WIDTH // TINY_HEADS, image_size=image_size
        )
        text_cfg = dict(config["text_cfg"])
        text_cfg.update(width=32, heads=2, layers=1)
        # Explicit keyword arguments win over the tiny defaults.
        create_kwargs = {"vision_cfg": vision_cfg, "text_cfg": text_cfg, "embed_dim": 32, **create_kwargs}
    else:
        create_kwargs["force_image_size"] = image_size

    if tag is None:
        # Weights (if any) come from a local file loaded afterwards, so open_clip's "initialized randomly" is moot.
        with _drop_root_log_messages("No pretrained weights loaded" if quiet else None):
            clip = open_clip.create_model(name, pretrained=None, **create_kwargs)
    else:
        clip = _create_open_clip_pretrained(name, tag, create_kwargs)

    visual = clip.visual
    if not isinstance(visual, VisionTransformer):
        raise ValueError(f"open_clip:{name} built a {type(visual).__name__} vision tower, not a VisionTransformer.")
    del clip  # the text tower is not used
    visual.proj = None  # the paper replaces the projection by L2 norm + linear, so return the width-dim pooled token
    feature_dim = int(visual.ln_post.weight.shape[0])
    return visual, feature_dim


def _create_open_clip_pretrained(name: str, tag: str, create_kwargs: dict[str, Any]) -> nn.Module:
    """Run open_clip's own tag download/loading, turning an offline failure into a quick, actionable error."""
    import open_clip
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    tags = open_clip.list_pretrained_tags_by_model(name)
    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        raise ValueError(f"Unknown pretrained tag {tag!r} for open_clip:{name}; available tags: {tags}.")

    repo_id, filenames = "", [HF_WEIGHTS_NAME]
    if cfg.get("hf_hub"):
        # open_clip stores "org/repo/" (default file) or "org/repo/file" and tries a .safetensors twin first; the last
        # name (the file open_clip names) is the one suggested when offline.
        repo_id, filename = os.path.split(cfg["hf_hub"])
        filename = filename or HF_WEIGHTS_NAME
        safe = HF_SAFE_WEIGHTS_NAME if filename == HF_WEIGHTS_NAME else str(Path(filename).with_suffix(".safetensors"))
        filenames = [safe, filename] if safe != filename else [filename]
    create_kwargs = dict(create_kwargs)
    if cfg.get("quick_gelu") and "force_quick_gelu" not in create_kwargs:
        create_kwargs["force_quick_gelu"] = True  # the tag was trained with QuickGELU (e.g. OpenAI CLIP)

    def unavailable(cause: str) -> PretrainedWeightsUnavailableError:
        return _unavailable_error(
            f"open_clip:{name}", tag, repo_id, filenames, cause, quick_gelu=bool(cfg.get("quick_gelu"))
        )

    if repo_id:
        reason = _hub_unreachable_reason(repo_id, filenames, create_kwargs.get("cache_dir"))
        if reason:
            raise unavailable(reason)
    try:
        return open_clip.create_model(name, pretrained=tag, require_pretrained=True, **create_kwargs)
    except Exception as err:
        if _is_download_failure(err):
            raise unavailable(str(err)) from err
        raise


@contextlib.contextmanager
def _drop_root_log_messages(fragment: str | None) -> Iterator[None]:
    """Temporarily hide root-logger records containing ``fragment`` (open_clip logs through the root logger)."""
    if fragment is None:
        yield
        return

    def keep(record: logging.LogRecord) -> bool:
        return fragment not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)
