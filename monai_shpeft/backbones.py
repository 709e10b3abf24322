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
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from monai_shpeft.errors import InputError, SettingsError

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
]

logger = logging.getLogger(__name__)

OPEN_CLIP_PREFIX = "open_clip"
TIMM_PREFIX = "timm"
_ACCEPTED_FORMS = (
    "'open_clip:<model>' (e.g. 'open_clip:ViT-B-16') or 'timm:<model>' (e.g. 'timm:vit_small_patch14_dinov2')"
)

# Tiny configurations (same family, same patch size, same code path) so unit tests run in milliseconds on a CPU.
TINY_DEPTH = 2
TINY_WIDTH = 64
TINY_HEADS = 2

# File suffixes that make a ``pretrained`` string a path rather than a hub tag.
_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".pth.tar")
# Keys under which training scripts commonly nest a state dict.
_NESTED_STATE_KEYS = ("state_dict", "model", "module", "model_state_dict")
# huggingface_hub retries a failing download for ~25 s per file; one HEAD request answers "is the hub there" quickly.
_HUB_PROBE_TIMEOUT_S = 10.0
_MAX_KEYS_IN_ERROR = 5


class PretrainedWeightsUnavailableError(InputError, RuntimeError):
    """Raised when the weights of a pretrained tag cannot be fetched (typically: no network and no cached copy)."""


class L2NormLinearHead(nn.Module):
    """Classification head of the paper: L2-normalise the pooled feature, then apply a linear layer.

    The logits are ``logit_scale * (W x / |x| + b)``. On unit-length features a linear layer initialised at the
    usual small scale gives logits near zero and a flat loss; a fixed scale (as CLIP's, whose learned value is
    100) lets the head reach confident logits in a few steps; 1 is the paper's plain head. The scale is a buffer,
    so a checkpoint carries it and a network loaded from one computes what was trained.

    Args:
        in_features: width of the pooled backbone feature.
        num_classes: number of output logits.
        logit_scale: the fixed factor applied to the logits (not trained; saved in the state dict).

    Raises:
        ValueError: when ``in_features`` or ``num_classes`` is not positive, or ``logit_scale`` is not positive.
    """

    def __init__(self, in_features: int, num_classes: int, logit_scale: float = 1.0) -> None:
        super().__init__()
        if in_features <= 0 or num_classes <= 0:
            raise ValueError(f"in_features and num_classes must be positive, got {in_features} and {num_classes}.")
        if not float(logit_scale) > 0:
            raise ValueError(f"logit_scale must be a positive number, got {logit_scale!r}.")
        self.in_features = in_features
        self.num_classes = num_classes
        self.register_buffer("logit_scale", torch.tensor(float(logit_scale)))
        self.linear = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compute logits.

        Args:
            x: pooled features ``[B, in_features]``.

        Returns:
            logits ``[B, num_classes]``, in float32 even under autocast.
        """
        if torch.jit.is_scripting() or torch.jit.is_tracing():  # exported graphs run without autocast
            return self._logits(x)
        return self._float32_logits(x)

    @torch.jit.unused
    def _float32_logits(self, x: torch.Tensor) -> torch.Tensor:
        # the head is tiny, and bfloat16 logits (3 significant digits, times the scale) flip near-tied classes: a
        # model whose head is the probe would then not predict what the probe predicts from the same features
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self._logits(x.float())

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(F.normalize(x, dim=-1)) * self.logit_scale.to(x.dtype)

    def extra_repr(self) -> str:
        return f"logit_scale={float(self.logit_scale):g}"


class BackboneClassifier(nn.Module):
    """A feature backbone followed by an :class:`L2NormLinearHead`.

    Args:
        backbone: module mapping images ``[B, C, H, W]`` to pooled features ``[B, feature_dim]``.
        feature_dim: width of the pooled features.
        num_classes: number of output logits.
        backbone_name: the ``"<library>:<model>"`` string the backbone was built from.
        image_size: the input size the backbone (and its position table) is configured for.
        logit_scale: the head's fixed logit scale (see :class:`L2NormLinearHead`).
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        num_classes: int,
        backbone_name: str,
        image_size: int,
        logit_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = L2NormLinearHead(feature_dim, num_classes, logit_scale=logit_scale)
        self.backbone_name = backbone_name
        self.feature_dim = feature_dim
        self.image_size = image_size
        self.num_classes = num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features.

        Args:
            x: images ``[B, C, H, W]``.

        Returns:
            features ``[B, feature_dim]``.
        """
        features = self.backbone(x)
        if isinstance(features, (tuple, list)):  # open_clip towers return (pooled, tokens) when output_tokens is set
            features = features[0]
        return features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify a batch of images.

        Args:
            x: images ``[B, C, H, W]``.

        Returns:
            logits ``[B, num_classes]``.
        """
        return self.head(self.forward_features(x))


def build_classifier(
    backbone: str,
    num_classes: int,
    pretrained: str | os.PathLike | None = None,
    image_size: int = 224,
    tiny: bool = False,
    logit_scale: float = 1.0,
    **backbone_kwargs: Any,
) -> BackboneClassifier:
    """Build a :class:`BackboneClassifier` from a backbone string.

    Args:
        backbone: ``"open_clip:<model>"`` or ``"timm:<model>"``.
        num_classes: number of output logits.
        pretrained: ``None`` for random initialisation; a path to a local weights file (``.safetensors`` or a torch
            checkpoint), loaded strictly by :func:`load_backbone_weights`; otherwise a pretrained tag of the library
            (e.g. ``"openai"`` for open_clip, ``"lvd142m"`` for timm DINOv2) fetched by the library's hub code.
        image_size: input size; the position table is built (and loaded weights are resized) for it.
        tiny: build a tiny model of the same family (2 layers, width 64, 2 heads, same patch size) for tests.
        logit_scale: the head's fixed logit scale (the bundles' ``head_logit_scale`` knob).
        backbone_kwargs: extra keyword arguments for ``open_clip.create_model`` / ``timm.create_model``
            (e.g. ``force_quick_gelu=True`` for OpenAI CLIP weights, ``cache_dir=...``, ``drop_path_rate=0.1``).

    Returns:
        the classifier; its ``backbone`` returns pooled features and its ``head`` is an :class:`L2NormLinearHead`.

    Raises:
        ValueError: unknown library prefix, model name or pretrained tag, unsupported model, or a weights file that
            does not match the model.
        FileNotFoundError: ``pretrained`` looks like a path but no such file exists.
        PretrainedWeightsUnavailableError: a pretrained tag's weights cannot be downloaded (offline?).
    """
    library, name = _parse_backbone(backbone)
    patch = patch_size_of(backbone)
    check_image_size(image_size, None)
    if patch and image_size % patch:
        # the bundles refuse this up front (monai_shpeft.settings); here the library's own behaviour is kept
        logger.warning(
            "image_size %d is not a multiple of the patch size %d of %s: the last %d pixel rows and columns are "
            "never seen. Use %d.",
            image_size,
            patch,
            backbone,
            image_size % patch,
            (image_size // patch + 1) * patch,
        )
    weights_file, tag = _classify_pretrained(pretrained)
    if tiny and tag is not None:
        raise ValueError(f"A tiny {backbone} model cannot load the pretrained tag {tag!r}; pass a local file or None.")

    if library == OPEN_CLIP_PREFIX:
        net, feature_dim = _build_open_clip(
            name, image_size, tiny, tag, quiet=weights_file is not None, **backbone_kwargs
        )
    else:
        net, feature_dim = _build_timm(name, image_size, tiny, tag, **backbone_kwargs)

    model = BackboneClassifier(
        net, feature_dim, num_classes, backbone_name=backbone, image_size=image_size, logit_scale=logit_scale
    )
    n_params = sum(p.numel() for p in net.parameters())
    logger.info(
        "Built %s%s backbone (%.2fM parameters, feature_dim=%d, image_size=%d) with a %d-class L2-norm linear head; "
        "weights: %s.",
        backbone,
        " (tiny)" if tiny else "",
        n_params / 1e6,
        feature_dim,
        image_size,
        num_classes,
        f"tag {tag!r}" if tag else (os.fspath(weights_file) if weights_file else "random initialisation"),
    )
    if weights_file is not None:
        load_backbone_weights(model, weights_file)
    return model


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


def backbone_parameter_names(model: nn.Module) -> list[str]:
    """Full names of every parameter of the model's backbone, in model order.

    Args:
        model: a :class:`BackboneClassifier`, or any module holding one (names are then relative to ``model``).

    Returns:
        names such as ``"backbone.blocks.0.attn.qkv.weight"``, in ``model.named_parameters()`` order, excluding the
        head.

    Raises:
        ValueError: when ``model`` holds no backbone.
    """
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module):
        backbone = next((m.backbone for m in model.modules() if isinstance(m, BackboneClassifier)), None)
    if backbone is None:
        raise ValueError(f"{type(model).__name__} has no 'backbone' submodule.")
    backbone_ids = {id(p) for p in backbone.parameters()}
    return [name for name, param in model.named_parameters() if id(param) in backbone_ids]


# --------------------------------------------------------------------------------------------------------------------
# backbone string and `pretrained` parsing


def parameter_groups(model: nn.Module, head_lr: float | None = None) -> list[dict[str, Any]]:
    """Optimizer parameter groups: the backbone at the optimizer's learning rate, the head at ``head_lr``.

    The paper's head L2-normalises the features, so its logits are bounded by the norm of its weight; in short
    schedules that weight must grow faster than the backbone may move, hence a separate, larger learning rate.

    Args:
        model: a :class:`BackboneClassifier` (DDP / DataParallel wrappers are unwrapped).
        head_lr: learning rate of the head; ``None`` keeps the optimizer's for every parameter.

    Returns:
        ``[{"params": backbone, "name": "backbone"}, {"params": head, "lr": head_lr, "name": "head"}]``; for a model
        without a backbone/head pair (an FPT network), one group of its trainable parameters,
        ``[{"params": trainable, "name": "trainable"}]``.
    """
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    if not isinstance(getattr(model, "backbone", None), nn.Module):
        return [{"params": [p for p in model.parameters() if p.requires_grad], "name": "trainable"}]
    backbone = {"params": list(model.backbone.parameters()), "name": "backbone"}
    head = {"params": list(model.head.parameters()), "name": "head"}
    if head_lr is not None:
        head["lr"] = float(head_lr)
    return [backbone, head]


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


def check_image_size(image_size: int, patch_size: int | None, knob: str = "image_size", backbone: str = "") -> int:
    """Refuse an input size the backbone's patches do not tile.

    Args:
        image_size: the size to check.
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


# --------------------------------------------------------------------------------------------------------------------
# open_clip


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


# --------------------------------------------------------------------------------------------------------------------
# timm


def _build_timm(name: str, image_size: int, tiny: bool, tag: str | None, **kwargs: Any) -> tuple[nn.Module, int]:
    """Build a timm model that returns pooled features; returns ``(model, feature_dim)``."""
    tiny_kwargs = {"depth": TINY_DEPTH, "embed_dim": TINY_WIDTH, "num_heads": TINY_HEADS} if tiny else {}
    # Explicit keyword arguments win over the tiny defaults.
    create_kwargs: dict[str, Any] = {"img_size": image_size, "dynamic_img_size": True, **tiny_kwargs, **kwargs}

    if tag is None:
        net = _create_timm(name, create_kwargs, tiny, pretrained=False)
    else:
        net = _create_timm_pretrained(name, tag, create_kwargs)
    return net, int(net.num_features)


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


# --------------------------------------------------------------------------------------------------------------------
# hub access


def _hub_unreachable_reason(repo_id: str, filenames: Sequence[str], cache_dir: str | os.PathLike | None) -> str | None:
    """Say why the hub cannot serve ``repo_id``, or ``None`` when a download may work (or a cached copy exists).

    huggingface_hub retries network errors with exponential backoff (about 25 s per file, and the libraries try two
    files), so an offline machine would wait close to a minute before failing. This asks the same question with one
    request, using huggingface_hub's own code (proxies, endpoint and ``HF_HUB_OFFLINE`` are honoured) and no retries.
    """
    try:
        from huggingface_hub import get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
        from huggingface_hub.errors import HfHubHTTPError
    except ImportError:  # the libraries then use plain URL downloads, which fail fast by themselves
        return None
    for filename in filenames:
        if isinstance(try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir), str):
            return None  # the library will pick the cached copy up
    try:
        get_hf_file_metadata(hf_hub_url(repo_id, filenames[-1]), timeout=_HUB_PROBE_TIMEOUT_S)
    except HfHubHTTPError:
        return None  # the hub answered (e.g. a 404 or gated repo): let the library report it
    except Exception as err:  # DNS failure, refused connection, timeout, offline mode
        return f"{type(err).__name__}: {err}"
    return None


def _is_download_failure(err: BaseException) -> bool:
    """Whether ``err`` (or an exception it was raised from) is a network/hub failure rather than a model error."""
    network_types: tuple[type[BaseException], ...] = (OSError,)
    with contextlib.suppress(ImportError):
        import httpx2

        network_types += (httpx2.TransportError,)
    with contextlib.suppress(ImportError):
        import httpx

        network_types += (httpx.TransportError,)
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, network_types):
            return True
        current = current.__cause__ or current.__context__
    # open_clip re-raises download errors as a plain RuntimeError with this text.
    return "Failed to download" in str(err)


def _unavailable_error(
    backbone: str, tag: str, repo_id: str, filenames: Sequence[str], cause: str, quick_gelu: bool = False
) -> PretrainedWeightsUnavailableError:
    """An error naming the model and tag and saying exactly how to use a local copy of the weights instead."""
    if repo_id:
        where = f"https://huggingface.co/{repo_id}"
        files = " or ".join(f"'{f}'" for f in reversed(filenames))
        how = (
            f"On a connected machine download {files} of the Hugging Face repository {repo_id} ({where}; e.g. "
            f"`hf download {repo_id} {filenames[-1]}`), copy it here and pass its path instead of the tag: "
            f"build_classifier({backbone!r}, ..., pretrained='/path/to/{filenames[-1]}'"
        )
    else:
        how = (
            f"On a connected machine fetch the weights of {backbone} tag {tag!r}, save them as a .safetensors or .pt "
            f"state dict and pass its path instead of the tag: build_classifier({backbone!r}, ..., "
            "pretrained='/path/to/weights.safetensors'"
        )
    how += ", force_quick_gelu=True)" if quick_gelu else ")"
    if quick_gelu:
        how += " (these weights were trained with QuickGELU)"
    return PretrainedWeightsUnavailableError(
        f"Could not download the pretrained weights of {backbone} with tag {tag!r}: the Hugging Face Hub could not "
        f"be reached and no cached copy exists (offline?). {how}. Cause: {cause}"
    )


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


# --------------------------------------------------------------------------------------------------------------------
# state dict handling


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
            new = resample_abs_pos_embed(
                old, new_size=list(backbone.patch_embed.grid_size), num_prefix_tokens=num_prefix
            )
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
