"""LIMUC ulcerative colitis endoscopy (Polat et al., Zenodo 10.5281/zenodo.5827695, 2022): folders -> datalist.

The Zenodo release holds 11,276 BMP frames (352x288) from 564 patients graded by the Mayo endoscopic score, in
class folders ``Mayo 0``, ``Mayo 1``, ``Mayo 2`` and ``Mayo 3`` (file names ``UC_patient_<id>_<n>.bmp``), three
ways (each a zip of its own):

* ``train_and_validation_sets/<Mayo k>/*.bmp`` and ``test_set/<Mayo k>/*.bmp``: the authors' patient-level
  train+validation / test split used in the LIMUC paper (9,590 / 1,686 images, the split SH-PEFT reports);
* ``patient_based_classified_images/<patient id>/<Mayo k>/*.bmp``: all images grouped by patient (a patient has
  only the grades seen in their exams).

When the official split folders are present they give the ``training`` and ``test`` parts (the validation part is
then carved from training by :func:`monai_shpeft.data.prepare_datalist`). Otherwise the patient folders, or class
folders directly under the dataset folder, give a flat list to be split by the seeded stratified split. Only the
files directly in a ``Mayo k`` folder are listed (the authors' split script removes stray sub-folders there).
"""

from __future__ import annotations

import os
from pathlib import Path

from monai_shpeft.data.layout import DatasetLayout, register_layout
from monai_shpeft.errors import DatasetFolderError, DatasetLayoutError

__all__ = ["LIMUC_CLASSES", "LIMUC_LAYOUT", "limuc_datalist"]

#: class folder names in label order (Mayo endoscopic score 0-3)
LIMUC_CLASSES: tuple[str, ...] = ("Mayo 0", "Mayo 1", "Mayo 2", "Mayo 3")
_OFFICIAL_PARTS: dict[str, str] = {"training": "train_and_validation_sets", "test": "test_set"}
_PATIENT_FOLDER = "patient_based_classified_images"
_IMAGE_SUFFIXES = {".bmp", ".png", ".jpg", ".jpeg"}
_EXPECTED = (
    "train_and_validation_sets/ and test_set/ (each with 'Mayo 0'..'Mayo 3' class folders), or "
    "patient_based_classified_images/<patient>/<Mayo k>/, or 'Mayo 0'..'Mayo 3' folders"
)


def limuc_datalist(dataset_dir: str | os.PathLike) -> list[dict] | dict[str, list[dict]]:
    """List the LIMUC images with their Mayo scores.

    Args:
        dataset_dir: the folder of the unzipped release (or a folder of ``Mayo k`` class folders).

    Returns:
        ``{"training": [...], "test": [...]}`` from ``train_and_validation_sets/`` and ``test_set/`` when both are
        present, else a flat ``[{"image": path, "label": index}, ...]`` from ``patient_based_classified_images/``
        or from class folders in ``dataset_dir``; sorted by class then path.

    Raises:
        DatasetFolderError: if ``dataset_dir`` or a class folder is missing, or no known layout is found.
        DatasetLayoutError: if a class holds no image, or a folder that should hold classes has an unknown one.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise DatasetFolderError(f"LIMUC dataset folder not found: {root} (expected {_EXPECTED}).")
    official = {part: root / folder for part, folder in _OFFICIAL_PARTS.items()}
    if all(folder.is_dir() for folder in official.values()):
        return {part: _list_class_folders([folder]) for part, folder in official.items()}
    if (root / _PATIENT_FOLDER).is_dir():
        patients = sorted(p for p in (root / _PATIENT_FOLDER).iterdir() if p.is_dir() and not p.name.startswith("."))
        if not patients:
            raise DatasetLayoutError(f"LIMUC patient folder {root / _PATIENT_FOLDER} holds no patient folder.")
        return _list_class_folders(patients, require_all=False)
    if any((root / name).is_dir() for name in LIMUC_CLASSES):
        return _list_class_folders([root])
    raise DatasetFolderError(f"no LIMUC layout found in {root}: expected {_EXPECTED}.")


def _list_class_folders(parents: list[Path], require_all: bool = True) -> list[dict]:
    """List the ``Mayo k`` folders of each of ``parents``.

    Args:
        parents: folders holding ``Mayo k`` class folders.
        require_all: whether every parent must hold every class folder (patients hold only some).

    Raises:
        DatasetFolderError: if ``require_all`` and a class folder is missing.
        DatasetLayoutError: if a parent has an unknown sub-folder, or a class has no image across ``parents``.
    """
    for parent in parents:
        unknown = sorted(
            p.name
            for p in parent.iterdir()
            if p.is_dir() and p.name not in LIMUC_CLASSES and not p.name.startswith(".")
        )
        if unknown:
            raise DatasetLayoutError(
                f"{parent} has folder(s) {unknown} that are not LIMUC classes {list(LIMUC_CLASSES)}."
            )
    items: list[dict] = []
    for label, name in enumerate(LIMUC_CLASSES):
        count = 0
        for parent in parents:
            folder = parent / name
            if not folder.is_dir():
                if require_all:
                    raise DatasetFolderError(
                        f"LIMUC class folder missing: {folder} (expected {list(LIMUC_CLASSES)} in {parent})."
                    )
                continue
            images = sorted(
                p
                for p in folder.iterdir()
                if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES and not p.name.startswith(".")
            )
            if not images and require_all:
                raise DatasetLayoutError(f"LIMUC class folder {folder} holds no image.")
            items.extend({"image": str(p), "label": label} for p in images)
            count += len(images)
        if count == 0:
            where = parents[0].parent if len(parents) > 1 else parents[0]
            raise DatasetLayoutError(f"LIMUC class '{name}' has no image under {where}.")
    return items


LIMUC_LAYOUT = register_layout(
    DatasetLayout(
        name="limuc",
        classes=LIMUC_CLASSES,
        modality="endoscopy",
        list_items=limuc_datalist,
        citation=(
            "Polat G., Kani H.T., Ergenc I., Ozen Alahdab Y., Temizel A., Atug O. Labeled Images for Ulcerative "
            "Colitis (LIMUC) Dataset. Zenodo (2022), doi:10.5281/zenodo.5827695. Polat G., et al. Improving the "
            "computer-aided estimation of ulcerative colitis severity according to Mayo endoscopic score by using "
            "regression-based deep learning. Inflammatory Bowel Diseases (2022), doi:10.1093/ibd/izac226."
        ),
    )
)
