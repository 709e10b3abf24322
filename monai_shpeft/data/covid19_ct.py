"""COVID-CT (Yang et al., arXiv:2003.13865, 2020): official split files -> labelled datalist.

The release (github.com/UCSD-AI4H/COVID-CT) ships the CT slices in ``Images-processed/CT_COVID/`` and
``Images-processed/CT_NonCOVID/`` (distributed there as ``CT_COVID.zip`` / ``CT_NonCOVID.zip``; unzip them in
place) and the official split as plain-text lists of file names, one per line:

* ``Data-split/COVID/trainCT_COVID.txt``, ``valCT_COVID.txt``, ``testCT_COVID.txt`` (191 / 60 / 98 images);
* ``Data-split/NonCOVID/trainCT_NonCOVID.txt``, ``valCT_NonCOVID.txt``, ``testCT_NonCOVID.txt`` (234 / 58 / 105).

That is the 425 / 118 / 203 split used by SH-PEFT. Older copies of the release listed a few images with another
extension than the file on disk (e.g. ``.png`` for a ``.jpeg``, UCSD-AI4H/COVID-CT issue 9); an entry that matches
no file exactly is therefore matched case-insensitively, then by its name without extension when that is unique.
"""

from __future__ import annotations

import os
from pathlib import Path

from monai_shpeft.data.files import ImageIndex
from monai_shpeft.data.layout import DatasetLayout, register_layout
from monai_shpeft.errors import DatasetFolderError

__all__ = ["COVID19_CT_CLASSES", "COVID19_CT_LAYOUT", "covid19_ct_datalist"]

#: class names in label order: the ``<class>`` of ``CT_<class>/`` and ``Data-split/<class>/``
COVID19_CT_CLASSES: tuple[str, ...] = ("NonCOVID", "COVID")
#: datalist part -> prefix of the split file names
_SPLIT_PREFIXES: dict[str, str] = {"training": "train", "validation": "val", "test": "test"}
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
_EXPECTED = (
    "Images-processed/CT_COVID/, Images-processed/CT_NonCOVID/ and "
    "Data-split/{COVID,NonCOVID}/{train,val,test}CT_<class>.txt"
)


def covid19_ct_datalist(dataset_dir: str | os.PathLike) -> dict[str, list[dict]]:
    """List the COVID-CT slices of the official training, validation and test parts with their labels.

    Args:
        dataset_dir: the release folder holding ``Images-processed/`` and ``Data-split/`` (the image folders
            ``CT_COVID/`` and ``CT_NonCOVID/`` may also sit directly in it).

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}`` of ``{"image": path, "label": index}`` items,
        NonCOVID (0) then COVID (1) in split-file order.

    Raises:
        DatasetFolderError: if ``dataset_dir``, an image folder or a split file is missing.
        DatasetLayoutError: if an image folder holds no image, or a split file names an image that does not exist (or
            matches several files).
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise DatasetFolderError(f"COVID-CT dataset folder not found: {root} (expected {_EXPECTED}).")
    parts: dict[str, list[dict]] = {part: [] for part in _SPLIT_PREFIXES}
    for label, name in enumerate(COVID19_CT_CLASSES):
        index = ImageIndex(_image_folder(root, name), _IMAGE_SUFFIXES, "COVID-CT")
        for part, prefix in _SPLIT_PREFIXES.items():
            split_file = root / "Data-split" / name / f"{prefix}CT_{name}.txt"
            if not split_file.is_file():
                raise DatasetFolderError(
                    f"COVID-CT split file missing: {split_file} (expected {_EXPECTED} under {root})."
                )
            for entry in _read_names(split_file):
                parts[part].append({"image": str(index.find(entry, f"{split_file}: entry")), "label": label})
    return parts


def _image_folder(root: Path, name: str) -> Path:
    """Return the ``CT_<name>`` image folder of the release."""
    for folder in (root / "Images-processed" / f"CT_{name}", root / f"CT_{name}"):
        if folder.is_dir():
            return folder
    raise DatasetFolderError(
        f"COVID-CT image folder missing: {root / 'Images-processed' / f'CT_{name}'} (expected {_EXPECTED} under "
        f"{root}; unzip CT_{name}.zip there)."
    )


def _read_names(split_file: Path) -> list[str]:
    """The non-empty lines of a split file, stripped."""
    return [line.strip() for line in split_file.read_text(encoding="utf-8-sig").splitlines() if line.strip()]


COVID19_CT_LAYOUT = register_layout(
    DatasetLayout(
        name="covid19_ct",
        classes=COVID19_CT_CLASSES,
        modality="ct",
        list_items=covid19_ct_datalist,
        citation=(
            "Yang X., He X., Zhao J., Zhang Y., Zhang S., Xie P. COVID-CT-Dataset: a CT scan dataset about "
            "COVID-19. arXiv:2003.13865 (2020)."
        ),
    )
)
