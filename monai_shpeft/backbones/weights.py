"""Load a local weights file into a backbone.

Nested state dicts are unwrapped, the library's own key names selected, position tables resized to the model's
image size, and a strict check names the missing and unexpected keys.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn as nn

from monai_shpeft.backbones.names import OPEN_CLIP_PREFIX

if TYPE_CHECKING:  # the classifier imports this module to load its weights
    from monai_shpeft.backbones.classifier import BackboneClassifier

__all__ = ["load_backbone_weights"]

logger = logging.getLogger(__name__)

# File suffixes that make a ``pretrained`` string a path rather than a hub tag.
_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".pth.tar")


# Keys under which training scripts commonly nest a state dict.
_NESTED_STATE_KEYS = ("state_dict", "model", "module", "model_state_dict")


_MAX_KEYS_IN_ERROR = 5


def load_backbone_weights(model: BackboneClassifier, path: str | os.PathLike) -> None:
    """Load a local weights file into ``model.backbone`` strictly.

    Accepted files: ``.safetensors``, or a torch checkpoint (``.pt``/``.pth``/``.bin``, read with
    ``weights_only=True``) whose state dict may be nested under ``"state_dict"``/``"model"`` and prefixed with
    ``"module."``. A full :class:`BackboneClassifier` state dict (``"backbone."`` keys) is accepted and its head
    ignored; for open_clip a full CLIP checkpoint is accepted and only its ``"visual."`` keys are used. The dropped
    projection (open_clip ``proj``, timm ``head.*``) is ignored, and the absolute position table is interpolated when
    the checkpoint was made for another image size.

    Args:
        model: the classifier whose backbone receives the weights.
        path: the weights file.

    Raises:
        FileNotFoundError: when ``path`` is not a file.
        ValueError: when the file cannot be read as a state dict, or its keys or shapes do not match the backbone
            (the message names the file and the first offending keys).
    """
    path = Path(os.path.expanduser(os.fspath(path)))
    if not path.is_file():
        raise FileNotFoundError(f"Pretrained weights file not found: '{path}'.")
    library = model.backbone_name.split(":", 1)[0]
    state = _read_state_dict(path)
    state = _select_backbone_keys(state, library)
    backbone = model.backbone
    expected = backbone.state_dict()

    # Keys of the projection this package replaces by its own head: present in checkpoints, absent from the model.
    ignored = [k for k in state if k not in expected and _is_dropped_projection(k, library)]
    for key in ignored:
        del state[key]

    _resize_position_table(state, backbone, library, path)

    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        problems = []
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        ):
            if keys:
                problems.append(f"{len(keys)} {label} (first: {', '.join(keys[:_MAX_KEYS_IN_ERROR])})")
        raise ValueError(
            f"Weights file '{path}' does not match backbone {model.backbone_name} "
            f"(image_size={model.image_size}): {'; '.join(problems)}. Is it a checkpoint of another architecture?"
        )
    backbone.load_state_dict(state, strict=True)
    logger.info(
        "Loaded %d backbone tensors of %s from '%s'%s.",
        len(state),
        model.backbone_name,
        path,
        f" (ignored the dropped projection: {', '.join(ignored)})" if ignored else "",
    )


def _classify_pretrained(pretrained: str | os.PathLike | None) -> tuple[Path | None, str | None]:
    """Return ``(file, None)`` for a local file, ``(None, tag)`` for a hub tag, ``(None, None)`` for random init."""
    if pretrained is None:
        return None, None
    text = os.fspath(pretrained)
    candidate = Path(os.path.expanduser(text))
    if candidate.is_file():
        return candidate, None
    looks_like_path = (
        os.sep in text or "/" in text or text.startswith(("~", ".")) or text.lower().endswith(_WEIGHT_SUFFIXES)
    )
    if looks_like_path:
        # Tags never contain a separator or a weights suffix: a typo in a path must not become a hub request.
        raise FileNotFoundError(f"Pretrained weights file not found: '{candidate}' (pretrained={text!r}).")
    return None, text


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a tensor state dict from a safetensors or torch file, unwrapping common nesting."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"Could not read weights file '{path}' as a state dict ({type(err).__name__}: {err}). Expected a "
            ".safetensors file or a torch checkpoint of tensors (TorchScript archives are not supported)."
        ) from err
    # Unwrap {"state_dict": ...} / {"model": ...} wrappers written by training scripts.
    while isinstance(obj, Mapping) and not _is_tensor_mapping(obj):
        inner = next((obj[k] for k in _NESTED_STATE_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"Weights file '{path}' does not contain a state dict (found {type(obj).__name__}).")
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise ValueError(f"Weights file '{path}' contains no tensors (keys: {list(obj)[:_MAX_KEYS_IN_ERROR]}).")
    if all(k.startswith("module.") for k in state):  # saved from DataParallel / DDP
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _is_tensor_mapping(obj: Mapping) -> bool:
    return bool(obj) and any(isinstance(v, torch.Tensor) for v in obj.values())


def _select_backbone_keys(state: dict[str, torch.Tensor], library: str) -> dict[str, torch.Tensor]:
    """Keep the backbone's keys of a classifier or full CLIP checkpoint, without their prefix."""
    prefixes = ["backbone."]
    if library == OPEN_CLIP_PREFIX:
        prefixes.append("visual.")  # full CLIP checkpoint: the text tower is not used
    for prefix in prefixes:
        if any(k.startswith(prefix) for k in state):
            dropped = sum(not k.startswith(prefix) for k in state)
            if dropped:
                logger.info("Using the %r entries of the checkpoint; ignoring %d other entries.", prefix, dropped)
            return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return dict(state)


def _is_dropped_projection(key: str, library: str) -> bool:
    """Keys of the final projection that :class:`L2NormLinearHead` replaces."""
    if library == OPEN_CLIP_PREFIX:
        return key == "proj"
    return key.startswith(("head.", "head_dist."))


def _resize_position_table(state: dict[str, torch.Tensor], backbone: nn.Module, library: str, path: Path) -> None:
    """Interpolate the checkpoint's absolute position table to the backbone's patch grid, in place.

    Tables of another width, or whose patch part is not a square grid, are left alone: the strict key/shape check
    that follows reports them as a mismatch.
    """
    key = "positional_embedding" if library == OPEN_CLIP_PREFIX else "pos_embed"
    old = state.get(key)
    target = getattr(backbone, key, None)
    if old is None or target is None or old.shape == target.shape or old.shape[-1] != target.shape[-1]:
        return
    try:
        if library == OPEN_CLIP_PREFIX:
            from open_clip.model import resize_pos_embed

            # open_clip's helper works on full-CLIP key names and reads the grid from `model.visual`.
            wrapped = {"visual.positional_embedding": old}
            resize_pos_embed(wrapped, SimpleNamespace(visual=backbone))
            new = wrapped["visual.positional_embedding"]
        else:
            from timm.layers import resample_abs_pos_embed

            # Class/register tokens keep their entries; only the patch grid is interpolated.
            no_embed_class = getattr(backbone, "no_embed_class", False)
            num_prefix = 0 if no_embed_class else int(getattr(backbone, "num_prefix_tokens", 1))
            grid_size = cast(tuple[int, int], cast(nn.Module, backbone.patch_embed).grid_size)  # timm PatchEmbed
            new = resample_abs_pos_embed(old, new_size=list(grid_size), num_prefix_tokens=num_prefix)
    except (RuntimeError, ValueError, AttributeError) as err:
        logger.warning("Could not resize the position table %s of '%s': %s", tuple(old.shape), path, err)
        return
    state[key] = new
    logger.info(
        "Resized the position table of '%s' from %s to %s to fit the backbone's patch grid.",
        path,
        tuple(old.shape),
        tuple(new.shape),
    )
