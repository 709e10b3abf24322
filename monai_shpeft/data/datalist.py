"""A dataset's split as a MONAI datalist JSON: written once (seeded, stratified, atomically), then reused."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai_shpeft.data.duplicates import DEFAULT_THRESHOLD, check_duplicate_mode, find_duplicates
from monai_shpeft.data.layout import get_layout
from monai_shpeft.data.split import stratified_split
from monai_shpeft.utils import atomic_write_json

__all__ = ["DatalistError", "load_datalist", "prepare_datalist"]

logger = logging.getLogger(__name__)
PARTS = ("training", "validation", "test")


class DatalistError(ValueError):
    """A datalist file is unreadable, incomplete or points to files that do not exist."""


def prepare_datalist(
    dataset: str,
    dataset_dir: str | os.PathLike,
    datalist_file: str | os.PathLike,
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    duplicates: str = "report",
    duplicate_threshold: int = DEFAULT_THRESHOLD,
) -> dict[str, list[dict]]:
    """Return the split of a dataset, writing ``datalist_file`` if it does not exist yet.

    The file is MONAI's datalist format (``{"training": [...], "validation": [...], "test": [...]}`` with
    ``{"image": path, "label": int}`` items, as read by ``monai.data.load_decathlon_datalist``) plus a
    ``"classes"`` list and the ``"seed"`` and ``"fractions"`` that made it. An existing file is reused as it is,
    so evaluation always runs on images never seen in training.

    Args:
        dataset: a registered layout name (see :mod:`monai_shpeft.data.layout`), e.g. ``"busi"``.
        dataset_dir: the dataset folder in its published layout.
        datalist_file: where the split lives.
        fractions: training, validation, test fractions of a new split, for datasets without an official split.
            A dataset with an official train/test split but no validation part gets its validation part
            carved from its training part (stratified, ``fractions[1]`` of the whole).
        seed: seed of a new split.
        duplicates: what a new split does about exact and near-duplicate images
            (:mod:`monai_shpeft.data.duplicates`): ``"ignore"``; ``"report"`` (logged, and recorded under
            ``"duplicates"`` in the file); ``"keep_together"`` (each cluster of duplicates in one part, and
            reported). An official split is never rearranged: its duplicates are reported only.
        duplicate_threshold: near-duplicate Hamming threshold of the 256-bit difference hashes.

    Returns:
        the three parts.

    Raises:
        DatalistError: if an existing file is broken or names missing images.
        ValueError: for an unknown ``duplicates`` mode.
    """
    check_duplicate_mode(duplicates)
    path = Path(datalist_file)
    if path.is_file():
        logger.info("Reusing the split in %s.", path)
        return load_datalist(path)
    layout = get_layout(dataset)
    listed = layout.list_items(dataset_dir)
    every = [item for part in listed.values() for item in part] if isinstance(listed, dict) else listed
    index = None if duplicates == "ignore" else find_duplicates([item["image"] for item in every], duplicate_threshold)
    if isinstance(listed, dict):
        split = {part: list(listed.get(part, [])) for part in PARTS}
        if not split["validation"] and split["training"]:
            _check_split_size(f"{dataset} in {dataset_dir}", split["training"], layout.classes, fractions, carve=True)
            split["training"], split["validation"] = _carve_validation(split["training"], fractions, seed)
        origin = "official"
    else:
        _check_split_size(f"{dataset} in {dataset_dir}", listed, layout.classes, fractions)
        together = index is not None and duplicates == "keep_together"
        groups = index.group_ids([item["image"] for item in listed]) if together else None
        split = stratified_split(listed, fractions, seed=seed, groups=groups)
        origin = "seeded stratified"
    empty = [part for part in PARTS if not split[part]]
    if empty:
        raise DatalistError(f"{dataset} in {dataset_dir}: the split has empty part(s) {empty}.")
    report = index.report(split, "official" if origin == "official" else duplicates) if index is not None else None
    if report is not None:  # leaks are worth a warning: test images then have near copies in training
        logger.log(logging.WARNING if report.cross_split_clusters else logging.INFO, "%s", report.summary())
    record: dict[str, Any] = {
        "dataset": dataset,
        "split": origin,
        "classes": list(layout.classes),
        "seed": seed,
        "fractions": list(fractions),
        "dataset_dir": str(Path(dataset_dir).resolve()),
        "duplicates": report.to_record() if report is not None else {"mode": "ignore"},
        **split,
    }
    atomic_write_json(path, record)
    counts = ", ".join(f"{part}: {len(split[part])}" for part in PARTS)
    logger.info("Wrote the %s split of %s (seed %d; %s) to %s.", origin, dataset, seed, counts, path)
    return split


def _minimum_split_size(num_classes: int, fractions: Sequence[float], carve: bool = False) -> int:
    """The fewest images that scikit-learn's stratified splits accept: every part at least one image per class.

    The arithmetic is scikit-learn's own (``ceil(test_size * n)`` images go to the held-out side), so the bound is
    exact for balanced classes; unbalanced classes need more.
    """
    train_fraction, val_fraction, test_fraction = (float(f) for f in fractions)
    share = val_fraction / (train_fraction + val_fraction)
    for total in range((2 if carve else 3) * num_classes, 10**7):
        test = 0 if carve else math.ceil(test_fraction * total)
        val = math.ceil(share * (total - test))
        if min(total - test - val, val, num_classes if carve else test) >= num_classes:
            return total
    return 10**7


def _check_split_size(
    where: str, items: Sequence[dict], classes: Sequence[str], fractions: Sequence[float], carve: bool = False
) -> None:
    """Raise our error, not scikit-learn's, when ``items`` are too few to put every class in every part."""
    if len(fractions) != 3 or min(fractions) <= 0:
        return  # stratified_split explains bad fractions itself
    labels = [item["label"] for item in items]
    counts = [labels.count(index) for index in range(len(classes))]
    needed = _minimum_split_size(len(classes), fractions, carve)
    per_class = 2 if carve else 3
    if len(items) >= needed and min(counts, default=0) >= per_class:
        return
    parts = "training / validation" if carve else "training / validation / test"
    shown = ", ".join(f"{name} {count}" for name, count in zip(classes, counts))
    raise DatalistError(
        f"{where}: {len(items)} {'training ' if carve else ''}images ({shown}) are too few for a stratified "
        f"{parts} split with fractions {list(fractions)}: every class must reach every part, which needs at "
        f"least {needed} images and {per_class} of each class (more when the classes are unbalanced). Add images "
        "(or give the dataset's official split)."
    )


def _carve_validation(training: list[dict], fractions: Sequence[float], seed: int) -> tuple[list[dict], list[dict]]:
    """Split an official training part into training and validation, stratified by label."""
    from sklearn.model_selection import train_test_split

    share = fractions[1] / (fractions[0] + fractions[1])
    labels = [item["label"] for item in training]
    train, val = train_test_split(training, test_size=share, stratify=labels, random_state=seed)
    return list(train), list(val)


def load_datalist(datalist_file: str | os.PathLike, check_files: bool = True) -> dict[str, list[dict]]:
    """Read a datalist written by :func:`prepare_datalist` (or by hand in the same format).

    Args:
        datalist_file: the JSON file.
        check_files: check that every image exists.

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}`` (missing parts are empty lists).

    Raises:
        DatalistError: naming the file and the problem (bad JSON, no part, an item without image or label,
            a missing image).
    """
    path = Path(datalist_file)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise DatalistError(f"cannot read datalist {path}: {error}. Delete it to make a new split.") from error
    if not isinstance(content, dict) or not any(part in content for part in PARTS):
        raise DatalistError(f"datalist {path} has none of the parts {list(PARTS)}.")
    result = {part: list(content.get(part, [])) for part in PARTS}
    for part, items in result.items():
        for index, item in enumerate(items):
            if not isinstance(item, dict) or "image" not in item or "label" not in item:
                raise DatalistError(f"datalist {path}: item {index} of '{part}' needs 'image' and 'label': {item!r}")
            if check_files and not Path(item["image"]).is_file():
                raise DatalistError(
                    f"datalist {path}: '{part}' item {index} points to a missing file {item['image']}. Restore the "
                    "file, or delete the datalist to split the dataset anew."
                )
    return result


#: file types inference reads from a folder
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".nii", ".nii.gz", ".svs")


def inference_items(
    input_dir: str | os.PathLike | None = None,
    datalist_file: str | os.PathLike | None = None,
    part: str = "test",
) -> list[dict]:
    """Items to predict: every image under ``input_dir``, or one part of a datalist.

    Args:
        input_dir: a folder searched recursively for images (masks named ``*_mask*`` are skipped); wins over
            ``datalist_file`` when both are given.
        datalist_file: a datalist written by :func:`prepare_datalist`.
        part: which part of the datalist (``training``, ``validation`` or ``test``).

    Returns:
        ``[{"image": path}, ...]`` (labels, where present, are kept).

    Raises:
        ValueError: if neither source is given, the part is unknown, or no image is found.
        FileNotFoundError: if ``input_dir`` does not exist.
    """
    if input_dir:
        root = Path(input_dir)
        if not root.is_dir():
            raise FileNotFoundError(f"inference input folder not found: {root}")
        paths = sorted(
            p
            for p in root.rglob("*")
            if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES) and "_mask" not in p.stem.lower()
        )
        if not paths:
            raise ValueError(f"no image ({', '.join(IMAGE_SUFFIXES)}) found under {root}.")
        return [{"image": str(p)} for p in paths]
    if datalist_file:
        if part not in PARTS:
            raise ValueError(f"datalist part must be one of {list(PARTS)}, got {part!r}.")
        items = load_datalist(datalist_file)[part]
        if not items:
            raise ValueError(f"datalist {datalist_file} has no '{part}' items.")
        return items
    raise ValueError("inference needs input_dir (a folder of images) or input_datalist (a datalist file).")
