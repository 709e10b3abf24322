"""Tests of monai_shpeft.backbones on tiny real open_clip / timm models (no mocks)."""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from monai_shpeft.backbones import (
    BackboneClassifier,
    L2NormLinearHead,
    PretrainedWeightsUnavailableError,
    backbone_parameter_names,
    build_classifier,
    load_backbone_weights,
)

OPEN_CLIP = "open_clip:ViT-B-16"
TIMM = "timm:vit_small_patch14_dinov2"
# Small input sizes: a 2x2 patch grid for the family's patch size (16 for CLIP ViT-B-16, 14 for DINOv2).
SMALL = {OPEN_CLIP: 32, TIMM: 28}
LARGE = {OPEN_CLIP: 64, TIMM: 56}  # a 4x4 grid
POS_KEY = {OPEN_CLIP: "positional_embedding", TIMM: "pos_embed"}
NUM_CLASSES = 3
DINOV2_FILE = Path("/work/shared/weights/vit_small_patch14_dinov2.safetensors")
BACKBONES = [OPEN_CLIP, TIMM]


def _tiny(backbone: str, image_size: int | None = None, **kwargs) -> BackboneClassifier:
    return build_classifier(backbone, NUM_CLASSES, image_size=image_size or SMALL[backbone], tiny=True, **kwargs)


def _images(backbone: str, image_size: int | None = None, batch: int = 2) -> torch.Tensor:
    size = image_size or SMALL[backbone]
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def _backbone_state(model: BackboneClassifier) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.backbone.state_dict().items()}


def _hub_reachable() -> bool:
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
    except OSError:
        return False
    return True


@pytest.mark.parametrize("backbone", BACKBONES)
def test_tiny_model_gives_logits(backbone: str) -> None:
    model = _tiny(backbone)
    assert isinstance(model.head, L2NormLinearHead)
    assert model.backbone_name == backbone
    assert (model.feature_dim, model.num_classes, model.image_size) == (64, NUM_CLASSES, SMALL[backbone])
    start = time.perf_counter()
    logits = model(_images(backbone, batch=4))
    assert time.perf_counter() - start < 1.0
    assert logits.shape == (4, NUM_CLASSES)
    assert model.forward_features(_images(backbone)).shape == (2, model.feature_dim)


def test_tiny_configs_keep_the_family() -> None:
    clip = _tiny(OPEN_CLIP).backbone
    assert type(clip).__module__.startswith("open_clip")
    assert clip.conv1.kernel_size == (16, 16) and len(clip.transformer.resblocks) == 2
    dino = _tiny(TIMM).backbone
    assert type(dino).__module__.startswith("timm")
    assert dino.patch_embed.patch_size == (14, 14) and len(dino.blocks) == 2
    assert dino.blocks[0].ls1.gamma.shape == (64,)  # DINOv2 keeps its LayerScale


def test_open_clip_projection_and_text_tower_are_gone() -> None:
    model = _tiny(OPEN_CLIP)
    assert model.backbone.proj is None
    names = [n for n, _ in model.named_parameters()]
    assert not any(n.endswith(".proj") and n.count(".") == 1 for n in names)
    assert not any(part in n for n in names for part in ("token_embedding", "text_projection", "logit_scale"))
    # without the projection the tower returns the width-dim pooled token
    assert model.backbone(_images(OPEN_CLIP)).shape == (2, model.backbone.transformer.width)


def test_head_normalises_features() -> None:
    head = L2NormLinearHead(8, NUM_CLASSES)
    features = torch.randn(4, 8)
    torch.testing.assert_close(head(features), head(features * 7.5))
    assert head(features).shape == (4, NUM_CLASSES)
    model = _tiny(TIMM).eval()
    x = _images(TIMM)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.head(model.forward_features(x) * 0.01))


def test_head_computes_in_float32_under_bfloat16_autocast() -> None:
    # under the bundles' CPU bf16 autocast the backbone runs in bfloat16 but the logits must not be rounded to it
    head = L2NormLinearHead(384, NUM_CLASSES, logit_scale=100.0)
    features = torch.randn(64, 384).to(torch.bfloat16)  # what an autocast backbone hands the head
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(features)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, head(features.float()), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("backbone", "expected"),
    [
        (
            OPEN_CLIP,
            [
                "backbone.conv1.weight",
                "backbone.positional_embedding",
                "backbone.class_embedding",
                "backbone.ln_pre.weight",
                "backbone.ln_post.bias",
                "backbone.transformer.resblocks.0.attn.in_proj_bias",
                "backbone.transformer.resblocks.1.mlp.c_proj.weight",
            ],
        ),
        (
            TIMM,
            [
                "backbone.patch_embed.proj.weight",
                "backbone.patch_embed.proj.bias",
                "backbone.pos_embed",
                "backbone.cls_token",
                "backbone.norm.weight",
                "backbone.blocks.0.attn.qkv.bias",
                "backbone.blocks.1.ls2.gamma",
            ],
        ),
    ],
)
def test_backbone_parameter_names(backbone: str, expected: list[str]) -> None:
    model = _tiny(backbone)
    names = backbone_parameter_names(model)
    all_names = [n for n, _ in model.named_parameters()]
    assert names == [n for n in all_names if not n.startswith("head.")]  # everything but the head, in model order
    assert names == ["backbone." + n for n, _ in model.backbone.named_parameters()]
    assert set(expected) <= set(names)
    assert not any(n.startswith("head.") for n in names)

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model

    assert backbone_parameter_names(Wrapper()) == ["net." + n for n in names]


def _save(state: dict[str, torch.Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize(
    "layout", ["safetensors", "pt", "nested_module_pth", "classifier_bin", "with_dropped_projection"]
)
def test_local_weights_roundtrip(backbone: str, layout: str, tmp_path: Path) -> None:
    source = _tiny(backbone).eval()
    state = _backbone_state(source)
    if layout == "safetensors":
        path = _save(state, tmp_path / "w.safetensors")
    elif layout == "pt":
        path = _save(state, tmp_path / "w.pt")
    elif layout == "nested_module_pth":
        path = tmp_path / "w.pth"
        torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in state.items()}}, path)
    elif layout == "classifier_bin":  # a whole BackboneClassifier state dict: the head entries are ignored
        path = _save({k: v.clone() for k, v in source.state_dict().items()}, tmp_path / "w.bin")
    elif backbone == OPEN_CLIP:  # a full CLIP checkpoint: text tower and visual projection are ignored
        full = {"visual." + k: v for k, v in state.items()}
        full.update(
            {"visual.proj": torch.randn(64, 32), "text_projection": torch.randn(32, 32), "logit_scale": torch.ones([])}
        )
        path = _save(full, tmp_path / "clip.safetensors")
    else:  # a timm classifier checkpoint: its classification head is ignored
        path = _save({**state, "head.weight": torch.randn(10, 64), "head.bias": torch.zeros(10)}, tmp_path / "c.pt")

    loaded = _tiny(backbone, pretrained=str(path)).eval()
    loaded.head.load_state_dict(source.head.state_dict())
    for key, value in state.items():
        assert torch.equal(loaded.backbone.state_dict()[key], value), key
    x = _images(backbone)
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))


def test_pathlike_and_logging(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = _tiny(TIMM)
    path = _save(_backbone_state(source), tmp_path / "w.safetensors")
    with caplog.at_level(logging.INFO, logger="monai_shpeft.backbones"):
        model = _tiny(TIMM, pretrained=path)
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("monai_shpeft.backbones")]
    assert any("Built timm:vit_small_patch14_dinov2" in m for m in messages)
    assert any("Loaded" in m and str(path) in m for m in messages)
    fresh = _tiny(TIMM)
    load_backbone_weights(fresh, path)
    assert torch.equal(fresh.backbone.pos_embed, model.backbone.pos_embed)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("direction", ["shrink", "grow"])
def test_position_table_is_resized(backbone: str, direction: str, tmp_path: Path) -> None:
    src_size, dst_size = (LARGE[backbone], SMALL[backbone])
    if direction == "grow":
        src_size, dst_size = dst_size, src_size
    source = _tiny(backbone, image_size=src_size)
    path = _save(_backbone_state(source), tmp_path / "w.safetensors")

    model = _tiny(backbone, image_size=dst_size, pretrained=str(path))
    key = POS_KEY[backbone]
    old, new = getattr(source.backbone, key), getattr(model.backbone, key)
    grid = dst_size // (16 if backbone == OPEN_CLIP else 14)
    assert new.shape[-2] == grid * grid + 1
    assert old.shape[-2] != new.shape[-2]
    # the class-token entry is kept, only the patch grid is interpolated
    torch.testing.assert_close(new[..., :1, :], old[..., :1, :])
    assert model(_images(backbone, dst_size)).shape == (2, NUM_CLASSES)
    # every other tensor is loaded unchanged
    name = "conv1.weight" if backbone == OPEN_CLIP else "patch_embed.proj.weight"
    assert torch.equal(model.backbone.state_dict()[name], source.backbone.state_dict()[name])


def test_timm_resize_matches_timm_helper(tmp_path: Path) -> None:
    from timm.layers import resample_abs_pos_embed

    source = _tiny(TIMM, image_size=56)
    path = _save(_backbone_state(source), tmp_path / "w.pt")
    model = _tiny(TIMM, image_size=28, pretrained=str(path))
    expected = resample_abs_pos_embed(source.backbone.pos_embed.detach(), new_size=[2, 2], num_prefix_tokens=1)
    torch.testing.assert_close(model.backbone.pos_embed.detach(), expected)


def test_other_architecture_file_fails(tmp_path: Path) -> None:
    clip_file = _save(_backbone_state(_tiny(OPEN_CLIP)), tmp_path / "clip_visual.safetensors")
    with pytest.raises(ValueError, match="clip_visual.safetensors") as info:
        _tiny(TIMM, pretrained=str(clip_file))
    assert "missing keys" in str(info.value) and "unexpected keys" in str(info.value)

    dino_file = _save(_backbone_state(_tiny(TIMM)), tmp_path / "dino.pt")
    with pytest.raises(ValueError, match="dino.pt"):
        _tiny(OPEN_CLIP, pretrained=str(dino_file))


def test_incomplete_and_misshapen_files_fail(tmp_path: Path) -> None:
    state = _backbone_state(_tiny(TIMM))
    del state["norm.weight"]
    state["extra.weight"] = torch.zeros(2)
    path = _save(state, tmp_path / "partial.safetensors")
    with pytest.raises(ValueError, match=r"partial\.safetensors.*missing keys \(first: norm\.weight\).*extra\.weight"):
        _tiny(TIMM, pretrained=str(path))

    wide = _backbone_state(build_classifier(TIMM, 2, image_size=28, tiny=True, embed_dim=96))
    path = _save(wide, tmp_path / "wide.pt")
    with pytest.raises(ValueError, match=r"wide\.pt.*shape mismatches"):
        _tiny(TIMM, pretrained=str(path))

    not_weights = tmp_path / "notes.pt"
    torch.save({"epoch": 1, "note": "no tensors"}, not_weights)
    with pytest.raises(ValueError, match="notes.pt"):
        _tiny(TIMM, pretrained=str(not_weights))


@pytest.mark.parametrize("missing", ["/nonexistent/dir/weights.safetensors", "weights_that_do_not_exist.pt", "./w"])
def test_missing_file_fails_clearly(missing: str) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        build_classifier(TIMM, NUM_CLASSES, pretrained=missing, tiny=True)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_backbone_weights(_tiny(TIMM), missing)


@pytest.mark.parametrize(
    "backbone",
    ["foo:bar", "ViT-B-16", "open_clip:", "timm:not_a_real_model_name", "open_clip:ViT-Q-99", "torchvision:vit_b_16"],
)
def test_unknown_backbone(backbone: str) -> None:
    with pytest.raises(ValueError, match="open_clip:<model>") as info:
        build_classifier(backbone, NUM_CLASSES, tiny=True)
    assert "timm:<model>" in str(info.value)


def test_unknown_tag_and_tiny_tag() -> None:
    with pytest.raises(ValueError, match="Unknown pretrained tag 'nope'.*openai"):
        build_classifier(OPEN_CLIP, NUM_CLASSES, pretrained="nope")
    with pytest.raises(ValueError, match="Unknown pretrained tag 'nope'.*lvd142m"):
        build_classifier(TIMM, NUM_CLASSES, pretrained="nope")
    with pytest.raises(ValueError, match="tiny"):
        build_classifier(OPEN_CLIP, NUM_CLASSES, pretrained="openai", tiny=True)


# Runs the real hub code against an unreachable network. Set MONAI_SHPEFT_SKIP_HUB_TESTS=1 to skip it (e.g. behind a
# firewall that drops packets instead of refusing them, where each probe waits for its timeout).
hub_offline = pytest.mark.skipif(
    os.environ.get("MONAI_SHPEFT_SKIP_HUB_TESTS") == "1" or _hub_reachable(),
    reason="needs an offline machine (the hub is reachable, or MONAI_SHPEFT_SKIP_HUB_TESTS=1)",
)


@hub_offline
def test_open_clip_tag_offline_is_quick_and_actionable() -> None:
    start = time.perf_counter()
    with pytest.raises(PretrainedWeightsUnavailableError) as info:
        build_classifier(OPEN_CLIP, NUM_CLASSES, pretrained="openai")
    assert time.perf_counter() - start < 30
    message = str(info.value)
    for part in (
        "open_clip:ViT-B-16",
        "'openai'",
        "offline?",
        "timm/vit_base_patch16_clip_224.openai",
        "open_clip_pytorch_model.bin",
        "pretrained='/path/to/open_clip_pytorch_model.bin'",
        "force_quick_gelu=True",
    ):
        assert part in message, part
    assert isinstance(info.value, RuntimeError)


@hub_offline
def test_timm_tag_offline_is_quick_and_actionable() -> None:
    start = time.perf_counter()
    with pytest.raises(PretrainedWeightsUnavailableError) as info:
        build_classifier(TIMM, NUM_CLASSES, pretrained="lvd142m", image_size=224)
    assert time.perf_counter() - start < 30
    message = str(info.value)
    for part in ("timm:vit_small_patch14_dinov2", "'lvd142m'", "timm/vit_small_patch14_dinov2.lvd142m", "pretrained="):
        assert part in message, part


@pytest.mark.slow
@pytest.mark.skipif(not DINOV2_FILE.is_file(), reason=f"{DINOV2_FILE} not available")
def test_real_dinov2_weights_at_224() -> None:
    from safetensors.torch import load_file

    model = build_classifier(TIMM, 5, pretrained=str(DINOV2_FILE), image_size=224).eval()
    file_state = load_file(str(DINOV2_FILE))
    assert file_state["pos_embed"].shape == (1, 37 * 37 + 1, 384)
    assert model.backbone.pos_embed.shape == (1, 16 * 16 + 1, 384)
    torch.testing.assert_close(model.backbone.pos_embed[:, :1], file_state["pos_embed"][:, :1])
    assert torch.equal(model.backbone.blocks[11].mlp.fc2.weight, file_state["blocks.11.mlp.fc2.weight"])
    with torch.no_grad():
        features = model.forward_features(torch.rand(2, 3, 224, 224))
        logits = model(torch.rand(2, 3, 224, 224))
    assert features.shape == (2, 384) and torch.isfinite(features).all()
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()


def test_the_head_scripts_with_torchscript_as_ckpt_export_needs() -> None:
    """``monai.bundle ckpt_export`` scripts the network: the head's annotations must be ones TorchScript reads."""
    head = L2NormLinearHead(8, 3, logit_scale=10.0)
    scripted = torch.jit.script(head)
    features = torch.rand(4, 8)
    torch.testing.assert_close(scripted(features), head(features))
