"""Fingerprints of images: a SHA-256 of the decoded pixels and a difference hash of a grey thumbnail.

Hashing reads each file once: PNG / JPEG / BMP / TIFF with PIL, anything else (DICOM, NIfTI, whole-slide images)
with :class:`~monai_shpeft.transforms.LoadMedicalImage`, which is also the fallback when PIL fails. Results can be
cached per file (keyed on its size and modification time), so a second check of a large dataset is instant.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from monai_shpeft.utils import atomic_write_json

__all__ = ["DEFAULT_HASH_SIZE", "ImageFingerprint", "difference_hash", "fingerprint_image", "fingerprint_images"]

logger = logging.getLogger(__name__)

#: side of the difference-hash thumbnail: ``hash_size ** 2`` bits (256)
DEFAULT_HASH_SIZE = 16


_CACHE_VERSION = 1


#: files PIL must not open: DICOM and NIfTI it cannot read, whole-slide images it would read at full resolution
_LOADER_SUFFIXES = (".dcm", ".dicom", ".dic", ".nii", ".nii.gz", ".svs", ".ndpi", ".scn", ".mrxs")


_PROGRESS_FROM = 256  # fewer images hash in seconds: no progress bar


# ---------------------------------------------------------------------------------------------------- hashing
@dataclass(frozen=True)
class ImageFingerprint:
    """What duplicate detection knows of one file.

    Args:
        path: the file, as listed.
        file_sha256: SHA-256 of the file's bytes.
        pixel_sha256: SHA-256 of the decoded pixels (with their dtype and shape); empty if the file is unreadable.
        dhash: the difference hash as hex; empty if the file is unreadable.
        shape: shape of the decoded pixel array.
        error: why the file could not be decoded (then only byte-identical copies are found).
    """

    path: str
    file_sha256: str
    pixel_sha256: str
    dhash: str
    shape: tuple[int, ...] = ()
    error: str = ""

    @property
    def exact_key(self) -> str:
        """Equal for exact duplicates: the pixel hash, or the file hash of an unreadable file."""
        return self.pixel_sha256 or f"file:{self.file_sha256}"


def _canonical_pixels(array: np.ndarray, alpha: bool = False) -> np.ndarray:
    """The same picture as the same array: opaque alpha dropped, grey RGB as one channel, little-endian.

    Args:
        array: ``[H, W]`` or channels-last pixels.
        alpha: whether the last channel is an alpha channel (PIL's ``LA`` / ``RGBA`` modes).
    """
    if alpha and array.ndim == 3 and np.issubdtype(array.dtype, np.integer):
        if int(array[..., -1].min()) == np.iinfo(array.dtype).max:
            array = array[..., :-1]
    if array.ndim == 3 and array.shape[-1] == 3 and (array[..., 0] == array[..., 1]).all():
        if (array[..., 0] == array[..., 2]).all():
            array = array[..., :1]
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))


def _read_with_pil(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (``[H, W]`` or ``[H, W, C]``) and the 2-D grey plane of a raster image."""
    from PIL import Image

    with Image.open(path) as opened:
        opened.load()
        image: Image.Image = opened
        if image.mode in ("P", "PA"):  # a palette PNG and its RGB twin hold the same picture
            image = image.convert("RGBA")
        elif image.mode == "1":
            image = image.convert("L")
        pixels = _canonical_pixels(np.asarray(image), alpha=image.mode in ("LA", "RGBA"))
    return pixels, pixels


def _read_with_loader(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of any format the package reads (``[C, *spatial]``) and its middle frame's grey plane."""
    from monai.utils import convert_to_numpy

    from monai_shpeft.transforms import LoadMedicalImage, SelectFrame

    image = LoadMedicalImage(dtype=None)(path)
    frame = SelectFrame("middle")(image) if image.ndim == 4 else image
    # channels last, as PIL gives them, so that one canonical form serves both readers
    pixels = np.moveaxis(convert_to_numpy(image), 0, -1)
    return _canonical_pixels(pixels), np.moveaxis(convert_to_numpy(frame), 0, -1)


def _decode(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Read ``path`` with PIL (it recognises raster images by content), else with LoadMedicalImage.

    Importing the package's loader costs seconds (MONAI's transforms), so PNG/JPEG datasets never need it.
    """
    if not path.lower().endswith(_LOADER_SUFFIXES):
        try:
            return _read_with_pil(path)
        except Exception as error:  # noqa: BLE001 - DICOM without a suffix, or what MONAI's readers still read
            logger.debug("PIL cannot read %s (%s); trying LoadMedicalImage.", path, error)
    return _read_with_loader(path)


def difference_hash(pixels: np.ndarray, hash_size: int = DEFAULT_HASH_SIZE) -> str:
    """The difference hash of an image: is each thumbnail pixel brighter than its left neighbour?

    The image is made grey (mean of its channels) and box-averaged to ``hash_size`` rows of ``hash_size + 1``
    columns, so the hash ignores size, compression noise and any increasing brightness/contrast change.

    Args:
        pixels: ``[H, W]`` or ``[H, W, C]`` array of any numeric dtype.
        hash_size: thumbnail side; the hash has ``hash_size ** 2`` bits.

    Returns:
        the bits as a hex string (``hash_size ** 2 / 4`` characters, rounded up to whole bytes).

    Raises:
        ValueError: if ``pixels`` is not a 2-D image or ``hash_size`` is below 2.
    """
    from PIL import Image

    if hash_size < 2:
        raise ValueError(f"hash_size must be at least 2, got {hash_size}.")
    if pixels.ndim == 3:
        grey = pixels.mean(axis=-1, dtype=np.float32)
    elif pixels.ndim == 2:
        grey = pixels.astype(np.float32)
    else:
        raise ValueError(f"a difference hash needs a 2-D image ([H, W] or [H, W, C]), got shape {pixels.shape}.")
    grey = np.nan_to_num(np.ascontiguousarray(grey), nan=0.0, posinf=0.0, neginf=0.0)
    thumbnail = np.asarray(Image.fromarray(grey).resize((hash_size + 1, hash_size), Image.Resampling.BOX))
    return np.packbits(thumbnail[:, 1:] > thumbnail[:, :-1]).tobytes().hex()


def fingerprint_image(path: str | os.PathLike, hash_size: int = DEFAULT_HASH_SIZE) -> ImageFingerprint:
    """Hash one file: its bytes, its decoded pixels and its difference hash.

    Args:
        path: the image file.
        hash_size: difference-hash thumbnail side.

    Returns:
        the fingerprint; a file that cannot be decoded gets empty pixel and difference hashes and its ``error``.

    Raises:
        OSError: if the file cannot be read at all (missing, no permission).
    """
    name = os.fspath(path)
    file_sha256 = hashlib.sha256(Path(name).read_bytes()).hexdigest()
    try:
        pixels, plane = _decode(name)
        digest = hashlib.sha256(f"{pixels.dtype.str}{pixels.shape}".encode())
        digest.update(pixels.tobytes())
        return ImageFingerprint(name, file_sha256, digest.hexdigest(), difference_hash(plane, hash_size), pixels.shape)
    except Exception as error:  # noqa: BLE001 - an unreadable image is reported, and its training read will fail
        return ImageFingerprint(name, file_sha256, "", "", (), f"{type(error).__name__}: {error}"[:300])


def _file_stamp(path: str) -> list[int]:
    stat = os.stat(path)
    return [stat.st_size, stat.st_mtime_ns]


def _load_cache(cache_file: Path | None, hash_size: int) -> dict[str, dict]:
    if cache_file is None or not cache_file.is_file():
        return {}
    try:
        content = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # a broken cache only costs the time to hash again
        return {}
    if content.get("version") != _CACHE_VERSION or content.get("hash_size") != hash_size:
        return {}
    return dict(content.get("entries", {}))


def fingerprint_images(
    paths: Sequence[str | os.PathLike],
    hash_size: int = DEFAULT_HASH_SIZE,
    cache_file: str | os.PathLike | None = None,
    num_workers: int | None = None,
    progress: bool = True,
) -> list[ImageFingerprint]:
    """Hash many files, in threads (decoding releases the GIL), reusing and updating a cache.

    Args:
        paths: the image files.
        hash_size: difference-hash thumbnail side.
        cache_file: a JSON file of earlier fingerprints, keyed on each file's absolute path, size and modification
            time; written back when anything new was hashed. ``None``: no cache.
        num_workers: threads; ``None`` is ``min(4, CPU count)``.
        progress: show a progress bar (for 256 images or more).

    Returns:
        one fingerprint per path, in order.
    """
    names = [os.fspath(p) for p in paths]
    cache_path = Path(cache_file) if cache_file is not None else None
    cache = _load_cache(cache_path, hash_size)
    results: list[ImageFingerprint | None] = [None] * len(names)
    todo: list[int] = []
    for index, name in enumerate(names):
        entry = cache.get(str(Path(name).resolve()))
        if entry is not None and entry.get("stamp") == _file_stamp(name):
            fields = {k: v for k, v in entry.items() if k != "stamp"}
            results[index] = ImageFingerprint(path=name, **{**fields, "shape": tuple(fields.get("shape", ()))})
        else:
            todo.append(index)
    if todo:
        workers = num_workers if num_workers is not None else min(4, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            computed: Any = pool.map(lambda i: fingerprint_image(names[i], hash_size), todo)
            if progress and len(todo) >= _PROGRESS_FROM:
                from tqdm.auto import tqdm

                computed = tqdm(computed, total=len(todo), desc="hashing images for duplicates", unit="image")
            for index, fingerprint in zip(todo, computed):
                results[index] = fingerprint
        if cache_path is not None:
            for index in todo:
                entry = asdict(cast(ImageFingerprint, results[index]))  # hashed just above
                entry.pop("path")
                cache[str(Path(names[index]).resolve())] = {**entry, "stamp": _file_stamp(names[index])}
            atomic_write_json(cache_path, {"version": _CACHE_VERSION, "hash_size": hash_size, "entries": cache}, 0)
    return [r for r in results if r is not None]
