"""Metadata keys that :class:`~monai_shpeft.transforms.LoadMedicalImage` guarantees on every image it returns.

DICOM attributes keep their DICOM keyword as key (``PhotometricInterpretation``, ``RescaleSlope``, ...); the other
keys are snake case. Every loaded image carries all of them, with the defaults of :func:`default_source_meta` where
the file has nothing to say, so that a batch of images from different files still collates.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["SourceMetaKeys", "default_source_meta"]


class SourceMetaKeys:
    """Names of the metadata entries about the source file (``img.meta[SourceMetaKeys.WINDOW_CENTER]``)."""

    #: detected content type: ``png``, ``jpeg``, ``bmp``, ``tiff``, ``gif``, ``webp``, ``dicom``, ``nifti``, ``wsi``
    SOURCE_FORMAT = "source_format"
    #: numpy dtype name of the stored pixels, before any rescale or float conversion (``uint8``, ``uint16``, ...)
    SOURCE_DTYPE = "source_dtype"
    #: how the returned values are to be displayed: ``MONOCHROME1`` (high = dark), ``MONOCHROME2``, ``RGB``, ``RGBA``
    PHOTOMETRIC_INTERPRETATION = "PhotometricInterpretation"
    #: the file's own photometric interpretation (``YBR_FULL_422``, ``PALETTE COLOR``, ... before conversion to RGB)
    STORED_PHOTOMETRIC_INTERPRETATION = "StoredPhotometricInterpretation"
    RESCALE_SLOPE = "RescaleSlope"
    RESCALE_INTERCEPT = "RescaleIntercept"
    #: whether the reader already applied slope and intercept (DICOM, NIfTI): never apply them again
    RESCALE_APPLIED = "rescale_applied"
    #: the file's VOI window (first one when it lists several), NaN when it has none
    WINDOW_CENTER = "WindowCenter"
    WINDOW_WIDTH = "WindowWidth"
    VOI_LUT_FUNCTION = "VOILUTFunction"
    #: a DICOM whose only VOI is a VOI LUT Sequence: the reader applied it (the window then spans its output range)
    VOI_LUT_APPLIED = "voi_lut_applied"
    #: enhanced multi-frame DICOM: each frame's window (from its functional groups); :class:`SelectFrame` turns the
    #: kept frame's into ``WindowCenter``/``WindowWidth`` and drops these
    FRAME_WINDOW_CENTERS = "frame_window_centers"
    FRAME_WINDOW_WIDTHS = "frame_window_widths"
    #: frames (multi-frame DICOM) or slices (3-D NIfTI) in the file, 1 for a 2-D image
    NUMBER_OF_FRAMES = "NumberOfFrames"
    #: spatial axis (0 = first axis after the channel) that holds the frames/slices
    FRAME_AXIS = "frame_axis"
    MODALITY = "Modality"
    #: written by :class:`~monai_shpeft.transforms.SelectFrame`: index of the frame kept
    SELECTED_FRAME = "selected_frame"
    #: written by :class:`~monai_shpeft.transforms.DicomWindow`: the window applied (NaN when it scaled instead)
    APPLIED_WINDOW_CENTER = "applied_window_center"
    APPLIED_WINDOW_WIDTH = "applied_window_width"
    #: written by :class:`~monai_shpeft.transforms.InvertMonochrome1`
    MONOCHROME1_INVERTED = "monochrome1_inverted"


def default_source_meta() -> dict[str, Any]:
    """The value of every :class:`SourceMetaKeys` entry the loader sets, for a file that says nothing about it.

    Returns:
        a new dictionary (grey, 8-bit, no rescale, no window, one frame).
    """
    return {
        SourceMetaKeys.SOURCE_FORMAT: "",
        SourceMetaKeys.SOURCE_DTYPE: "",
        SourceMetaKeys.PHOTOMETRIC_INTERPRETATION: "MONOCHROME2",
        SourceMetaKeys.STORED_PHOTOMETRIC_INTERPRETATION: "MONOCHROME2",
        SourceMetaKeys.RESCALE_SLOPE: 1.0,
        SourceMetaKeys.RESCALE_INTERCEPT: 0.0,
        SourceMetaKeys.RESCALE_APPLIED: False,
        SourceMetaKeys.WINDOW_CENTER: math.nan,
        SourceMetaKeys.WINDOW_WIDTH: math.nan,
        SourceMetaKeys.VOI_LUT_FUNCTION: "LINEAR",
        SourceMetaKeys.VOI_LUT_APPLIED: False,
        SourceMetaKeys.NUMBER_OF_FRAMES: 1,
        SourceMetaKeys.FRAME_AXIS: 0,
        SourceMetaKeys.MODALITY: "",
    }
