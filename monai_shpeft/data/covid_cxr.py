"""COVID CXR Image Dataset (Research) (Siddhartha M., Kaggle 2021), the chest X-ray set of FPT: folders -> datalist.

The FPT paper (Huang et al., MICCAI 2024) evaluates on "COVID [22]", kaggle.com/datasets/sid321axn/
covid-cxr-image-dataset-research (its repository's config has 3 classes). That release holds 1,823 posteroanterior
chest X-rays of mixed formats (JPEG, PNG, JFIF, ...) in three class folders under ``COVID_IEEE/``::

    COVID_IEEE/covid/    (536 images)
    COVID_IEEE/normal/   (668 images)
    COVID_IEEE/virus/    (619 images, viral pneumonia)

There is no official split: the lister returns a flat list for the seeded stratified split (FPT uses 70/10/20).
The COVID-19 Radiography Database is a different, larger dataset, registered as ``covid19_radiography``
(:mod:`monai_shpeft.data.covid19_radiography`).
"""

from __future__ import annotations

import logging
import os

from monai_shpeft.data.files import class_folder_items, release_root
from monai_shpeft.data.layout import DatasetLayout, register_layout

__all__ = ["COVID_CXR_CLASSES", "COVID_CXR_LAYOUT", "covid_cxr_datalist"]

logger = logging.getLogger(__name__)

#: class folder names in label order
COVID_CXR_CLASSES: tuple[str, ...] = ("covid", "normal", "virus")
_RELEASE_FOLDER = "COVID_IEEE"
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".jfif", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def covid_cxr_datalist(dataset_dir: str | os.PathLike) -> list[dict]:
    """List the COVID CXR (Research) images with their labels.

    Args:
        dataset_dir: the ``COVID_IEEE`` folder holding ``covid/``, ``normal/`` and ``virus/``, or a folder holding
            it.

    Returns:
        ``[{"image": path, "label": index}, ...]`` sorted by class then file name; files that are not images are
        skipped (their number is logged).

    Raises:
        DatasetFolderError: if ``dataset_dir`` or a class folder is missing.
        ValueError: if a class folder holds no image, or the folder has a sub-folder that is not a known class.
    """
    expected = f"{_RELEASE_FOLDER}/ with class folders {list(COVID_CXR_CLASSES)}"
    root = release_root(dataset_dir, _RELEASE_FOLDER, COVID_CXR_CLASSES[0], "COVID CXR", expected)
    items = class_folder_items(root, COVID_CXR_CLASSES, "COVID CXR", _IMAGE_SUFFIXES, expected)
    others = sum(
        1
        for name in COVID_CXR_CLASSES
        for p in (root / name).iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() not in _IMAGE_SUFFIXES
    )
    if others:
        logger.info("COVID CXR: skipped %d file(s) that are not images under %s.", others, root)
    return items


COVID_CXR_LAYOUT = register_layout(
    DatasetLayout(
        name="covid_cxr",
        classes=COVID_CXR_CLASSES,
        modality="xray",
        list_items=covid_cxr_datalist,
        citation=(
            "Siddhartha M. COVID CXR Image Dataset (Research). Kaggle (2021), "
            "https://www.kaggle.com/datasets/sid321axn/covid-cxr-image-dataset-research."
        ),
    )
)
