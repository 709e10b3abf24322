"""Writers of tiny fake datasets, each in the published layout its ``monai_shpeft.data`` lister reads.

Every writer puts real image files (PIL-written rasters, or DICOM copies of pydicom's test files) and the
release's label files under ``root`` and returns the folder to give the lister (or a bundle's ``--dataset_dir``).
The counts are parameters: the layout tests keep them minimal, the bundle tests raise them so that a seeded
stratified split (or a validation part carved from an official training part) has every class in every part.
"""

from __future__ import annotations

import csv
import json
import zlib
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.data import get_testdata_file

from monai_shpeft.data import COVID19_CT_CLASSES, ISIC2018_CLASSES, LIMUC_CLASSES, OCT_CLASSES

__all__ = [
    "write_chaoyang",
    "write_chest_xray",
    "write_covid19_radiography",
    "write_covid_ct",
    "write_covid_cxr",
    "write_csv",
    "write_ddsm",
    "write_image",
    "write_isic2018",
    "write_limuc",
    "write_messidor2",
    "write_oct",
]

_PIL_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".jfif": "JPEG", ".png": "PNG", ".bmp": "BMP", ".tif": "TIFF"}


def write_image(path: Path, value: int = 100, size: int = 8) -> Path:
    """Write a real ``size`` x ``size`` RGB image around ``value`` in the format its suffix names.

    The pixels are ``value`` plus noise seeded by ``value`` and the file name: files of one name and value (in
    two part folders) are the same picture, as in releases that file an image twice; any others are different
    pictures. Flat pictures would all be near duplicates of each other (one difference hash): one cluster that a
    split keeping duplicates together, the default, could not divide.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([value % 256, zlib.crc32(path.name.encode())])
    pixels = np.clip(rng.normal(value % 256, 40, (size, size, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, format=_PIL_FORMATS[path.suffix.lower()])
    return path


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    """Write a CSV file with ``header`` and ``rows``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# --------------------------------------------------------------------------------------------------- Chaoyang


def write_chaoyang(root: Path, train_per_class: int = 3, test_per_class: int = 1) -> Path:
    """``chaoyang-data/`` with ``train/``, ``test/`` and the JSON label files of the release; returns ``root``."""
    release = root / "chaoyang-data"
    for part, per_class in (("train", train_per_class), ("test", test_per_class)):
        entries = []
        for label in range(4):
            for index in range(per_class):
                name = f"{part}/{label}-{index}.JPG"
                write_image(release / name, 40 * label + index)
                entries.append({"name": name, "label": label})
        (release / f"{part}.json").write_text(json.dumps(entries))
    return root


# --------------------------------------------------------------------------------------------------- COVID-CT


def write_covid_ct(root: Path, counts: dict[str, int] | None = None) -> Path:
    """``Images-processed/CT_<class>/`` and ``Data-split/<class>/<part>CT_<class>.txt`` of the release.

    Args:
        root: the release folder to write (returned).
        counts: images per class of each official part (``train``, ``val``, ``test``); default 3 / 2 / 2.
    """
    counts = counts or {"train": 3, "val": 2, "test": 2}
    for label, name in enumerate(COVID19_CT_CLASSES):
        lines = {}
        for part, count in counts.items():
            names = [f"{name} {part} {index}.png" for index in range(count)]
            for file_name in names:
                write_image(root / "Images-processed" / f"CT_{name}" / file_name, label * 50)
            lines[part] = names
        # the release's extension mix-up: listed as .png, stored as .jpeg
        (root / "Images-processed" / f"CT_{name}" / f"{name} train 0.png").rename(
            root / "Images-processed" / f"CT_{name}" / f"{name} train 0.jpeg"
        )
        for part, names in lines.items():
            split_file = root / "Data-split" / name / f"{part}CT_{name}.txt"
            split_file.parent.mkdir(parents=True, exist_ok=True)
            split_file.write_text("\r\n".join(names) + "\r\n\r\n")
    (root / "Images-processed" / "CT_COVID" / "readme.txt").write_text("not an image")
    return root


# ------------------------------------------------------------------------------------ Kermany: chest X-ray, OCT


def write_chest_xray(
    root: Path, with_val: bool = True, train_count: int = 4, val_count: int = 2, test_count: int = 2
) -> Path:
    """The Kaggle copy: ``chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}`` plus the archive's leftovers.

    Each part gets ``<part>_count`` NORMAL and as many PNEUMONIA images, the pneumonia ones alternating
    bacterial / viral by file name (``person<i>_bacteria_<i>.jpeg``, ``person<i>_virus_<i>.jpeg``). Without
    ``with_val`` it is the Mendeley release's layout (no ``val/``). Returns ``root``.
    """
    release = root / "chest_xray"
    parts = {"train": train_count, "test": test_count, **({"val": val_count} if with_val else {})}
    for part, count in parts.items():
        for index in range(count):
            write_image(release / part / "NORMAL" / f"IM-{index:04d}-0001.jpeg")
            kind = "bacteria" if index % 2 == 0 else "virus"
            write_image(release / part / "PNEUMONIA" / f"person{index}_{kind}_{index}.jpeg")
        (release / part / ".DS_Store").write_text("")
    (release / "__MACOSX").mkdir()
    (release / "train" / "__MACOSX").mkdir()
    write_image(release / "chest_xray" / "train" / "NORMAL" / "duplicate.jpeg")
    return root


def write_oct(root: Path, train_per_class: int = 4, test_per_class: int = 1, folder: str = "OCT2017 ") -> Path:
    """The Kaggle ``OCT2017 `` folder (trailing space included) with ``train/`` and ``test/`` class folders.

    File names follow the release, ``<CLASS>-<patient>-<n>.jpeg``. Returns ``root`` (the folder holding it).
    """
    release = root / folder
    for part, count in (("train", train_per_class), ("test", test_per_class)):
        for label, name in enumerate(OCT_CLASSES):
            for index in range(count):
                write_image(release / part / name / f"{name}-{1000 + index}-1.jpeg", 60 * label + index)
    return root


# ------------------------------------------------------------------------------------------------------- LIMUC


def write_limuc(
    root: Path, official: bool = True, patients: bool = True, train_per_class: int = 3, test_per_class: int = 1
) -> Path:
    """The unzipped Zenodo release: official train/test split folders and/or the patient-based folders."""
    if official:
        for part, count in (("train_and_validation_sets", train_per_class), ("test_set", test_per_class)):
            for label, name in enumerate(LIMUC_CLASSES):
                for index in range(count):
                    write_image(root / part / name / f"UC_patient_{label}_{index}.bmp")
    if patients:
        for patient in (1, 2):
            for label, name in enumerate(LIMUC_CLASSES):
                for index in range(2):
                    if patient == 2 and label == 3:
                        continue  # a patient has only some grades
                    write_image(
                        root / "patient_based_classified_images" / str(patient) / name / f"UC_{patient}_{index}.bmp"
                    )
        (root / "patient_based_classified_images" / "1" / "Mayo 0" / "stray").mkdir()
    return root


# --------------------------------------------------------------------------------------------------- Messidor-2


def write_messidor2(root: Path, per_grade: int = 4) -> Path:
    """ADCIS ``IMAGES/`` and the Kaggle grades CSV, with an ungradable image; returns ``root``."""
    rows: list[list[object]] = []
    for grade in range(5):
        for index in range(per_grade):
            name = f"2005{grade}{index:03d}_0100_PP.png" if index % 2 else f"IM{grade}{index:05d}.JPG"
            write_image(root / "IMAGES" / name, grade * 40)
            rows.append([name, grade, index % 2, 1])
    write_image(root / "IMAGES" / "IM099999.JPG")
    rows.append(["IM099999.JPG", "", "", 0])
    (root / "IMAGES" / "Thumbs.db").write_text("")
    (root / "messidor-2.csv").write_text("left;right\n")
    write_csv(
        root / "messidor2-dr-grades" / "messidor_data.csv",
        ["image_id", "adjudicated_dr_grade", "adjudicated_dme", "adjudicated_gradable"],
        rows,
    )
    return root


# ---------------------------------------------------------------------------------------------------- ISIC 2018


def write_isic2018(root: Path, parts: dict[str, int] | None = None) -> Path:
    """The challenge's ``_Input`` folders and one-hot ``_GroundTruth`` CSVs.

    Args:
        root: the folder to write (returned).
        parts: images per class of each challenge part (``Training``, ``Validation``, ``Test``); default 3 / 1 / 1.
    """
    parts = parts or {"Training": 3, "Validation": 1, "Test": 1}
    for part, per_class in parts.items():
        rows = []
        for label in range(len(ISIC2018_CLASSES)):
            for index in range(per_class):
                image_id = f"ISIC_{part[:2]}{label}{index:04d}"
                write_image(root / f"ISIC2018_Task3_{part}_Input" / f"{image_id}.jpg", label * 30)
                rows.append([image_id, *(f"{float(k == label):.1f}" for k in range(len(ISIC2018_CLASSES)))])
        (root / f"ISIC2018_Task3_{part}_Input" / "ATTRIBUTION.txt").write_text("credits")
        write_csv(
            root / f"ISIC2018_Task3_{part}_GroundTruth" / f"ISIC2018_Task3_{part}_GroundTruth.csv",
            ["image", *ISIC2018_CLASSES],
            rows,
        )
    return root


# ----------------------------------------------------------------------------------------------------- CBIS-DDSM

_DDSM_HEADER = ["patient_id", "left or right breast", "image view", "abnormality id", "pathology", "image file path"]
#: test patients are numbered from here, so training patients are 1..10 at most
_DDSM_FIRST_TEST_PATIENT = 11


def _ddsm_case(kind: str, split: str, patient: int, view: str) -> tuple[str, str, str]:
    """Series folder, study UID and series UID of one full mammogram."""
    folder = f"{kind}-{'Training' if split == 'train' else 'Test'}_P_{patient:05d}_LEFT_{view}"
    uid = f"1.3.6.1.4.1.9590.100.1.2.{1 if kind == 'Mass' else 2}{patient}{len(view)}"
    return folder, f"{uid}1", f"{uid}2"


def write_ddsm(root: Path, kaggle: bool = False, train_patients: int = 3, test_patients: int = 2) -> Path:
    """The four description CSVs and the TCIA download (descriptive folder names) or the Kaggle JPEG copy.

    Each patient has a left CC and a left MLO mammogram for both the mass and the calcification CSVs, one of the
    two views benign and the other malignant (patient 1: both malignant, through a second abnormality), so every
    part holds both classes. The DICOM files are copies of pydicom's ``MR_small.dcm`` (64 x 64).

    Args:
        root: the folder to write (returned).
        kaggle: write the Kaggle re-release (``csv/`` and ``jpeg/``) instead of the TCIA download.
        train_patients: training patients, numbered 1..``train_patients`` (at most 10).
        test_patients: test patients, numbered from 11.
    """
    if not 1 <= train_patients < _DDSM_FIRST_TEST_PATIENT:
        raise ValueError(f"train_patients must be 1-{_DDSM_FIRST_TEST_PATIENT - 1}, got {train_patients}.")
    template = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    pathologies = ["BENIGN", "MALIGNANT", "BENIGN_WITHOUT_CALLBACK", "MALIGNANT"]
    splits = (
        ("train", range(1, 1 + train_patients)),
        ("test", range(_DDSM_FIRST_TEST_PATIENT, _DDSM_FIRST_TEST_PATIENT + test_patients)),
    )
    for kind in ("Mass", "Calc"):
        for split, patients in splits:
            rows = []
            for patient in patients:
                for view in ("CC", "MLO"):
                    folder, study, series = _ddsm_case(kind, split, patient, view)
                    pathology = pathologies[(patient + len(view)) % 4]
                    csv_path = f"{folder}/{study}/{series}/000000.dcm"
                    rows.append([f"P_{patient:05d}", "LEFT", view, 1, pathology, csv_path + "\n"])
                    if patient == 1:  # a second abnormality of the same mammogram, malignant
                        rows.append([f"P_{patient:05d}", "LEFT", view, 2, "MALIGNANT", csv_path])
                    if kaggle:
                        write_image(root / "jpeg" / series / "1-249.jpg")
                        write_image(root / "jpeg" / f"{series}9" / "2-1.jpg")  # cropped / ROI series
                        continue
                    full = (
                        root
                        / "CBIS-DDSM"
                        / folder
                        / f"07-20-2016-DDSM-NA-{patient}"
                        / "1.000000-full mammogram images-1"
                    )
                    full.mkdir(parents=True)
                    template.save_as(full / "1-1.dcm")
                    roi = root / "CBIS-DDSM" / f"{folder}_1" / "09-06-2017-DDSM-NA-1" / "1.000000-ROI mask images-2"
                    roi.mkdir(parents=True)
                    template.save_as(roi / "1-1.dcm")
                    template.save_as(roi / "1-2.dcm")
            csv_dir = root / "csv" if kaggle else root
            write_csv(csv_dir / f"{kind.lower()}_case_description_{split}_set.csv", _DDSM_HEADER, rows)
    return root


# ------------------------------------------------------------------------------------------ COVID chest X-rays


def write_covid_cxr(root: Path, per_class: int = 4) -> Path:
    """The Kaggle release ``covid-cxr-image-dataset-research/COVID_IEEE/{covid,normal,virus}/`` in mixed formats.

    Images cycle through ``.jpeg``, ``.png``, ``.jfif`` and ``.jpg``; ``covid/`` also holds a text file that is
    not an image. Returns the ``covid-cxr-image-dataset-research`` folder.
    """
    top = root / "covid-cxr-image-dataset-research"
    release = top / "COVID_IEEE"
    suffixes = (".jpeg", ".png", ".jfif", ".jpg")
    for label, name in enumerate(("covid", "normal", "virus")):
        for index in range(per_class):
            write_image(release / name / f"{name}{index}{suffixes[index % len(suffixes)]}", label * 60 + index)
    (release / "covid" / "notes.txt").write_text("not an image")
    return top


def write_covid19_radiography(root: Path, per_class: int = 4) -> Path:
    """``COVID-19_Radiography_Dataset/<class>/{images,masks}/`` with the metadata spreadsheets; returns ``root``."""
    release = root / "COVID-19_Radiography_Dataset"
    for label, name in enumerate(("COVID", "Normal", "Lung_Opacity", "Viral Pneumonia")):
        for index in range(per_class):
            write_image(release / name / "images" / f"{name}-{index}.png", label * 60)
            write_image(release / name / "masks" / f"{name}-{index}.png", 255)
        (release / f"{name}.metadata.xlsx").write_text("")
    return root
