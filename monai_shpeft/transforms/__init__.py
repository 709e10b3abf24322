"""MONAI transforms that turn medical image files into the normalised RGB squares a pretrained ViT expects.

Loading (:class:`LoadMedicalImage`) picks MONAI's reader from the file's content and turns every failure into an
:class:`ImageReadError` naming the file; the array/dictionary transforms add what MONAI lacks (RGB conversion,
MONOCHROME1 inversion, DICOM windows, volume-to-image policies, bit-depth-aware scaling);
:func:`modality_transforms` and :func:`modality_transform_config` assemble them per modality.
"""

from __future__ import annotations

from monai_shpeft.transforms.channels import ToRGB, ToRGBd
from monai_shpeft.transforms.compose import ReportingCompose
from monai_shpeft.transforms.errors import ImageReadError, InvalidImageError
from monai_shpeft.transforms.formats import detect_image_format
from monai_shpeft.transforms.frames import SelectFrame, SelectFramed, VolumeToImage, VolumeToImaged
from monai_shpeft.transforms.intensity import ScaleToUnitRange, ScaleToUnitRanged
from monai_shpeft.transforms.load import LoadMedicalImage, LoadMedicalImaged, available_wsi_backend
from monai_shpeft.transforms.meta import SourceMetaKeys, default_source_meta
from monai_shpeft.transforms.monochrome import InvertMonochrome1, InvertMonochrome1d
from monai_shpeft.transforms.presets import MODALITIES, NORMALIZATIONS, modality_transform_config, modality_transforms
from monai_shpeft.transforms.readers import NiftiImageReader, PILImageReader, PydicomImageReader, to_supported_mode
from monai_shpeft.transforms.series import DicomSeriesReader, ItkVolumeReader, inspect_dicom_series
from monai_shpeft.transforms.window import DicomWindow, DicomWindowd, apply_window

__all__ = [
    "MODALITIES",
    "NORMALIZATIONS",
    "DicomSeriesReader",
    "DicomWindow",
    "DicomWindowd",
    "ImageReadError",
    "InvalidImageError",
    "InvertMonochrome1",
    "ItkVolumeReader",
    "InvertMonochrome1d",
    "LoadMedicalImage",
    "LoadMedicalImaged",
    "NiftiImageReader",
    "PILImageReader",
    "ReportingCompose",
    "PydicomImageReader",
    "ScaleToUnitRange",
    "ScaleToUnitRanged",
    "SelectFrame",
    "SelectFramed",
    "SourceMetaKeys",
    "ToRGB",
    "ToRGBd",
    "VolumeToImage",
    "VolumeToImaged",
    "apply_window",
    "available_wsi_backend",
    "default_source_meta",
    "detect_image_format",
    "inspect_dicom_series",
    "modality_transform_config",
    "modality_transforms",
    "to_supported_mode",
]
