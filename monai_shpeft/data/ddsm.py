"""CBIS-DDSM full mammograms (Lee et al., Scientific Data 2017): description CSVs + DICOM -> benign/malignant datalist.

TCIA (doi:10.7937/K9/TCIA.2016.7O02S9CY) distributes the DICOM files, downloaded with the NBIA Data Retriever into
``CBIS-DDSM/`` (often inside a ``manifest-<n>/`` folder), and four case-description CSVs with the official split:
``mass_case_description_train_set.csv``, ``calc_case_description_train_set.csv``,
``mass_case_description_test_set.csv`` and ``calc_case_description_test_set.csv``. Each CSV row is one abnormality;
its ``pathology`` is ``MALIGNANT``, ``BENIGN`` or ``BENIGN_WITHOUT_CALLBACK`` and its ``image file path`` names the
full mammogram as ``<series folder>/<study UID>/<series UID>/000000.dcm``, e.g.
``Mass-Training_P_00001_LEFT_CC/1.3.6.1.4.1.9590.100.1.2.4221.../1.3.6.1.4.1.9590.100.1.2.3423.../000000.dcm``.

The folders on disk rarely follow those paths: the current Data Retriever writes descriptive names, e.g.
``CBIS-DDSM/Mass-Training_P_00001_LEFT_CC/07-20-2016-DDSM-NA-74994/1.000000-full mammogram images-24515/1-1.dcm``,
and only the first component, the series folder, is kept. A CSV path is therefore resolved in this order: the path
as written (the "classic" directory layout); else the DICOM files under ``CBIS-DDSM/<series folder>/``: the only
one, or the one whose folder is the CSV's series UID or says ``full mammogram``. The series folder of a full
mammogram holds only that image; the cropped lesion and ROI mask images sit in ``<series folder>_<n>/`` folders,
which are never searched, so masks are never listed.

A mammogram with several abnormalities has several rows; it is listed once, malignant if any of its abnormalities
is malignant (``BENIGN_WITHOUT_CALLBACK`` counts as benign). The CSVs give 3,103 full mammograms: 2,458 training and
645 test.

The Kaggle JPEG re-release (awsaf49/cbis-ddsm-breast-cancer-image-dataset: ``csv/`` with the same four CSVs and
``jpeg/<series UID>/1-<n>.jpg``) is read too: the CSV path's series UID names the ``jpeg/`` folder, which must hold
exactly one image.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

from monai_shpeft.data.layout import DatasetLayout, register_layout
from monai_shpeft.errors import DatasetFolderError, DatasetLayoutError

__all__ = ["DDSM_CLASSES", "DDSM_LAYOUT", "ddsm_datalist"]

#: class names in label order
DDSM_CLASSES: tuple[str, ...] = ("benign", "malignant")
#: ``pathology`` value -> label
_PATHOLOGY: dict[str, int] = {"BENIGN": 0, "BENIGN_WITHOUT_CALLBACK": 0, "MALIGNANT": 1}
#: datalist part -> CSV part name
_PARTS: dict[str, str] = {"training": "train", "test": "test"}
_PATH_COLUMN = "image file path"
_PATHOLOGY_COLUMN = "pathology"
_EXPECTED = (
    "the four *_case_description_{train,test}_set.csv files and CBIS-DDSM/<series folder>/.../*.dcm from TCIA "
    "(or csv/ and jpeg/ of the Kaggle JPEG re-release)"
)


def ddsm_datalist(
    dataset_dir: str | os.PathLike, abnormalities: Sequence[str] = ("mass", "calc")
) -> dict[str, list[dict]]:
    """List the CBIS-DDSM full mammograms of the official training and test parts as benign (0) / malignant (1).

    Args:
        dataset_dir: the folder holding the case-description CSVs and ``CBIS-DDSM/`` (or a ``manifest-*/CBIS-DDSM/``
            folder, or the series folders directly); or the Kaggle re-release folder holding ``csv/`` and ``jpeg/``.
        abnormalities: which description CSVs to read, ``"mass"`` and/or ``"calc"``.

    Returns:
        ``{"training": [...], "test": [...]}`` of ``{"image": path, "label": index}`` items, one per full
        mammogram, sorted by path (the validation part is carved from training by
        :func:`monai_shpeft.data.prepare_datalist`).

    Raises:
        DatasetFolderError: if ``dataset_dir``, a description CSV or the image folder is missing.
        DatasetLayoutError: if a CSV lacks a needed column, has an unknown ``pathology``, or has an ``image file path``
            that matches no file (or several) on disk.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise DatasetFolderError(f"CBIS-DDSM dataset folder not found: {root} (expected {_EXPECTED}).")
    kaggle = (root / "csv").is_dir() and (root / "jpeg").is_dir()
    csv_dir = root / "csv" if kaggle else root
    resolve = _KaggleResolver(root / "jpeg") if kaggle else _TciaResolver(_dicom_root(root))
    parts: dict[str, list[dict]] = {}
    for part, split in _PARTS.items():
        labels: dict[str, int] = {}
        for abnormality in abnormalities:
            csv_file = csv_dir / f"{abnormality}_case_description_{split}_set.csv"
            if not csv_file.is_file():
                raise DatasetFolderError(f"CBIS-DDSM description CSV missing: {csv_file} (expected {_EXPECTED}).")
            for image, label in _read_description(csv_file, resolve):
                labels[image] = max(label, labels.get(image, 0))
        parts[part] = [{"image": image, "label": labels[image]} for image in sorted(labels)]
    return parts


def _dicom_root(root: Path) -> Path:
    """The folder holding the series folders of the TCIA download."""
    candidates = [root / "CBIS-DDSM", *sorted(root.glob("manifest-*/CBIS-DDSM"))]
    found = next((c for c in candidates if c.is_dir()), None)
    if found is not None:
        return found
    if any(p.is_dir() and p.name.startswith(("Mass-", "Calc-")) for p in root.iterdir()):
        return root
    raise DatasetFolderError(f"CBIS-DDSM image folder missing: {root / 'CBIS-DDSM'} (expected {_EXPECTED}).")


def _read_description(csv_file: Path, resolve: _TciaResolver | _KaggleResolver) -> list[tuple[str, int]]:
    """Read ``(image file, label)`` pairs from one case-description CSV."""
    pairs: list[tuple[str, int]] = []
    with csv_file.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = {_PATH_COLUMN, _PATHOLOGY_COLUMN} - set(reader.fieldnames or ())
        if missing:
            raise DatasetLayoutError(f"{csv_file} lacks column(s) {sorted(missing)} (has {reader.fieldnames}).")
        for line, row in enumerate(reader, start=2):
            pathology = (row[_PATHOLOGY_COLUMN] or "").strip().upper()
            if pathology not in _PATHOLOGY:
                raise DatasetLayoutError(
                    f"{csv_file}, line {line}: unknown pathology {row[_PATHOLOGY_COLUMN]!r} (expected one of "
                    f"{sorted(_PATHOLOGY)})."
                )
            csv_path = (row[_PATH_COLUMN] or "").strip().strip('"').replace("\\", "/")
            components = [c for c in csv_path.split("/") if c]
            if len(components) < 2:
                raise DatasetLayoutError(f"{csv_file}, line {line}: malformed {_PATH_COLUMN} {csv_path!r}.")
            pairs.append((str(resolve(components, f"{csv_file}, line {line}")), _PATHOLOGY[pathology]))
    return pairs


class _TciaResolver:
    """Find the DICOM file of a CSV ``image file path`` in a TCIA download (see the module docstring)."""

    def __init__(self, dicom_root: Path) -> None:
        self.dicom_root = dicom_root
        self._files: dict[Path, list[Path]] = {}

    def __call__(self, components: list[str], where: str) -> Path:
        direct = self.dicom_root.joinpath(*components)
        if direct.is_file():
            return direct
        series_folder = self.dicom_root / components[0]
        if not series_folder.is_dir():
            raise DatasetLayoutError(f"{where}: image '{'/'.join(components)}' has no series folder {series_folder}.")
        if series_folder not in self._files:
            self._files[series_folder] = sorted(series_folder.rglob("*.dcm"))
        files = self._files[series_folder]
        if len(files) > 1:
            series_uid = components[-2] if len(components) >= 3 else ""
            files = [f for f in files if f.parent.name == series_uid or "full mammogram" in f.parent.name.lower()]
        if len(files) != 1:
            found = f"{len(files)} candidate DICOM files" if files else "no DICOM file"
            raise DatasetLayoutError(f"{where}: image '{'/'.join(components)}' matches {found} under {series_folder}.")
        return files[0]


class _KaggleResolver:
    """Find the JPEG of a CSV ``image file path`` in the Kaggle re-release: ``jpeg/<series UID>/<one image>.jpg``."""

    def __init__(self, jpeg_root: Path) -> None:
        self.jpeg_root = jpeg_root

    def __call__(self, components: list[str], where: str) -> Path:
        folder = self.jpeg_root / components[-2]
        files = sorted(folder.glob("*.jpg")) if folder.is_dir() else []
        if len(files) != 1:
            found = f"{len(files)} JPEG files" if files else "no JPEG file"
            raise DatasetLayoutError(f"{where}: image '{'/'.join(components)}' matches {found} in {folder}.")
        return files[0]


DDSM_LAYOUT = register_layout(
    DatasetLayout(
        name="ddsm",
        classes=DDSM_CLASSES,
        modality="mammography",
        list_items=ddsm_datalist,
        citation=(
            "Lee R.S., Gimenez F., Hoogi A., Miyake K.K., Gorovoy M., Rubin D.L. A curated mammography data set for "
            "use in computer-aided detection and diagnosis research. Scientific Data 4 (2017) 170177. Data: "
            "Sawyer-Lee R., Gimenez F., Hoogi A., Rubin D. Curated Breast Imaging Subset of DDSM. The Cancer Imaging "
            "Archive (2016), doi:10.7937/K9/TCIA.2016.7O02S9CY."
        ),
    )
)
