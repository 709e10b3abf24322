"""What a duplicate search found in a split: clusters, the pairs that cross parts, a summary and a JSON file."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from monai_shpeft.utils import atomic_write_json

__all__ = ["DuplicateReport"]

PARTS = ("training", "validation", "test")


def _part_order(part: str) -> tuple[int, str]:
    return (PARTS.index(part) if part in PARTS else len(PARTS), part)


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
