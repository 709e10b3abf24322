"""FPT's frozen backbone is released during preloaded training: weights freed, checkpoints and results unchanged."""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.engines import PrepareBatchExtraInput, SupervisedTrainer
from monai.handlers import CheckpointSaver
from monai.transforms import Compose, RandFlipd
from monai.utils import set_determinism
from safetensors.torch import load_file, save_file

from monai_shpeft.feature_cache import FeatureCacheError, FrozenFeatureCache, LoadFrozenFeaturesd, feature_cache_for
from monai_shpeft.handlers import FeaturePreloadHandler
from monai_shpeft.networks import FPTNetwork, FrozenSnapshotError
from tests.test_feature_preload_handler import SIZE, preprocessing, tiny_fpt
from tests.test_feature_preload_handler import in_memory_items as items_with_files


def trainer_for(
    network: FPTNetwork, cache: FrozenFeatureCache, items: list[dict[str, Any]], handlers: list[Any], epochs: int = 2
) -> tuple[SupervisedTrainer, list[float]]:
    """A MONAI trainer on cached features (augmented side image, shuffled), and the list its losses go to."""
    transform = Compose(
        [*preprocessing().transforms, LoadFrozenFeaturesd("image", cache), RandFlipd("image_lr", 0.5, spatial_axis=1)]
    )
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=epochs,
        train_data_loader=DataLoader(Dataset(items, transform), batch_size=2, shuffle=True, num_workers=0),
        network=network,
        optimizer=torch.optim.AdamW([p for p in network.parameters() if p.requires_grad], lr=1e-2),
        loss_function=nn.CrossEntropyLoss(),
        prepare_batch=PrepareBatchExtraInput(extra_keys={"image_lr": "image_lr"}),
        train_handlers=handlers,
    )
    losses: list[float] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output[0]["loss"])))
    return trainer, losses


def train(tmp_path: Path, release: bool, name: str) -> tuple[FPTNetwork, list[float], FeaturePreloadHandler, Path]:
    """Fill the cache and train two epochs, saving model.pt with MONAI's CheckpointSaver at the end."""
    network = tiny_fpt()
    items = items_with_files(tmp_path / "items")
    cache = feature_cache_for(network, tmp_path / "cache")
    handler = FeaturePreloadHandler(
        cache, items, preprocessing(), batch_size=4, progress=False, release_backbone=release
    )
    saver = CheckpointSaver(str(tmp_path / name), {"model": network}, save_final=True, final_filename="model.pt")
    set_determinism(seed=0)
    trainer, losses = trainer_for(network, cache, items, [handler, saver])
    trainer.run()
    set_determinism(seed=None)
    return network, losses, handler, tmp_path / name / "model.pt"


def test_the_fill_releases_the_backbone_weights(tmp_path: Path) -> None:
    """After the fill no parameter of the frozen backbone holds storage, the old objects included."""
    network = tiny_fpt()
    old = list(network.extractor.backbone.parameters())
    expected_bytes = sum(p.numel() * p.element_size() for p in old)
    state_before = {k: v.clone() for k, v in network.state_dict().items()}
    items = items_with_files(tmp_path / "items")
    cache = feature_cache_for(network, tmp_path / "cache")
    handler = FeaturePreloadHandler(cache, items, preprocessing(), batch_size=4, progress=False)
    handler(trainer_for(network, cache, items, [])[0])
    assert network.extractor.released
    assert all(p.is_meta for p in network.extractor.backbone.parameters())
    assert all(p.untyped_storage().nbytes() == 0 for p in old)  # references held elsewhere (DDP) are emptied too
    assert handler.released is not None and handler.released["bytes"] == expected_bytes
    assert handler.released["tensors"] == len(old)
    snapshot = Path(handler.released["snapshot"])
    assert snapshot.parent == tmp_path / "cache" / "frozen_backbones" and snapshot.is_file()
    state_after = network.state_dict()
    assert list(state_after) == list(state_before)
    assert all(torch.equal(state_after[k], v) for k, v in state_before.items())
    # the cache's identity does not change: the fingerprint of released weights is that of the snapshot
    assert feature_cache_for(network, tmp_path / "cache").namespace == cache.namespace


def test_training_and_model_pt_are_unchanged_by_the_release(tmp_path: Path) -> None:
    """Same losses and the same model.pt with and without the release; it loads strictly into a fresh network."""
    released, released_losses, _, released_file = train(tmp_path / "a", True, "released")
    kept, kept_losses, _, kept_file = train(tmp_path / "b", False, "kept")
    assert released.extractor.released and not kept.extractor.released
    assert released_losses == kept_losses and len(released_losses) == 6
    saved, reference = torch.load(released_file, weights_only=True), torch.load(kept_file, weights_only=True)
    assert list(saved) == list(reference)
    assert all(torch.equal(saved[k], reference[k]) for k in reference)
    fresh = tiny_fpt()
    fresh.load_state_dict(saved, strict=True)
    pretrained = tiny_fpt().extractor.backbone.state_dict()
    assert all(torch.equal(fresh.extractor.backbone.state_dict()[k], v) for k, v in pretrained.items())
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(images), kept.eval()(images), atol=0, rtol=0)


def test_loading_the_same_frozen_weights_keeps_them_released(tmp_path: Path) -> None:
    """A checkpoint with the released weights loads without bringing them back (and without meta-copy warnings)."""
    network, _, _, model_file = train(tmp_path, True, "models")
    state = torch.load(model_file, weights_only=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        network.load_state_dict(state, strict=True)
    assert network.extractor.released
    other = {k: (v + 1 if k.startswith("extractor.backbone.") else v) for k, v in state.items()}
    network.load_state_dict(other, strict=True)  # other frozen weights: the backbone comes back holding them
    assert not network.extractor.released
    assert all(torch.equal(network.state_dict()[k], v) for k, v in other.items())
    with pytest.raises(RuntimeError, match="Missing key"):
        tiny_fpt().load_state_dict({k: v for k, v in state.items() if "blocks.0" not in k}, strict=True)


def test_calling_the_frozen_branch_restores_the_weights(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    network = tiny_fpt().eval()
    twin = tiny_fpt().eval()
    network.release_frozen_backbone(tmp_path / "snapshots")
    network.to("cpu")  # a move while released is remembered, not applied to tensors without storage
    copied = copy.deepcopy(network)
    assert copied.extractor.released
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with caplog.at_level(logging.WARNING, logger="monai_shpeft.networks.frozen_features"), torch.no_grad():
        logits = network(images)
    assert "restoring them" in caplog.text and not network.extractor.released
    with torch.no_grad():
        torch.testing.assert_close(logits, twin(images), atol=0, rtol=0)
        torch.testing.assert_close(copied(images), logits, atol=0, rtol=0)


def test_a_changed_snapshot_is_an_error(tmp_path: Path) -> None:
    network = tiny_fpt()
    report = network.release_frozen_backbone(tmp_path / "snapshots")
    snapshot = Path(report["snapshot"])
    tensors = load_file(str(snapshot))
    tensors["cls_token"] = tensors["cls_token"] + 1
    save_file(tensors, str(snapshot))
    with pytest.raises(FrozenSnapshotError, match="does not hold the weights that were released"):
        network.state_dict()
    # a release of the same weights writes a sound snapshot again
    twin = tiny_fpt()
    twin.release_frozen_backbone(tmp_path / "snapshots")
    assert torch.equal(network.state_dict()["extractor.backbone.cls_token"], tiny_fpt().extractor.backbone.cls_token)


def test_a_cache_miss_after_the_release_names_the_image(tmp_path: Path) -> None:
    """Training reads features only: an image the fill did not cover stays the FeatureCacheError it was."""
    network = tiny_fpt()
    items = items_with_files(tmp_path / "items")
    cache = feature_cache_for(network, tmp_path / "cache")
    handler = FeaturePreloadHandler(cache, items[:4], preprocessing(), batch_size=4, progress=False)
    trainer, _ = trainer_for(network, cache, items, [handler], epochs=1)
    with pytest.raises(Exception) as raised:  # MONAI wraps transform errors
        trainer.run()
    chain, error = [], raised.value
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    missing = [e for e in chain if isinstance(e, FeatureCacheError)]
    assert missing and "No preloaded FPT features for '" in str(missing[0])
    assert any(item["image_path"] in str(missing[0]) for item in items[4:])
    assert network.extractor.released


def test_a_partly_filled_cache_restores_the_branch_for_the_missing_entries(tmp_path: Path) -> None:
    """A second fill with new items, after a release, brings the backbone back, computes them and releases again."""
    network = tiny_fpt()
    items = items_with_files(tmp_path / "items")
    cache = feature_cache_for(network, tmp_path / "cache", dtype="float32")
    first = FeaturePreloadHandler(cache, items[:4], preprocessing(), batch_size=4, progress=False)
    first(trainer_for(network, cache, items[:4], [])[0])
    assert network.extractor.released
    second = FeaturePreloadHandler(cache, items, preprocessing(), batch_size=4, progress=False)
    second(trainer_for(network, cache, items, [])[0])
    assert second.report is not None and second.report["computed"] == 2 and second.report["cached"] == 4
    assert network.extractor.released
    reference = tiny_fpt()
    images = torch.stack([preprocessing()(dict(item))["image"] for item in items[4:]])
    expected = reference.frozen_features(images)
    cached = torch.stack([cache.get(image, item["image_path"]) for image, item in zip(images, items[4:])])
    assert torch.equal(cached, expected)
