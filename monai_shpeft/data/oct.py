"""Retinal OCT (Kermany et al., Cell 2018; Mendeley Data 10.17632/rscbjbr9sj): part/class folders -> datalist.

The Mendeley release (``ZhangLabData/CellData/OCT/``) and its Kaggle copy ``OCT2017`` (paultimothymooney/kermany2018,
where the folder is literally named ``OCT2017 `` with a trailing space) hold the official split as::

    OCT2017/train/{CNV,DME,DRUSEN,NORMAL}/*.jpeg   (108,309 images in Mendeley v3; the older Kaggle copy has fewer)
    OCT2017/test/{CNV,DME,DRUSEN,NORMAL}/*.jpeg    (1,000 images, 250 per class)
    OCT2017/val/{CNV,DME,DRUSEN,NORMAL}/*.jpeg     (Kaggle copy only: 8 per class; read into training)

File names are ``<CLASS>-<patient>-<n>.jpeg``. SH-PEFT trains on 97,477 and validates on 10,832 of the 108,309
training images and tests on the 1,000 test images.
"""

from __future__ import annotations

import os

from monai_shpeft.data.layout import DatasetLayout, register_layout
from monai_shpeft.data.pediatric_cxr import kermany_datalist

__all__ = ["OCT_CLASSES", "OCT_LAYOUT", "oct_datalist"]

#: class folder names in label order: choroidal neovascularization, diabetic macular edema, drusen, normal
OCT_CLASSES: tuple[str, ...] = ("CNV", "DME", "DRUSEN", "NORMAL")
_OCT_RELEASE_FOLDERS = (
    "OCT2017",
    "OCT2017 ",
    "oct2017/OCT2017 ",
    "oct2017/OCT2017",
    "CellData/OCT",
    "ZhangLabData/CellData/OCT",
)


def oct_datalist(dataset_dir: str | os.PathLike) -> dict[str, list[dict]]:
    """List the retinal OCT B-scans of the official parts with their labels.

    Args:
        dataset_dir: the folder holding ``train/``, ``test/`` (and optionally ``val/``), or a folder holding it as
            ``OCT2017/`` (with or without the Kaggle copy's trailing space), ``CellData/OCT/`` or
            ``ZhangLabData/CellData/OCT/``.

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}`` of ``{"image": path, "label": index}`` items;
        ``validation`` is empty: the Kaggle copy's tiny ``val/`` is read into training, and
        :func:`monai_shpeft.data.prepare_datalist` carves a stratified validation part from it.

    Raises:
        DatasetFolderError: if the dataset, a part or a class folder is missing.
        ValueError: if a class folder holds no image or an unknown class folder is present.
    """
    return kermany_datalist(dataset_dir, OCT_CLASSES, _OCT_RELEASE_FOLDERS, "OCT")


OCT_LAYOUT = register_layout(
    DatasetLayout(
        name="oct",
        classes=OCT_CLASSES,
        modality="oct",
        list_items=oct_datalist,
        citation=(
            "Kermany D.S., Goldbaum M., Cai W., et al. Identifying medical diagnoses and treatable diseases by "
            "image-based deep learning. Cell 172(5) (2018) 1122-1131. Data: Kermany D., Zhang K., Goldbaum M. "
            "Labeled optical coherence tomography (OCT) and chest X-ray images for classification. Mendeley Data "
            "(2018), doi:10.17632/rscbjbr9sj."
        ),
    )
)
