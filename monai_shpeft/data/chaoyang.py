"""Chaoyang colorectal pathology patches (Zhu et al., IEEE TMI 2021): official label files -> labelled datalist.

The release (a folder usually called ``chaoyang-data``) holds the 512x512 JPEG patches in ``train/`` and ``test/``
and one label file per part, ``train.json`` and ``test.json``. Each label file is a JSON list of
``{"name": "train/<file>.JPG", "label": k}`` entries, the name relative to the release folder and ``k`` in
0 normal, 1 serrated, 2 adenocarcinoma, 3 adenoma. The official split has 4,021 training patches
(1,111 / 842 / 1,404 / 664 per class) and 2,139 test patches (705 / 321 / 840 / 273).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from monai_shpeft.data.layout import DatasetLayout, register_layout
from monai_shpeft.errors import DatasetFolderError, DatasetLayoutError

__all__ = ["CHAOYANG_CLASSES", "CHAOYANG_LAYOUT", "chaoyang_datalist"]

#: class names in label order (the integer labels of ``train.json`` / ``test.json``)
CHAOYANG_CLASSES: tuple[str, ...] = ("normal", "serrated", "adenocarcinoma", "adenoma")
#: datalist part -> label file of the release
_LABEL_FILES: dict[str, str] = {"training": "train.json", "test": "test.json"}
_RELEASE_FOLDER = "chaoyang-data"
_EXPECTED = "train/, test/, train.json and test.json"


def chaoyang_datalist(dataset_dir: str | os.PathLike) -> dict[str, list[dict]]:
    """List the Chaoyang patches of the official training and test parts with their labels.

    Args:
        dataset_dir: the release folder holding ``train/``, ``test/``, ``train.json`` and ``test.json``, or a
            folder holding it as ``chaoyang-data/``.

    Returns:
        ``{"training": [...], "test": [...]}`` of ``{"image": path, "label": index}`` items in label-file order
        (the validation part is carved from training by :func:`monai_shpeft.data.prepare_datalist`).

    Raises:
        DatasetFolderError: if ``dataset_dir`` or a label file is missing.
        DatasetLayoutError: if a label file is not a list of ``{"name", "label"}`` entries, has a label outside
            0-3, or names an image that does not exist.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise DatasetFolderError(f"Chaoyang dataset folder not found: {root} (expected {_EXPECTED} in it).")
    if not (root / "train.json").is_file() and (root / _RELEASE_FOLDER / "train.json").is_file():
        root = root / _RELEASE_FOLDER
    return {part: _read_label_file(root, root / name) for part, name in _LABEL_FILES.items()}


def _read_label_file(root: Path, label_file: Path) -> list[dict]:
    """Read one Chaoyang label file into datalist items, checking every entry."""
    if not label_file.is_file():
        raise DatasetFolderError(f"Chaoyang label file missing: {label_file} (expected {_EXPECTED} under {root}).")
    try:
        entries = json.loads(label_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetLayoutError(f"cannot read the Chaoyang label file {label_file}: {error}") from error
    if not isinstance(entries, list) or not entries:
        raise DatasetLayoutError(
            f"Chaoyang label file {label_file} must be a non-empty JSON list of {{name, label}} entries."
        )
    items: list[dict] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or "name" not in entry or "label" not in entry:
            raise DatasetLayoutError(f"{label_file}: entry {index} needs 'name' and 'label': {entry!r}")
        label = entry["label"]
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(CHAOYANG_CLASSES):
            raise DatasetLayoutError(
                f"{label_file}: entry {index} ({entry['name']!r}) has label {label!r}, not one of "
                f"0-{len(CHAOYANG_CLASSES) - 1} ({', '.join(CHAOYANG_CLASSES)})."
            )
        image = root / str(entry["name"])
        if not image.is_file():
            raise DatasetLayoutError(
                f"{label_file}: entry {index} names {entry['name']!r}, but {image} does not exist."
            )
        items.append({"image": str(image), "label": label})
    return items


CHAOYANG_LAYOUT = register_layout(
    DatasetLayout(
        name="chaoyang",
        classes=CHAOYANG_CLASSES,
        modality="pathology",
        list_items=chaoyang_datalist,
        citation=(
            "Zhu C., Chen W., Peng T., Wang Y., Jin M. Hard sample aware noise robust learning for histopathology "
            "image classification. IEEE Transactions on Medical Imaging 41(4) (2022) 881-894."
        ),
    )
)
