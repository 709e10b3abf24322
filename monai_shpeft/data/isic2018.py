"""ISIC 2018 Task 3 skin lesion classification (Codella et al. 2019; Tschandl et al. 2018): challenge files -> datalist.

The challenge (challenge.isic-archive.com/data/#2018) distributes each part as an image folder and a ground-truth
folder holding one CSV::

    ISIC2018_Task3_Training_Input/ISIC_<id>.jpg                                    (10,015 images, = HAM10000)
    ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv
    ISIC2018_Task3_Validation_Input/ ... ISIC2018_Task3_Validation_GroundTruth.csv   (193 images)
    ISIC2018_Task3_Test_Input/ ...       ISIC2018_Task3_Test_GroundTruth.csv         (1,512 images)

Each CSV has the header ``image,MEL,NV,BCC,AKIEC,BKL,DF,VASC`` and one row per image with ``1.0`` in the column of
its diagnosis and ``0.0`` elsewhere. The image folders also hold ``ATTRIBUTION.txt`` and ``LICENSE.txt``, which are
not listed (only the CSV rows are). A ground-truth CSV may also sit directly in the dataset folder. The training
and test parts are required; the validation part is used when both its folder and its CSV are present.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

from monai_shpeft.data.layout import DatasetLayout, register_layout
from monai_shpeft.errors import DatasetFolderError, DatasetLayoutError

__all__ = ["ISIC2018_CLASSES", "ISIC2018_LAYOUT", "isic2018_datalist"]

logger = logging.getLogger(__name__)

#: diagnosis columns of the ground-truth CSVs, in label order
ISIC2018_CLASSES: tuple[str, ...] = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
#: datalist part -> part name in the challenge file names
_PARTS: dict[str, str] = {"training": "Training", "validation": "Validation", "test": "Test"}
_REQUIRED_PARTS = ("training", "test")
_IMAGE_COLUMN = "image"


def isic2018_datalist(dataset_dir: str | os.PathLike) -> dict[str, list[dict]]:
    """List the ISIC 2018 Task 3 images of each challenge part with their diagnoses.

    Args:
        dataset_dir: the folder holding the ``ISIC2018_Task3_<Part>_Input/`` and
            ``ISIC2018_Task3_<Part>_GroundTruth/`` folders.

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}`` of ``{"image": path, "label": index}`` items in
        CSV order; ``validation`` is empty when the validation part is not there.

    Raises:
        DatasetFolderError: if ``dataset_dir``, or the image folder or CSV of the training or test part, is missing.
        DatasetLayoutError: if a CSV has an unknown or missing diagnosis column, a row without exactly one diagnosis, or
            a row whose image does not exist.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise DatasetFolderError(
            f"ISIC 2018 dataset folder not found: {root} (expected ISIC2018_Task3_<Part>_Input/ and "
            "ISIC2018_Task3_<Part>_GroundTruth/ISIC2018_Task3_<Part>_GroundTruth.csv for Training and Test)."
        )
    parts: dict[str, list[dict]] = {}
    for part, name in _PARTS.items():
        image_dir = root / f"ISIC2018_Task3_{name}_Input"
        csv_name = f"ISIC2018_Task3_{name}_GroundTruth.csv"
        csv_file = next(
            (p for p in (root / f"ISIC2018_Task3_{name}_GroundTruth" / csv_name, root / csv_name) if p.is_file()), None
        )
        if image_dir.is_dir() and csv_file is not None:
            parts[part] = _read_ground_truth(csv_file, image_dir)
        elif part in _REQUIRED_PARTS:
            missing = image_dir if not image_dir.is_dir() else root / f"ISIC2018_Task3_{name}_GroundTruth" / csv_name
            raise DatasetFolderError(f"ISIC 2018 {name} part missing: {missing} does not exist.")
        else:
            logger.info("ISIC 2018: no %s part in %s; its validation part is carved from training.", name, root)
            parts[part] = []
    return parts


def _read_ground_truth(csv_file: Path, image_dir: Path) -> list[dict]:
    """Read one one-hot ground-truth CSV into datalist items."""
    items: list[dict] = []
    with csv_file.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or ()]
        unknown = [c for c in columns if c not in (_IMAGE_COLUMN, *ISIC2018_CLASSES)]
        missing = [c for c in (_IMAGE_COLUMN, *ISIC2018_CLASSES) if c not in columns]
        if unknown or missing:
            raise DatasetLayoutError(
                f"{csv_file}: header {columns} has unknown column(s) {unknown} / lacks {missing}; expected "
                f"{[_IMAGE_COLUMN, *ISIC2018_CLASSES]}."
            )
        reader.fieldnames = columns
        for line, row in enumerate(reader, start=2):
            name = (row[_IMAGE_COLUMN] or "").strip()
            try:
                hot = [label for label, column in enumerate(ISIC2018_CLASSES) if float(row[column]) == 1.0]
            except (TypeError, ValueError) as error:
                raise DatasetLayoutError(
                    f"{csv_file}, line {line} ({name!r}): non-numeric diagnosis cell ({error})."
                ) from error
            if len(hot) != 1:
                raise DatasetLayoutError(
                    f"{csv_file}, line {line} ({name!r}): expected exactly one 1.0 among {list(ISIC2018_CLASSES)}, "
                    f"found {len(hot)}."
                )
            image = image_dir / (name if Path(name).suffix.lower() == ".jpg" else f"{name}.jpg")
            if not image.is_file():
                raise DatasetLayoutError(f"{csv_file}, line {line}: image {name!r} has no file {image}.")
            items.append({"image": str(image), "label": hot[0]})
    if not items:
        raise DatasetLayoutError(f"{csv_file} lists no image.")
    return items


ISIC2018_LAYOUT = register_layout(
    DatasetLayout(
        name="isic2018",
        classes=ISIC2018_CLASSES,
        modality="dermoscopy",
        list_items=isic2018_datalist,
        citation=(
            "Codella N., Rotemberg V., Tschandl P., et al. Skin lesion analysis toward melanoma detection 2018: a "
            "challenge hosted by the International Skin Imaging Collaboration (ISIC). arXiv:1902.03368 (2019). "
            "Tschandl P., Rosendahl C., Kittler H. The HAM10000 dataset, a large collection of multi-source "
            "dermatoscopic images of common pigmented skin lesions. Scientific Data 5 (2018) 180161."
        ),
    )
)
