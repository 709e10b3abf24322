"""Disk cache of FPT's frozen features, so that training never runs the frozen backbone (FPT Sec. 2.5).

The frozen branch sees the un-augmented high-resolution image, so its key/value features of an image never change
during training: they are computed once (:meth:`FrozenFeatureCache.fill`, with a progress bar) and read back by
:class:`~monai_shpeft.feature_cache.LoadFrozenFeaturesd`.

An entry is keyed by the image's content: the SHA-256 of its source file's bytes when the file is known (the
bundles' items always name it), else of the preprocessed tensor's values. The key lives inside a namespace that is
the SHA-256 of everything else the features depend on: the backbone's name and a hash of all its weights, the
resolution, the token ratio, the feature shape, a description of the deterministic preprocessing (when given), the
storage dtype and the cache format version. A stale entry can therefore never be read; it is simply not found.
Entries are ``.safetensors`` files written atomically.

Why not always the tensor: the same file preprocessed in a DataLoader worker (one thread) and in ``CacheDataset``'s
thread pool can differ in the last bits of an anti-aliased resize, so a bit-exact tensor hash misses entries that
are valid; a real BUSI run showed it. The file's bytes do not depend on where the preprocessing ran.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from monai_shpeft.errors import InputError
from monai_shpeft.feature_cache.quantize import dequantize_int8, quantize_int8
from monai_shpeft.utils import atomic_path, atomic_write_json, sha256_of_file

__all__ = [
    "FEATURE_CACHE_VERSION",
    "FeatureCacheError",
    "FrozenFeatureCache",
    "batch_sources",
    "describe_transforms",
    "feature_cache_for",
    "item_source",
]

logger = logging.getLogger(__name__)

FEATURE_CACHE_VERSION = 2
_DTYPES = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16, "int8": torch.int8}
_TENSOR_NAME = "features"
_SCALE_NAME = "scales"  # int8 entries only: one float32 absmax scale per token vector (feature_cache/quantize.py)


class FeatureCacheError(InputError, RuntimeError):
    """A cache entry is missing when it must exist, or is unreadable; the message names the file or image."""


class FrozenFeatureCache:
    """Content-addressed store of per-image frozen features ``[L, 2, n, D]``.

    The object holds only paths and the namespace, so it pickles cheaply into DataLoader workers.

    Args:
        cache_dir: root folder; entries live in ``<cache_dir>/<namespace>/<k[:2]>/<k>.safetensors``.
        identity: everything besides the image the features depend on (see :func:`feature_cache_for`); must include
            ``"feature_shape"``.
        dtype: storage dtype, ``"float16"`` (half the disk and I/O; see docs/fpt.md for its effect on the logits),
            ``"bfloat16"``, ``"float32"`` (exact) or ``"int8"`` (a quarter, plus one float32 scale per token vector;
            read back as float16, see :mod:`~monai_shpeft.feature_cache.quantize`).

    Raises:
        ValueError: on an unknown ``dtype`` or an identity without ``feature_shape``.
    """

    def __init__(self, cache_dir: str | os.PathLike, identity: Mapping[str, Any], dtype: str = "float16") -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"Unknown feature cache dtype {dtype!r}; choose one of {sorted(_DTYPES)}.")
        if "feature_shape" not in identity:
            raise ValueError("The cache identity must include 'feature_shape'.")
        self.dtype_name = dtype
        self.dtype = _DTYPES[dtype]
        self.identity = {**identity, "dtype": dtype, "format_version": FEATURE_CACHE_VERSION}
        self.feature_shape = tuple(int(v) for v in identity["feature_shape"])
        encoded = json.dumps(self.identity, sort_keys=True, default=str).encode()
        self.namespace = hashlib.sha256(encoded).hexdigest()[:16]
        self.root = Path(cache_dir) / self.namespace
        self._digests: dict[tuple[str, int, int], str] = {}

    def key(self, image: torch.Tensor, source: str | os.PathLike | None = None) -> str:
        """Content key of an image: the bytes of its ``source`` file when given, else its preprocessed values.

        Args:
            image: the preprocessed high-resolution image.
            source: the file the image was read from.

        Returns:
            the hex key.

        Raises:
            FeatureCacheError: when ``source`` is given but cannot be read.
        """
        if source is not None:
            return hashlib.sha256(f"{self.namespace}:file:{self._file_digest(source)}".encode()).hexdigest()
        tensor = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
        tensor = tensor.detach().to("cpu", torch.float32).contiguous()
        digest = hashlib.sha256(self.namespace.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    def path(self, key: str) -> Path:
        """File of the entry with content key ``key``."""
        return self.root / key[:2] / f"{key}.safetensors"

    def get(self, image: torch.Tensor, source: str | os.PathLike | None = None) -> torch.Tensor | None:
        """The stored features of ``image`` (read from ``source``), or ``None`` when they are not cached.

        Raises:
            FeatureCacheError: when the entry exists but cannot be read or has the wrong shape.
        """
        path = self.path(self.key(image, source))
        if not path.is_file():
            return None
        try:
            stored = load_file(os.fspath(path))
            features = stored[_TENSOR_NAME]
            scales = stored[_SCALE_NAME] if self.dtype_name == "int8" else None
        except (SafetensorError, KeyError, OSError) as err:
            raise FeatureCacheError(
                f"Feature cache entry '{path}' is unreadable ({err}); the next preloading (or cache.fill) computes it "
                "again."
            ) from err
        wrong = self._wrong_shape(features, scales)
        if wrong:
            raise FeatureCacheError(f"Feature cache entry '{path}' has {wrong}; delete it and fill the cache again.")
        return features if scales is None else dequantize_int8(features, scales)

    def _wrong_shape(self, features: torch.Tensor, scales: torch.Tensor | None) -> str | None:
        """What is wrong with a stored entry's shapes (``None``: nothing)."""
        if tuple(features.shape) != self.feature_shape:
            return f"shape {tuple(features.shape)}, expected {self.feature_shape}"
        if scales is not None and tuple(scales.shape) != (*self.feature_shape[:-1], 1):
            return f"scales of shape {tuple(scales.shape)}, expected {(*self.feature_shape[:-1], 1)}"
        return None

    def put(self, image: torch.Tensor, features: torch.Tensor, source: str | os.PathLike | None = None) -> Path:
        """Store the features of one image (atomically) and return the entry's file.

        Raises:
            ValueError: when ``features`` does not have this cache's feature shape.
        """
        if tuple(features.shape) != self.feature_shape:
            raise ValueError(f"features have shape {tuple(features.shape)}, this cache stores {self.feature_shape}.")
        return self._store(self.key(image, source), features)

    def _store(self, key: str, features: torch.Tensor) -> Path:
        path = self.path(key)
        self._write_manifest()
        if self.dtype_name == "int8":
            values, scales = quantize_int8(features)
            tensors = {_TENSOR_NAME: values, _SCALE_NAME: scales}
        else:  # the layout of the float dtypes is unchanged since FEATURE_CACHE_VERSION 2
            tensors = {_TENSOR_NAME: features.detach().to("cpu", self.dtype).contiguous()}
        with atomic_path(path) as tmp:
            metadata = {"namespace": self.namespace, "sha256": _tensor_digest(*tensors.values())}
            save_file(tensors, os.fspath(tmp), metadata=metadata)
        return path

    def damage(self, path: Path) -> str | None:
        """Why the entry at ``path`` cannot be used (unreadable, wrong shape, bytes not matching their checksum).

        Args:
            path: an entry's file.

        Returns:
            the reason, or ``None`` when the entry is sound. Entries written before checksums were stored are
            checked for readability and shape only.
        """
        try:
            with safe_open(os.fspath(path), "pt") as handle:
                recorded = (handle.metadata() or {}).get("sha256")
                features = handle.get_tensor(_TENSOR_NAME)
                scales = handle.get_tensor(_SCALE_NAME) if self.dtype_name == "int8" else None
        except (SafetensorError, KeyError, OSError, RuntimeError) as err:
            return f"unreadable ({err})"
        wrong = self._wrong_shape(features, scales)
        if wrong:
            return wrong
        if recorded is not None and recorded != _tensor_digest(*(t for t in (features, scales) if t is not None)):
            return "its bytes do not match their checksum"
        return None

    def __contains__(self, image: torch.Tensor) -> bool:
        return self.path(self.key(image)).is_file()

    def _file_digest(self, source: str | os.PathLike) -> str:
        """SHA-256 of a file's bytes, remembered per (path, size, modification time) in this process."""
        path = os.fspath(source)
        try:
            stat = os.stat(path)
        except OSError as err:
            raise FeatureCacheError(f"Cannot read '{path}' to key its FPT features: {err}.") from err
        marker = (path, stat.st_size, stat.st_mtime_ns)
        digest = self._digests.get(marker)
        if digest is None:
            digest = sha256_of_file(path)
            self._digests[marker] = digest
        return digest

    def _usable(self, path: Path) -> bool:
        """Whether the entry exists and is sound; a damaged one is logged, deleted and then computed again."""
        if not path.is_file():
            return False
        reason = self.damage(path)
        if reason is None:
            return True
        logger.warning("FPT feature cache entry %s is damaged (%s): computing it again.", path, reason)
        path.unlink(missing_ok=True)
        return False

    def num_entries(self) -> int:
        """Number of entries in this namespace."""
        return sum(1 for _ in self.root.glob("*/*.safetensors")) if self.root.is_dir() else 0

    def size_bytes(self) -> int:
        """Disk size of this namespace's entries."""
        return sum(p.stat().st_size for p in self.root.glob("*/*.safetensors")) if self.root.is_dir() else 0

    def fill(
        self,
        data: Sequence[Mapping[str, Any]],
        transform: Callable[[Any], Any],
        network: nn.Module,
        device: str | torch.device | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
        image_key: str = "image",
        source_key: str | None = "image_path",
        progress: bool = True,
    ) -> dict[str, float]:
        """Compute and store the features of every item that is not cached yet (or whose entry is damaged).

        Args:
            data: datalist items (``{"image": path, ...}``).
            transform: the deterministic preprocessing whose output ``[image_key]`` the frozen backbone reads; it
                must be the one used before :class:`~monai_shpeft.feature_cache.LoadFrozenFeaturesd` in training.
            network: an :class:`~monai_shpeft.networks.FPTNetwork` (DDP wrappers are unwrapped).
            device: where the frozen backbone runs; by default where its weights are.
            batch_size: images per backbone call.
            num_workers: DataLoader workers for the preprocessing.
            image_key: key of the high-resolution image.
            source_key: key of the image's source file after ``transform`` (the bundles copy it to ``image_path``);
                the image's meta data is used when absent, and its values when neither names a file.
            progress: show a progress bar.

        Returns:
            ``{"items": ..., "cached": ..., "computed": ..., "seconds": ...}``.
        """
        from monai.data import DataLoader, Dataset

        from monai_shpeft.utils import unwrap

        network = unwrap(network)
        if device is None:  # where the frozen branch's weights are (or were, when released)
            extractor = getattr(network, "extractor", None)
            device = getattr(extractor, "device", None) or next(network.parameters()).device
        device = torch.device(device)
        loader = DataLoader(Dataset(list(data), transform), batch_size=batch_size, num_workers=num_workers)
        start = time.perf_counter()
        cached = computed = 0
        batches: Any = loader
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(loader, desc=f"FPT feature preloading ({self.root})", unit="batch")
        for batch in batches:
            images = batch[image_key]
            sources = batch_sources(batch, image_key, source_key, len(images))
            keys = [self.key(image, source) for image, source in zip(images, sources)]
            missing = [i for i, key in enumerate(keys) if not self._usable(self.path(key))]
            cached += len(images) - len(missing)
            if not missing:
                continue
            selected = torch.stack([torch.as_tensor(images[i]) for i in missing]).to(device)
            with torch.no_grad():  # FPTNetwork.frozen_features (networks sit above this package: no import)
                features = cast(Callable[[torch.Tensor], torch.Tensor], network.frozen_features)(selected)
            for index, feature in zip(missing, features):
                self._store(keys[index], feature)
            computed += len(missing)
        seconds = time.perf_counter() - start
        logger.info(
            "FPT feature cache %s: %d items, %d already cached, %d computed in %.1f s (%d entries, %.1f MB on disk).",
            self.root,
            len(data),
            cached,
            computed,
            seconds,
            self.num_entries(),
            self.size_bytes() / 1e6,
        )
        return {"items": float(len(data)), "cached": float(cached), "computed": float(computed), "seconds": seconds}

    def _write_manifest(self) -> None:
        manifest = self.root / "manifest.json"
        if not manifest.is_file():  # a human-readable record of what this namespace holds
            atomic_write_json(manifest, self.identity)


def item_source(item: Mapping[Any, Any], image_key: str = "image", source_key: str | None = "image_path") -> str | None:
    """The file an item's image was read from: ``item[source_key]``, else the image's ``filename_or_obj`` meta."""
    source = item.get(source_key) if source_key else None
    if source is None:
        meta = getattr(item.get(image_key), "meta", None) or {}
        source = meta.get("filename_or_obj")
    return None if source is None or source == "" else str(source)


def _tensor_digest(*tensors: torch.Tensor) -> str:
    """SHA-256 of tensors' bytes, one after the other (their dtypes and shapes are checked separately)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def batch_sources(batch: Mapping[str, Any], image_key: str, source_key: str | None, size: int) -> list[str | None]:
    """Per-item source files of a collated batch (``None`` where unknown)."""
    sources = batch.get(source_key) if source_key else None
    if sources is None:
        meta = getattr(batch.get(image_key), "meta", None) or {}
        sources = meta.get("filename_or_obj")
    if sources is None or isinstance(sources, str) or len(sources) != size:
        return [None] * size
    return [None if s is None or s == "" else str(s) for s in sources]


def describe_transforms(transforms: Sequence[Any] | None) -> list[dict[str, Any]] | None:
    """A JSON-able description of deterministic transforms (class and simple settings), for the cache namespace.

    Nested helper objects (e.g. MONAI's ``Resized.resizer``) are described one level deep; values that are not
    numbers, strings, booleans or tuples/lists of them are left out.
    """
    if transforms is None:
        return None

    def simple(value: Any) -> bool:
        if isinstance(value, (list, tuple)):
            return all(simple(v) for v in value)
        return value is None or isinstance(value, (bool, int, float, str))

    def settings(obj: Any, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in sorted(vars(obj).items()) if hasattr(obj, "__dict__") else []:
            if name.startswith("_"):
                continue
            if simple(value):
                out[name] = list(value) if isinstance(value, tuple) else value
            elif depth > 0 and hasattr(value, "__dict__") and not isinstance(value, (torch.Tensor, nn.Module)):
                out[name] = {"class": type(value).__qualname__, **settings(value, depth - 1)}
        return out

    return [{"class": f"{type(t).__module__}.{type(t).__qualname__}", **settings(t, 1)} for t in transforms]


def feature_cache_for(
    network: nn.Module,
    cache_dir: str | os.PathLike,
    dtype: str = "float16",
    preprocessing: Sequence[Any] | None = None,
) -> FrozenFeatureCache:
    """The cache of ``network``'s frozen features: its identity is the frozen backbone's name, weights and settings.

    Args:
        network: an :class:`~monai_shpeft.networks.FPTNetwork` (DDP wrappers are unwrapped).
        cache_dir: root folder of the cache.
        dtype: storage dtype (see :class:`FrozenFeatureCache`).
        preprocessing: the deterministic transforms that make the frozen branch's image; their description joins
            the namespace, so changing e.g. a DICOM window or the scaling gives a new, empty cache.

    Returns:
        the cache.

    Raises:
        TypeError: when ``network`` has no frozen FPT branch.
    """
    from monai_shpeft.utils import unwrap

    network = unwrap(network)
    extractor = getattr(network, "extractor", None)
    if extractor is None or not hasattr(extractor, "fingerprint"):
        raise TypeError(f"{type(network).__name__} has no frozen FPT branch; feature preloading needs an FPTNetwork.")
    identity = {
        "backbone": extractor.backbone_name,
        "weights_sha256": extractor.fingerprint(),
        "image_size": extractor.image_size,
        "token_ratio": extractor.token_ratio,
        "feature_shape": list(extractor.feature_shape),
        "preprocessing": describe_transforms(preprocessing),
    }
    return FrozenFeatureCache(cache_dir, identity, dtype)
