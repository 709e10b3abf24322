"""Volumes as clinicians store them: a DICOM series (a folder of slices), MetaImage and NRRD, read by MONAI's ITKReader.

ITK (through MONAI's ``ITKReader``) finds the series in a folder, orders its slices by position and applies each
slice's ``RescaleSlope``/``RescaleIntercept``. Before it reads a pixel, :func:`inspect_dicom_series` reads every
slice's header with pydicom and refuses what ITK would read silently wrong: a folder holding two series, slices of
different sizes or orientations, a repeated or missing slice, colour or multi-frame files, and a Modality LUT
Sequence (ITK applies slope and intercept only). The VOI semantics are those of single DICOM files
(:mod:`monai_shpeft.transforms.readers`): each slice keeps its own window (``frame_window_centers``/``widths``, kept
by :class:`~monai_shpeft.transforms.SelectFrame` for the slice it keeps), and a slice whose only VOI is a VOI LUT
Sequence has it applied by ``pydicom.pixels.apply_voi``. Arrays come out ``[slices, rows, columns]``
(``frame_axis=0``), like multi-frame DICOM.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from monai.data import ITKReader
from monai.utils import MetaKeys

from monai_shpeft.transforms.errors import ImageReadError
from monai_shpeft.transforms.meta import SourceMetaKeys
from monai_shpeft.transforms.readers import _apply_voi, _voi_lut_only, dicom_source_meta

__all__ = ["DicomSeries", "DicomSeriesReader", "ItkVolumeReader", "inspect_dicom_series"]

#: a slice spacing this many times the median one means a slice is missing
_GAP_FACTOR = 1.5
_IGNORED_NAMES = ("DICOMDIR",)


@dataclass
class DicomSeries:
    """The slices of one DICOM series, in the order ITK stacks them (ascending along the slice normal).

    Attributes:
        folder: the series folder.
        files: the slice files, sorted.
        headers: each slice's pydicom header (no pixel data), in the same order.
        positions: each slice's distance along the normal (mm), or its InstanceNumber where positions are absent.
    """

    folder: Path
    files: list[Path] = field(default_factory=list)
    headers: list[Any] = field(default_factory=list)
    positions: list[float] = field(default_factory=list)


def _refuse(folder: Path, cause: str) -> ImageReadError:
    return ImageReadError.for_file(folder, f"DICOM series folder: {cause.rstrip('.')}.")


def _read_headers(folder: Path) -> list[tuple[Path, Any]]:
    names = sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.name not in _IGNORED_NAMES)
    files = [p for p in names if p.is_file()]
    if not files:
        subfolders = [p.name for p in names if p.is_dir()]
        hint = f" (it holds folders {subfolders[:3]}: name one series folder each)" if subfolders else ""
        raise _refuse(folder, f"no files in it{hint}")
    headers = []
    for file in files:
        try:
            header = pydicom.dcmread(file, stop_before_pixels=True)
        except Exception as error:  # noqa: BLE001 - any unreadable header is the same cause for the user
            raise _refuse(folder, f"{file.name} is not a DICOM file ({type(error).__name__}: {error})") from error
        headers.append((file, header))
    return headers


def _check_uniform(folder: Path, headers: list[tuple[Path, Any]]) -> None:
    series = Counter(str(h.get("SeriesInstanceUID", "")) for _, h in headers)
    if len(series) > 1:
        listed = ", ".join(f"{uid or '(none)'} ({count} files)" for uid, count in series.most_common())
        raise _refuse(folder, f"it holds {len(series)} series: {listed}. Give each series its own folder")
    for file, header in headers:
        photometric = str(header.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
        if not photometric.startswith("MONOCHROME"):
            raise _refuse(folder, f"{file.name} is {photometric}: a series is read as grey slices (CT, MR, PET)")
        if int(header.get("NumberOfFrames", 1) or 1) > 1:
            raise _refuse(folder, f"{file.name} is a multi-frame file: name that file itself, not its folder")
        if header.get("ModalityLUTSequence"):
            raise _refuse(
                folder, f"{file.name} has a Modality LUT Sequence, which ITK does not apply: name its files one by one"
            )
        if "Rows" not in header or "Columns" not in header:
            raise _refuse(folder, f"{file.name} holds no image (no Rows/Columns: a report or presentation state?)")
    sizes = Counter((int(h.Rows), int(h.Columns)) for _, h in headers)
    if len(sizes) > 1:
        examples = {size: next(f.name for f, h in headers if (int(h.Rows), int(h.Columns)) == size) for size in sizes}
        listed = ", ".join(
            f"{r}x{c} ({n} slice{'s' if n != 1 else ''}, e.g. {examples[(r, c)]})" for (r, c), n in sizes.most_common()
        )
        raise _refuse(folder, f"its slices have different sizes: {listed}")


def _order(folder: Path, headers: list[tuple[Path, Any]]) -> list[tuple[float, Path, Any]]:
    """Sort along the slice normal (ImagePositionPatient), else by InstanceNumber; refuse repeats and gaps."""
    if all("ImagePositionPatient" in h and "ImageOrientationPatient" in h for _, h in headers):
        orientations = {tuple(round(float(v), 4) for v in h.ImageOrientationPatient) for _, h in headers}
        if len(orientations) > 1:
            raise _refuse(folder, f"its slices have {len(orientations)} different orientations (a localiser mixed in?)")
        row, column = np.asarray(headers[0][1].ImageOrientationPatient, dtype=float).reshape(2, 3)
        normal = np.cross(row, column)
        keyed = [(float(np.dot(normal, np.asarray(h.ImagePositionPatient, float))), f, h) for f, h in headers]
        unit = "mm"
    elif all("InstanceNumber" in h for _, h in headers):
        keyed = [(float(h.InstanceNumber), f, h) for f, h in headers]
        unit = "instance numbers"
    else:
        raise _refuse(folder, "its slices can be ordered neither by ImagePositionPatient nor by InstanceNumber")
    keyed.sort(key=lambda item: item[0])
    if len(keyed) < 2:
        return keyed
    steps = np.diff([k for k, _, _ in keyed])
    regular = float(np.median(steps))
    for (a, file_a, _), (_, file_b, _), step in zip(keyed, keyed[1:], steps):
        if step <= max(1e-3 * abs(regular), 1e-4):
            raise _refuse(
                folder, f"{file_a.name} and {file_b.name} lie at the same position ({a:g} {unit}): a repeated slice?"
            )
    regular = float(np.min(steps))  # the smallest step: with one slice missing of three, a median would hide it
    for (_, file_a, _), (_, file_b, _), step in zip(keyed, keyed[1:], steps):
        if step > _GAP_FACTOR * regular:
            raise _refuse(
                folder,
                f"a slice is missing between {file_a.name} and {file_b.name}: they are {step:g} {unit} apart where "
                f"the closest slices are {regular:g}",
            )
    return keyed


def inspect_dicom_series(folder: str | os.PathLike) -> DicomSeries:
    """Read the headers of a series folder and check that they form one complete series.

    Args:
        folder: a folder holding the slice files of one DICOM series (``DICOMDIR`` and hidden files are ignored).

    Returns:
        the slices in stacking order.

    Raises:
        ImageReadError: naming the folder and the cause: no files, a file that is not DICOM, two series, a colour
            or multi-frame file, a Modality LUT Sequence, slices of different sizes or orientations, slices that
            cannot be ordered, a repeated slice or a missing one.
    """
    path = Path(os.fspath(folder))
    headers = _read_headers(path)
    _check_uniform(path, headers)
    keyed = _order(path, headers)
    return DicomSeries(
        folder=path,
        files=[f for _, f, _ in keyed],
        headers=[h for _, _, h in keyed],
        positions=[k for k, _, _ in keyed],
    )


@dataclass
class _ReadSeries:
    image: Any
    series: DicomSeries


class DicomSeriesReader(ITKReader):
    """MONAI's ``ITKReader`` for a folder holding one DICOM series, checked first by :func:`inspect_dicom_series`.

    Args:
        kwargs: passed to ``ITKReader`` (``reverse_indexing`` is fixed to ``True``: ``[slices, rows, columns]``).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(reverse_indexing=True, **kwargs)

    def verify_suffix(self, filename: Any) -> bool:
        """Whether ``filename`` is a folder (this reader reads series folders only)."""
        return all(
            Path(os.fspath(name)).is_dir() for name in (filename if isinstance(filename, list | tuple) else [filename])
        )

    def read(self, data: Any, **kwargs: Any) -> _ReadSeries:
        """Check the series' headers, then read its pixels with ITK.

        Args:
            data: the series folder.
            kwargs: passed to ``ITKReader.read``.

        Returns:
            the ITK image with the checked series.
        """
        folder = data[0] if isinstance(data, list | tuple) else data
        series = inspect_dicom_series(folder)
        return _ReadSeries(super().read(str(folder), **kwargs), series)

    def get_data(self, img: _ReadSeries) -> tuple[np.ndarray, dict]:
        """Return ``[slices, rows, columns]`` float32 values and the metadata of the series.

        Args:
            img: what :meth:`read` returned.

        Returns:
            ``(array, meta)``; the windows are those of each slice, in stacking order.
        """
        array, meta = super().get_data(img.image)
        series = img.series
        array = np.asarray(array, dtype=np.float32).reshape(-1, *array.shape[-2:])
        if array.shape[0] != len(series.files):
            raise _refuse(series.folder, f"ITK read {array.shape[0]} slices of the {len(series.files)} files")
        origin = np.asarray(img.image.GetOrigin(), dtype=float)
        first = series.headers[0].get("ImagePositionPatient")
        last = series.headers[-1].get("ImagePositionPatient")
        if first is not None and last is not None and len(series.files) > 1:
            if np.allclose(origin, np.asarray(last, float), atol=1e-3) and not np.allclose(
                origin, np.asarray(first, float), atol=1e-3
            ):
                series.files.reverse()  # ITK stacked from the other end: keep the windows in ITK's order
                series.headers.reverse()
                series.positions.reverse()
        slices = [dicom_source_meta(header) for header in series.headers]
        for index, header in enumerate(series.headers):
            if _voi_lut_only(header):  # as for single files: a window cannot express the LUT
                array[index] = np.asarray(_apply_voi(array[index], header, 0), dtype=np.float32)
        middle = slices[len(slices) // 2]
        meta.update(middle)
        meta.update(
            {
                SourceMetaKeys.SOURCE_FORMAT: "dicom_series",
                SourceMetaKeys.RESCALE_APPLIED: any(s[SourceMetaKeys.RESCALE_APPLIED] for s in slices),
                SourceMetaKeys.NUMBER_OF_FRAMES: len(slices),
                SourceMetaKeys.FRAME_AXIS: 0,
                SourceMetaKeys.FRAME_WINDOW_CENTERS: tuple(s[SourceMetaKeys.WINDOW_CENTER] for s in slices),
                SourceMetaKeys.FRAME_WINDOW_WIDTHS: tuple(s[SourceMetaKeys.WINDOW_WIDTH] for s in slices),
                "series_files": [str(f) for f in series.files],
                MetaKeys.ORIGINAL_CHANNEL_DIM: "no_channel",
                MetaKeys.SPATIAL_SHAPE: np.asarray(array.shape),
            }
        )
        if math.isnan(float(meta[SourceMetaKeys.WINDOW_CENTER])):
            meta.pop(SourceMetaKeys.FRAME_WINDOW_CENTERS)
            meta.pop(SourceMetaKeys.FRAME_WINDOW_WIDTHS)
        return array, meta


class ItkVolumeReader(ITKReader):
    """MONAI's ``ITKReader`` for MetaImage (.mha, .mhd) and NRRD (.nrrd, .nhdr) files, in (slice,) row, column order.

    Args:
        image_format: ``"metaimage"`` or ``"nrrd"``, recorded as ``source_format``.
        kwargs: passed to ``ITKReader`` (``reverse_indexing`` is fixed to ``True``).
    """

    def __init__(self, image_format: str = "metaimage", **kwargs: Any) -> None:
        super().__init__(reverse_indexing=True, **kwargs)
        self.image_format = image_format

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        """Return the voxels and metadata with the :class:`SourceMetaKeys` entries of a volume.

        Args:
            img: an ITK image.

        Returns:
            ``([slices,] rows, columns[, components])`` and the metadata (``frame_axis`` 0).
        """
        array, meta = super().get_data(img)
        array = np.asarray(array)
        components = int(img.GetNumberOfComponentsPerPixel())
        spatial = array.shape[:-1] if components > 1 else array.shape  # ITKReader states it in (x, y, z) order
        meta.update(
            {
                SourceMetaKeys.SOURCE_FORMAT: self.image_format,
                SourceMetaKeys.SOURCE_DTYPE: array.dtype.name,
                SourceMetaKeys.PHOTOMETRIC_INTERPRETATION: "RGB" if components == 3 else "MONOCHROME2",
                SourceMetaKeys.STORED_PHOTOMETRIC_INTERPRETATION: "RGB" if components == 3 else "MONOCHROME2",
                SourceMetaKeys.NUMBER_OF_FRAMES: spatial[0] if len(spatial) >= 3 else 1,
                SourceMetaKeys.FRAME_AXIS: 0,
                MetaKeys.SPATIAL_SHAPE: np.asarray(spatial),
            }
        )
        return array, meta
