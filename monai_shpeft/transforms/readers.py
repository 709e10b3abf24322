"""MONAI image readers set up for 2-D diagnosis images, filling the gaps of the stock ones.

MONAI's readers are reused as they are for decoding; the subclasses here only change what a ViT pipeline needs:

* every reader returns arrays in (row, column) order, the order in which PIL, pydicom and image viewers show an
  image (MONAI's ``PILReader`` and ``PydicomReader`` transpose to (column, row) by default, which would show a
  pretrained ViT every image mirrored along its diagonal);
* colour DICOM (RGB, YBR, PALETTE COLOR) gets a channel axis: MONAI's ``PydicomReader`` marks a 2-D RGB image as a
  3-D image without channel, and leaves palette indices unexpanded;
* PIL modes that downstream transforms cannot use (palette ``P``, ``CMYK``, ``1``, ``LA``, big-endian ``I;16B``)
  are converted when the file is opened, and the EXIF orientation of camera JPEGs is honoured;
* each reader records :class:`~monai_shpeft.transforms.SourceMetaKeys` entries (stored dtype, photometric
  interpretation, rescale, window, frames) in the metadata.

DICOM pixel values follow the standard's display pipeline, done by pydicom's own functions: pydicom (>= 3) converts
YBR colour spaces to RGB when it decodes and ``apply_color_lut`` expands palettes; for MONOCHROME data only, the
modality LUT (``RescaleSlope``/``RescaleIntercept`` or a Modality LUT Sequence, through ``apply_modality_lut``; per
frame from the functional groups of an enhanced multi-frame file) is applied once, here (``rescale_applied`` in the
metadata records it). Colour data is never rescaled nor windowed (PS3.3 C.11.1: the modality and VOI LUTs apply to
MONOCHROME images). The VOI window is applied later by :class:`~monai_shpeft.transforms.DicomWindow` from the
metadata (a file whose only VOI is a VOI LUT Sequence has it applied here, by ``pydicom.pixels.apply_voi``, and its
window then spans the LUT's output range), and ``MONOCHROME1`` is inverted by
:class:`~monai_shpeft.transforms.InvertMonochrome1`. A DICOM SEG object is read as the image of its frames (MONAI's
reader would turn it into a frames-last label map).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from monai.data import NibabelReader, PILReader, PydicomReader
from monai.data.utils import is_no_channel
from monai.utils import MetaKeys, optional_import

from monai_shpeft.transforms.meta import SourceMetaKeys

Image, _ = optional_import("PIL.Image")
ImageOps, _ = optional_import("PIL.ImageOps")
_apply_modality_lut, _ = optional_import("pydicom.pixels", name="apply_modality_lut")
_apply_voi, _ = optional_import("pydicom.pixels", name="apply_voi")
_apply_color_lut, _has_color_lut = optional_import("pydicom.pixels", name="apply_color_lut")
if not _has_color_lut:  # pydicom < 3
    _apply_color_lut, _has_color_lut = optional_import("pydicom.pixel_data_handlers.util", name="apply_color_lut")

__all__ = [
    "NiftiImageReader",
    "PILImageReader",
    "PydicomImageReader",
    "dicom_source_meta",
    "modality_values",
    "to_supported_mode",
]

_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_KEPT_MODES = ("L", "RGB", "RGBA", "I;16", "I", "F")
_EXIF_ORIENTATION = 0x0112


def to_supported_mode(image: Any) -> Any:
    """Convert a freshly opened PIL image to a mode whose array the transforms can use.

    ``L``, ``RGB``, ``RGBA``, ``I;16``, ``I`` and ``F`` are kept (16-bit stays 16-bit); ``I;16B``/``I;16L``/``I;16N``
    become native ``I;16``; ``1`` and ``LA`` become ``L``; palette (``P``), ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``
    and the other colour modes become ``RGB`` (``RGBA`` for a palette with transparency). The EXIF orientation
    (phone and camera JPEGs) is applied first. The file's own mode is kept in ``image.info["source_mode"]``. This
    decodes the pixels, so a truncated file fails here.

    Args:
        image: a PIL image, as returned by ``PIL.Image.open``.

    Returns:
        a PIL image in one of the kept modes.
    """
    source_mode = image.mode
    image.load()
    if image.getexif().get(_EXIF_ORIENTATION, 1) not in (0, 1):
        image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in _KEPT_MODES:
        converted = image
    elif mode.startswith("I;16"):
        converted = Image.fromarray(np.asarray(image).astype(np.uint16))
    elif mode in ("1", "LA", "La"):
        converted = image.convert("L")
    elif mode == "PA" or (mode == "P" and "transparency" in image.info):
        converted = image.convert("RGBA")  # alpha is dropped later by ToRGB
    else:
        converted = image.convert("RGB")
    converted.info["source_mode"] = source_mode
    return converted


class PILImageReader(PILReader):
    """MONAI's ``PILReader`` in (row, column) order, converting unusable modes with :func:`to_supported_mode`.

    Args:
        converter: function applied to each opened PIL image; defaults to :func:`to_supported_mode`.
        reverse_indexing: ``False`` (default) keeps PIL's (row, column) order; ``True`` is MONAI's transposed order.
        kwargs: passed to ``PIL.Image.open``.
    """

    def __init__(
        self, converter: Callable | None = to_supported_mode, reverse_indexing: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(converter=converter, reverse_indexing=reverse_indexing, **kwargs)

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        """Return the pixel array and metadata, with the :class:`SourceMetaKeys` entries added.

        Args:
            img: a PIL image or a list of them (stacked as channels, as in ``PILReader``).

        Returns:
            ``(array, meta)``; the array is ``[rows, columns(, samples)]`` unless ``reverse_indexing``.
        """
        array, meta = super().get_data(img)
        first = img[0] if isinstance(img, Sequence) else img
        channels = 1 if array.ndim == 2 else array.shape[-1]
        meta[SourceMetaKeys.SOURCE_DTYPE] = array.dtype.name
        meta[SourceMetaKeys.PHOTOMETRIC_INTERPRETATION] = {1: "MONOCHROME2", 3: "RGB", 4: "RGBA"}.get(channels, "")
        meta[SourceMetaKeys.STORED_PHOTOMETRIC_INTERPRETATION] = str(first.info.get("source_mode", first.mode))
        if not self.reverse_indexing:
            meta[MetaKeys.SPATIAL_SHAPE] = np.asarray((first.height, first.width))
        return array, meta


def _first_float(value: Any) -> float:
    """The first number of a (possibly multi-valued) DICOM element, NaN when absent or not a finite number."""
    if value is None:
        return math.nan
    if not isinstance(value, str | bytes) and isinstance(value, Sequence):
        if len(value) == 0:
            return math.nan
        value = value[0]
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


def _stored_dtype(ds: Any, photometric: str) -> str:
    if "FloatPixelData" in ds:
        return "float32"
    if "DoubleFloatPixelData" in ds:
        return "float64"
    if photometric == "PALETTE COLOR":
        descriptor = ds.get("RedPaletteColorLookupTableDescriptor")
        bits = int(descriptor[2]) if descriptor is not None and len(descriptor) > 2 else 8
        return "uint8" if bits <= 8 else "uint16"
    bits = int(ds.get("BitsAllocated", 16) or 16)
    width = 8 if bits <= 8 else 16 if bits <= 16 else 32 if bits <= 32 else 64
    return f"{'int' if int(ds.get('PixelRepresentation', 0) or 0) == 1 else 'uint'}{width}"


def dicom_source_meta(ds: Any) -> dict[str, Any]:
    """The :class:`SourceMetaKeys` entries of a pydicom dataset, as :class:`PydicomImageReader` sets them.

    The photometric interpretation is that of the array the reader returns: ``YBR_*`` and ``PALETTE COLOR`` are
    ``RGB`` there (pydicom converts YBR when it decodes, the reader expands palettes); the file's own value is kept
    under ``StoredPhotometricInterpretation``. ``rescale_applied`` mirrors the condition under which MONAI's
    ``PydicomReader`` applies slope and intercept (either tag present).

    Args:
        ds: a ``pydicom.Dataset`` (pixel data not needed).

    Returns:
        the metadata entries.
    """
    stored = str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").strip().upper()
    shown = "RGB" if stored.startswith("YBR") or stored == "PALETTE COLOR" else stored
    slope = _first_float(ds.get("RescaleSlope"))
    intercept = _first_float(ds.get("RescaleIntercept"))
    try:
        frames = max(int(ds.get("NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError):
        frames = 1
    center, width = _first_float(ds.get("WindowCenter")), _first_float(ds.get("WindowWidth"))
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    rescaled = hasattr(ds, "RescaleSlope") or hasattr(ds, "RescaleIntercept") or bool(ds.get("ModalityLUTSequence"))
    extra: dict[str, Any] = {}
    frame_rescales = _frame_rescales(ds, frames)
    if frame_rescales is not None:
        slope, intercept = frame_rescales[0]
        rescaled = True
    frame_windows = _frame_windows(ds, frames)
    if frame_windows is not None:
        (center, width, function), *_ = frame_windows
        extra[SourceMetaKeys.FRAME_WINDOW_CENTERS] = tuple(window[0] for window in frame_windows)
        extra[SourceMetaKeys.FRAME_WINDOW_WIDTHS] = tuple(window[1] for window in frame_windows)
    voi_lut_applied = _voi_lut_only(ds)
    if voi_lut_applied:  # the reader maps the pixels through the LUT; the window spans the LUT's output range
        top = float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
        center, width, function = top / 2.0, top, "LINEAR_EXACT"
    if _is_colour(ds):  # the modality and VOI LUTs are for MONOCHROME data: a colour file's tags are not applied
        slope, intercept, rescaled, center, width = 1.0, 0.0, False, math.nan, math.nan
        voi_lut_applied, extra = False, {}
    return {
        SourceMetaKeys.SOURCE_FORMAT: "dicom",
        SourceMetaKeys.SOURCE_DTYPE: _stored_dtype(ds, stored),
        SourceMetaKeys.PHOTOMETRIC_INTERPRETATION: shown,
        SourceMetaKeys.STORED_PHOTOMETRIC_INTERPRETATION: stored,
        SourceMetaKeys.RESCALE_SLOPE: 1.0 if math.isnan(slope) else slope,
        SourceMetaKeys.RESCALE_INTERCEPT: 0.0 if math.isnan(intercept) else intercept,
        SourceMetaKeys.RESCALE_APPLIED: rescaled,
        SourceMetaKeys.WINDOW_CENTER: center,
        SourceMetaKeys.WINDOW_WIDTH: width,
        SourceMetaKeys.VOI_LUT_FUNCTION: function,
        SourceMetaKeys.VOI_LUT_APPLIED: voi_lut_applied,
        SourceMetaKeys.NUMBER_OF_FRAMES: frames,
        SourceMetaKeys.FRAME_AXIS: 0,
        SourceMetaKeys.MODALITY: str(ds.get("Modality", "") or ""),
        **extra,
    }


def _voi_lut_only(ds: Any) -> bool:
    """Whether the file's only VOI transform is a VOI LUT Sequence (no usable window, MONOCHROME data)."""
    sequence = ds.get("VOILUTSequence")
    if not sequence or _is_colour(ds) or "LUTDescriptor" not in sequence[0]:
        return False
    center, width = _first_float(ds.get("WindowCenter")), _first_float(ds.get("WindowWidth"))
    return not (math.isfinite(center) and math.isfinite(width) and width > 0)


def _functional_groups(ds: Any, frames: int, sequence: str) -> list[Any] | None:
    """Each frame's item of ``sequence`` in an enhanced multi-frame file (per-frame group, else the shared one).

    Returns ``None`` when no frame has it (a classic file keeps its values at the top level).
    """
    shared = ds.get("SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if not shared and not per_frame:
        return None

    def item_of(group: Any) -> Any:
        found = group.get(sequence) if group is not None else None
        return found[0] if found else None

    shared_item = item_of(shared[0]) if shared else None
    items = [
        (item_of(per_frame[index]) if per_frame and index < len(per_frame) else None) or shared_item
        for index in range(frames)
    ]
    return items if any(item is not None for item in items) else None


def _frame_rescales(ds: Any, frames: int) -> list[tuple[float, float]] | None:
    """Each frame's (slope, intercept) from the Pixel Value Transformation functional group, if the file has it."""
    items = _functional_groups(ds, frames, "PixelValueTransformationSequence")
    if items is None:
        return None
    rescales = []
    for item in items:
        slope = _first_float(item.get("RescaleSlope")) if item is not None else math.nan
        intercept = _first_float(item.get("RescaleIntercept")) if item is not None else math.nan
        rescales.append((1.0 if math.isnan(slope) else slope, 0.0 if math.isnan(intercept) else intercept))
    return rescales


def _frame_windows(ds: Any, frames: int) -> list[tuple[float, float, str]] | None:
    """Each frame's (center, width, VOI LUT function) from the Frame VOI LUT functional group, if the file has it."""
    items = _functional_groups(ds, frames, "FrameVOILUTSequence")
    if items is None:
        return None
    return [
        (
            _first_float(item.get("WindowCenter")) if item is not None else math.nan,
            _first_float(item.get("WindowWidth")) if item is not None else math.nan,
            str((item.get("VOILUTFunction") if item is not None else None) or "LINEAR").strip().upper(),
        )
        for item in items
    ]


def modality_values(ds: Any, pixels: np.ndarray) -> np.ndarray:
    """The modality values (e.g. Hounsfield units) of MONOCHROME stored ``pixels``, as pydicom computes them.

    Enhanced multi-frame files rescale each frame with its own functional group; classic files go through
    ``pydicom.pixels.apply_modality_lut`` (slope/intercept, or the Modality LUT Sequence). Pixels without any
    modality transform are returned as they are.

    Args:
        ds: the pydicom dataset.
        pixels: its ``pixel_array`` (``[frames,] rows, columns``).

    Returns:
        float32 modality values when a transform applies, else ``pixels``.
    """
    frames = pixels.shape[0] if pixels.ndim == 3 else 1
    rescales = _frame_rescales(ds, frames)
    if rescales is not None:
        values = pixels.astype(np.float64)
        for index, (slope, intercept) in enumerate(rescales):
            frame = values[index] if pixels.ndim == 3 else values
            frame *= slope
            frame += intercept
        return values.astype(np.float32)
    if not (hasattr(ds, "RescaleSlope") or hasattr(ds, "RescaleIntercept") or ds.get("ModalityLUTSequence")):
        return pixels
    if not hasattr(ds, "RescaleSlope") and not ds.get("ModalityLUTSequence"):
        ds = _with_default_slope(ds)  # pydicom needs both; DICOM's default slope is 1
    return np.asarray(_apply_modality_lut(pixels, ds)).astype(np.float32)


def _with_default_slope(ds: Any) -> Any:
    copy = ds.copy()
    copy.RescaleSlope = 1
    return copy


def _is_colour(ds: Any) -> bool:
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    return int(ds.get("SamplesPerPixel", 1) or 1) > 1 or photometric == "PALETTE COLOR"


class PydicomImageReader(PydicomReader):
    """MONAI's ``PydicomReader`` for 2-D (and multi-frame) diagnosis images.

    Decoding and the modality rescale are ``PydicomReader``'s own (slope and intercept are applied once, there).
    On top of it: arrays stay in (frame,) row, column order (``swap_ij=False``); colour samples become the channel
    axis (``original_channel_dim=-1``) so that ``EnsureChannelFirst`` gives ``[3, rows, columns]``; a
    ``PALETTE COLOR`` image is expanded to RGB through its lookup table; a file without pixel data fails with a
    message saying so; the metadata gets :func:`dicom_source_meta`.

    Args:
        channel_dim: ``None`` (default) decides per file (-1 for colour, none for grey); else as ``PydicomReader``.
        swap_ij: ``False`` (default) keeps (row, column) order; ``True`` is MONAI's transposed order.
        kwargs: passed to ``PydicomReader`` (``prune_metadata``, ``pydicom.dcmread`` arguments such as ``force``).
    """

    def __init__(self, channel_dim: str | int | None = None, swap_ij: bool = False, **kwargs: Any) -> None:
        super().__init__(channel_dim=channel_dim, swap_ij=swap_ij, **kwargs)
        self._fixed_channel_dim = self.channel_dim

    def read(self, data: Any, **kwargs: Any) -> Any:
        """Read the dataset(s) like ``PydicomReader.read`` and choose the channel axis from their samples.

        Args:
            data: a file name (or a list of them).
            kwargs: passed to ``pydicom.dcmread``.

        Returns:
            a pydicom dataset, or a list of them.
        """
        img = super().read(data, **kwargs)
        if self._fixed_channel_dim is None:
            items = img if isinstance(img, list) else [img]
            datasets = [ds for item in items for ds in (item if isinstance(item, list) else [item])]
            self.channel_dim = -1 if any(_is_colour(ds) for ds in datasets) else None
        return img

    def get_data(self, data: Any) -> tuple[np.ndarray, dict]:
        """Return the pixel array and metadata, with the spatial shape not counting colour samples.

        Args:
            data: what :meth:`read` returned.

        Returns:
            ``(array, meta)``: ``[(frames,) rows, columns(, samples)]`` with ``swap_ij=False``.
        """
        array, meta = super().get_data(data)
        if not is_no_channel(meta.get(MetaKeys.ORIGINAL_CHANNEL_DIM)):
            channel = int(meta[MetaKeys.ORIGINAL_CHANNEL_DIM]) % array.ndim
            meta[MetaKeys.SPATIAL_SHAPE] = np.asarray([s for i, s in enumerate(array.shape) if i != channel])
        return array, meta

    def _get_meta_dict(self, img: Any) -> dict:
        meta = super()._get_meta_dict(img)
        meta.update(dicom_source_meta(img))
        return meta

    def _get_array_data(self, img: Any, filename: Any) -> Any:
        if not any(keyword in img for keyword in _PIXEL_DATA_KEYWORDS):
            raise ValueError(
                "the DICOM file has no pixel data (no PixelData element): a header-only file, structured report or "
                f"presentation state? (SOP class {img.get('SOPClassUID', 'unknown')})"
            )
        data = img.pixel_array  # decoded by pydicom, YBR already converted to RGB
        if str(img.get("PhotometricInterpretation", "")).strip().upper() == "PALETTE COLOR":
            if not _has_color_lut:
                raise ValueError("PALETTE COLOR DICOM needs pydicom's apply_color_lut (pip install 'pydicom>=2')")
            return _apply_color_lut(data, img)
        if _is_colour(img):
            return data  # never rescaled: the modality LUT is for MONOCHROME data
        values = modality_values(img, data)
        if _voi_lut_only(img):  # a window cannot express a LUT: pydicom applies it here, DicomWindow then scales
            values = np.asarray(_apply_voi(values, img, 0)).astype(np.float32)
        return values

    def _get_seg_data(self, img: Any, filename: Any) -> tuple[np.ndarray, dict]:
        # MONAI builds a frames-last label map from a SEG object; a classifier reads its frames as an image
        data = self._get_array_data(img, filename)
        meta = self._get_meta_dict(img)
        meta[MetaKeys.SPATIAL_SHAPE] = data.shape
        return data, meta


class NiftiImageReader(NibabelReader):
    """MONAI's ``NibabelReader``, recording the stored dtype, the scaling nibabel applied and the slice axis.

    nibabel applies ``scl_slope``/``scl_inter`` when it reads the data, so ``rescale_applied`` is true whenever
    they are not (1, 0). Slices of a 3-D volume lie along the last spatial axis (``frame_axis=2``); no
    reorientation is done, so a slice is ``[dim0, dim1]`` of the file's voxel grid.

    Args:
        kwargs: passed to ``NibabelReader``.
    """

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        """Return the voxel array and metadata, with the :class:`SourceMetaKeys` entries added.

        Args:
            img: a nibabel image or a list of them.

        Returns:
            ``(array, meta)`` as ``NibabelReader`` gives them.
        """
        array, meta = super().get_data(img)
        first = img[0] if isinstance(img, list | tuple) else img
        slope = _first_float(getattr(first.dataobj, "slope", 1.0))
        intercept = _first_float(getattr(first.dataobj, "inter", 0.0))
        slope, intercept = (1.0 if math.isnan(slope) else slope), (0.0 if math.isnan(intercept) else intercept)
        spatial = [int(s) for s in np.asarray(meta.get(MetaKeys.SPATIAL_SHAPE, array.shape[:3])).tolist()]
        meta.update(
            {
                SourceMetaKeys.SOURCE_FORMAT: "nifti",
                SourceMetaKeys.SOURCE_DTYPE: np.dtype(first.get_data_dtype()).name,
                SourceMetaKeys.RESCALE_SLOPE: slope,
                SourceMetaKeys.RESCALE_INTERCEPT: intercept,
                SourceMetaKeys.RESCALE_APPLIED: (slope, intercept) != (1.0, 0.0),
                SourceMetaKeys.NUMBER_OF_FRAMES: spatial[2] if len(spatial) >= 3 else 1,
                SourceMetaKeys.FRAME_AXIS: 2 if len(spatial) >= 3 else 0,
            }
        )
        return array, meta
