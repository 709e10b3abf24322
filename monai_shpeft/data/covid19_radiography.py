"""COVID-19 Radiography Database (Chowdhury et al. 2020; Rahman et al. 2021): class folders -> labelled datalist.

The Kaggle release (tawsifurrahman/covid19-radiography-database) holds, under ``COVID-19_Radiography_Dataset/``,
one folder per class with the chest X-rays in ``images/`` and lung segmentation masks of the same names in
``masks/`` (plus ``<class>.metadata.xlsx`` files and a README)::

    COVID/images/COVID-1.png ...                      (3,616 images)
    Normal/images/Normal-1.png ...                    (10,192)
    Lung_Opacity/images/Lung_Opacity-1.png ...        (6,012)
    Viral Pneumonia/images/Viral Pneumonia-1.png ...  (1,345)

The masks are not listed (a class folder without ``images/`` is read directly, skipping ``masks/``). There is no
official split: the lister returns a flat list for the seeded stratified split.
"""

from __future__ import annotations

import os

from monai_shpeft.data.files import class_folder_items, release_root
from monai_shpeft.data.layout import DatasetLayout, register_layout

__all__ = ["COVID19_RADIOGRAPHY_CLASSES", "COVID19_RADIOGRAPHY_LAYOUT", "covid19_radiography_datalist"]

#: class folder names in label order
COVID19_RADIOGRAPHY_CLASSES: tuple[str, ...] = ("COVID", "Normal", "Lung_Opacity", "Viral Pneumonia")
_RELEASE_FOLDER = "COVID-19_Radiography_Dataset"
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def covid19_radiography_datalist(dataset_dir: str | os.PathLike) -> list[dict]:
    """List the COVID-19 Radiography Database images with their labels, skipping the lung masks.

    Args:
        dataset_dir: the ``COVID-19_Radiography_Dataset`` folder holding the class folders, or a folder holding it.

    Returns:
        ``[{"image": path, "label": index}, ...]`` sorted by class then file name.

    Raises:
        DatasetFolderError: if ``dataset_dir`` or a class folder is missing.
        ValueError: if a class folder holds no image, or the folder has a sub-folder that is not a known class.
    """
    expected = f"{_RELEASE_FOLDER}/ with class folders {list(COVID19_RADIOGRAPHY_CLASSES)}, each with images/"
    root = release_root(dataset_dir, _RELEASE_FOLDER, COVID19_RADIOGRAPHY_CLASSES[0], "COVID-19 Radiography", expected)
    return class_folder_items(
        root, COVID19_RADIOGRAPHY_CLASSES, "COVID-19 Radiography", _IMAGE_SUFFIXES, expected, image_subfolder="images"
    )


COVID19_RADIOGRAPHY_LAYOUT = register_layout(
    DatasetLayout(
        name="covid19_radiography",
        classes=COVID19_RADIOGRAPHY_CLASSES,
        modality="xray",
        list_items=covid19_radiography_datalist,
        citation=(
            "Chowdhury M.E.H., Rahman T., Khandakar A., et al. Can AI help in screening viral and COVID-19 "
            "pneumonia? IEEE Access 8 (2020) 132665-132676. Rahman T., Khandakar A., Qiblawey Y., et al. Exploring "
            "the effect of image enhancement techniques on COVID-19 detection using chest X-ray images. Computers in "
            "Biology and Medicine 132 (2021) 104319."
        ),
    )
)
