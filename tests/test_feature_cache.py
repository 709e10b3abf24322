from __future__ import annotations

import json
import logging
import pickle
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.transforms import Compose, LoadImaged, Resized, ScaleIntensityd
from safetensors.torch import save_file

from monai_shpeft.feature_cache import (
    FeatureCacheError,
    FrozenFeatureCache,
    LoadFrozenFeatures,
    LoadFrozenFeaturesd,
    feature_cache_for,
)
from monai_shpeft.networks import FPTNetwork, build_fpt
from tests.helpers import TINY_TIMM, write_png

SIZE, SIDE_SIZE = 56, 28


def tiny_fpt(image_size: int = SIZE, token_ratio: float = 0.2) -> FPTNetwork:
    torch.manual_seed(0)
    return build_fpt(
        TINY_TIMM, 3, None, image_size=image_size, side_image_size=SIDE_SIZE, token_ratio=token_ratio, tiny=True
    ).eval()


def preprocessing(image_size: int = SIZE) -> Compose:
    """The deterministic high-resolution preprocessing: read a PNG, scale to [0, 1], resize."""
    return Compose(
        [
            LoadImaged("image", ensure_channel_first=True),
            ScaleIntensityd("image"),
            Resized("image", (image_size, image_size)),
        ]
    )


def png_items(folder: Path, count: int = 4, first_value: int = 60) -> list[dict[str, Any]]:
    items = []
    for index in range(count):
        path = str(write_png(folder / f"image_{index}.png", size=40, value=first_value + 30 * index))
        items.append({"image": path, "image_path": path, "label": index % 3})
    return items


def preprocessed(items: list[dict[str, Any]], image_size: int = SIZE) -> torch.Tensor:
    transform = preprocessing(image_size)
    return torch.stack([transform(dict(item))["image"].as_tensor() for item in items])


def low_resolution(images: torch.Tensor) -> torch.Tensor:
    return F.interpolate(images, size=(SIDE_SIZE, SIDE_SIZE), mode="bilinear", antialias=True)


def test_second_fill_only_reads(tmp_path: Path) -> None:
    """A second fill finds every item and computes nothing; the namespace holds one entry per image."""
    network = tiny_fpt()
    items = png_items(tmp_path / "images")
    cache = feature_cache_for(network, tmp_path / "cache")
    first = cache.fill(items, preprocessing(), network, batch_size=3, progress=False)
    assert (first["items"], first["cached"], first["computed"]) == (4, 0, 4)
    assert cache.num_entries() == 4 and cache.size_bytes() > 0
    second = cache.fill(items, preprocessing(), network, batch_size=3, progress=False)
    assert (second["items"], second["cached"], second["computed"]) == (4, 4, 0)
    assert cache.num_entries() == 4
    more = png_items(tmp_path / "more", count=2, first_value=200)
    third = cache.fill(items + more, preprocessing(), network, batch_size=3, progress=False)
    assert (third["cached"], third["computed"]) == (4, 2)
    assert cache.num_entries() == 6


def test_float32_entries_are_exactly_the_frozen_features(tmp_path: Path) -> None:
    """A float32 cache returns the features bit for bit, and classifying them equals classifying the image."""
    network = tiny_fpt()
    items = png_items(tmp_path / "images")
    cache = feature_cache_for(network, tmp_path / "cache", dtype="float32")
    cache.fill(items, preprocessing(), network, batch_size=4, progress=False)
    images = preprocessed(items)
    expected = network.frozen_features(images)  # the same batch as the fill
    cached = torch.stack([cache.get(image, item["image_path"]) for image, item in zip(images, items)])
    assert cached.dtype == torch.float32
    assert torch.equal(cached, expected)
    with torch.no_grad():
        without_preloading = network(images, low_resolution(images))
        with_preloading = network(cached, low_resolution(images))
    torch.testing.assert_close(with_preloading, without_preloading, atol=1e-6, rtol=0)


def test_float16_entries_are_close_and_barely_move_the_logits(tmp_path: Path) -> None:
    network = tiny_fpt()
    items = png_items(tmp_path / "images")
    cache = feature_cache_for(network, tmp_path / "cache")  # float16 by default
    cache.fill(items, preprocessing(), network, batch_size=4, progress=False)
    images = preprocessed(items)
    expected = network.frozen_features(images)
    cached = torch.stack([cache.get(image, item["image_path"]) for image, item in zip(images, items)])
    assert cached.dtype == torch.float16
    torch.testing.assert_close(cached.float(), expected, atol=1e-2, rtol=1e-3)
    assert torch.equal(cached, expected.half())
    with torch.no_grad():
        difference = (network(cached, low_resolution(images)) - network(images, low_resolution(images))).abs().max()
    assert difference < 1e-3


def test_a_changed_file_misses_and_the_same_file_hits_whatever_its_last_bits(tmp_path: Path) -> None:
    """Entries are keyed by the source file's bytes: a rewritten file misses; the same file hits even when its
    preprocessing ran elsewhere and differs in the last bits (a real BUSI run hit that with a tensor key)."""
    network = tiny_fpt()
    items = png_items(tmp_path / "images", count=2)
    cache = feature_cache_for(network, tmp_path / "cache", preprocessing=preprocessing().transforms)
    cache.fill(items, preprocessing(), network, progress=False)
    image, source = preprocessed(items)[0], items[0]["image_path"]
    assert cache.get(image, source) is not None
    assert cache.get(image + 1e-7, source) is not None  # one-ulp preprocessing noise: same file, same entry
    write_png(Path(source), size=40, value=250)  # the file changes on disk
    assert cache.get(image, source) is None

    # without a file, the values are the key: any change misses
    assert cache.get(image) is None and image not in cache
    cache.put(image, network.frozen_features(image[None])[0])
    assert image in cache and cache.get(image) is not None
    changed = image.clone()
    changed[0, 10, 10] += 1 / 255
    assert cache.get(changed) is None and changed not in cache


def test_another_preprocessing_is_another_namespace(tmp_path: Path) -> None:
    network = tiny_fpt()
    cache = feature_cache_for(network, tmp_path / "cache", preprocessing=preprocessing().transforms)
    again = feature_cache_for(network, tmp_path / "cache", preprocessing=preprocessing().transforms)
    assert again.namespace == cache.namespace
    other_size = Compose([LoadImaged("image"), ScaleIntensityd("image"), Resized("image", (SIZE, SIZE + 2))])
    other_scaling = Compose([LoadImaged("image"), ScaleIntensityd("image", minv=-1.0), Resized("image", (SIZE, SIZE))])
    for other in (other_size, other_scaling):
        assert (
            feature_cache_for(network, tmp_path / "cache", preprocessing=other.transforms).namespace != cache.namespace
        )
    assert feature_cache_for(network, tmp_path / "cache").namespace != cache.namespace


@pytest.mark.parametrize("change", ["token_ratio", "token_ratio_same_shape", "weight", "dtype", "image_size"])
def test_settings_that_change_the_features_change_the_namespace(tmp_path: Path, change: str) -> None:
    """Each setting the features depend on gives another namespace, so the old entries are not found."""
    network = tiny_fpt()
    items = png_items(tmp_path / "images", count=2)
    cache = feature_cache_for(network, tmp_path / "cache")
    cache.fill(items, preprocessing(), network, progress=False)
    image, source = preprocessed(items)[0], items[0]["image_path"]
    same = feature_cache_for(tiny_fpt(), tmp_path / "cache")  # rebuilt identically: same namespace, found
    assert same.root == cache.root and same.get(image, source) is not None

    if change == "token_ratio":
        other = feature_cache_for(tiny_fpt(token_ratio=0.5), tmp_path / "cache")
    elif change == "token_ratio_same_shape":  # ceil(0.21 * 17) = ceil(0.2 * 17) = 4: the ratio itself counts
        changed = tiny_fpt(token_ratio=0.21)
        assert changed.extractor.feature_shape == network.extractor.feature_shape
        other = feature_cache_for(changed, tmp_path / "cache")
    elif change == "weight":
        changed = tiny_fpt()
        with torch.no_grad():
            changed.extractor.backbone.blocks[0].mlp.fc1.weight[0, 0] += 1e-4
        other = feature_cache_for(changed, tmp_path / "cache")
    elif change == "dtype":
        other = feature_cache_for(network, tmp_path / "cache", dtype="float32")
    else:
        other = feature_cache_for(tiny_fpt(image_size=70), tmp_path / "cache")
    assert other.namespace != cache.namespace and other.root != cache.root
    assert other.get(image, source) is None and other.num_entries() == 0
    assert cache.get(image, source) is not None  # the old entries stay where they were


def filled_cache(
    tmp_path: Path, count: int
) -> tuple[FPTNetwork, list[dict[str, Any]], FrozenFeatureCache, Any, str, Path]:
    """A cache filled with ``count`` images; the first image, its source file and its entry's path."""
    network = tiny_fpt()
    items = png_items(tmp_path / "images", count=count)
    cache = feature_cache_for(network, tmp_path / "cache")
    cache.fill(items, preprocessing(), network, progress=False)
    image, source = preprocessed(items)[0], items[0]["image_path"]
    return network, items, cache, image, source, cache.path(cache.key(image, source))


@pytest.mark.parametrize("garbage", ["short", "random", "truncated", "bad_header"])
def test_a_corrupted_entry_is_an_error_naming_the_file(tmp_path: Path, garbage: str) -> None:
    _, _, cache, image, source, path = filled_cache(tmp_path, count=1)
    valid = path.read_bytes()
    contents = {
        "short": b"x",
        "random": bytes(range(256)) * 4,
        "truncated": valid[: len(valid) // 2],
        "bad_header": b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage",
    }[garbage]
    path.write_bytes(contents)
    with pytest.raises(FeatureCacheError, match=re.escape(f"'{path}' is unreadable")):
        cache.get(image, source)


def test_an_entry_of_the_wrong_shape_is_an_error(tmp_path: Path) -> None:
    network = tiny_fpt()
    cache = feature_cache_for(network, tmp_path / "cache")
    image = torch.rand(3, SIZE, SIZE)
    path = cache.path(cache.key(image))
    path.parent.mkdir(parents=True)
    save_file({"features": torch.zeros(2, 2, 5, 64, dtype=torch.float16)}, str(path))
    with pytest.raises(FeatureCacheError, match=re.escape(f"'{path}' has shape (2, 2, 5, 64), expected (2, 2, 4, 64)")):
        cache.get(image)


def test_put_and_manifest(tmp_path: Path) -> None:
    network = tiny_fpt()
    cache = feature_cache_for(network, tmp_path / "cache")
    image = torch.rand(3, SIZE, SIZE)
    with pytest.raises(
        ValueError, match=re.escape("features have shape (2, 2, 5, 64), this cache stores (2, 2, 4, 64)")
    ):
        cache.put(image, torch.zeros(2, 2, 5, 64))
    assert cache.num_entries() == 0
    features = network.frozen_features(image[None])[0]
    path = cache.put(image, features)
    assert path == cache.path(cache.key(image)) and path.is_file()
    assert torch.equal(cache.get(image), features.half())
    manifest = json.loads((cache.root / "manifest.json").read_text())
    assert manifest == json.loads(json.dumps(cache.identity))
    assert manifest["backbone"] == TINY_TIMM and manifest["token_ratio"] == 0.2 and manifest["image_size"] == SIZE
    assert manifest["weights_sha256"] == network.extractor.fingerprint()
    assert manifest["feature_shape"] == [2, 2, 4, 64] and manifest["dtype"] == "float16"


def test_invalid_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Unknown feature cache dtype 'int4'"):
        FrozenFeatureCache(tmp_path, {"feature_shape": [1, 2, 3, 4]}, dtype="int4")
    with pytest.raises(ValueError, match="feature_shape"):
        FrozenFeatureCache(tmp_path, {"backbone": "x"})
    with pytest.raises(TypeError, match="Linear has no frozen FPT branch"):
        feature_cache_for(nn.Linear(2, 2), tmp_path)


def test_load_frozen_features_transforms(tmp_path: Path) -> None:
    """The dictionary transform returns the cached features; a miss names the item's file."""
    network = tiny_fpt()
    items = png_items(tmp_path / "images", count=2)
    cache = feature_cache_for(network, tmp_path / "cache")
    cache.fill(items, preprocessing(), network, progress=False)
    pipeline = Compose([preprocessing(), LoadFrozenFeaturesd(keys="image", cache=cache)])
    for item, image in zip(items, preprocessed(items)):
        out = pipeline(dict(item))
        assert out["label"] == item["label"]
        assert torch.equal(out["image"], cache.get(image, item["image_path"]))

    unseen = png_items(tmp_path / "unseen", count=1, first_value=220)[0]
    with pytest.raises(FeatureCacheError, match=re.escape(f"No preloaded FPT features for '{unseen['image_path']}'")):
        LoadFrozenFeaturesd(keys="image", cache=cache)(preprocessing()(dict(unseen)))
    no_path = {"image": preprocessing()(dict(unseen))["image"]}  # the image's meta data names the file instead
    with pytest.raises(FeatureCacheError, match=re.escape(unseen["image_path"])):
        LoadFrozenFeaturesd(keys="image", cache=cache)(no_path)
    with pytest.raises(FeatureCacheError, match="No preloaded FPT features for an image"):
        LoadFrozenFeatures(cache)(torch.rand(3, SIZE, SIZE))


def test_cache_pickles_without_the_network(tmp_path: Path) -> None:
    network = tiny_fpt()
    items = png_items(tmp_path / "images", count=1)
    cache = feature_cache_for(network, tmp_path / "cache")
    cache.fill(items, preprocessing(), network, progress=False)
    payload = pickle.dumps(cache)
    assert len(payload) < 2_000  # paths and the identity only, no weights
    assert b"torch.nn" not in payload and b"FPTNetwork" not in payload
    restored = pickle.loads(payload)
    image, source = preprocessed(items)[0], items[0]["image_path"]
    assert restored.root == cache.root and torch.equal(restored.get(image, source), cache.get(image, source))
    transform = pickle.loads(pickle.dumps(LoadFrozenFeaturesd(keys="image", cache=cache)))
    assert torch.equal(transform({"image": image, "image_path": source})["image"], cache.get(image, source))


@pytest.mark.parametrize("damage", ["truncated", "flipped_byte", "wrong_shape"])
def test_a_damaged_entry_is_found_by_its_key_and_computed_again(tmp_path: Path, damage: str, caplog) -> None:
    network, items, cache, image, source, path = filled_cache(tmp_path, count=2)
    expected = cache.get(image, source).clone()
    valid = path.read_bytes()
    if damage == "truncated":  # e.g. a disk that filled up, or a copy that stopped
        path.write_bytes(valid[: len(valid) // 2])
    elif damage == "flipped_byte":  # silent corruption: readable, right shape, wrong values
        path.write_bytes(valid[:-10] + bytes([valid[-10] ^ 0x40]) + valid[-9:])
    else:
        save_file({"features": torch.zeros(2, 2, 5, 64, dtype=torch.float16)}, str(path))
    assert cache.damage(path) is not None

    with caplog.at_level(logging.WARNING):
        counts = cache.fill(items, preprocessing(), network, progress=False)
    assert (counts["cached"], counts["computed"]) == (1, 1)  # only the damaged entry is computed again
    assert f"FPT feature cache entry {path} is damaged" in caplog.text
    assert cache.damage(path) is None
    torch.testing.assert_close(cache.get(image, source), expected)
