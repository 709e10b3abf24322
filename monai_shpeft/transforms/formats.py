"""Which kind of image a file holds, decided from its first bytes first and its name second.

Datasets in the wild carry files whose extension lies (a JPEG saved as ``.png``) and DICOM files with no extension,
so the content decides wherever it has a signature; the extension is used only where it does not (DICOM without the
128-byte preamble, NIfTI, whole-slide images). A folder is a DICOM series (a CT or MR study stored slice by slice).
"""

from __future__ import annotations

import os
from pathlib import Path

from monai_shpeft.transforms.errors import ImageReadError

__all__ = [
    "DICOM_SUFFIXES",
    "ITK_SUFFIXES",
    "NIFTI_SUFFIXES",
    "RASTER_FORMATS",
    "RASTER_SUFFIXES",
    "WSI_SUFFIXES",
    "detect_image_format",
    "format_family",
]

#: formats read with PIL (MONAI's ``PILReader``)
RASTER_FORMATS: tuple[str, ...] = ("png", "jpeg", "bmp", "tiff", "gif", "webp", "raster")
RASTER_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".jfif", ".jpe", ".bmp", ".tif", ".tiff", ".gif", ".webp")
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom", ".dic")
NIFTI_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz")
#: volumes read with MONAI's ``ITKReader``: MetaImage (one file, or a header naming its raw data) and NRRD
ITK_SUFFIXES: tuple[str, ...] = (".mha", ".mhd", ".nrrd", ".nhdr")
#: whole-slide images, read with MONAI's ``WSIReader`` (cuCIM, OpenSlide or tifffile backend)
WSI_SUFFIXES: tuple[str, ...] = (".svs", ".ndpi", ".scn", ".mrxs")

_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (128, b"DICM", "dicom"),
    (0, b"\x89PNG\r\n\x1a\n", "png"),
    (0, b"\xff\xd8\xff", "jpeg"),
    (0, b"II*\x00", "tiff"),
    (0, b"MM\x00*", "tiff"),
    (0, b"II+\x00", "tiff"),  # BigTIFF
    (0, b"MM\x00+", "tiff"),
    (0, b"GIF87a", "gif"),
    (0, b"GIF89a", "gif"),
    (0, b"BM", "bmp"),
    (344, b"n+1\x00", "nifti"),
    (344, b"ni1\x00", "nifti"),
    (4, b"n+2\x00", "nifti"),  # NIfTI-2
    (0, b"NRRD000", "nrrd"),
)
_HEAD_BYTES = 352


def format_family(image_format: str) -> str:
    """Map a format returned by :func:`detect_image_format` to the reader family that reads it.

    Args:
        image_format: ``png``, ``jpeg``, ..., ``dicom``, ``nifti`` or ``wsi``.

    Returns:
        ``raster`` (PIL), ``dicom`` (pydicom), ``dicom_series`` (a folder of slices, ITK), ``itk`` (MetaImage and
        NRRD, ITK), ``nifti`` (nibabel) or ``wsi`` (whole-slide reader).

    Raises:
        ValueError: for an unknown format name.
    """
    if image_format in RASTER_FORMATS:
        return "raster"
    if image_format in ("dicom", "dicom_series", "nifti", "wsi"):
        return image_format
    if image_format in ("metaimage", "nrrd"):
        return "itk"
    known = [*RASTER_FORMATS, "dicom", "dicom_series", "metaimage", "nrrd", "nifti", "wsi"]
    raise ValueError(f"unknown image format '{image_format}'; known: {known}.")


def _supported_text() -> str:
    return (
        f"supported: PNG/JPEG/BMP/TIFF/GIF/WebP images ({', '.join(RASTER_SUFFIXES)}), DICOM (any name, or "
        f"{', '.join(DICOM_SUFFIXES)}), a folder holding one DICOM series, NIfTI ({', '.join(NIFTI_SUFFIXES)}), "
        f"MetaImage and NRRD ({', '.join(ITK_SUFFIXES)}), whole-slide images ({', '.join(WSI_SUFFIXES)})"
    )


def detect_image_format(path: str | os.PathLike) -> str:
    """Say which kind of image ``path`` holds, without decoding it.

    Args:
        path: a file.

    Returns:
        one of ``png``, ``jpeg``, ``bmp``, ``tiff``, ``gif``, ``webp`` (content signature found), ``raster`` (an
        image extension but no known signature: left to PIL to identify), ``dicom``, ``dicom_series`` (a folder),
        ``metaimage``, ``nrrd``, ``nifti`` or ``wsi``.

    Raises:
        ImageReadError: if the path does not exist, is neither a file nor a folder, is empty, cannot be opened, or
            is of no supported type.
    """
    file = Path(os.fspath(path))
    if not file.exists():
        raise ImageReadError.for_file(file, "file not found")
    if file.is_dir():
        return "dicom_series"  # its slices are checked by the series reader
    if not file.is_file():
        raise ImageReadError.for_file(file, "neither a regular file nor a folder (a device or socket?)")
    try:
        with file.open("rb") as stream:
            head = stream.read(_HEAD_BYTES)
    except OSError as e:
        raise ImageReadError.for_file(file, f"cannot open the file ({e.strerror or e})") from e
    if not head:
        raise ImageReadError.for_file(file, "empty file (0 bytes)")
    name = file.name.lower()
    if name.endswith(WSI_SUFFIXES):  # SVS/NDPI are TIFF inside: the name must win over the signature
        return "wsi"
    for offset, signature, image_format in _SIGNATURES:
        if head[offset : offset + len(signature)] == signature:
            return image_format
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if name.endswith((".mha", ".mhd")):
        return "metaimage"
    if name.endswith((".nrrd", ".nhdr")):
        return "nrrd"
    if name.endswith(NIFTI_SUFFIXES):
        if name.endswith(".gz") and head[:2] != b"\x1f\x8b":
            raise ImageReadError.for_file(file, "named .nii.gz but not gzip-compressed (corrupt or mislabelled)")
        return "nifti"
    if name.endswith(DICOM_SUFFIXES):
        return "dicom"  # DICOM without the 128-byte preamble and 'DICM' prefix (old ACR-NEMA style)
    if name.endswith(RASTER_SUFFIXES):
        return "raster"  # no known signature: PIL decides (and says what is wrong)
    kind = f"'{file.suffix}' file" if file.suffix else "file with no extension"
    raise ImageReadError.for_file(
        file, f"unsupported file type: a {kind} whose content starts with {head[:16]!r}; {_supported_text()}"
    )
