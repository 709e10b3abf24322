"""Real image files for the transforms tests (helpers only; this module holds no test).

Raster files are written with PIL, volumes with nibabel; DICOM files are the real ones pydicom (and nibabel) ship,
used only when present locally (``download=False``: nothing is fetched), or derived from them with pydicom.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

#: real nibabel test file: MR with RescaleSlope 2, RescaleIntercept -4096 and a window (slope 2 shows a double rescale)
NIBABEL_DECIMAL_RESCALE = Path(nib.__file__).parent / "nicom" / "tests" / "data" / "decimal_rescale.dcm"


def new_dicom_dataset(modality: str = "OT") -> Dataset:
    """An empty secondary-capture DICOM dataset (explicit VR little endian) with its file meta and UIDs set."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    return ds


def pydicom_file(name: str) -> Path:
    """Path of a test file shipped with pydicom, or skip the test when it is not installed locally."""
    path = get_testdata_file(name, download=False)
    if path is None or not Path(path).is_file():
        pytest.skip(f"pydicom test file {name} is not available locally")
    return Path(path)


def local_file(path: Path) -> Path:
    """``path`` if it exists, or skip the test."""
    if not path.is_file():
        pytest.skip(f"{path} is not available locally")
    return path


def pixels(seed: int, shape: tuple[int, ...], high: int = 256, dtype: type = np.uint8) -> np.ndarray:
    """Deterministic random pixels in [0, high)."""
    return np.random.default_rng(seed).integers(0, high, size=shape).astype(dtype)


def write_raster_files(folder: Path) -> dict[str, Path]:
    """Write one file per PIL case: 8-bit grey/RGB/RGBA, 16-bit grey, palette, CMYK JPEG, TIFF tile, ...

    Images are 20 rows x 30 columns so that a transposition shows.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rgb = pixels(1, (20, 30, 3))
    files = {
        "grey8_png": ("grey8.png", Image.fromarray(pixels(0, (20, 30)))),
        "rgb8_jpeg": ("rgb8.jpg", Image.fromarray(rgb)),
        "rgba_png": ("rgba.png", Image.fromarray(pixels(2, (20, 30, 4)), mode="RGBA")),
        "grey16_png": ("grey16.png", Image.fromarray(pixels(3, (20, 30), high=60000, dtype=np.uint16))),
        "palette_png": ("palette.png", Image.fromarray(rgb).convert("P")),
        "cmyk_jpeg": ("cmyk.jpg", Image.fromarray(rgb).convert("CMYK")),
        "rgb_tiff": ("tile.tif", Image.fromarray(rgb)),
        "grey16_tiff": ("grey16.tif", Image.fromarray(pixels(4, (20, 30), high=4096, dtype=np.uint16))),
        "grey_alpha_png": ("grey_alpha.png", Image.fromarray(pixels(5, (20, 30, 2))[..., 0]).convert("LA")),
        "bilevel_png": ("bilevel.png", Image.fromarray(pixels(6, (20, 30), high=2) * 255).convert("1")),
        "rgb_bmp": ("rgb.bmp", Image.fromarray(rgb)),
    }
    paths = {}
    for key, (name, image) in files.items():
        path = folder / name
        image.save(path, quality=95) if name.endswith(".jpg") else image.save(path)
        paths[key] = path
    return paths


def write_monochrome1(folder: Path, source: str = "MR_small.dcm") -> tuple[Path, Path]:
    """A real pydicom file re-saved as MONOCHROME1, and as MONOCHROME2 (unchanged pixels) for comparison.

    No MONOCHROME1 file with pixel data ships with pydicom (its MONOCHROME1 files are header-only), so the
    photometric interpretation of a real image is changed; the pixel data are the file's own.
    """
    folder.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(pydicom_file(source))
    mono2 = folder / "mono2.dcm"
    ds.save_as(mono2)
    ds.PhotometricInterpretation = "MONOCHROME1"
    mono1 = folder / "mono1.dcm"
    ds.save_as(mono1)
    return mono1, mono2


def write_without_pixel_data(folder: Path, source: str = "CT_small.dcm") -> Path:
    """A real pydicom file re-saved with its PixelData element removed."""
    folder.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(pydicom_file(source))
    del ds.PixelData
    path = folder / "no_pixels.dcm"
    ds.save_as(path)
    return path


def write_truncated(source: Path, folder: Path) -> Path:
    """Copy ``source`` with the second half of its bytes cut off."""
    data = source.read_bytes()
    path = folder / f"truncated_{source.name}"
    path.write_bytes(data[: len(data) // 2])
    return path


def write_nifti(folder: Path, name: str = "volume.nii.gz", slope: float | None = None) -> tuple[Path, np.ndarray]:
    """A 3-D int16 NIfTI volume (10 x 12 x 7) and the values nibabel gives back (scaled when ``slope`` is set)."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = pixels(7, (10, 12, 7), high=2000, dtype=np.int16)
    image = nib.Nifti1Image(raw, np.eye(4))
    if slope is not None:
        image.header.set_slope_inter(slope, -100.0)
    path = folder / name
    nib.save(image, path)
    return path, np.asarray(nib.load(path).dataobj)


def write_dicom_series(
    folder: Path,
    stored: np.ndarray,
    slope: float = 1.0,
    intercept: float = -1024.0,
    spacing: float = 2.5,
    windows: list[tuple[float, float]] | None = None,
    series_uid: str | None = None,
    positions: list[float] | None = None,
    names: list[str] | None = None,
) -> Path:
    """Write ``stored`` (``[slices, rows, columns]`` int16) as a CT series, one file per slice, as scanners do.

    The files are named in a shuffled order (``names``, default reversed) so that a reader must sort by position;
    slice ``k`` lies at ``positions[k]`` mm along z (default ``k * spacing``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid, frame_uid = generate_uid(), generate_uid()
    count = stored.shape[0]
    positions = positions if positions is not None else [k * spacing for k in range(count)]
    names = names or [f"IM{count - k:04d}.dcm" for k in range(count)]
    for k in range(count):
        ds = new_dicom_dataset("CT")
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.PatientID, ds.SeriesDate = "SERIES-TEST", "20260101"
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, float(positions[k])]
        ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], spacing
        ds.Rows, ds.Columns = stored.shape[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "HU"
        if windows is not None:
            ds.WindowCenter, ds.WindowWidth = windows[k]
        ds.PixelData = stored[k].astype("<i2").tobytes()
        ds.save_as(folder / names[k], enforce_file_format=True)
    return folder
