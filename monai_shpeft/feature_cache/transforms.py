"""Read FPT's preloaded frozen features in place of the high-resolution image."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTrait, Transform

from monai_shpeft.feature_cache.store import FeatureCacheError, FrozenFeatureCache, item_source

__all__ = ["LoadFrozenFeatures", "LoadFrozenFeaturesd"]


class LoadFrozenFeatures(Transform):
    """Replace a preprocessed high-resolution image by its cached frozen features ``[L, 2, n, D]``.

    With ``source`` (the image's file) the key is the file's content, as when the cache was filled from the same
    items; without it, the preprocessed values themselves. A changed file or setting gives another key and
    therefore a miss, never stale features.

    Args:
        cache: the filled cache.

    Raises:
        FeatureCacheError: (when called) when the image's features are not in the cache.
    """

    def __init__(self, cache: FrozenFeatureCache) -> None:
        self.cache = cache

    def __call__(self, img: torch.Tensor, source: str | None = None) -> torch.Tensor:
        """Look the image up.

        Args:
            img: the preprocessed high-resolution image.
            source: the image's file: its content is the key, and it is named in the error on a miss.

        Returns:
            the cached features, in the cache's storage dtype (float16 for an int8 cache, dequantised here).
        """
        features = self.cache.get(img, source)
        if features is None:
            where = f"'{source}'" if source else "an image"
            key = self.cache.key(img, source)[:12]
            raise FeatureCacheError(
                f"No preloaded FPT features for {where} in '{self.cache.root}' (key {key}): "
                "the cache was not filled for this image or these settings. Fill it first (FeaturePreloadHandler, "
                "or FrozenFeatureCache.fill with the same preprocessing), or train without preloading."
            )
        return features


class LoadFrozenFeaturesd(MapTransform, RandomizableTrait):
    """Dictionary version of :class:`LoadFrozenFeatures`.

    It carries MONAI's ``RandomizableTrait`` (it is not random) because that trait is how ``CacheDataset`` and
    ``PersistentDataset`` know to stop caching: the feature cache is filled when training starts, after those datasets
    are built, and is itself the persistent store, so this lookup must run on every access.

    Args:
        keys: keys of the high-resolution images to replace by their features.
        cache: the filled cache.
        source_key: item key holding the image's file (its content keys the entry; the bundles copy it to
            ``image_path``); the image's meta data is used otherwise.
        allow_missing_keys: don't raise when a key is absent.
    """

    def __init__(
        self,
        keys: KeysCollection,
        cache: FrozenFeatureCache,
        source_key: str | None = "image_path",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadFrozenFeatures(cache)
        self.source_key = source_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key], source=item_source(d, key, self.source_key))
        return d
