"""DICOM display semantics against pydicom's own pipeline, on files written with pydicom for the kinds its wheel
does not ship: colour with a rescale, a Modality LUT Sequence, enhanced multi-frame functional groups, SEG frames."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi
from pydicom.sequence import Sequence

from monai_shpeft.transforms import LoadMedicalImage, SelectFrame, SourceMetaKeys, apply_window, modality_transforms
from tests.test_transforms_support import new_dicom_dataset

SIZE = 16
UNIT, ONE = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # no normalisation: the outputs stay in [0, 1]


def write(path: Path, pixels: np.ndarray, edit: Callable[[Dataset], None] | None = None, rgb: bool = False) -> Path:
    """An uncompressed DICOM file of ``pixels`` (uint16 grey ``[frames,] rows, cols`` or uint8 RGB), via pydicom."""
    ds = new_dicom_dataset("CT")
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if rgb else pixels.shape[-2:]
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = "RGB" if rgb else "MONOCHROME2"
    if rgb:
        ds.PlanarConfiguration = 0
    if pixels.ndim == (4 if rgb else 3):
        ds.NumberOfFrames = pixels.shape[0]
    ds.BitsAllocated = ds.BitsStored = 8 * pixels.dtype.itemsize
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    if edit is not None:
        edit(ds)
    ds.save_as(path, enforce_file_format=True)
    return path


def grey(frames: int = 0, seed: int = 0) -> np.ndarray:
    shape = (frames, SIZE, SIZE) if frames else (SIZE, SIZE)
    return np.random.default_rng(seed).integers(0, 2000, shape).astype(np.uint16)


def test_a_colour_ct_secondary_capture_is_neither_rescaled_nor_windowed(tmp_path: Path, caplog) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (SIZE, SIZE, 3)).astype(np.uint8)

    def ct_tags(ds: Dataset) -> None:  # what a CT console writes into a screenshot it stores as RGB
        ds.RescaleIntercept, ds.RescaleSlope, ds.WindowCenter, ds.WindowWidth = -1024, 1, 40, 400

    path = write(tmp_path / "sc.dcm", rgb, ct_tags, rgb=True)
    image = LoadMedicalImage()(path)
    np.testing.assert_array_equal(image.numpy(), rgb.transpose(2, 0, 1))  # the stored colours, untouched
    assert image.meta[SourceMetaKeys.RESCALE_APPLIED] is False
    assert np.isnan(image.meta[SourceMetaKeys.WINDOW_CENTER])
    with caplog.at_level(logging.WARNING):
        out = modality_transforms("ct", image_size=SIZE, mean=UNIT, std=ONE)({"image": str(path)})["image"]
    assert float(out.std()) > 0.1  # before: all zeros (the CT window applied to colour values)
    with caplog.at_level(logging.WARNING):
        explicit = modality_transforms("ct", image_size=SIZE, mean=UNIT, std=ONE, window=(40, 400))
        explicit({"image": str(path)})
    assert "colour DICOM image: its pixels are not windowed" in caplog.text and str(path) in caplog.text


def test_a_modality_lut_sequence_is_applied_as_pydicom_applies_it(tmp_path: Path) -> None:
    def lut(ds: Dataset) -> None:
        item = Dataset()
        item.LUTDescriptor = [2048, 0, 16]
        item.ModalityLUTType = "HU"
        item.add_new(0x00283006, "US", [3 * value + 7 for value in range(2048)])  # LUTData, as US values
        ds.ModalityLUTSequence = Sequence([item])

    path = write(tmp_path / "lut.dcm", grey(), lut)
    image = LoadMedicalImage()(path)
    ds = pydicom.dcmread(path)
    np.testing.assert_array_equal(image[0].numpy(), apply_modality_lut(ds.pixel_array, ds).astype(np.float32))
    np.testing.assert_array_equal(image[0].numpy(), 3 * ds.pixel_array.astype(np.float32) + 7)
    assert image.meta[SourceMetaKeys.RESCALE_APPLIED] is True


def test_a_voi_lut_sequence_is_applied_as_pydicom_applies_it(tmp_path: Path) -> None:
    def voi(ds: Dataset) -> None:  # a non-linear display curve, and no window: only the LUT says how to show it
        ds.RescaleSlope, ds.RescaleIntercept = 1, 24  # stored 0..1999 -> 24..2023, inside the LUT's 0..2047
        item = Dataset()
        item.LUTDescriptor = [2048, 0, 8]
        item.add_new(0x00283006, "US", [int(255 * (value / 2047) ** 0.5) for value in range(2048)])
        ds.VOILUTSequence = Sequence([item])

    path = write(tmp_path / "voi.dcm", grey(), voi)
    ds = pydicom.dcmread(path)
    expected = apply_voi(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float32)  # pydicom's display values
    image = LoadMedicalImage()(path)
    np.testing.assert_array_equal(image[0].numpy(), expected)
    assert image.meta[SourceMetaKeys.VOI_LUT_APPLIED] is True
    out = modality_transforms("ct", image_size=SIZE, mean=UNIT, std=ONE)({"image": str(path)})["image"]
    torch.testing.assert_close(out[0], torch.from_numpy(expected / 255.0), atol=1e-5, rtol=0)  # the LUT's range


def _enhanced(ds: Dataset, intercepts: list[float], windows: list[tuple[float, float]]) -> None:
    """Rescale and window per frame in the functional groups, none at the top level (enhanced CT/MR files)."""
    shared = Dataset()
    transformation = Dataset()
    transformation.RescaleSlope, transformation.RescaleIntercept, transformation.RescaleType = 1, -1024, "HU"
    shared.PixelValueTransformationSequence = Sequence([transformation])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for index, (center, width) in enumerate(windows):
        group = Dataset()
        if intercepts[index] != -1024:  # frames without their own rescale take the shared one
            own = Dataset()
            own.RescaleSlope, own.RescaleIntercept, own.RescaleType = 2, intercepts[index], "HU"
            group.PixelValueTransformationSequence = Sequence([own])
        voi = Dataset()
        voi.WindowCenter, voi.WindowWidth = center, width
        group.FrameVOILUTSequence = Sequence([voi])
        frames.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)


def test_enhanced_multiframe_frames_take_their_own_rescale_and_window(tmp_path: Path) -> None:
    pixels = grey(frames=3)
    windows = [(40.0, 400.0), (-600.0, 1500.0), (300.0, 1200.0)]
    path = write(tmp_path / "enhanced.dcm", pixels, lambda ds: _enhanced(ds, [-1024, -2048, -1024], windows))
    image = LoadMedicalImage()(path)
    hounsfield = pixels.astype(np.float32) - 1024
    hounsfield[1] = 2 * pixels[1].astype(np.float32) - 2048  # frame 1 has its own functional group
    np.testing.assert_array_equal(image[0].numpy(), hounsfield)
    assert image.meta[SourceMetaKeys.RESCALE_APPLIED] is True

    kept = SelectFrame(index=1)(image)
    assert (kept.meta[SourceMetaKeys.WINDOW_CENTER], kept.meta[SourceMetaKeys.WINDOW_WIDTH]) == windows[1]
    assert SourceMetaKeys.FRAME_WINDOW_CENTERS not in kept.meta  # reduced to the kept frame, so batches collate

    out = modality_transforms("ct", image_size=SIZE, mean=UNIT, std=ONE, frame=1)({"image": str(path)})["image"]
    expected = apply_window(torch.from_numpy(hounsfield[1]), *windows[1]).clamp(0, 1)
    torch.testing.assert_close(out[0], expected, atol=1e-5, rtol=0)


def test_seg_frames_are_read_as_frames_not_as_a_frames_last_label_map(tmp_path: Path) -> None:
    frames = (np.random.default_rng(2).random((3, SIZE, SIZE)) > 0.5).astype(np.uint8)

    def seg(ds: Dataset) -> None:
        segment = Dataset()
        segment.SegmentNumber, segment.SegmentLabel = 1, "lesion"
        ds.SegmentSequence = Sequence([segment])

    path = write(tmp_path / "seg.dcm", frames, seg)
    image = LoadMedicalImage()(path)
    assert tuple(image.shape) == (1, 3, SIZE, SIZE)
    kept = SelectFrame("middle")(image)
    np.testing.assert_array_equal(kept[0].numpy(), frames[1])  # before: a 16 x 3 stripe of the wrong axis


def test_a_window_that_misses_the_values_is_named_in_a_warning(tmp_path: Path, caplog) -> None:
    path = write(tmp_path / "far.dcm", grey(), lambda ds: setattr(ds, "WindowCenter", 60000) or None)
    ds = pydicom.dcmread(path)
    ds.WindowWidth = 10
    ds.save_as(path)
    with caplog.at_level(logging.WARNING):
        modality_transforms("ct", image_size=SIZE)({"image": str(path)})
    assert "does not fit the image's values" in caplog.text and str(path) in caplog.text


# --- compressed transfer syntaxes: the [dicom] extra decodes them; without it, one line says what to install ------

COMPRESSED = ["SC_rgb_jpeg_gdcm.dcm", "SC_rgb_jls_lossy_sample.dcm", "GDCMJ2K_TextGBR.dcm"]


@pytest.mark.parametrize("name", COMPRESSED)
def test_the_dicom_extra_decodes_jpeg_lossless_jpeg2000_and_jpeg_ls(name: str) -> None:
    pytest.importorskip("pylibjpeg", reason='the [dicom] extra: pip install "monai-shpeft[dicom]"')
    path = get_testdata_file(name)
    image = LoadMedicalImage()(path)
    np.testing.assert_array_equal(image.numpy(), pydicom.dcmread(path).pixel_array.transpose(2, 0, 1))


_WITHOUT_DECODERS = """
import sys
for name in ("pylibjpeg", "libjpeg", "openjpeg", "jpeg_ls", "gdcm"):
    sys.modules[name] = None  # as if the [dicom] extra were not installed
from pydicom.data import get_testdata_file
from monai_shpeft.transforms import ImageReadError, LoadMedicalImage
try:
    LoadMedicalImage()(get_testdata_file("SC_rgb_jpeg_gdcm.dcm"))
except ImageReadError as error:
    print(error)
"""


def test_a_missing_decoder_names_the_file_its_transfer_syntax_and_the_install_command() -> None:
    done = subprocess.run([sys.executable, "-c", _WITHOUT_DECODERS], capture_output=True, text=True, timeout=120)
    message = done.stdout.strip().splitlines()[-1]
    assert "SC_rgb_jpeg_gdcm.dcm" in message
    assert "transfer syntax 'JPEG Lossless, Non-Hierarchical, First-Order Prediction" in message
    assert "(1.2.840.10008.1.2.4.70)" in message and 'pip install "monai-shpeft[dicom]"' in message
