"""A user's own labelled images as a dataset: a folder with one subfolder per class, or a CSV table.

Two generic layouts, whose classes are the bundle's ``classes`` knob (``python -m monai_shpeft.zoo new_bundle``
writes them):

* ``image_folder``: ``<dataset_dir>/<class>/**/<image>`` (any depth inside a class folder; ``*_mask*`` files and
  hidden files skipped), the layout of ``torchvision.datasets.ImageFolder``;
* ``csv``: ``dataset_dir`` is a CSV file with the columns ``image`` (a path, relative to the CSV's folder or
  absolute) and ``label`` (a class name), and optionally ``split`` (``training``/``train``,
  ``validation``/``val``, ``test``) for an official split; without it the bundle makes the seeded stratified split.

Every problem stops with an error naming the file (and the CSV row) and what to do.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

from monai_shpeft.data.datalist import IMAGE_SUFFIXES
from monai_shpeft.data.files import class_folder_items
from monai_shpeft.data.layout import DatasetLayout, register_generic_layout
from monai_shpeft.errors import DatasetFolderError, DatasetLayoutError

__all__ = [
    "CSV_LAYOUT",
    "IMAGE_FOLDER_LAYOUT",
    "csv_classes",
    "csv_items",
    "image_folder_classes",
    "image_folder_items",
]

IMAGE_FOLDER_LAYOUT = "image_folder"
CSV_LAYOUT = "csv"
_REQUIRED_COLUMNS = ("image", "label")
_PART_NAMES = {"training": "training", "train": "training", "validation": "validation", "val": "validation"}
_PART_NAMES["test"] = "test"


def _class_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        raise DatasetFolderError(f"image folder not found: {root}")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))
    if not folders:
        raise DatasetLayoutError(
            f"{root} has no subfolder: put the images of each class in a subfolder named after the class "
            f"({root}/<class>/<image>)."
        )
    return folders


def image_folder_classes(dataset_dir: str | os.PathLike) -> tuple[str, ...]:
    """The class names of an image folder: its subfolders, sorted.

    Raises:
        DatasetFolderError: if the folder does not exist.
        DatasetLayoutError: if it has no subfolder, a subfolder without images, or one class only.
    """
    root = Path(dataset_dir)
    classes = tuple(folder.name for folder in _class_folders(root))
    image_folder_items(root, classes)  # every class folder holds images
    if len(classes) < 2:
        raise DatasetLayoutError(
            f"{root} has one class folder ({classes[0]}): a classifier needs at least two classes, one subfolder each."
        )
    return classes


def image_folder_items(dataset_dir: str | os.PathLike, classes: Sequence[str]) -> list[dict]:
    """``[{"image": path, "label": index}, ...]`` of an image folder, sorted by class then path.

    Raises:
        DatasetFolderError: if the folder or a class folder does not exist.
        DatasetLayoutError: for a subfolder that is not a class, or a class folder without images.
    """
    root = Path(dataset_dir)
    _class_folders(root)
    return class_folder_items(
        root,
        classes,
        "image folder",
        IMAGE_SUFFIXES,
        expected=f"one subfolder per class {list(classes)} under {root}",
        is_mask=lambda path: path.name.startswith(".") or "_mask" in path.name.lower(),
        recursive=True,
    )


def _read_rows(csv_file: Path) -> list[tuple[int, dict[str, str]]]:
    """The CSV's rows with their line numbers (the header is line 1), columns checked."""
    if not csv_file.is_file():
        raise DatasetFolderError(f"CSV file not found: {csv_file}")
    with open(csv_file, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [name.strip() for name in reader.fieldnames or []]
        missing = [name for name in _REQUIRED_COLUMNS if name not in columns]
        if missing:
            raise DatasetLayoutError(
                f"{csv_file} lacks the column(s) {missing} (its header is {columns}): the table needs 'image' (a "
                "path, relative to the CSV's folder) and 'label' (a class name), and may have 'split'."
            )
        rows = [
            (index + 2, {(k or "").strip(): (v or "").strip() for k, v in row.items()})
            for index, row in enumerate(reader)
        ]
    if not rows:
        raise DatasetLayoutError(f"{csv_file} has a header but no row.")
    seen: dict[str, int] = {}
    for line, row in rows:
        for column in _REQUIRED_COLUMNS:
            if not row.get(column):
                raise DatasetLayoutError(f"{csv_file} line {line}: the '{column}' cell is empty.")
        image = os.path.normpath(row["image"])
        if image in seen:
            raise DatasetLayoutError(
                f"{csv_file} line {line}: image {row['image']} is listed twice (first on line {seen[image]}); each "
                "image must have one row."
            )
        seen[image] = line
    return rows


def csv_classes(csv_file: str | os.PathLike) -> tuple[str, ...]:
    """The class names of a CSV table: its labels, sorted.

    Raises:
        DatasetFolderError: if the file does not exist.
        DatasetLayoutError: for missing columns, empty cells, duplicate images or one class only.
    """
    path = Path(csv_file)
    classes = tuple(sorted({row["label"] for _, row in _read_rows(path)}))
    if len(classes) < 2:
        raise DatasetLayoutError(
            f"{path} has one label ({classes[0]}) in its 'label' column: a classifier needs at least two classes."
        )
    return classes


def csv_items(csv_file: str | os.PathLike, classes: Sequence[str]) -> list[dict] | dict[str, list[dict]]:
    """The labelled items of a CSV table; by part when it has a ``split`` column.

    Raises:
        DatasetFolderError: if the file or an image it lists does not exist (names the line).
        DatasetLayoutError: for a label not in ``classes``, a split value that is not a part, a ``split`` cell
            left empty while others are set, and the problems of :func:`csv_classes`.
    """
    path = Path(csv_file)
    rows = _read_rows(path)
    has_split = any(row.get("split") for _, row in rows)
    items: list[dict] = []
    parts: dict[str, list[dict]] = {"training": [], "validation": [], "test": []}
    for line, row in rows:
        if row["label"] not in classes:
            raise DatasetLayoutError(
                f"{path} line {line}: label '{row['label']}' is not one of this bundle's classes {list(classes)}. "
                "Fix the label, or make the bundle with this class (python -m monai_shpeft.zoo new_bundle)."
            )
        image = Path(row["image"]) if Path(row["image"]).is_absolute() else path.parent / row["image"]
        if not image.is_file():
            raise DatasetFolderError(f"{path} line {line}: image not found: {image}")
        item = {"image": str(image), "label": list(classes).index(row["label"])}
        if not has_split:
            items.append(item)
            continue
        part = _PART_NAMES.get(row.get("split", "").lower())
        if part is None:
            raise DatasetLayoutError(
                f"{path} line {line}: split '{row.get('split', '')}' is not training/train, validation/val or test "
                "(a split column must name a part on every row, or be left out for a seeded split)."
            )
        parts[part].append(item)
    return parts if has_split else items


def _image_folder_layout(classes: tuple[str, ...]) -> DatasetLayout:
    return DatasetLayout(IMAGE_FOLDER_LAYOUT, classes, "natural", lambda root: image_folder_items(root, classes))


def _csv_layout(classes: tuple[str, ...]) -> DatasetLayout:
    return DatasetLayout(CSV_LAYOUT, classes, "natural", lambda table: csv_items(table, classes))


register_generic_layout(IMAGE_FOLDER_LAYOUT, _image_folder_layout)
register_generic_layout(CSV_LAYOUT, _csv_layout)
