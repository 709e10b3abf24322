"""Pediatric chest X-ray pneumonia (Kermany et al., Cell 2018; Mendeley Data 10.17632/rscbjbr9sj): folders -> datalist.

The Mendeley release (``ZhangLabData/CellData/chest_xray/``) and its Kaggle copy (``chest_xray/``,
paultimothymooney/chest-xray-pneumonia) hold the official split as part folders of class folders::

    chest_xray/train/{NORMAL,PNEUMONIA}/*.jpeg     (1,349 / 3,883 images in the Mendeley release)
    chest_xray/test/{NORMAL,PNEUMONIA}/*.jpeg      (234 / 390)
    chest_xray/val/{NORMAL,PNEUMONIA}/*.jpeg       (Kaggle copy only: 8 / 8 images moved out of train/;
                                                    read back into the training part)

The pneumonia file names tell bacterial from viral cases (``person1_bacteria_1.jpeg`` / ``person1_virus_6.jpeg``
in the Kaggle copy, ``BACTERIA-...jpeg`` / ``VIRUS-...jpeg`` in Mendeley v3), which gives the three-class task
(normal, bacterial, viral; "CXT3" of SH-PEFT) registered as ``pediatric_cxr3`` beside the two-class
``pediatric_cxr``.

:func:`kermany_datalist` reads any dataset of this part/class folder layout; the retinal OCT release of the same
paper (:mod:`monai_shpeft.data.oct`) uses it too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from monai_shpeft.data.layout import DatasetLayout, register_layout
from monai_shpeft.errors import DatasetFolderError, DatasetLayoutError

__all__ = [
    "KERMANY_PARTS",
    "PEDIATRIC_CXR3_CLASSES",
    "PEDIATRIC_CXR3_LAYOUT",
    "PEDIATRIC_CXR_CLASSES",
    "PEDIATRIC_CXR_LAYOUT",
    "kermany_datalist",
    "pediatric_cxr3_datalist",
    "pediatric_cxr_datalist",
]

#: class folder names in label order
PEDIATRIC_CXR_CLASSES: tuple[str, ...] = ("NORMAL", "PNEUMONIA")
#: the three-class task: normal, bacterial pneumonia, viral pneumonia
PEDIATRIC_CXR3_CLASSES: tuple[str, ...] = ("normal", "bacterial", "viral")
#: part folder -> datalist part. ``val/`` exists in the Kaggle copies only and holds a handful of images taken out
#: of ``train/`` (16 for chest X-ray, all bacterial; 32 for OCT): too few to pick a checkpoint on, and without
#: every class, so they go back to training and a stratified validation part is carved from it.
KERMANY_PARTS: dict[str, str] = {"train": "training", "val": "training", "test": "test"}
_CXR_RELEASE_FOLDERS = ("chest_xray", "CellData/chest_xray", "ZhangLabData/CellData/chest_xray")
_IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}
#: folders that archive tools leave behind and that are not classes
_IGNORED_FOLDERS = {"__MACOSX"}
_CITATION = (
    "Kermany D.S., Goldbaum M., Cai W., et al. Identifying medical diagnoses and treatable diseases by image-based "
    "deep learning. Cell 172(5) (2018) 1122-1131. Data: Kermany D., Zhang K., Goldbaum M. Labeled optical coherence "
    "tomography (OCT) and chest X-ray images for classification. Mendeley Data (2018), doi:10.17632/rscbjbr9sj."
)


def kermany_datalist(
    dataset_dir: str | os.PathLike,
    classes: Sequence[str],
    release_folders: Sequence[str] = (),
    dataset: str = "dataset",
) -> dict[str, list[dict]]:
    """List a ``{train,val,test}/<class>/<image>`` dataset (the Kermany et al. 2018 releases) by part and class.

    Args:
        dataset_dir: the folder holding ``train/`` and ``test/`` (and optionally ``val/``), or a folder holding it at
            one of ``release_folders``.
        classes: class folder names in label order; every part must have all of them.
        release_folders: relative paths under ``dataset_dir`` where the part folders may sit, tried in order.
        dataset: dataset name for error messages.

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}`` of ``{"image": path, "label": index}`` items
        sorted by class then file name; ``validation`` is empty (a ``val/`` folder is read into training).

    Raises:
        DatasetFolderError: if ``dataset_dir``, ``train/``, ``test/`` or a class folder of a part is missing.
        DatasetLayoutError: if a class folder holds no image, or a part folder has a folder that is not a known class.
    """
    root = Path(dataset_dir)
    expected = f"train/ and test/ (and optionally val/) holding {list(classes)} class folders"
    if not root.is_dir():
        raise DatasetFolderError(f"{dataset} dataset folder not found: {root} (expected {expected}).")
    candidates = [root, *(root / folder for folder in release_folders)]
    release = next((c for c in candidates if (c / "train").is_dir() and (c / "test").is_dir()), None)
    if release is None:
        raise DatasetFolderError(
            f"{dataset} part folders not found: none of {[str(c) for c in candidates]} holds {expected}."
        )
    parts: dict[str, list[dict]] = {"training": [], "validation": [], "test": []}
    for folder, part in KERMANY_PARTS.items():
        if (release / folder).is_dir():
            parts[part].extend(_list_part(release / folder, classes, dataset))
    return {part: sorted(items, key=lambda item: (item["label"], item["image"])) for part, items in parts.items()}


def _list_part(part_dir: Path, classes: Sequence[str], dataset: str) -> list[dict]:
    """List the class folders of one part folder."""
    unknown = sorted(
        p.name
        for p in part_dir.iterdir()
        if p.is_dir() and p.name not in classes and not p.name.startswith(".") and p.name not in _IGNORED_FOLDERS
    )
    if unknown:
        raise DatasetLayoutError(f"{part_dir} has folder(s) {unknown} that are not {dataset} classes {list(classes)}.")
    items: list[dict] = []
    for label, name in enumerate(classes):
        folder = part_dir / name
        if not folder.is_dir():
            raise DatasetFolderError(
                f"{dataset} class folder missing: {folder} (expected {list(classes)} in {part_dir})."
            )
        images = sorted(
            p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES and not p.name.startswith(".")
        )
        if not images:
            raise DatasetLayoutError(f"{dataset} class folder {folder} holds no image.")
        items.extend({"image": str(p), "label": label} for p in images)
    return items


def pediatric_cxr_datalist(dataset_dir: str | os.PathLike) -> dict[str, list[dict]]:
    """List the pediatric chest X-rays of the official parts as normal (0) / pneumonia (1).

    Args:
        dataset_dir: the ``chest_xray`` folder holding ``train/``, ``test/`` (and optionally ``val/``), or a folder
            holding it as ``chest_xray/``, ``CellData/chest_xray/`` or ``ZhangLabData/CellData/chest_xray/``.

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}``; ``validation`` is empty (a Kaggle
        ``val/`` is read into training; :func:`monai_shpeft.data.prepare_datalist` carves the validation part).

    Raises:
        DatasetFolderError: if the dataset, a part or a class folder is missing.
        DatasetLayoutError: if a class folder holds no image or an unknown class folder is present.
    """
    return kermany_datalist(dataset_dir, PEDIATRIC_CXR_CLASSES, _CXR_RELEASE_FOLDERS, "pediatric chest X-ray")


def pediatric_cxr3_datalist(dataset_dir: str | os.PathLike) -> dict[str, list[dict]]:
    """List the pediatric chest X-rays of the official parts as normal (0) / bacterial (1) / viral (2) pneumonia.

    The pneumonia type is read from the file name, which holds ``bacteria`` or ``virus`` (any case).

    Args:
        dataset_dir: as for :func:`pediatric_cxr_datalist`.

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}`` of ``{"image": path, "label": index}`` items.

    Raises:
        DatasetFolderError: if the dataset, a part or a class folder is missing.
        ValueError: as :func:`pediatric_cxr_datalist`, and for a ``PNEUMONIA`` image whose name says neither
            ``bacteria`` nor ``virus``.
    """
    parts = pediatric_cxr_datalist(dataset_dir)
    return {part: [_three_class(item) for item in items] for part, items in parts.items()}


def _three_class(item: dict) -> dict:
    """Relabel a two-class item: normal stays 0, pneumonia becomes bacterial (1) or viral (2) by its file name."""
    if item["label"] == 0:
        return item
    name = Path(item["image"]).name.lower()
    if "bacteria" in name:
        return {"image": item["image"], "label": 1}
    if "virus" in name:
        return {"image": item["image"], "label": 2}
    raise DatasetLayoutError(f"pneumonia image {item['image']} has neither 'bacteria' nor 'virus' in its name.")


PEDIATRIC_CXR_LAYOUT = register_layout(
    DatasetLayout(
        name="pediatric_cxr",
        classes=PEDIATRIC_CXR_CLASSES,
        modality="xray",
        list_items=pediatric_cxr_datalist,
        citation=_CITATION,
    )
)

PEDIATRIC_CXR3_LAYOUT = register_layout(
    DatasetLayout(
        name="pediatric_cxr3",
        classes=PEDIATRIC_CXR3_CLASSES,
        modality="xray",
        list_items=pediatric_cxr3_datalist,
        citation=_CITATION,
    )
)
