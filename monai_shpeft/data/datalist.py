"""A dataset's split as a MONAI datalist JSON: written once (seeded, stratified, atomically), then reused.

The split is the dataset's official one, a seeded stratified train / validation / test split, or one fold of a
seeded stratified k-fold split; duplicate images are kept in one part by default.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai_shpeft.data.duplicates import DEFAULT_THRESHOLD, check_duplicate_mode, find_duplicates
from monai_shpeft.data.layout import resolve_layout
from monai_shpeft.data.split import GroupSplitError, check_folds, kfold_split, minimum_kfold_size, stratified_split
from monai_shpeft.errors import DatasetFolderError, DatasetLayoutError, InputError, SettingsError
from monai_shpeft.utils import atomic_write_json

__all__ = ["DatalistError", "load_datalist", "prepare_datalist"]

logger = logging.getLogger(__name__)
PARTS = ("training", "validation", "test")


class DatalistError(InputError, ValueError):
    """A datalist file is unreadable, incomplete or points to files that do not exist."""


def prepare_datalist(
    dataset: str,
    dataset_dir: str | os.PathLike,
    datalist_file: str | os.PathLike,
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    duplicates: str = "keep_together",
    duplicate_threshold: int = DEFAULT_THRESHOLD,
    num_folds: int | None = None,
    fold: int = 0,
    classes: Sequence[str] | None = None,
) -> dict[str, list[dict]]:
    """Return the split of a dataset, writing ``datalist_file`` if it does not exist yet.

    The file is MONAI's datalist format (``{"training": [...], "validation": [...], "test": [...]}`` with
    ``{"image": path, "label": int}`` items, as read by ``monai.data.load_decathlon_datalist``) plus a
    ``"classes"`` list and the ``"seed"``, ``"fractions"``, ``"num_folds"`` and ``"fold"`` that made it. An
    existing file is reused as it is, so evaluation always runs on images never seen in training; it must have
    been made with the same ``seed``, ``num_folds`` and ``fold`` (a file without ``num_folds`` / ``fold``, e.g.
    written by hand, counts as ``None`` / 0, one without ``seed`` as any seed), so that runs of two folds or two
    seeds never share one split by accident.

    Args:
        dataset: a registered layout name (see :mod:`monai_shpeft.data.layout`), e.g. ``"busi"``.
        dataset_dir: the dataset folder in its published layout.
        datalist_file: where the split lives.
        fractions: training, validation, test fractions of a new split, for datasets without an official split.
            A dataset with an official train/test split but no validation part gets its validation part
            carved from its training part (stratified, ``fractions[1]`` of the whole).
        seed: seed of a new split (and of the folds).
        duplicates: what a new split does about exact and near-duplicate images
            (:mod:`monai_shpeft.data.duplicates`): ``"keep_together"`` (the default: each cluster of duplicates in
            one part, and reported); ``"report"`` (logged, and recorded under ``"duplicates"`` in the file);
            ``"ignore"``. An official split is never rearranged: its duplicates are reported only.
        duplicate_threshold: near-duplicate Hamming threshold of the 256-bit difference hashes.
        num_folds: for datasets without an official split, take fold ``fold`` of a seeded stratified
            ``num_folds``-fold split (:func:`~monai_shpeft.data.split.kfold_split`, with duplicate clusters kept
            in one fold under ``"keep_together"``) instead of the ``fractions`` split: the test part is that fold,
            the validation part ``fractions[1]`` of all images drawn from the other folds. ``None``: no folds.
        fold: which fold is the test part, ``0 .. num_folds - 1``.
        classes: the bundle's class names: checked against a registered dataset's, and the classes of a generic
            layout (``image_folder``, ``csv``: a user's own data).

    Returns:
        the three parts.

    Raises:
        DatalistError: if an existing file is broken, names missing images or was made with another ``seed``,
            ``num_folds`` or ``fold``, or if the images are too few for the split.
        ValueError: for an unknown ``duplicates`` mode, a ``fold`` or ``num_folds`` out of range, or
            ``num_folds`` with a dataset that has an official split.
    """
    check_duplicate_mode(duplicates)
    if num_folds is not None:
        num_folds, fold = check_folds(num_folds, fold, fractions[1])
    elif fold != 0:
        raise SettingsError(f"fold={fold!r} needs num_folds (e.g. num_folds=5; bundles: --num_folds 5 --fold {fold}).")
    path = Path(datalist_file)
    if path.is_file():
        _check_reuse(path, seed, num_folds, fold)
        _check_recorded_classes(path, classes)
        logger.info("Reusing the split in %s.", path)
        return load_datalist(path)
    layout = resolve_layout(dataset, classes)
    listed = layout.list_items(dataset_dir)
    where = f"{dataset} in {dataset_dir}"
    if isinstance(listed, dict) and num_folds is not None:  # refused before hashing, which takes long
        raise SettingsError(
            f"{where}: num_folds={num_folds} applies to datasets without an official split, but {dataset} has its "
            "official split, with its own test part. Leave num_folds unset (bundles: --num_folds null)."
        )
    every = [item for part in listed.values() for item in part] if isinstance(listed, dict) else listed
    if not isinstance(listed, dict):  # before hashing, which takes long
        _check_every_class_has_images(where, listed, layout.classes)
    index = None if duplicates == "ignore" else find_duplicates([item["image"] for item in every], duplicate_threshold)
    if isinstance(listed, dict):
        split = {part: list(listed.get(part, [])) for part in PARTS}
        if not split["validation"] and split["training"]:
            _check_every_class_has_images(where, split["training"], layout.classes)
            _check_split_size(where, split["training"], layout.classes, fractions, carve=True)
            split["training"], split["validation"] = _carve_validation(split["training"], fractions, seed)
        origin = "official"
    else:
        if num_folds is None:
            _check_split_size(where, listed, layout.classes, fractions)
        else:
            _check_kfold_size(where, listed, layout.classes, num_folds)
        keep_together = duplicates == "keep_together"
        groups = index.group_ids([item["image"] for item in listed]) if index is not None and keep_together else None
        try:
            if num_folds is None:
                split = stratified_split(listed, fractions, seed=seed, groups=groups)
            else:
                split = kfold_split(listed, num_folds, fold, seed=seed, groups=groups, validation_fraction=fractions[1])
        except GroupSplitError as error:
            # the default keeps duplicates together: say how to split a dataset whose clusters are too large
            raise DatalistError(
                f"{where}: {error} The clusters of duplicate images cannot all be kept in one part; pass "
                "duplicates='report' (bundles: --duplicates report) to split without keeping them together, or a "
                "lower duplicate_threshold for smaller clusters."
            ) from error
        origin = "seeded stratified" if num_folds is None else "seeded stratified k-fold"
        if num_folds is not None:  # the proportions the k-fold split aims at, for the record
            fractions = [round(1.0 - fractions[1] - 1.0 / num_folds, 6), fractions[1], round(1.0 / num_folds, 6)]
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
        "num_folds": num_folds,
        "fold": fold,
        "dataset_dir": str(Path(dataset_dir).resolve()),
        "duplicates": report.to_record() if report is not None else {"mode": "ignore"},
        **split,
    }
    atomic_write_json(path, record)
    counts = ", ".join(f"{part}: {len(split[part])}" for part in PARTS)
    folds = f", fold {fold} of {num_folds}" if num_folds is not None else ""
    logger.info("Wrote the %s split of %s (seed %d%s; %s) to %s.", origin, dataset, seed, folds, counts, path)
    return split


def _check_reuse(path: Path, seed: int, num_folds: int | None, fold: int) -> None:
    """Refuse to reuse a datalist made with another seed or fold: a run would train on another run's test images.

    A file without ``num_folds`` / ``fold`` (older, or written by hand) counts as ``None`` / 0; one without
    ``seed`` as any seed. A file that does not read as a JSON object is left to :func:`load_datalist` to explain.
    """
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return
    if not isinstance(record, dict):
        return
    made = {"seed": record.get("seed", seed), "num_folds": record.get("num_folds"), "fold": record.get("fold", 0)}
    asked = {"seed": seed, "num_folds": num_folds, "fold": fold}
    if made != asked:
        made_with = ", ".join(f"{key}={value}" for key, value in made.items())
        asked_for = ", ".join(f"{key}={value}" for key, value in asked.items())
        raise DatalistError(
            f"datalist {path} holds the split made with {made_with}, but this run asks for {asked_for}: "
            "reusing it would mix two splits. Delete it to split anew, or pass another --datalist_file (or "
            "--output_dir) for this split; to reuse it, pass the knobs it was made with."
        )


def _check_recorded_classes(path: Path, classes: Sequence[str] | None) -> None:
    """Refuse a datalist whose recorded classes differ from the bundle's: its labels would name other classes."""
    if classes is None:
        return
    try:
        recorded = json.loads(path.read_text(encoding="utf-8")).get("classes")
    except (OSError, ValueError, AttributeError):
        return  # load_datalist reports a broken file with its own message
    if recorded is not None and [str(c) for c in recorded] != [str(c) for c in classes]:
        raise DatalistError(
            f"datalist {path} labels its images as {list(recorded)}, but the bundle's classes knob is "
            f'{list(classes)}; pass --classes "{list(recorded)}" to use this split, or delete the file to split '
            "anew."
        )


def _check_every_class_has_images(where: str, items: Sequence[dict], classes: Sequence[str]) -> None:
    """Name the classes without any image: their absence, not the dataset's size, is what stops a split."""
    labels = [item["label"] for item in items]
    counts = [labels.count(index) for index in range(len(classes))]
    empty = [name for name, count in zip(classes, counts) if count == 0]
    if empty:
        shown = ", ".join(f"{name} {count}" for name, count in zip(classes, counts))
        raise DatalistError(
            f"{where}: class(es) {empty} have no images ({shown}): a class without images cannot be learned or "
            "tested. Add its images, or check that dataset_dir is the right folder."
        )


def _check_kfold_size(where: str, items: Sequence[dict], classes: Sequence[str], num_folds: int) -> None:
    """Raise our error, not scikit-learn's, when a class is too small to reach every part of every fold."""
    labels = [item["label"] for item in items]
    counts = [labels.count(index) for index in range(len(classes))]
    needed, per_class = minimum_kfold_size(len(classes), num_folds)
    if min(counts, default=0) >= per_class:
        return
    shown = ", ".join(f"{name} {count}" for name, count in zip(classes, counts))
    raise DatalistError(
        f"{where}: {len(items)} images ({shown}) are too few for a stratified {num_folds}-fold split: every class "
        f"must reach the training, validation and test parts of every fold, which needs at least {needed} images "
        f"and {per_class} of each class. Add images or use fewer folds (or give the dataset's official split)."
    )


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
            if check_files and not Path(item["image"]).exists():  # a file, or a DICOM series folder
                raise DatalistError(
                    f"datalist {path}: '{part}' item {index} points to a missing file {item['image']}. Restore the "
                    "file, or delete the datalist to split the dataset anew."
                )
    return result


#: file types inference reads from a folder
IMAGE_SUFFIXES = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".tif",
    ".tiff",
    ".dcm",
    ".nii",
    ".nii.gz",
    ".mha",
    ".mhd",
    ".nrrd",
    ".nhdr",
    ".svs",
)


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
        DatasetFolderError: if ``input_dir`` does not exist.
    """
    if input_dir:
        root = Path(input_dir)
        if not root.is_dir():
            raise DatasetFolderError(f"inference input folder not found: {root}")
        paths = sorted(
            p
            for p in root.rglob("*")
            if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES) and "_mask" not in p.stem.lower()
        )
        if not paths:
            raise DatasetLayoutError(f"no image ({', '.join(IMAGE_SUFFIXES)}) found under {root}.")
        return [{"image": str(p)} for p in paths]
    if datalist_file:
        if part not in PARTS:
            raise SettingsError(f"datalist part must be one of {list(PARTS)}, got {part!r}.")
        items = load_datalist(datalist_file)[part]
        if not items:
            raise DatalistError(f"datalist {datalist_file} has no '{part}' items.")
        return items
    raise SettingsError("inference needs input_dir (a folder of images) or input_datalist (a datalist file).")
