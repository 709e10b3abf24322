"""BUSI breast ultrasound (Al-Dhabyani et al., Data in Brief 28, 2020): folder layout -> labelled datalist.

The release holds ``benign/``, ``malignant/`` and ``normal/`` folders of PNG images, with a ``<name>_mask.png``
(sometimes ``_mask_1.png``) segmentation mask beside each image. The masks are not images to classify and
are skipped.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from monai_shpeft.data.files import class_folder_items
from monai_shpeft.data.layout import DatasetLayout, register_layout
from monai_shpeft.errors import DatasetFolderError

__all__ = ["BUSI_CLASSES", "BUSI_LAYOUT", "busi_datalist"]

#: class names in label order
BUSI_CLASSES: tuple[str, ...] = ("benign", "malignant", "normal")
_MASK_PATTERN = re.compile(r"_mask(_\d+)?$", re.IGNORECASE)
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}


def busi_datalist(dataset_dir: str | os.PathLike, classes: tuple[str, ...] = BUSI_CLASSES) -> list[dict]:
    """List the BUSI images with their labels.

    Args:
        dataset_dir: folder holding one sub-folder per class.
        classes: class folder names in label order.

    Returns:
        ``[{"image": path, "label": index}, ...]`` sorted by class then file name.

    Raises:
        DatasetFolderError: if ``dataset_dir`` or a class folder is missing.
        DatasetLayoutError: if a class folder holds no image, or ``dataset_dir`` has a folder that is not a known class.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise DatasetFolderError(f"BUSI dataset folder not found: {root}")
    return class_folder_items(
        root,
        classes,
        "BUSI",
        _IMAGE_SUFFIXES,
        expected=f"{list(classes)} under {root}",
        is_mask=lambda path: bool(_MASK_PATTERN.search(path.stem)),
    )


BUSI_LAYOUT = register_layout(
    DatasetLayout(
        name="busi",
        classes=BUSI_CLASSES,
        modality="ultrasound",
        list_items=busi_datalist,
        citation=(
            "Al-Dhabyani W., Gomaa M., Khaled H., Fahmy A. Dataset of breast ultrasound images. "
            "Data in Brief 28 (2020) 104863."
        ),
    )
)
