"""Near-duplicate pairs by Hamming distance, and clusters of duplicates (connected components) against a split."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from monai_shpeft.data.duplicates.hashing import _PROGRESS_FROM, DEFAULT_HASH_SIZE, ImageFingerprint, fingerprint_images
from monai_shpeft.data.duplicates.report import DuplicateReport, _part_order

__all__ = [
    "DUPLICATE_MODES",
    "DEFAULT_THRESHOLD",
    "check_duplicate_mode",
    "near_duplicate_pairs",
    "DuplicatePair",
    "DuplicateIndex",
    "find_duplicates",
    "find_cross_split_duplicates",
]

#: what ``prepare_datalist(duplicates=...)`` may do with duplicates
DUPLICATE_MODES: tuple[str, ...] = ("ignore", "report", "keep_together")


#: largest Hamming distance (of 256 bits) between near duplicates. On BUSI the pairs within 32 bits that we looked at
#: were all the same scan (re-saved, with calipers, or a neighbouring frame); the closest unrelated pair seen was 55
#: bits apart (see benchmarks/busi_duplicates.py).
DEFAULT_THRESHOLD = 32


_POPCOUNT = np.array([bin(value).count("1") for value in range(256)], dtype=np.uint8)


def check_duplicate_mode(mode: str) -> str:
    """Return ``mode`` if it is one of :data:`DUPLICATE_MODES`.

    Raises:
        ValueError: naming the modes otherwise.
    """
    if mode not in DUPLICATE_MODES:
        raise ValueError(f"duplicates must be one of {list(DUPLICATE_MODES)}, got {mode!r}.")
    return mode


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
    clusters = _connected_clusters(len(fingerprints), pairs.keys())
    return DuplicateIndex(fingerprints, threshold, hash_size, sorted(pairs.values(), key=_pair_key), clusters)


def _connected_clusters(size: int, links: Iterable[tuple[int, int]]) -> list[list[int]]:
    """The connected components of two or more of ``0..size-1`` joined by ``links``, each sorted, in order."""
    pairs = list(links)
    first = np.asarray([i for i, _ in pairs], dtype=np.int64)
    second = np.asarray([j for _, j in pairs], dtype=np.int64)
    graph = coo_matrix((np.ones(len(first), dtype=np.int8), (first, second)), shape=(size, size))
    _, component_of = connected_components(graph, directed=False)
    components: dict[int, list[int]] = {}
    for index, component in enumerate(component_of.tolist()):
        components.setdefault(component, []).append(index)
    return sorted(members for members in components.values() if len(members) > 1)


def _pair_key(pair: DuplicatePair) -> tuple[int, int]:
    return (pair.first, pair.second)


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
