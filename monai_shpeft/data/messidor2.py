"""Messidor-2 diabetic retinopathy grades (Decencière et al. 2014; Abramoff et al. 2016): images + grades -> datalist.

The images come from ADCIS (adcis.net/en/third-party/messidor2): 1,748 macula-centred fundus photographs of 874
exams in an ``IMAGES/`` folder (Messidor-Original ``2005xxxx_xxxxx_0100_PP.png``/``.tif`` and
Messidor-Extension ``IMxxxxxx.JPG``), with ``messidor-2.csv`` pairing the two eyes of an exam. The grades come from
the Kaggle release google-brain/messidor2-dr-grades: ``messidor_data.csv`` with the columns
``image_id,adjudicated_dr_grade,adjudicated_dme,adjudicated_gradable``, the adjudicated ICDR grade 0-4 of each
image (``image_id`` is the file name) and whether it is gradable; the few ungradable images have no grade and are
skipped (their number is logged). There is no official split: the lister returns a flat list for the seeded
stratified split.

``messidor_data.csv`` may sit in the dataset folder or one folder below it (as the Kaggle archive unpacks it). An
``image_id`` that matches no file exactly is matched case-insensitively, then by its name without extension when
that is unique (copies that converted the ``.tif`` originals to another format).
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

from monai_shpeft.data.files import ImageIndex
from monai_shpeft.data.layout import DatasetLayout, register_layout
from monai_shpeft.errors import DatasetFolderError, DatasetLayoutError

__all__ = ["MESSIDOR2_CLASSES", "MESSIDOR2_LAYOUT", "messidor2_datalist"]

logger = logging.getLogger(__name__)

#: ICDR diabetic retinopathy grades 0-4 in label order
MESSIDOR2_CLASSES: tuple[str, ...] = ("no DR", "mild NPDR", "moderate NPDR", "severe NPDR", "PDR")
_GRADES_FILE = "messidor_data.csv"
_IMAGE_FOLDERS = ("IMAGES", "images", "Images")
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}
_ID_COLUMN = "image_id"
_GRADE_COLUMN = "adjudicated_dr_grade"
_GRADABLE_COLUMN = "adjudicated_gradable"
_EXPECTED = f"IMAGES/ with the fundus images and {_GRADES_FILE} (columns {_ID_COLUMN},{_GRADE_COLUMN},...)"


def messidor2_datalist(dataset_dir: str | os.PathLike) -> list[dict]:
    """List the gradable Messidor-2 images with their adjudicated DR grades.

    Args:
        dataset_dir: the folder holding ``IMAGES/`` and ``messidor_data.csv`` (or a sub-folder holding the CSV).

    Returns:
        ``[{"image": path, "label": grade}, ...]`` in CSV order, ungradable images left out (their number is
        logged).

    Raises:
        DatasetFolderError: if ``dataset_dir``, ``IMAGES/`` or ``messidor_data.csv`` is missing.
        DatasetLayoutError: if the CSV lacks a needed column, a grade is not 0-4, a gradable row has no grade, or a row
            names an image that does not exist; or if no image is gradable.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise DatasetFolderError(f"Messidor-2 dataset folder not found: {root} (expected {_EXPECTED}).")
    image_dir = next((root / name for name in _IMAGE_FOLDERS if (root / name).is_dir()), None)
    if image_dir is None:
        raise DatasetFolderError(f"Messidor-2 image folder missing: {root / 'IMAGES'} (expected {_EXPECTED}).")
    grades_file = _find_grades_file(root)
    images = ImageIndex(image_dir, _IMAGE_SUFFIXES, "Messidor-2")
    items: list[dict] = []
    ungradable = 0
    with grades_file.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = {_ID_COLUMN, _GRADE_COLUMN} - set(reader.fieldnames or ())
        if missing:
            raise DatasetLayoutError(f"{grades_file} lacks column(s) {sorted(missing)} (has {reader.fieldnames}).")
        for line, row in enumerate(reader, start=2):
            image_id = (row.get(_ID_COLUMN) or "").strip()
            grade = (row.get(_GRADE_COLUMN) or "").strip()
            gradable = (row.get(_GRADABLE_COLUMN) or "").strip()
            if not image_id:
                raise DatasetLayoutError(f"{grades_file}, line {line}: empty {_ID_COLUMN}.")
            # adjudicated_gradable 0 (or, without that cell, no grade) marks an image without a label
            is_gradable = _number(gradable, grades_file, line) != 0 if gradable else bool(grade)
            if not is_gradable:
                ungradable += 1
                continue
            if not grade:
                raise DatasetLayoutError(
                    f"{grades_file}, line {line}: gradable image {image_id!r} has no {_GRADE_COLUMN}."
                )
            label = _number(grade, grades_file, line)
            if label not in range(len(MESSIDOR2_CLASSES)):
                raise DatasetLayoutError(
                    f"{grades_file}, line {line}: {image_id!r} has DR grade {grade!r}, not one of 0-4."
                )
            items.append({"image": str(images.find(image_id, f"{grades_file}, line {line}:")), "label": label})
    logger.info(
        "Messidor-2: %d gradable image(s); skipped %d ungradable one(s) of %s.", len(items), ungradable, grades_file
    )
    if not items:
        raise DatasetLayoutError(f"{grades_file} lists no gradable image.")
    return items


def _find_grades_file(root: Path) -> Path:
    """Return ``messidor_data.csv`` from ``root`` or one of its sub-folders."""
    if (root / _GRADES_FILE).is_file():
        return root / _GRADES_FILE
    nested = sorted(root.glob(f"*/{_GRADES_FILE}"))
    if nested:
        return nested[0]
    raise DatasetFolderError(
        f"Messidor-2 grades file missing: {root / _GRADES_FILE} (expected {_EXPECTED}; the grades are the Kaggle "
        "release google-brain/messidor2-dr-grades)."
    )


def _number(value: str, grades_file: Path, line: int) -> int:
    """Parse an integer CSV cell written as ``2`` or ``2.0``."""
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not number.is_integer():
        raise DatasetLayoutError(f"{grades_file}, line {line}: {value!r} is not an integer.")
    return int(number)


MESSIDOR2_LAYOUT = register_layout(
    DatasetLayout(
        name="messidor2",
        classes=MESSIDOR2_CLASSES,
        modality="fundus",
        list_items=messidor2_datalist,
        citation=(
            "Decencière E., Zhang X., Cazuguel G., et al. Feedback on a publicly distributed image database: the "
            "Messidor database. Image Analysis & Stereology 33(3) (2014) 231-234. Grades: Abràmoff M.D., Lou Y., "
            "Erginay A., et al. Improved automated detection of diabetic retinopathy on a publicly available "
            "dataset through integration of deep learning. Investigative Ophthalmology & Visual Science 57(13) "
            "(2016) 5200-5206."
        ),
    )
)
