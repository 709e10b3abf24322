"""int8 storage of FPT's preloaded features: round-trip bounds on real features, the cache's layout and namespace."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from monai_shpeft.feature_cache import (
    FrozenFeatureCache,
    LoadFrozenFeatures,
    dequantize_int8,
    feature_cache_for,
    quantize_int8,
)
from monai_shpeft.feature_cache.quantize import INT8_MAX
from monai_shpeft.networks import FPTNetwork, build_fpt
from tests.helpers import TINY_TIMM
from tests.test_feature_cache import SIDE_SIZE, SIZE, low_resolution, png_items, preprocessed, preprocessing

DINOV2_FILE = Path("/work/shared/weights/vit_small_patch14_dinov2.safetensors")
BUSI_DIR = Path("/work/shared/data/busi")
#: int8's step is max|x| / 127 per vector, so rounding errs by at most half of it; float16 adds at most 2**-11 of |x|
BOUND = 0.5 / INT8_MAX + 2.0**-11


def tiny_fpt() -> FPTNetwork:
    torch.manual_seed(0)
    return build_fpt(TINY_TIMM, 3, None, image_size=SIZE, side_image_size=SIDE_SIZE, tiny=True).eval()


def check_round_trip(features: torch.Tensor) -> None:
    """Every entry within ``BOUND`` of its vector's largest magnitude; vectors' directions kept."""
    values, scales = quantize_int8(features)
    assert values.dtype == torch.int8 and scales.dtype == torch.float32
    assert scales.shape == (*features.shape[:-1], 1)
    assert int(values.abs().max()) == INT8_MAX  # the largest entry of each vector uses the full range
    restored = dequantize_int8(values, scales)
    assert restored.dtype == torch.float16
    absmax = features.abs().amax(dim=-1, keepdim=True)
    error = (restored.float() - features).abs()
    assert bool((error <= BOUND * absmax + 1e-7).all()), float((error / absmax.clamp_min(1e-12)).max())
    cosine = torch.nn.functional.cosine_similarity(restored.float(), features, dim=-1)
    assert float(cosine.min()) > 0.999


def test_round_trip_bound_on_tiny_backbone_features() -> None:
    network = tiny_fpt()
    images = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    check_round_trip(network.frozen_features(images))


@pytest.mark.skipif(not (DINOV2_FILE.is_file() and BUSI_DIR.is_dir()), reason="the shared DINOv2 weights or BUSI")
def test_round_trip_bound_on_real_dinov2_features_of_busi_images(tmp_path: Path) -> None:
    """The real DINOv2 ViT-S/14 weights on real BUSI images (112 px, 65 tokens, 13 kept per layer)."""
    torch.manual_seed(0)
    network = build_fpt("timm:vit_small_patch14_dinov2", 3, str(DINOV2_FILE), image_size=112, side_image_size=56)
    files = sorted(BUSI_DIR.rglob("*.png"))
    items = [{"image": str(f), "image_path": str(f)} for f in [p for p in files if "mask" not in p.name][:4]]
    images = preprocessed(items, image_size=112)
    features = network.eval().frozen_features(images)
    assert float(features.abs().max()) > 1.0  # real keys and values, not a degenerate range
    check_round_trip(features)
    cache = feature_cache_for(network, tmp_path / "cache", dtype="int8")
    cache.fill(items, preprocessing(112), network, batch_size=4, progress=False)
    cached = torch.stack([cache.get(image, item["image_path"]) for image, item in zip(images, items)])
    with torch.no_grad():
        side = torch.nn.functional.interpolate(images, size=(56, 56), mode="bilinear", antialias=True)
        exact, stored = network(features, side), network(cached, side)
    assert float((stored - exact).abs().max()) < 0.05 * float(exact.abs().max())


def test_int8_cache_stores_values_and_scales_and_reads_float16(tmp_path: Path) -> None:
    network = tiny_fpt()
    items = png_items(tmp_path / "images")
    caches = {d: feature_cache_for(network, tmp_path / "cache", dtype=d) for d in ("float16", "int8")}
    for cache in caches.values():
        cache.fill(items, preprocessing(), network, batch_size=4, progress=False)
    images = preprocessed(items)
    expected = network.frozen_features(images)
    int8 = caches["int8"]
    cached = torch.stack([int8.get(image, item["image_path"]) for image, item in zip(images, items)])
    assert cached.dtype == torch.float16
    absmax = expected.abs().amax(dim=-1, keepdim=True)
    assert bool(((cached.float() - expected).abs() <= BOUND * absmax + 1e-7).all())
    # the same through the transform the training data use
    assert torch.equal(LoadFrozenFeatures(int8)(images[0], items[0]["image_path"]), cached[0])
    with torch.no_grad():
        difference = (network(cached, low_resolution(images)) - network(images, low_resolution(images))).abs().max()
    assert difference < 1e-2
    entry = int8.path(int8.key(images[0], items[0]["image_path"]))
    stored = load_file(str(entry))
    assert stored["features"].dtype == torch.int8 and stored["scales"].dtype == torch.float32
    assert tuple(stored["scales"].shape) == (*int8.feature_shape[:-1], 1)
    # bytes per image: values (1 byte) plus one float32 scale per vector, against float16's 2 bytes
    layers, kv, tokens, width = int8.feature_shape
    assert entry.stat().st_size - layers * kv * tokens * (width + 4) < 512  # the safetensors header
    half = caches["float16"]
    assert half.path(half.key(images[0], items[0]["image_path"])).stat().st_size - entry.stat().st_size > (
        layers * kv * tokens * (width - 4) - 512
    )


def test_dtype_is_part_of_the_namespace(tmp_path: Path) -> None:
    network = tiny_fpt()
    namespaces = {d: feature_cache_for(network, tmp_path, dtype=d).namespace for d in ("float16", "bfloat16", "int8")}
    assert len(set(namespaces.values())) == 3
    items = png_items(tmp_path / "images", count=1)
    cache = feature_cache_for(network, tmp_path, dtype="int8")
    cache.fill(items, preprocessing(), network, batch_size=1, progress=False)
    manifest = json.loads((cache.root / "manifest.json").read_text())
    assert manifest["dtype"] == "int8"
    image = preprocessed(items)[0]
    assert feature_cache_for(network, tmp_path, dtype="float16").get(image, items[0]["image_path"]) is None


def test_a_damaged_scale_is_found_and_computed_again(tmp_path: Path) -> None:
    network = tiny_fpt()
    items = png_items(tmp_path / "images", count=2)
    cache = feature_cache_for(network, tmp_path, dtype="int8")
    cache.fill(items, preprocessing(), network, batch_size=2, progress=False)
    entry = next(cache.root.glob("*/*.safetensors"))
    with safe_open(str(entry), "pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(entry))
    tensors["scales"] = tensors["scales"] * 2
    save_file(tensors, str(entry), metadata=metadata)
    assert cache.damage(entry) == "its bytes do not match their checksum"
    del tensors["scales"]
    save_file(tensors, str(entry), metadata=metadata)
    assert "unreadable" in str(cache.damage(entry))
    report = cache.fill(items, preprocessing(), network, batch_size=2, progress=False)
    assert report["computed"] == 1 and cache.damage(entry) is None


def test_quantize_edge_cases() -> None:
    zeros = torch.zeros(2, 5)
    values, scales = quantize_int8(zeros)
    assert torch.equal(values, torch.zeros(2, 5, dtype=torch.int8)) and torch.equal(scales, torch.ones(2, 1))
    assert torch.equal(dequantize_int8(values, scales), torch.zeros(2, 5, dtype=torch.float16))
    x = torch.tensor([[-3.0, 0.0, 1.5, 3.0]])
    values, scales = quantize_int8(x)
    assert values.tolist() == [[-127, 0, 64, 127]]  # 63.5 rounds half to even
    assert torch.equal(dequantize_int8(values, scales, torch.float32), values.float() * (3.0 / 127))
    with pytest.raises(ValueError, match="Unknown feature cache dtype"):
        FrozenFeatureCache(Path("."), {"feature_shape": [1, 2, 3, 4]}, dtype="uint8")
