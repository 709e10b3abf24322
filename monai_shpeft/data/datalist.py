"""A dataset's split as a MONAI datalist JSON: written once (seeded, stratified, atomically), then reused."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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

    Returns:
        the three parts.

    Raises:
        DatalistError: if an existing file is broken or names missing images.
    """
    path = Path(datalist_file)
    if path.is_file():
        logger.info("Reusing the split in %s.", path)
        return load_datalist(path)
    layout = get_layout(dataset)
    listed = layout.list_items(dataset_dir)
    if isinstance(listed, dict):
        split = {part: list(listed.get(part, [])) for part in PARTS}
        if not split["validation"] and split["training"]:
            split["training"], split["validation"] = _carve_validation(split["training"], fractions, seed)
        origin = "official"
    else:
        split = stratified_split(listed, fractions, seed=seed)
        origin = "seeded stratified"
    empty = [part for part in PARTS if not split[part]]
    if empty:
        raise DatalistError(f"{dataset} in {dataset_dir}: the split has empty part(s) {empty}.")
    record: dict[str, Any] = {
        "dataset": dataset,
        "split": origin,
        "classes": list(layout.classes),
        "seed": seed,
        "fractions": list(fractions),
        "dataset_dir": str(Path(dataset_dir).resolve()),
        **split,
    }
    atomic_write_json(path, record)
    counts = ", ".join(f"{part}: {len(split[part])}" for part in PARTS)
    logger.info("Wrote the %s split of %s (seed %d; %s) to %s.", origin, dataset, seed, counts, path)
    return split


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
