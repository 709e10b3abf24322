"""DICOM series folders, MetaImage and NRRD volumes (MONAI's ITKReader), and the policies that make them 2-D."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import itk
import numpy as np
import pydicom
import pytest
import torch

from monai_shpeft.data import load_datalist
from monai_shpeft.data.validation import check_batch_size, check_datalist
from monai_shpeft.errors import SettingsError
from monai_shpeft.settings import check_settings
from monai_shpeft.transforms import (
    ImageReadError,
    LoadMedicalImage,
    SelectFrame,
    SourceMetaKeys,
    VolumeToImage,
    VolumeToImaged,
    modality_transforms,
)
from monai_shpeft.transforms.readers import modality_values
from tests.test_transforms_support import write_dicom_series

RNG = np.random.default_rng(0)


def _stored(slices: int = 5, rows: int = 12, columns: int = 10) -> np.ndarray:
    """Slice k holds values near 100 k, so that the order of the slices shows in the array."""
    base = np.arange(slices)[:, None, None] * 100
    return (base + RNG.integers(0, 50, (slices, rows, columns))).astype(np.int16)


def test_a_series_folder_reads_in_position_order_in_modality_units(tmp_path: Path) -> None:
    stored = _stored()
    windows = [(40.0 + k, 400.0) for k in range(5)]
    folder = write_dicom_series(tmp_path / "ct", stored, slope=1.0, intercept=-1024.0, windows=windows)
    image = LoadMedicalImage()(folder)
    assert tuple(image.shape) == (1, 5, 12, 10)  # [C, slices, rows, columns]: rows x columns not transposed
    np.testing.assert_allclose(image[0].numpy(), stored.astype(np.float32) - 1024.0)
    assert image.meta[SourceMetaKeys.SOURCE_FORMAT] == "dicom_series"
    assert image.meta[SourceMetaKeys.RESCALE_APPLIED] is True
    assert image.meta[SourceMetaKeys.NUMBER_OF_FRAMES] == 5
    assert tuple(image.meta[SourceMetaKeys.FRAME_WINDOW_CENTERS]) == tuple(c for c, _ in windows)
    # the kept slice keeps its own window, as for enhanced multi-frame files
    assert SelectFrame(1)(image).meta[SourceMetaKeys.WINDOW_CENTER] == 41.0


def test_itk_values_equal_pydicoms_modality_lut_for_every_slice(tmp_path: Path) -> None:
    stored = _stored(slices=3)
    folder = write_dicom_series(tmp_path / "ct", stored, slope=2.5, intercept=-1000.0)
    image = LoadMedicalImage()(folder)
    for index, name in enumerate(image.meta["series_files"]):
        ds = pydicom.dcmread(name)
        np.testing.assert_allclose(image[0, index].numpy(), modality_values(ds, ds.pixel_array), rtol=1e-6)


def test_a_single_slice_folder_is_a_2d_image(tmp_path: Path) -> None:
    folder = write_dicom_series(tmp_path / "one", _stored(slices=1))
    image = LoadMedicalImage()(folder)
    transform = modality_transforms("ct", image_size=14, train=False)
    assert tuple(image.shape) == (1, 1, 12, 10)
    assert tuple(transform({"image": str(folder)})["image"].shape) == (3, 14, 14)


def _two_series(tmp_path: Path) -> Path:
    folder = write_dicom_series(tmp_path / "mixed", _stored(slices=3))
    write_dicom_series(tmp_path / "other", _stored(slices=2), names=["B1.dcm", "B2.dcm"])
    for file in (tmp_path / "other").iterdir():
        shutil.copy(file, folder / file.name)
    return folder


def _sizes(tmp_path: Path) -> Path:
    folder = write_dicom_series(tmp_path / "sizes", _stored(slices=3))
    uid = pydicom.dcmread(next(folder.iterdir())).SeriesInstanceUID
    write_dicom_series(tmp_path / "small", _stored(slices=1, rows=8, columns=8), series_uid=uid, positions=[7.5])
    shutil.copy(next((tmp_path / "small").iterdir()), folder / "SMALL.dcm")
    return folder


def _not_dicom(tmp_path: Path) -> Path:
    folder = write_dicom_series(tmp_path / "notes", _stored(slices=3))
    (folder / "notes.txt").write_text("reported by Dr X")
    return folder


def _empty(tmp_path: Path) -> Path:
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


@pytest.mark.parametrize(
    ("make", "cause"),
    [
        (
            lambda p: write_dicom_series(p / "gap", _stored(slices=4), positions=[0.0, 2.5, 7.5, 10.0]),
            "slice is missing",
        ),
        (lambda p: write_dicom_series(p / "repeat", _stored(slices=3), positions=[0.0, 2.5, 2.5]), "same position"),
        (_two_series, "holds 2 series"),
        (_sizes, "different sizes: 12x10 (3 slices"),
        (_not_dicom, "notes.txt is not a DICOM file"),
        (_empty, "no files in it"),
    ],
    ids=["missing_slice", "repeated_slice", "two_series", "two_sizes", "not_dicom", "empty"],
)
def test_a_broken_series_is_refused_naming_the_folder_and_the_cause(tmp_path: Path, make, cause: str) -> None:
    folder = make(tmp_path)
    with pytest.raises(ImageReadError) as raised:
        LoadMedicalImage()(folder)
    message = str(raised.value)
    assert str(folder) in message and "DICOM series folder" in message and cause in message


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_metaimage_and_nrrd_volumes_read_in_slice_row_column_order(tmp_path: Path, suffix: str) -> None:
    volume = RNG.integers(0, 1000, (4, 9, 7)).astype(np.int16)  # slices, rows, columns
    path = tmp_path / f"volume{suffix}"
    itk.imwrite(itk.image_from_array(volume), str(path))
    image = LoadMedicalImage()(path)
    assert tuple(image.shape) == (1, 4, 9, 7)
    np.testing.assert_array_equal(image[0].numpy(), volume)
    assert image.meta[SourceMetaKeys.SOURCE_FORMAT] == {".mha": "metaimage", ".nrrd": "nrrd"}[suffix]
    assert image.meta[SourceMetaKeys.NUMBER_OF_FRAMES] == 4


def test_the_volume_policies_give_the_documented_2d_images(tmp_path: Path) -> None:
    stored = _stored()
    image = LoadMedicalImage()(
        write_dicom_series(tmp_path / "ct", stored, windows=[(40.0 + k, 400.0) for k in range(5)])
    )
    values = stored.astype(np.float32) - 1024.0
    np.testing.assert_allclose(VolumeToImage("middle")(image)[0].numpy(), values[2])
    np.testing.assert_allclose(VolumeToImage("mip")(image)[0].numpy(), values.max(0))
    adjacent = VolumeToImage("adjacent")(image)
    assert tuple(adjacent.shape) == (3, 12, 10)
    np.testing.assert_allclose(adjacent.numpy(), values[1:4])
    assert adjacent.meta[SourceMetaKeys.WINDOW_CENTER] == 42.0  # the centre slice's window
    edge = VolumeToImage("adjacent")(image, index=0)  # the first slice repeats itself as its missing neighbour
    np.testing.assert_allclose(edge.numpy(), values[[0, 0, 1]])
    # a slice given by the datalist item wins over the policy's
    picked = VolumeToImaged("image", policy="middle")({"image": image, "slice": 4})["image"]
    np.testing.assert_allclose(picked[0].numpy(), values[4])
    with pytest.raises(ValueError, match="policy must be"):
        VolumeToImage("thickest")


def test_the_ct_preset_takes_adjacent_slices_as_the_three_channels(tmp_path: Path) -> None:
    folder = write_dicom_series(tmp_path / "ct", _stored(), windows=[(40.0, 400.0)] * 5)
    out = modality_transforms("ct", image_size=14, train=False, frame="adjacent", normalization="imagenet")(
        {"image": str(folder)}
    )["image"]
    assert tuple(out.shape) == (3, 14, 14)
    assert not torch.allclose(out[0], out[2])  # three different slices, not one grey slice repeated


def test_a_datalist_may_name_series_folders(tmp_path: Path) -> None:
    items = [
        {"image": str(write_dicom_series(tmp_path / f"case{k}", _stored(slices=3))), "label": k % 2, "slice": 1}
        for k in range(4)
    ]
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": items[:2], "validation": items[2:3], "test": items[3:]}))
    split = load_datalist(datalist)
    checked = check_datalist(split, classes=["normal", "abnormal"], datalist_file=datalist)
    assert [len(checked[p]) for p in ("training", "validation", "test")] == [2, 1, 1]


def test_the_slice_policy_knob_is_checked_before_any_data() -> None:
    check_settings(method="shpeft", backbone="timm:vit_tiny_patch16_224", image_size=32, slice_policy="mip")
    with pytest.raises(SettingsError, match="slice_policy 'thickest' is not a policy"):
        check_settings(method="shpeft", backbone="timm:vit_tiny_patch16_224", image_size=32, slice_policy="thickest")


def test_a_batch_larger_than_the_training_part_is_refused_before_training(tmp_path: Path) -> None:
    items = [
        {"image": str(write_dicom_series(tmp_path / f"c{k}", _stored(slices=1))), "label": k % 2} for k in range(4)
    ]
    split = {"training": items[:2], "validation": items[2:3], "test": items[3:]}
    training = check_datalist(split)["training"]
    assert check_batch_size(training, 2) == training
    with pytest.raises(SettingsError, match=r"batch_size 8 is larger than the training part .* \(2 images\)"):
        check_batch_size(training, 8, "datalist.json")
    with pytest.raises(SettingsError, match="batch_size must be a whole number"):
        check_settings(method="shpeft", backbone="timm:vit_tiny_patch16_224", image_size=32, batch_size=0)
