from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
from monai.data import CacheDataset, DataLoader, Dataset
from monai.engines import PrepareBatchExtraInput, SupervisedTrainer
from monai.transforms import Compose, EnsureTyped, RandFlipd, ScaleIntensityd

from monai_shpeft.feature_cache import FeatureCacheError, FrozenFeatureCache, LoadFrozenFeaturesd, feature_cache_for
from monai_shpeft.feature_cache.store import item_source
from monai_shpeft.handlers import FeaturePreloadHandler
from monai_shpeft.networks import FPTNetwork, build_fpt
from tests.helpers import TINY_TIMM

SIZE, SIDE_SIZE, NUM_ITEMS = 56, 28, 6


def tiny_fpt() -> FPTNetwork:
    torch.manual_seed(0)
    return build_fpt(TINY_TIMM, 3, None, image_size=SIZE, side_image_size=SIDE_SIZE, tiny=True)


def in_memory_items(folder: Path, count: int = NUM_ITEMS) -> list[dict[str, Any]]:
    """Tensors in memory, each with the (real, written) file it stands for: the file's bytes key its features."""
    generator = torch.Generator().manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for index in range(count):
        source = folder / f"case_{index}.bin"
        source.write_bytes(f"case {index}".encode())
        items.append(
            {
                "image": torch.rand(3, SIZE, SIZE, generator=generator) * 200 + 10 * index,
                "image_lr": torch.rand(3, SIDE_SIZE, SIDE_SIZE, generator=generator),
                "label": index % 3,
                "image_path": str(source),
            }
        )
    return items


def preprocessing() -> Compose:
    """The deterministic preprocessing of the high-resolution image (shared by the fill and the training data)."""
    return Compose(
        [EnsureTyped(keys=("image", "image_lr"), dtype=torch.float32, track_meta=False), ScaleIntensityd(keys="image")]
    )


def preloading_trainer(
    network: FPTNetwork,
    cache: FrozenFeatureCache,
    items: list[dict[str, Any]],
    handlers: list[Any],
    cached_dataset: bool = False,
) -> SupervisedTrainer:
    """A MONAI trainer whose data replace the high-resolution image by its cached features.

    With ``cached_dataset`` the data are a ``CacheDataset``, built (and cached) before the handler fills the cache.
    """
    train_transform = Compose(
        [
            *preprocessing().transforms,  # flat: a nested Compose would count as random and stop all caching
            LoadFrozenFeaturesd(keys="image", cache=cache),
            RandFlipd(keys="image_lr", prob=0.5, spatial_axis=1),  # augmentation only reaches the side network
        ]
    )
    if cached_dataset:
        dataset: Dataset = CacheDataset(items, train_transform, num_workers=None, progress=False)
    else:
        dataset = Dataset(items, train_transform)
    return SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=DataLoader(dataset, batch_size=2, shuffle=True, num_workers=0),
        network=network,
        optimizer=torch.optim.AdamW(network.parameters(), lr=1e-2),
        loss_function=nn.CrossEntropyLoss(),
        prepare_batch=PrepareBatchExtraInput(extra_keys={"image_lr": "image_lr"}),
        train_handlers=handlers,
    )


def count_backbone_calls(network: FPTNetwork) -> list[int]:
    calls = [0]
    network.extractor.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("cached_dataset", [False, True])
def test_fill_on_started_then_train_from_the_cache(tmp_path: Path, cached_dataset: bool) -> None:
    """The handler fills one entry per item before the first iteration; training then never runs the backbone.

    A ``CacheDataset`` caches only the preprocessing: the lookup runs when items are read, after the fill.
    """
    network = tiny_fpt()
    items = in_memory_items(tmp_path / "items")
    cache = feature_cache_for(network, tmp_path / "cache")
    backbone_calls = count_backbone_calls(network)
    handler = FeaturePreloadHandler(cache, items, preprocessing(), batch_size=4, progress=False)
    head_before = network.head.weight.detach().clone()
    frozen_before = {n: t.clone() for n, t in network.extractor.state_dict().items()}

    trainer = preloading_trainer(network, cache, items, [handler], cached_dataset)
    trainer.run()
    assert handler.report is not None
    assert handler.report["items"] == NUM_ITEMS and handler.report["computed"] == NUM_ITEMS
    assert handler.report["cached"] == 0
    assert cache.num_entries() == NUM_ITEMS
    assert backbone_calls[0] == 2  # two fill batches of at most 4 images; none during the 3 iterations
    assert trainer.state.iteration == NUM_ITEMS // 2
    assert not torch.equal(network.head.weight.detach(), head_before)
    assert all(torch.equal(t, frozen_before[n]) for n, t in network.extractor.state_dict().items())
    for item in items:
        assert cache.get(preprocessing()(dict(item))["image"], item_source(item)) is not None

    second_handler = FeaturePreloadHandler(cache, items, preprocessing(), batch_size=4, progress=False)
    second = preloading_trainer(network, cache, items, [second_handler], cached_dataset)
    second.run()
    assert second_handler.report is not None
    assert second_handler.report["computed"] == 0 and second_handler.report["cached"] == NUM_ITEMS
    assert backbone_calls[0] == 2
    assert second.state.iteration == NUM_ITEMS // 2
    assert cache.num_entries() == NUM_ITEMS


def test_preloaded_training_matches_training_on_images(tmp_path: Path) -> None:
    """One step from float32 cached features gives the same weights as one step from the images themselves."""
    items = in_memory_items(tmp_path / "items")[:2]
    networks = [tiny_fpt(), tiny_fpt()]
    cache = feature_cache_for(networks[0], tmp_path / "cache", dtype="float32")
    FeaturePreloadHandler(cache, items, preprocessing(), batch_size=2, progress=False)(
        preloading_trainer(networks[0], cache, items, [])
    )
    batch = [preprocessing()(dict(item)) for item in items]
    images = torch.stack([b["image"] for b in batch])
    image_lr = torch.stack([b["image_lr"] for b in batch])
    labels = torch.tensor([b["label"] for b in batch])
    features = torch.stack([cache.get(image, item["image_path"]) for image, item in zip(images, items)])
    for network, first_input in zip(networks, (features, images)):
        optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
        nn.functional.cross_entropy(network(first_input, image_lr), labels).backward()
        optimizer.step()
    # the state dicts: the first network's frozen weights are released after the fill, its state dict still has them
    assert networks[0].extractor.released
    second = networks[1].state_dict()
    for name, value in networks[0].state_dict().items():
        torch.testing.assert_close(value, second[name], atol=1e-6, rtol=0, msg=name)


def test_training_without_filling_fails_on_the_missing_entry(tmp_path: Path) -> None:
    network = tiny_fpt()
    items = in_memory_items(tmp_path / "items")[:2]
    cache = feature_cache_for(network, tmp_path / "cache")
    with pytest.raises(Exception) as raised:  # MONAI wraps transform errors in RuntimeError
        preloading_trainer(network, cache, items, []).run()
    chain, error = [], raised.value
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    missing = [e for e in chain if isinstance(e, FeatureCacheError)]
    assert missing and f"No preloaded FPT features for '{items[0]['image_path']}'" in str(missing[0])
