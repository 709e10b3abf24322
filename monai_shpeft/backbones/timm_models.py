"""Build a timm vision transformer that returns pooled features (``num_classes=0``)."""

from __future__ import annotations

import logging
from typing import Any, cast

import torch.nn as nn

from monai_shpeft.backbones.errors import (
    PretrainedWeightsUnavailableError,
    _hub_unreachable_reason,
    _is_download_failure,
    _unavailable_error,
)
from monai_shpeft.backbones.names import TINY_DEPTH, TINY_HEADS, TINY_WIDTH

logger = logging.getLogger(__name__)


def _build_timm(name: str, image_size: int, tiny: bool, tag: str | None, **kwargs: Any) -> tuple[nn.Module, int]:
    """Build a timm model that returns pooled features; returns ``(model, feature_dim)``."""
    tiny_kwargs = {"depth": TINY_DEPTH, "embed_dim": TINY_WIDTH, "num_heads": TINY_HEADS} if tiny else {}
    # Explicit keyword arguments win over the tiny defaults.
    create_kwargs: dict[str, Any] = {"img_size": image_size, "dynamic_img_size": True, **tiny_kwargs, **kwargs}

    if tag is None:
        net = _create_timm(name, create_kwargs, tiny, pretrained=False)
    else:
        net = _create_timm_pretrained(name, tag, create_kwargs)
    return net, int(cast(int, net.num_features))  # timm models store their pooled width as an int


def _create_timm(name: str, create_kwargs: dict[str, Any], tiny: bool, pretrained: bool) -> nn.Module:
    """``timm.create_model`` with ``num_classes=0``, dropping size options the architecture does not take."""
    import timm

    kwargs = dict(create_kwargs)
    while True:
        try:
            return timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs)
        except TypeError as err:
            # Non-ViT families reject img_size / dynamic_img_size; tiny overrides they reject are an error.
            optional = [k for k in ("dynamic_img_size", "img_size") if k in kwargs and f"'{k}'" in str(err)]
            if optional:
                logger.info("timm:%s does not take %s; building without it.", name, optional[0])
                kwargs.pop(optional[0])
                continue
            if tiny:
                raise ValueError(
                    f"timm:{name} does not accept the tiny overrides (depth/embed_dim/num_heads): {err}"
                ) from err
            raise


def _create_timm_pretrained(name: str, tag: str, create_kwargs: dict[str, Any]) -> nn.Module:
    """Run timm's own pretrained download/loading for ``<arch>.<tag>``, failing quickly and clearly when offline."""
    import timm
    from timm.models import get_pretrained_cfg

    arch = name.split(".", 1)[0]
    full_name = f"{arch}.{tag}"
    try:
        cfg = get_pretrained_cfg(full_name)
    except RuntimeError:
        cfg = None
    if cfg is None:
        raise ValueError(
            f"Unknown pretrained tag {tag!r} for timm:{arch}; available: {timm.list_pretrained(f'{arch}.*')}."
        )
    repo_id = (cfg.hf_hub_id or "").split("@", 1)[0]
    if cfg.hf_hub_filename:
        filenames = [cfg.hf_hub_filename]
    else:
        # timm tries the safetensors twin of pytorch_model.bin first; the last name is the one suggested when offline.
        filenames = ["pytorch_model.bin", "model.safetensors"]

    def unavailable(cause: str) -> PretrainedWeightsUnavailableError:
        return _unavailable_error(f"timm:{arch}", tag, repo_id, filenames, cause)

    if repo_id:
        reason = _hub_unreachable_reason(repo_id, filenames, create_kwargs.get("cache_dir"))
        if reason:
            raise unavailable(reason)
    try:
        return _create_timm(full_name, create_kwargs, tiny=False, pretrained=True)
    except Exception as err:
        if _is_download_failure(err):
            raise unavailable(str(err)) from err
        raise
