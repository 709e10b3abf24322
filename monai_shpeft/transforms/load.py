"""Checked loading: the right MONAI reader for each file, every failure an :class:`ImageReadError` naming the file.

* PNG, JPEG, BMP, TIFF tiles, GIF, WebP: :class:`~monai_shpeft.transforms.PILImageReader` (MONAI ``PILReader``);
* DICOM (``DICM`` marker, any name, or a .dcm name): :class:`~monai_shpeft.transforms.PydicomImageReader`
  (MONAI ``PydicomReader``);
* a folder: one DICOM series, checked by :func:`~monai_shpeft.transforms.series.inspect_dicom_series` and read by
  :class:`~monai_shpeft.transforms.series.DicomSeriesReader` (MONAI ``ITKReader``);
* MetaImage (.mha, .mhd) and NRRD (.nrrd, .nhdr): :class:`~monai_shpeft.transforms.series.ItkVolumeReader`
  (MONAI ``ITKReader``);
* NIfTI (.nii, .nii.gz): :class:`~monai_shpeft.transforms.NiftiImageReader` (MONAI ``NibabelReader``);
* whole-slide images (.svs, .ndpi, .scn, .mrxs): MONAI ``WSIReader`` with cuCIM or OpenSlide, or tifffile's own
  pyramid levels (MONAI's tifffile backend counts TIFF pages as levels, which is wrong for SVS and sub-IFD
  pyramids); with no backend installed, an error says what to install.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import pydicom
import torch
from monai.config import DtypeLike, KeysCollection
from monai.data import MetaTensor, WSIReader
from monai.transforms import LoadImage, MapTransform, Transform
from monai.utils import ImageMetaKey, MetaKeys, TransformBackends, optional_import

from monai_shpeft.transforms.errors import ImageReadError
from monai_shpeft.transforms.formats import detect_image_format, format_family
from monai_shpeft.transforms.meta import SourceMetaKeys, default_source_meta
from monai_shpeft.transforms.readers import NiftiImageReader, PILImageReader, PydicomImageReader
from monai_shpeft.transforms.series import DicomSeriesReader, ItkVolumeReader

__all__ = ["LoadMedicalImage", "LoadMedicalImaged", "available_wsi_backend"]

#: WSI backends in the order they are tried, with the module that must import for each
_WSI_BACKENDS: tuple[tuple[str, str], ...] = (("cucim", "cucim"), ("openslide", "openslide"), ("tifffile", "tifffile"))
_WSI_INSTALL_HINT = (
    'pip install "monai-shpeft[wsi]" (tifffile with imagecodecs; or openslide-python openslide-bin, or cucim on '
    "Linux with CUDA)"
)
_DICOM_DECODER_HINT = 'pip install "monai-shpeft[dicom]" (pylibjpeg with its libjpeg and openjpeg plugins, pyjpegls)'


def available_wsi_backend() -> str | None:
    """The first whole-slide backend of MONAI's ``WSIReader`` that imports here.

    Returns:
        ``"cucim"``, ``"openslide"`` or ``"tifffile"``, or ``None`` when none is installed.
    """
    for backend, module in _WSI_BACKENDS:
        if optional_import(module)[1]:
            return backend
    return None


def _transfer_syntax(path: str) -> str:
    """``transfer syntax '<name>' (<UID>)`` of a DICOM file, read from its header only."""
    try:
        uid = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        return f"transfer syntax '{uid.name}' ({uid})"
    except Exception:  # noqa: BLE001 - the header is only read to name the syntax
        return "its compressed transfer syntax"


def _describe_failure(family: str, error: Exception, path: str | None = None) -> str:
    """Turn a reader's exception into a cause a user can act on (the original text is kept in brackets)."""
    text = str(error).strip().replace("\n", " ").replace("\t", " ") or type(error).__name__
    low = text.lower()
    name = type(error).__name__
    if name == "UnidentifiedImageError" or "cannot identify image file" in low:
        return (
            "not an image: PIL cannot identify the content as any format it reads (a text/HTML file, a partial "
            "download, or a wrong extension?)"
        )
    if name == "DecompressionBombError":
        return f"image too large for PIL ({text}); read whole-slide images as .svs with a WSI backend"
    if family == "dicom":
        if name == "InvalidDicomError":
            return f"not a valid DICOM file ({text})"
        if "unable to decompress" in low or "unable to decode" in low or "missing dependencies" in low:
            syntax = _transfer_syntax(path) if path is not None else "its compressed transfer syntax"
            return f"no installed decoder for {syntax}: {_DICOM_DECODER_HINT}"
        if "less than expected" in low or "truncated" in low:
            return f"truncated DICOM pixel data ({text})"
        if "no pixel data" in low:
            return text
    if family == "nifti":
        if name == "ImageFileError" or "not a nifti" in low or "sizeof_hdr" in low:
            return f"not a valid NIfTI file ({text})"
    if family == "wsi" and "imagecodecs" in low:
        return f"tifffile needs imagecodecs to decode this slide's compression: pip install imagecodecs ({text})"
    if family == "wsi" and ("openslide" in low or "tiff" in low):
        return f"the whole-slide reader failed ({name}: {text})"
    truncation = ("truncated", "broken", "premature end", "unexpected end", "ended before", "end-of-stream")
    if isinstance(error, OSError | SyntaxError | EOFError | ValueError) and any(t in low for t in truncation):
        return f"truncated or corrupt image data ({text})"
    return f"{name}: {text}"


class LoadMedicalImage(Transform):
    """Load one image file into a channel-first ``MetaTensor``, choosing the reader from the file's content.

    The metadata (``img.meta``) always holds every :class:`~monai_shpeft.transforms.SourceMetaKeys` entry: the
    stored dtype, the photometric interpretation (``MONOCHROME1`` stays as read: nothing is inverted here),
    whether the modality rescale was applied (DICOM: by MONAI's ``PydicomReader``, once; NIfTI: by nibabel), the
    file's VOI window, the number of frames and the frame axis. Arrays are in (row, column) order; DICOM frames
    and NIfTI slices stay (``[C, frames, rows, columns]``, ``[C, dim0, dim1, dim2]``) until
    :class:`~monai_shpeft.transforms.SelectFrame` picks one. Whole-slide images are read at one pyramid level,
    by default the coarsest.

    Args:
        dtype: dtype of the returned tensor (values are not scaled; 16-bit stays 16-bit in float).
        ensure_channel_first: move or add the channel axis to the front (whole-slide images always are).
        wsi_backend: ``cucim``, ``openslide`` or ``tifffile``; ``None`` takes the first one installed.
        wsi_level: pyramid level of whole-slide images; ``None`` is the coarsest, ``0`` the full resolution.

    Raises:
        ImageReadError: from ``__call__``, for a file that is missing, empty, of unsupported type, not an image,
            truncated, a DICOM without pixel data or without an installed decoder, a whole-slide image without a
            backend, and every other failure of the readers. The message names the file and the cause.
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        dtype: DtypeLike = np.float32,
        ensure_channel_first: bool = True,
        wsi_backend: str | None = None,
        wsi_level: int | None = None,
    ) -> None:
        if wsi_backend is not None and wsi_backend not in {b for b, _ in _WSI_BACKENDS}:
            raise ValueError(f"wsi_backend must be one of {[b for b, _ in _WSI_BACKENDS]} or None, got {wsi_backend}")
        if wsi_level is not None and int(wsi_level) < 0:
            raise ValueError(f"wsi_level must be >= 0 or None (coarsest level), got {wsi_level}.")
        self.dtype = dtype
        self.ensure_channel_first = ensure_channel_first
        self.wsi_backend = wsi_backend
        self.wsi_level = wsi_level
        with warnings.catch_warnings():  # LoadImage registers MONAI's default readers; we never use the GPU one
            warnings.filterwarnings("ignore", message=r"NvImgCodecPydicomReader")
            self._loader = LoadImage(image_only=True, dtype=dtype, ensure_channel_first=ensure_channel_first)
        self._readers = {
            "raster": PILImageReader(),
            "dicom": PydicomImageReader(),
            "dicom_series": DicomSeriesReader(),
            "metaimage": ItkVolumeReader("metaimage"),
            "nrrd": ItkVolumeReader("nrrd"),
            "nifti": NiftiImageReader(),
        }

    def __call__(self, filename: str | os.PathLike) -> MetaTensor:
        """Load ``filename``.

        Args:
            filename: path of one image file, or of a folder holding one DICOM series.

        Returns:
            ``[C, *spatial]`` tensor (with ``ensure_channel_first``) carrying the metadata described above.

        Raises:
            ImageReadError: whenever the file cannot be read as an image.
        """
        if not isinstance(filename, str | os.PathLike):
            raise ImageReadError(
                f"LoadMedicalImage reads one file given by its path, got {type(filename).__name__}: {filename!r:.200}"
            )
        path = os.fspath(filename)
        image_format = detect_image_format(path)
        family = format_family(image_format)
        try:
            with warnings.catch_warnings():
                # a 2-D classifier does not need the patient-space affine that X-ray/US files cannot give
                warnings.filterwarnings("ignore", message=r"PydicomReader: ImageOrientationPatient")
                if family == "wsi":
                    img = self._load_wsi(path)
                else:
                    img = self._loader(path, reader=self._readers[image_format if family == "itk" else family])
        except (ImageReadError, MemoryError):
            raise
        except Exception as e:
            raise ImageReadError.for_file(path, _describe_failure(family, e, path)) from e
        return self._finish(img, image_format, path)

    def _load_wsi(self, path: str) -> MetaTensor:
        backend = self.wsi_backend or available_wsi_backend()
        if backend is None:
            raise ImageReadError.for_file(
                path, f"whole-slide images need a WSI reader backend and none is installed: {_WSI_INSTALL_HINT}"
            )
        if not optional_import(dict(_WSI_BACKENDS)[backend])[1]:
            raise ImageReadError.for_file(path, f"the WSI backend '{backend}' is not installed: {_WSI_INSTALL_HINT}")
        if backend == "tifffile":
            array, meta = self._read_tiff_level(path)
        else:
            reader = WSIReader(backend=backend, channel_dim=0)
            wsi = reader.read(path)
            try:
                levels = reader.get_level_count(wsi)
                level = self._level(path, levels)
                array, meta = reader.get_data(wsi, level=level)
            finally:
                close = getattr(wsi, "close", None)
                if callable(close):
                    close()
            array, meta = np.asarray(array), dict(meta)
        meta[SourceMetaKeys.SOURCE_DTYPE] = array.dtype.name
        meta[SourceMetaKeys.PHOTOMETRIC_INTERPRETATION] = "RGB" if array.shape[0] == 3 else ""
        meta[SourceMetaKeys.STORED_PHOTOMETRIC_INTERPRETATION] = meta[SourceMetaKeys.PHOTOMETRIC_INTERPRETATION]
        meta[ImageMetaKey.FILENAME_OR_OBJ] = path
        meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = 0
        meta[MetaKeys.SPATIAL_SHAPE] = np.asarray(array.shape[1:])
        array = array if self.dtype is None else array.astype(self.dtype, copy=False)
        return MetaTensor(torch.as_tensor(array), meta=meta)

    def _level(self, path: str, levels: int) -> int:
        level = levels - 1 if self.wsi_level is None else int(self.wsi_level)
        if level >= levels:
            raise ImageReadError.for_file(path, f"wsi_level={level} requested but the slide has {levels} level(s)")
        return level

    def _read_tiff_level(self, path: str) -> tuple[np.ndarray, dict]:
        """One pyramid level with tifffile's own level list.

        MONAI's tifffile backend counts TIFF pages as levels, which for SVS includes the thumbnail, label and macro
        pages and for sub-IFD pyramids misses the levels; ``series[0].levels`` is the pyramid itself.
        """
        tifffile = optional_import("tifffile")[0]
        with tifffile.TiffFile(path) as tif:
            levels = tif.series[0].levels
            level = self._level(path, len(levels))
            array = levels[level].asarray()
            axes = levels[level].axes
        squeezed = "".join(a for a, n in zip(axes, array.shape) if n != 1 or a in "YX")
        array = array.reshape([n for a, n in zip(axes, array.shape) if n != 1 or a in "YX"])
        if squeezed == "YX":
            array = array[None]
        elif squeezed == "YXS":
            array = np.moveaxis(array, -1, 0)
        elif squeezed != "SYX":
            raise ImageReadError.for_file(
                path, f"level {level} has axes '{axes}' (shape {array.shape}), not a 2-D image"
            )
        meta = {"level": level, "backend": "tifffile", "path": path}
        return np.ascontiguousarray(array), meta

    def _finish(self, img: Any, image_format: str, path: str) -> MetaTensor:
        if not isinstance(img, MetaTensor):
            img = MetaTensor(img)
        spatial_dims = img.ndim - 1 if self.ensure_channel_first else img.ndim
        if spatial_dims < 2 or img.numel() == 0:
            raise ImageReadError.for_file(path, f"holds no 2-D image (array of shape {tuple(img.shape)})")
        for key, value in default_source_meta().items():
            img.meta.setdefault(key, value)
        if image_format != "raster":
            img.meta[SourceMetaKeys.SOURCE_FORMAT] = image_format
        elif isinstance(img.meta.get("format"), str) and img.meta["format"].lower() not in ("", "none"):
            img.meta[SourceMetaKeys.SOURCE_FORMAT] = img.meta["format"].lower()
        else:
            img.meta[SourceMetaKeys.SOURCE_FORMAT] = "raster"
        return img


class LoadMedicalImaged(MapTransform):
    """Dictionary version of :class:`LoadMedicalImage`: replaces each path under ``keys`` by the loaded image.

    Args:
        keys: keys of the paths to load (e.g. ``"image"``).
        dtype: dtype of the returned tensors.
        ensure_channel_first: move or add the channel axis to the front.
        wsi_backend: whole-slide backend, ``None`` for the first one installed.
        wsi_level: whole-slide pyramid level, ``None`` for the coarsest.
        allow_missing_keys: do not fail when a key is absent.

    Raises:
        ImageReadError: from ``__call__``, as :class:`LoadMedicalImage`.
    """

    backend = LoadMedicalImage.backend

    def __init__(
        self,
        keys: KeysCollection,
        dtype: DtypeLike = np.float32,
        ensure_channel_first: bool = True,
        wsi_backend: str | None = None,
        wsi_level: int | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadMedicalImage(
            dtype=dtype, ensure_channel_first=ensure_channel_first, wsi_backend=wsi_backend, wsi_level=wsi_level
        )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Load the file of every key.

        Args:
            data: a dictionary holding a path under each key.

        Returns:
            a copy of ``data`` with the paths replaced by images.
        """
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key])
        return d
