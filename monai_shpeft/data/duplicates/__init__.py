"""Exact and near-duplicate images, and the duplicates that leak across the parts of a split.

Two images are

* **exact duplicates** when their decoded pixels are identical (a SHA-256 of the pixel array, so the same image
  saved twice with other metadata or another PNG compression level still matches; byte-identical files always do);
* **near duplicates** when the difference hashes of their small grey thumbnails differ in at most ``threshold``
  bits (re-encoded JPEGs, the same frame with or without calipers, neighbouring frames of one sweep).

Duplicates are grouped into clusters (scipy's ``connected_components``) and a split is checked for clusters whose
members sit in different parts: a model then meets a test image, or its near copy, in training.
``stratified_split(..., groups=...)`` keeps each cluster in one part.

Hashing reads each file once: PNG / JPEG / BMP / TIFF with PIL, anything else (DICOM, NIfTI, whole-slide images)
with :class:`~monai_shpeft.transforms.LoadMedicalImage`, which is also the fallback when PIL fails. Results can be
cached per file (keyed on its size and modification time), so a second check of a large dataset is instant.
"""

from __future__ import annotations

from monai_shpeft.data.duplicates.grouping import (
    DEFAULT_THRESHOLD,
    DUPLICATE_MODES,
    DuplicateIndex,
    DuplicatePair,
    check_duplicate_mode,
    find_cross_split_duplicates,
    find_duplicates,
    near_duplicate_pairs,
)
from monai_shpeft.data.duplicates.hashing import (
    DEFAULT_HASH_SIZE,
    ImageFingerprint,
    difference_hash,
    fingerprint_image,
    fingerprint_images,
)
from monai_shpeft.data.duplicates.report import DuplicateReport

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
