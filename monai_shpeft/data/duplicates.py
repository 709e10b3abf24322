"""Exact and near-duplicate images, and the duplicates that leak across the parts of a split.

Two images are

* **exact duplicates** when their decoded pixels are identical (a SHA-256 of the pixel array, so the same image
  saved twice with other metadata or another PNG compression level still matches; byte-identical files always do);
* **near duplicates** when the difference hashes of their small grey thumbnails differ in at most ``threshold``
  bits (re-encoded JPEGs, the same frame with or without calipers, neighbouring frames of one sweep).

Duplicates are grouped into clusters (connected components, with a union-find) and a split is checked for
clusters whose members sit in different parts: a model then meets a test image, or its near copy, in training.
``stratified_split(..., groups=...)`` keeps each cluster in one part.

Hashing reads each file once: PNG / JPEG / BMP / TIFF with PIL, anything else (DICOM, NIfTI, whole-slide images)
with :class:`~monai_shpeft.transforms.LoadMedicalImage`, which is also the fallback when PIL fails. Results can be
cached per file (keyed on its size and modification time), so a second check of a large dataset is instant.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from monai_shpeft.utils import atomic_write_json

__all__ = [
    "DEFAULT_HASH_SIZE",
    "DEFAULT_THRESHOLD",
    "DUPLICATE_MODES",
    "DuplicateIndex",
    "DuplicatePair",
    "DuplicateReport",
    "ImageFingerprint",
    "check_duplicate_mode",
    "difference_hash",
    "find_cross_split_duplicates",
    "find_duplicates",
    "fingerprint_image",
    "fingerprint_images",
    "near_duplicate_pairs",
]

logger = logging.getLogger(__name__)

#: what ``prepare_datalist(duplicates=...)`` may do with duplicates
DUPLICATE_MODES: tuple[str, ...] = ("ignore", "report", "keep_together")
#: side of the difference-hash thumbnail: ``hash_size ** 2`` bits (256)
DEFAULT_HASH_SIZE = 16
#: largest Hamming distance (of 256 bits) between near duplicates. On BUSI the pairs within 32 bits that we looked at
#: were all the same scan (re-saved, with calipers, or a neighbouring frame); the closest unrelated pair seen was 55
#: bits apart (see benchmarks/busi_duplicates.py).
DEFAULT_THRESHOLD = 32
PARTS = ("training", "validation", "test")
_CACHE_VERSION = 1
#: files PIL must not open: DICOM and NIfTI it cannot read, whole-slide images it would read at full resolution
_LOADER_SUFFIXES = (".dcm", ".dicom", ".dic", ".nii", ".nii.gz", ".svs", ".ndpi", ".scn", ".mrxs")
_PROGRESS_FROM = 256  # fewer images hash in seconds: no progress bar
_POPCOUNT = np.array([bin(value).count("1") for value in range(256)], dtype=np.uint8)


def check_duplicate_mode(mode: str) -> str:
    """Return ``mode`` if it is one of :data:`DUPLICATE_MODES`.

    Raises:
        ValueError: naming the modes otherwise.
    """
    if mode not in DUPLICATE_MODES:
        raise ValueError(f"duplicates must be one of {list(DUPLICATE_MODES)}, got {mode!r}.")
    return mode


# ---------------------------------------------------------------------------------------------------- hashing
@dataclass(frozen=True)
class ImageFingerprint:
    """What duplicate detection knows of one file.

    Args:
        path: the file, as listed.
        file_sha256: SHA-256 of the file's bytes.
        pixel_sha256: SHA-256 of the decoded pixels (with their dtype and shape); empty if the file is unreadable.
        dhash: the difference hash as hex; empty if the file is unreadable.
        shape: shape of the decoded pixel array.
        error: why the file could not be decoded (then only byte-identical copies are found).
    """

    path: str
    file_sha256: str
    pixel_sha256: str
    dhash: str
    shape: tuple[int, ...] = ()
    error: str = ""

    @property
    def exact_key(self) -> str:
        """Equal for exact duplicates: the pixel hash, or the file hash of an unreadable file."""
        return self.pixel_sha256 or f"file:{self.file_sha256}"


def _canonical_pixels(array: np.ndarray, alpha: bool = False) -> np.ndarray:
    """The same picture as the same array: opaque alpha dropped, grey RGB as one channel, little-endian.

    Args:
        array: ``[H, W]`` or channels-last pixels.
        alpha: whether the last channel is an alpha channel (PIL's ``LA`` / ``RGBA`` modes).
    """
    if alpha and array.ndim == 3 and np.issubdtype(array.dtype, np.integer):
        if int(array[..., -1].min()) == np.iinfo(array.dtype).max:
            array = array[..., :-1]
    if array.ndim == 3 and array.shape[-1] == 3 and (array[..., 0] == array[..., 1]).all():
        if (array[..., 0] == array[..., 2]).all():
            array = array[..., :1]
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))


def _read_with_pil(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (``[H, W]`` or ``[H, W, C]``) and the 2-D grey plane of a raster image."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        if image.mode in ("P", "PA"):  # a palette PNG and its RGB twin hold the same picture
            image = image.convert("RGBA")
        elif image.mode == "1":
            image = image.convert("L")
        pixels = _canonical_pixels(np.asarray(image), alpha=image.mode in ("LA", "RGBA"))
    return pixels, pixels


def _read_with_loader(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of any format the package reads (``[C, *spatial]``) and its middle frame's grey plane."""
    from monai.utils import convert_to_numpy

    from monai_shpeft.transforms import LoadMedicalImage, SelectFrame

    image = LoadMedicalImage(dtype=None)(path)
    frame = SelectFrame("middle")(image) if image.ndim == 4 else image
    # channels last, as PIL gives them, so that one canonical form serves both readers
    pixels = np.moveaxis(convert_to_numpy(image), 0, -1)
    return _canonical_pixels(pixels), np.moveaxis(convert_to_numpy(frame), 0, -1)


def _decode(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Read ``path`` with PIL (it recognises raster images by content), else with LoadMedicalImage.

    Importing the package's loader costs seconds (MONAI's transforms), so PNG/JPEG datasets never need it.
    """
    if not path.lower().endswith(_LOADER_SUFFIXES):
        try:
            return _read_with_pil(path)
        except Exception as error:  # noqa: BLE001 - DICOM without a suffix, or what MONAI's readers still read
            logger.debug("PIL cannot read %s (%s); trying LoadMedicalImage.", path, error)
    return _read_with_loader(path)


def difference_hash(pixels: np.ndarray, hash_size: int = DEFAULT_HASH_SIZE) -> str:
    """The difference hash of an image: is each thumbnail pixel brighter than its left neighbour?

    The image is made grey (mean of its channels) and box-averaged to ``hash_size`` rows of ``hash_size + 1``
    columns, so the hash ignores size, compression noise and any increasing brightness/contrast change.

    Args:
        pixels: ``[H, W]`` or ``[H, W, C]`` array of any numeric dtype.
        hash_size: thumbnail side; the hash has ``hash_size ** 2`` bits.

    Returns:
        the bits as a hex string (``hash_size ** 2 / 4`` characters, rounded up to whole bytes).

    Raises:
        ValueError: if ``pixels`` is not a 2-D image or ``hash_size`` is below 2.
    """
    from PIL import Image

    if hash_size < 2:
        raise ValueError(f"hash_size must be at least 2, got {hash_size}.")
    if pixels.ndim == 3:
        grey = pixels.mean(axis=-1, dtype=np.float32)
    elif pixels.ndim == 2:
        grey = pixels.astype(np.float32)
    else:
        raise ValueError(f"a difference hash needs a 2-D image ([H, W] or [H, W, C]), got shape {pixels.shape}.")
    grey = np.nan_to_num(np.ascontiguousarray(grey), nan=0.0, posinf=0.0, neginf=0.0)
    thumbnail = np.asarray(Image.fromarray(grey).resize((hash_size + 1, hash_size), Image.Resampling.BOX))
    return np.packbits(thumbnail[:, 1:] > thumbnail[:, :-1]).tobytes().hex()


def fingerprint_image(path: str | os.PathLike, hash_size: int = DEFAULT_HASH_SIZE) -> ImageFingerprint:
    """Hash one file: its bytes, its decoded pixels and its difference hash.

    Args:
        path: the image file.
        hash_size: difference-hash thumbnail side.

    Returns:
        the fingerprint; a file that cannot be decoded gets empty pixel and difference hashes and its ``error``.

    Raises:
        OSError: if the file cannot be read at all (missing, no permission).
    """
    name = os.fspath(path)
    file_sha256 = hashlib.sha256(Path(name).read_bytes()).hexdigest()
    try:
        pixels, plane = _decode(name)
        digest = hashlib.sha256(f"{pixels.dtype.str}{pixels.shape}".encode())
        digest.update(pixels.tobytes())
        return ImageFingerprint(name, file_sha256, digest.hexdigest(), difference_hash(plane, hash_size), pixels.shape)
    except Exception as error:  # noqa: BLE001 - an unreadable image is reported, and its training read will fail
        return ImageFingerprint(name, file_sha256, "", "", (), f"{type(error).__name__}: {error}"[:300])


def _file_stamp(path: str) -> list[int]:
    stat = os.stat(path)
    return [stat.st_size, stat.st_mtime_ns]


def _load_cache(cache_file: Path | None, hash_size: int) -> dict[str, dict]:
    if cache_file is None or not cache_file.is_file():
        return {}
    try:
        content = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # a broken cache only costs the time to hash again
        return {}
    if content.get("version") != _CACHE_VERSION or content.get("hash_size") != hash_size:
        return {}
    return dict(content.get("entries", {}))


def fingerprint_images(
    paths: Sequence[str | os.PathLike],
    hash_size: int = DEFAULT_HASH_SIZE,
    cache_file: str | os.PathLike | None = None,
    num_workers: int | None = None,
    progress: bool = True,
) -> list[ImageFingerprint]:
    """Hash many files, in threads (decoding releases the GIL), reusing and updating a cache.

    Args:
        paths: the image files.
        hash_size: difference-hash thumbnail side.
        cache_file: a JSON file of earlier fingerprints, keyed on each file's absolute path, size and modification
            time; written back when anything new was hashed. ``None``: no cache.
        num_workers: threads; ``None`` is ``min(4, CPU count)``.
        progress: show a progress bar (for 256 images or more).

    Returns:
        one fingerprint per path, in order.
    """
    names = [os.fspath(p) for p in paths]
    cache_path = Path(cache_file) if cache_file is not None else None
    cache = _load_cache(cache_path, hash_size)
    results: list[ImageFingerprint | None] = [None] * len(names)
    todo: list[int] = []
    for index, name in enumerate(names):
        entry = cache.get(str(Path(name).resolve()))
        if entry is not None and entry.get("stamp") == _file_stamp(name):
            fields = {k: v for k, v in entry.items() if k != "stamp"}
            results[index] = ImageFingerprint(path=name, **{**fields, "shape": tuple(fields.get("shape", ()))})
        else:
            todo.append(index)
    if todo:
        workers = num_workers if num_workers is not None else min(4, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            computed: Any = pool.map(lambda i: fingerprint_image(names[i], hash_size), todo)
            if progress and len(todo) >= _PROGRESS_FROM:
                from tqdm.auto import tqdm

                computed = tqdm(computed, total=len(todo), desc="hashing images for duplicates", unit="image")
            for index, fingerprint in zip(todo, computed):
                results[index] = fingerprint
        if cache_path is not None:
            for index in todo:
                entry = asdict(results[index])  # type: ignore[arg-type]
                entry.pop("path")
                cache[str(Path(names[index]).resolve())] = {**entry, "stamp": _file_stamp(names[index])}
            atomic_write_json(cache_path, {"version": _CACHE_VERSION, "hash_size": hash_size, "entries": cache}, 0)
    return [r for r in results if r is not None]


# ---------------------------------------------------------------------------------------------------- pairs
def _popcount(words: np.ndarray) -> np.ndarray:
    """Set bits per element of a uint64 array (numpy >= 2 has it built in)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(words)
    return _POPCOUNT[words.view(np.uint8)].reshape(*words.shape, 8).sum(-1)


def near_duplicate_pairs(hashes: Sequence[str], threshold: int, progress: bool = False) -> list[tuple[int, int, int]]:
    """All pairs of hashes within ``threshold`` bits of each other.

    Every pair is compared (blockwise, vectorised: 10,000 images take seconds), so nothing is missed the way
    bucketing schemes can miss pairs.

    Args:
        hashes: hex hashes of equal length; empty strings (unreadable images) match nothing.
        threshold: largest Hamming distance that counts as a near duplicate.
        progress: show a progress bar over the blocks.

    Returns:
        ``(i, j, distance)`` with ``i < j``, sorted.
    """
    valid = [i for i, h in enumerate(hashes) if h]
    if len(valid) < 2:
        return []
    raw = np.stack([np.frombuffer(bytes.fromhex(hashes[i]), dtype=np.uint8) for i in valid])
    padded = np.zeros((len(valid), -(-raw.shape[1] // 8) * 8), dtype=np.uint8)
    padded[:, : raw.shape[1]] = raw
    words = padded.view(np.uint64)
    count, width = words.shape
    rows = max(1, (1 << 22) // (count * width))  # about 32 MB of XORs per block
    starts: Any = range(0, count, rows)
    if progress and count >= _PROGRESS_FROM * 8:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="comparing hashes", unit="block")
    pairs: list[tuple[int, int, int]] = []
    for start in starts:
        stop = min(count, start + rows)
        distance = _popcount(words[start:stop, None, :] ^ words[None, start:, :]).sum(-1)
        first, second = np.nonzero(distance <= threshold)
        for a, b in zip(first.tolist(), second.tolist()):
            if start + a < start + b:  # the block's own diagonal and lower triangle are skipped
                pairs.append((valid[start + a], valid[start + b], int(distance[a, b])))
    return sorted(pairs)


class _UnionFind:
    """Disjoint sets over ``0..n-1`` with path halving; the smaller index is the root."""

    def __init__(self, size: int) -> None:
        self.parent = list(range(size))

    def find(self, index: int) -> int:
        while self.parent[index] != index:
            self.parent[index] = self.parent[self.parent[index]]
            index = self.parent[index]
        return index

    def union(self, first: int, second: int) -> None:
        a, b = self.find(first), self.find(second)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


@dataclass(frozen=True)
class DuplicatePair:
    """Two images that are duplicates of each other.

    Args:
        first: index of the first image in the index.
        second: index of the second image (larger than ``first``).
        distance: Hamming distance of their difference hashes (0 for exact duplicates).
        exact: whether their pixels are identical.
    """

    first: int
    second: int
    distance: int
    exact: bool


# ---------------------------------------------------------------------------------------------------- index
@dataclass
class DuplicateIndex:
    """Duplicate clusters among a set of images; see :func:`find_duplicates`.

    Args:
        fingerprints: one per image, in the order given.
        threshold: the near-duplicate Hamming threshold used.
        hash_size: the difference-hash thumbnail side used.
        pairs: every duplicate pair (exact and near).
        clusters: image indices of each cluster of two or more images, sorted; clusters ordered by first member.
    """

    fingerprints: list[ImageFingerprint]
    threshold: int
    hash_size: int
    pairs: list[DuplicatePair]
    clusters: list[list[int]]
    _position: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._position = {f.path: i for i, f in enumerate(self.fingerprints)}

    @property
    def paths(self) -> list[str]:
        """The images, in order."""
        return [f.path for f in self.fingerprints]

    def cluster_kind(self, cluster: Sequence[int]) -> str:
        """``"exact"`` if every member has the same pixels, else ``"near"``."""
        return "exact" if len({self.fingerprints[i].exact_key for i in cluster}) == 1 else "near"

    @property
    def exact_clusters(self) -> list[list[int]]:
        """Sets of two or more images with identical pixels (inside a near cluster or on their own)."""
        by_key: dict[str, list[int]] = {}
        for index, fingerprint in enumerate(self.fingerprints):
            by_key.setdefault(fingerprint.exact_key, []).append(index)
        return sorted(members for members in by_key.values() if len(members) > 1)

    @property
    def unreadable(self) -> list[str]:
        """Files that could not be decoded (compared by their bytes only)."""
        return [f.path for f in self.fingerprints if f.error]

    def group_ids(self, paths: Sequence[str | os.PathLike]) -> list[int | None]:
        """The cluster of each path, for ``stratified_split(groups=...)``.

        Args:
            paths: images of this index.

        Returns:
            the cluster number of each path, ``None`` for images without a duplicate.

        Raises:
            KeyError: for a path that is not in the index.
        """
        cluster_of = {member: number for number, cluster in enumerate(self.clusters) for member in cluster}
        return [cluster_of.get(self._index_of(p)) for p in paths]

    def _index_of(self, path: str | os.PathLike) -> int:
        name = os.fspath(path)
        if name not in self._position:
            raise KeyError(f"{name} is not among the {len(self.fingerprints)} images of this duplicate index.")
        return self._position[name]

    def report(self, split: Mapping[str, Sequence[Mapping[str, Any]]], mode: str = "report") -> DuplicateReport:
        """Which clusters and pairs span more than one part of ``split``.

        Args:
            split: ``{"training": items, "validation": items, "test": items}`` of ``{"image", "label"}`` items whose
                images are in this index (images of the index outside the split are left out).
            mode: what was done about duplicates (``"report"``, ``"keep_together"``), or ``"official"`` for a
                dataset's given split that cannot be rearranged; quoted in the report.

        Returns:
            the report.

        Raises:
            KeyError: for an item whose image is not in the index.
        """
        part_of: dict[int, str] = {}
        label_of: dict[int, Any] = {}
        listed_twice: list[dict[str, Any]] = []
        for part, items in split.items():
            for item in items:
                index = self._index_of(item["image"])
                if index in part_of:  # the same file in two places is the plainest leak of all
                    listed_twice.append({"image": self.fingerprints[index].path, "parts": [part_of[index], part]})
                    continue
                part_of[index] = part
                label_of[index] = item.get("label")
        cluster_of = {member: number for number, cluster in enumerate(self.clusters) for member in cluster}
        largest = [0] * len(self.clusters)
        for pair in self.pairs:
            if pair.first in part_of and pair.second in part_of:
                number = cluster_of[pair.first]
                largest[number] = max(largest[number], pair.distance)
        clusters = []
        for number, cluster in enumerate(self.clusters):
            members = [i for i in cluster if i in part_of]
            if len(members) < 2:
                continue
            clusters.append(
                {
                    "kind": self.cluster_kind(members),
                    "max_distance": largest[number],
                    "parts": sorted({part_of[i] for i in members}, key=_part_order),
                    "labels": sorted({label_of[i] for i in members}, key=str),
                    "members": [
                        {"image": self.fingerprints[i].path, "part": part_of[i], "label": label_of[i]} for i in members
                    ],
                }
            )
        cross_pairs = [
            {
                "images": [self.fingerprints[p.first].path, self.fingerprints[p.second].path],
                "parts": [part_of[p.first], part_of[p.second]],
                "labels": [label_of[p.first], label_of[p.second]],
                "distance": p.distance,
                "exact": p.exact,
            }
            for p in self.pairs
            if p.first in part_of and p.second in part_of and part_of[p.first] != part_of[p.second]
        ]
        exact_groups = [[i for i in group if i in part_of] for group in self.exact_clusters]
        return DuplicateReport(
            mode=mode,
            images=len(part_of),
            threshold=self.threshold,
            hash_bits=self.hash_size**2,
            exact_clusters=sum(1 for group in exact_groups if len(group) > 1),
            clusters=clusters,
            cross_split_pairs=cross_pairs,
            unreadable=[self.fingerprints[i].path for i in part_of if self.fingerprints[i].error],
            listed_twice=listed_twice,
        )


def _part_order(part: str) -> tuple[int, str]:
    return (PARTS.index(part) if part in PARTS else len(PARTS), part)


def find_duplicates(
    images: Sequence[str | os.PathLike],
    threshold: int = DEFAULT_THRESHOLD,
    hash_size: int = DEFAULT_HASH_SIZE,
    cache_file: str | os.PathLike | None = None,
    num_workers: int | None = None,
    progress: bool = True,
) -> DuplicateIndex:
    """Find exact and near-duplicate images and group them into clusters.

    Args:
        images: image files (any format :class:`~monai_shpeft.transforms.LoadMedicalImage` reads); a path listed
            more than once is hashed once.
        threshold: largest Hamming distance between the ``hash_size ** 2``-bit difference hashes of near
            duplicates; ``-1`` finds exact duplicates only.
        hash_size: difference-hash thumbnail side (16: 256 bits).
        cache_file: JSON cache of fingerprints (see :func:`fingerprint_images`).
        num_workers: hashing threads.
        progress: show progress bars for large sets.

    Returns:
        the clusters, their pairs and every image's fingerprint.

    Raises:
        ValueError: if ``threshold`` is below -1.
    """
    if threshold < -1:
        raise ValueError(f"threshold must be -1 (exact duplicates only) or a number of bits >= 0, got {threshold}.")
    unique = list(dict.fromkeys(os.fspath(p) for p in images))  # a path listed twice is one image
    fingerprints = fingerprint_images(unique, hash_size, cache_file, num_workers, progress)
    keys = [f.exact_key for f in fingerprints]
    pairs = {
        (i, j): DuplicatePair(i, j, d, keys[i] == keys[j])
        for i, j, d in near_duplicate_pairs([f.dhash for f in fingerprints], threshold, progress)
    }
    by_key: dict[str, list[int]] = {}
    for index, key in enumerate(keys):
        by_key.setdefault(key, []).append(index)
    for members in by_key.values():  # identical files that cannot be decoded have no hash to compare
        for position, i in enumerate(members):
            for j in members[position + 1 :]:
                pairs.setdefault((i, j), DuplicatePair(i, j, 0, True))
    links = _UnionFind(len(fingerprints))
    for pair in pairs.values():
        links.union(pair.first, pair.second)
    components: dict[int, list[int]] = {}
    for index in range(len(fingerprints)):
        components.setdefault(links.find(index), []).append(index)
    clusters = sorted(members for members in components.values() if len(members) > 1)
    return DuplicateIndex(fingerprints, threshold, hash_size, sorted(pairs.values(), key=_pair_key), clusters)


def _pair_key(pair: DuplicatePair) -> tuple[int, int]:
    return (pair.first, pair.second)


# ---------------------------------------------------------------------------------------------------- report
@dataclass
class DuplicateReport:
    """Duplicates within a split, and those that cross its parts.

    Args:
        mode: ``"report"``, ``"keep_together"`` or ``"official"`` (a given split, not rearranged).
        images: images in the split.
        threshold: near-duplicate Hamming threshold.
        hash_bits: bits of the difference hash.
        exact_clusters: sets of images with identical pixels.
        clusters: every cluster (exact or near) as ``{"kind", "max_distance", "parts", "labels", "members"}``.
        cross_split_pairs: duplicate pairs whose images lie in different parts.
        unreadable: files that could not be decoded.
        listed_twice: files the split lists more than once, with the parts that list them.
    """

    mode: str
    images: int
    threshold: int
    hash_bits: int
    exact_clusters: int
    clusters: list[dict[str, Any]]
    cross_split_pairs: list[dict[str, Any]]
    unreadable: list[str] = field(default_factory=list)
    listed_twice: list[dict[str, Any]] = field(default_factory=list)

    @property
    def cross_split_clusters(self) -> list[dict[str, Any]]:
        """Clusters with members in more than one part: the leaks."""
        return [c for c in self.clusters if len(c["parts"]) > 1]

    @property
    def label_conflicts(self) -> list[dict[str, Any]]:
        """Clusters whose members carry different labels (the same picture filed under two classes)."""
        return [c for c in self.clusters if len(c["labels"]) > 1]

    def counts(self) -> dict[str, int]:
        """The figures of the report."""
        cross = self.cross_split_clusters
        return {
            "images": self.images,
            "exact_clusters": self.exact_clusters,
            "near_clusters": sum(1 for c in self.clusters if c["kind"] == "near"),
            "clusters": len(self.clusters),
            "images_in_clusters": sum(len(c["members"]) for c in self.clusters),
            "cross_split_clusters": len(cross),
            "cross_split_exact_clusters": sum(1 for c in cross if c["kind"] == "exact"),
            "cross_split_near_clusters": sum(1 for c in cross if c["kind"] == "near"),
            "cross_split_pairs": len(self.cross_split_pairs),
            "cross_split_exact_pairs": sum(1 for p in self.cross_split_pairs if p["exact"]),
            "images_in_cross_split_clusters": sum(len(c["members"]) for c in cross),
            "label_conflicts": len(self.label_conflicts),
            "unreadable": len(self.unreadable),
            "listed_twice": len(self.listed_twice),
        }

    def _criterion(self) -> str:
        if self.threshold < 0:
            return "identical decoded pixels only"
        return (
            f"identical decoded pixels (SHA-256), or {self.hash_bits}-bit difference hashes of grey thumbnails "
            f"within {self.threshold} bits"
        )

    def advice(self) -> str:
        """What to do about the leaks, given the mode."""
        if not self.cross_split_clusters and not self.listed_twice:
            return "no duplicate crosses the split."
        if self.mode == "official":
            return "the dataset's official split cannot be rearranged: duplicates are reported only."
        if self.mode == "keep_together":
            return "some clusters could not be kept in one part."
        return "pass duplicates='keep_together' (bundles: --duplicates keep_together) for a split without them."

    def summary(self, max_pairs: int = 5) -> str:
        """A readable account: counts, the parts the leaks connect, and the first few pairs.

        Args:
            max_pairs: cross-split pairs listed by name.

        Returns:
            a few lines of text.
        """
        counts = self.counts()
        between = Counter(" / ".join(sorted(p["parts"], key=_part_order)) for p in self.cross_split_pairs)
        lines = [
            f"Duplicates among {counts['images']} images ({self._criterion()}): {counts['exact_clusters']} exact "
            "cluster(s), "
            f"{counts['near_clusters']} near-duplicate cluster(s), {counts['images_in_clusters']} images in "
            f"{counts['clusters']} cluster(s); {counts['label_conflicts']} cluster(s) mix labels.",
            f"Crossing the split: {counts['cross_split_clusters']} cluster(s) ({counts['cross_split_exact_clusters']} "
            f"exact, {counts['cross_split_near_clusters']} near), {counts['cross_split_pairs']} pair(s)"
            + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(between.items()))})" if between else "")
            + f"; {self.advice()}",
        ]
        for pair in self.cross_split_pairs[:max_pairs]:
            first, second = pair["images"]
            kind = "identical" if pair["exact"] else f"{pair['distance']} bits apart"
            lines.append(f"  {first} ({pair['parts'][0]}) ~ {second} ({pair['parts'][1]}): {kind}")
        if 0 < max_pairs < len(self.cross_split_pairs):
            lines.append(f"  ... and {len(self.cross_split_pairs) - max_pairs} more pair(s)")
        if self.listed_twice:
            lines.append(f"{len(self.listed_twice)} file(s) listed more than once, e.g. {self.listed_twice[0]}.")
        if self.unreadable:
            lines.append(f"{len(self.unreadable)} file(s) could not be decoded and were compared by bytes only.")
        return "\n".join(lines)

    def to_record(self) -> dict[str, Any]:
        """A JSON-serialisable record: method, counts, every cluster and the cross-split pairs."""
        return {
            "mode": self.mode,
            "method": f"{self._criterion()}; clusters: connected components of duplicate pairs",
            "threshold": self.threshold,
            "hash_bits": self.hash_bits,
            **self.counts(),
            "advice": self.advice(),
            "clusters": self.clusters,
            "cross_split_pairs": self.cross_split_pairs,
            "unreadable": self.unreadable,
            "listed_twice": self.listed_twice,
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_record` as JSON, atomically."""
        atomic_write_json(path, self.to_record())


def find_cross_split_duplicates(
    split: Mapping[str, Sequence[Mapping[str, Any]]],
    threshold: int = DEFAULT_THRESHOLD,
    hash_size: int = DEFAULT_HASH_SIZE,
    mode: str = "report",
    cache_file: str | os.PathLike | None = None,
    num_workers: int | None = None,
    progress: bool = True,
) -> DuplicateReport:
    """Hash every image of a split and report the duplicate clusters that span its parts.

    Args:
        split: ``{"training": items, "validation": items, "test": items}`` (a datalist).
        threshold: near-duplicate Hamming threshold (``-1``: exact duplicates only).
        hash_size: difference-hash thumbnail side.
        mode: quoted in the report (``"official"`` for a split that cannot be changed).
        cache_file: JSON cache of fingerprints.
        num_workers: hashing threads.
        progress: show progress bars for large sets.

    Returns:
        the report (``report.summary()`` to read, ``report.to_record()`` / ``report.save(path)`` for JSON).
    """
    images: list[str] = [os.fspath(item["image"]) for items in split.values() for item in items]
    index = find_duplicates(images, threshold, hash_size, cache_file, num_workers, progress)
    return index.report(split, mode)
