"""FPT's frozen-feature preloading (FPT Sec. 2.5): a content-keyed disk cache and the transform that reads it.

The frozen branch sees the un-augmented high-resolution image, so its key/value features are computed once
(:meth:`FrozenFeatureCache.fill`, run by :class:`~monai_shpeft.handlers.FeaturePreloadHandler`) and read back by
:class:`LoadFrozenFeaturesd` in place of the image.
"""

from __future__ import annotations

from monai_shpeft.feature_cache.quantize import dequantize_int8, quantize_int8
from monai_shpeft.feature_cache.store import (
    FEATURE_CACHE_VERSION,
    FeatureCacheError,
    FrozenFeatureCache,
    batch_sources,
    describe_transforms,
    feature_cache_for,
    item_source,
)
from monai_shpeft.feature_cache.transforms import LoadFrozenFeatures, LoadFrozenFeaturesd

__all__ = [
    "FEATURE_CACHE_VERSION",
    "FeatureCacheError",
    "FrozenFeatureCache",
    "LoadFrozenFeatures",
    "LoadFrozenFeaturesd",
    "batch_sources",
    "dequantize_int8",
    "describe_transforms",
    "feature_cache_for",
    "item_source",
    "quantize_int8",
]
