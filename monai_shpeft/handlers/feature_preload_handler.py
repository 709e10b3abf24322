"""Ignite handler that fills FPT's frozen-feature cache before training starts."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch.distributed as dist
from monai.utils import min_version, optional_import

from monai_shpeft.distributed import is_distributed
from monai_shpeft.feature_cache.store import FrozenFeatureCache
from monai_shpeft.utils import unwrap

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
    from monai.engines import SupervisedTrainer
else:
    Engine, _ = optional_import("ignite.engine", "0.4.11", min_version, "Engine")

__all__ = ["FeaturePreloadHandler"]

logger = logging.getLogger(__name__)


class FeaturePreloadHandler:
    """Fill a :class:`~monai_shpeft.feature_cache.FrozenFeatureCache` with the trainer's network on ``STARTED``.

    Items already cached are skipped, so a resumed or repeated run only pays for new images. In a distributed run
    each rank fills its share of the items and all ranks wait for each other before training.

    Once the cache is complete the frozen backbone's weights are released (``release_backbone``): training and
    validation read the cache and never run it, so its weights (a third of the memory of FPT with preloading for
    ViT-B/16 at 512 px) are written once to a snapshot file and freed. The network's state dict, and so the saved
    ``model.pt``, still holds them (read back from the snapshot); a call of the frozen branch restores them
    (:meth:`~monai_shpeft.networks.FrozenFeatureExtractor.release`).

    Args:
        cache: the cache the training transforms read (:class:`~monai_shpeft.feature_cache.LoadFrozenFeaturesd`).
        data: datalist items to preload (typically training plus validation).
        transform: the deterministic preprocessing of the high-resolution image, as used before the lookup.
        batch_size: images per frozen-backbone call.
        num_workers: DataLoader workers for the preprocessing.
        image_key: key of the high-resolution image.
        progress: show a progress bar.
        release_backbone: free the frozen backbone's weights after the fill.
        snapshot_dir: folder of the released weights' snapshot; default ``<cache_dir>/frozen_backbones`` (beside the
            cache's namespaces, one file per set of weights).
    """

    def __init__(
        self,
        cache: FrozenFeatureCache,
        data: Sequence[Mapping[str, Any]],
        transform: Callable[[Any], Any],
        batch_size: int = 8,
        num_workers: int = 0,
        image_key: str = "image",
        progress: bool = True,
        release_backbone: bool = True,
        snapshot_dir: str | os.PathLike | None = None,
    ) -> None:
        self.cache = cache
        self.data = list(data)
        self.transform = transform
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.image_key = image_key
        self.progress = progress
        self.release_backbone = release_backbone
        self.snapshot_dir = Path(snapshot_dir) if snapshot_dir is not None else cache.root.parent / "frozen_backbones"
        self.report: dict[str, float] | None = None
        self.released: dict[str, Any] | None = None

    def attach(self, engine: Engine) -> None:
        """Register the fill on ``Events.STARTED``.

        Args:
            engine: the trainer.
        """
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: SupervisedTrainer) -> None:
        """Fill the cache with ``engine.network`` on ``engine.state.device``, then release the frozen weights.

        Args:
            engine: the trainer.
        """
        items = self.data
        if is_distributed():
            items = items[dist.get_rank() :: dist.get_world_size()]
        self.report = self.cache.fill(
            items,
            self.transform,
            engine.network,
            device=engine.state.device,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            image_key=self.image_key,
            progress=self.progress,
        )
        if is_distributed():
            dist.barrier()
        release = getattr(unwrap(engine.network), "release_frozen_backbone", None)
        if self.release_backbone and release is not None:
            self.released = release(self.snapshot_dir)
