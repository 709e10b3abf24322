"""Fuzzing the modality presets end to end on real files: every input gives a valid tensor or our clear error.

Each example writes a real file (PNG, JPEG, BMP, TIFF with PIL; NIfTI with nibabel; DICOM with pydicom) holding an
array of random layout (2-D, channels last, channels first, frames), size (1 x 1 up to aspect ratios of 1:300),
dtype (bool, uint8, uint16, int16, float32, float64) and values (random, constant, dtype extremes, negative, NaN,
infinite), and runs ``modality_transforms(modality)`` of a random modality on it. The contract: a float32
``[3, S, S]`` tensor of finite values, or an :class:`ImageReadError` / :class:`InvalidImageError` (possibly inside
MONAI's ``RuntimeError("applying transform ...")`` wrapper) whose message names the file. NaN and infinite pixels
must be rejected, never scaled into a plausible-looking image, and nothing else may be (a valid image refused is a
failure too; float64 values beyond float32's range count as infinite). A second test damages valid files byte-wise
(truncation, flipped bytes, zeroed header, garbage tail, reversed middle) and asks the same of the loader.

``MONAI_SHPEFT_FUZZ_EXAMPLES`` raises the example count (the CI count is derandomised, so it is reproducible).
"""

from __future__ import annotations

import itertools
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from monai_shpeft.transforms import MODALITIES, ImageReadError, InvalidImageError, LoadMedicalImage, modality_transforms
from tests.test_transforms_support import new_dicom_dataset

FUZZ_EXAMPLES = int(os.environ.get("MONAI_SHPEFT_FUZZ_EXAMPLES", "250"))
#: the CI count is derandomised (the same examples on every run); setting the count explores new ones
DERANDOMIZE = "MONAI_SHPEFT_FUZZ_EXAMPLES" not in os.environ
DTYPES = ("bool", "uint8", "uint16", "int16", "float32", "float64")
VALUES = ("random", "constant", "extremes", "negative", "nan", "inf")
#: per format, what its writer stores as it is: (dtype, layout, channel counts of channels_last/_first layouts)
FORMATS: dict[str, list[tuple[str, str, tuple[int, ...]]]] = {
    "png": [("uint8", "grey", (1,)), ("uint8", "channels_last", (1, 2, 3, 4)), ("uint16", "grey", (1,))]
    + [("bool", "grey", (1,))],
    "jpeg": [("uint8", "grey", (1,)), ("uint8", "channels_last", (3, 4))],  # 4 channels: a CMYK JPEG
    "bmp": [("uint8", "grey", (1,)), ("uint8", "channels_last", (3,))],
    # PIL's TIFF stores int16 as int32 and float64 as float32 (beyond its range: infinite)
    "tiff": [(d, "grey", (1,)) for d in DTYPES] + [("uint8", "channels_last", (3, 4))],
    "nifti": [(d, layout, (1, 2, 3, 4)) for d in DTYPES for layout in ("grey", "channels_last", "channels_first")]
    + [(d, "frames", (1,)) for d in DTYPES],
    "dicom": [(d, layout, (1,)) for d in DTYPES if d != "bool" for layout in ("grey", "frames")]
    + [("uint8", "channels_last", (3,))],
}
_RASTER_MODES = {2: "LA", 3: "RGB", 4: "RGBA"}
_OUR_ERRORS = (ImageReadError, InvalidImageError)


def _values(draw: st.DrawFn, dtype: str, shape: tuple[int, ...], kind: str, rng: np.random.Generator) -> np.ndarray:
    """An array of ``dtype`` and ``shape`` holding values of the given kind (see :data:`VALUES`)."""
    if dtype == "bool":
        return rng.integers(0, 2, shape).astype(bool) if kind != "constant" else np.full(shape, draw(st.booleans()))
    np_dtype = np.dtype(dtype)
    if np_dtype.kind == "f":
        info = np.finfo(np_dtype)
        low, high = -float(info.max), float(info.max)
        scale = draw(st.sampled_from([1.0, 255.0, 4095.0, 1e6, 1e30]))
        random = rng.normal(0.0, scale, shape)
    else:
        info = np.iinfo(np_dtype)
        low, high = int(info.min), int(info.max)
        random = rng.integers(low, high, shape, endpoint=True)
    if kind == "constant":
        array = np.full(shape, draw(st.sampled_from([low, 0, 1, high])))
    elif kind == "extremes":
        array = np.where(rng.integers(0, 2, shape) == 1, high, low)
    elif kind == "negative":
        array = -np.abs(random) if np_dtype.kind in "if" else random
    else:
        array = random
    array = array.astype(np_dtype)
    if kind in ("nan", "inf") and np_dtype.kind == "f":
        flat = array.reshape(-1)
        hits = rng.choice(flat.size, size=max(1, flat.size // 7), replace=False)
        flat[hits] = np.nan if kind == "nan" else rng.choice([np.inf, -np.inf])
    return array


@st.composite
def fuzz_files(draw: st.DrawFn) -> dict:
    """A random array, the format it is written in, and the preset to run."""
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    dtype, layout, channel_counts = draw(st.sampled_from(FORMATS[fmt]))
    channels = draw(st.sampled_from(channel_counts))
    rows, cols = draw(
        st.one_of(
            st.tuples(st.integers(1, 6), st.integers(1, 6)),  # tiny, 1 x 1 included
            st.tuples(st.integers(7, 40), st.integers(7, 40)),
            st.sampled_from([(1, 300), (300, 1), (2, 257), (257, 3)]),  # large aspect ratios
        )
    )
    frames = draw(st.integers(1, 4)) if layout == "frames" else 1
    shape = {
        "grey": (rows, cols),
        "channels_last": (rows, cols, channels),
        "channels_first": (channels, rows, cols),
        "frames": (frames, rows, cols),
    }[layout]
    kind = draw(st.sampled_from(VALUES))
    if kind in ("nan", "inf") and not dtype.startswith("float"):
        kind = "random"
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    array = _values(draw, dtype, shape, kind, rng)
    if fmt == "jpeg" and kind in ("random", "extremes"):
        kind = "lossy"  # JPEG changes the values; only the output contract is checked
    return {
        "array": array,
        "format": fmt,
        "layout": layout,
        "values": kind,
        "modality": draw(st.sampled_from(MODALITIES)),
        "size": draw(st.sampled_from([1, 3, 16])),
        "train": draw(st.booleans()),
        "monochrome1": draw(st.booleans()),
        # a NaN window is not fuzzed: pydicom refuses to write "nan" into a DS element
        "window": draw(st.sampled_from([None, (40.0, 400.0), (0.0, 0.0), (1e6, 1e-3)])),
    }


def write_dicom(path: Path, array: np.ndarray, layout: str, monochrome1: bool, window: tuple | None) -> Path:
    """A DICOM file (explicit VR little endian, uncompressed) holding ``array`` as it is, written with pydicom."""
    ds = new_dicom_dataset("OT")
    rgb = layout == "channels_last"
    ds.Rows, ds.Columns = array.shape[-3:-1] if rgb else array.shape[-2:]
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = "RGB" if rgb else ("MONOCHROME1" if monochrome1 else "MONOCHROME2")
    if rgb:
        ds.PlanarConfiguration = 0
    if layout == "frames":
        ds.NumberOfFrames = array.shape[0]
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if array.dtype.kind == "f":
        ds.BitsAllocated = 8 * array.dtype.itemsize
        data = array.astype(array.dtype.newbyteorder("<")).tobytes()
        setattr(ds, "FloatPixelData" if array.dtype == np.float32 else "DoubleFloatPixelData", data)
    else:
        ds.BitsAllocated = ds.BitsStored = 8 * array.dtype.itemsize
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = int(array.dtype.kind == "i")
        data = array.astype(array.dtype.newbyteorder("<")).tobytes()
        ds.PixelData = data + b"\0" * (len(data) % 2)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_case(folder: Path, name: str, case: dict) -> Path:
    """Write ``case["array"]`` in ``case["format"]`` under ``folder``."""
    array, fmt = case["array"], case["format"]
    if fmt == "nifti":
        path = folder / f"{name}.nii.gz"
        data = array.astype(np.uint8) if array.dtype == bool else array
        nib.save(nib.Nifti1Image(data, np.eye(4)), path)
        return path
    if fmt == "dicom":
        return write_dicom(folder / f"{name}.dcm", array, case["layout"], case["monochrome1"], case["window"])
    suffix = {"png": ".png", "jpeg": ".jpg", "bmp": ".bmp", "tiff": ".tif"}[fmt]
    path = folder / f"{name}{suffix}"
    if array.dtype == bool:
        image = Image.fromarray(array.astype(np.uint8) * 255).convert("1")
    elif array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 1:
        image = Image.fromarray(array[..., 0])
    elif array.dtype == np.uint8 and array.ndim == 3:
        image = Image.fromarray(array, mode=_RASTER_MODES[array.shape[2]])
        if fmt == "jpeg" and array.shape[2] == 4:
            image = Image.frombytes("CMYK", image.size, array.tobytes())
    elif array.dtype == np.float64:
        image = Image.fromarray(array.astype(np.float32))  # PIL's TIFF holds 32-bit floats
    else:
        image = Image.fromarray(array)
    image.save(path)
    return path


def _root_cause(error: BaseException) -> BaseException:
    """Walk MONAI's ``RuntimeError("applying transform ...")`` wrappers down to the error a transform raised."""
    while isinstance(error, RuntimeError) and error.__cause__ is not None and "applying transform" in str(error):
        error = error.__cause__
    return error


def _non_finite_input(case: dict) -> bool:
    array = case["array"]
    return array.dtype.kind == "f" and not bool(np.isfinite(array).all())


def _beyond_float32(case: dict) -> bool:
    """float64 values that the loader's float32 cannot hold (they become infinite, and are refused as such)."""
    array = case["array"]
    return array.dtype == np.float64 and bool(np.nanmax(np.abs(np.where(np.isinf(array), 0, array))) > 3.4e38)


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")  # odd inputs: expected notes
def test_fuzz_presets_on_real_files_give_valid_tensors_or_our_error(record_property) -> None:
    folder = Path(tempfile.mkdtemp(prefix="fuzz_presets_"))
    names = itertools.count()
    counts: Counter = Counter()
    start = time.perf_counter()

    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=DERANDOMIZE,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
    @given(case=fuzz_files())
    def run(case: dict) -> None:
        counts["examples"] += 1
        counts[f"format {case['format']}"] += 1
        path = write_case(folder, f"case{next(names)}", case)
        preset = modality_transforms(case["modality"], image_size=case["size"], train=case["train"])
        try:
            out = preset({"image": str(path), "label": 0})["image"]
        except Exception as error:  # noqa: BLE001 - the point is to see which kind it is
            cause = _root_cause(error)
            assert isinstance(cause, _OUR_ERRORS), f"{case['format']} {case['array'].dtype} {case['layout']}: {cause!r}"
            assert str(path) in str(cause), f"the message does not name the file: {cause}"
            # only what no scaling can map to an image is refused: NaN/inf, or float64 beyond float32's range
            assert _non_finite_input(case) or _beyond_float32(case), f"a valid image was refused: {cause}"
            counts[f"rejected: {type(cause).__name__}"] += 1
            return
        assert not _non_finite_input(case), f"NaN/inf pixels came out as an image: {case['format']} {case['layout']}"
        assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
        assert tuple(out.shape) == (3, case["size"], case["size"]), (case["format"], case["layout"], out.shape)
        assert bool(torch.isfinite(out).all())
        counts["processed"] += 1

    run()
    elapsed = time.perf_counter() - start
    summary = dict(sorted(counts.items()))
    print(f"\nfuzzed {counts['examples']} files through the presets in {elapsed:.1f} s: {summary}")
    record_property("preset_fuzz", {**summary, "seconds": round(elapsed, 1)})
    assert counts["examples"] >= FUZZ_EXAMPLES * 0.9
    assert counts["processed"] > FUZZ_EXAMPLES / 3
    assert counts["rejected: InvalidImageError"] > 0  # the NaN/inf files at least


# --- damaged files ------------------------------------------------------------------------------------------------


def _valid_files(folder: Path) -> list[Path]:
    """One valid file per reader family, to be damaged."""
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (12, 9), dtype=np.uint8)
    rgb = rng.integers(0, 256, (12, 9, 3), dtype=np.uint8)
    files = [folder / "grey.png", folder / "rgb.jpg", folder / "grey16.tif", folder / "rgb.bmp"]
    Image.fromarray(grey).save(files[0])
    Image.fromarray(rgb).save(files[1])
    Image.fromarray(rng.integers(0, 60000, (12, 9)).astype(np.uint16)).save(files[2])
    Image.fromarray(rgb).save(files[3])
    hounsfield = rng.integers(-1000, 2000, (12, 9)).astype(np.int16)
    files.append(write_dicom(folder / "ct.dcm", hounsfield, "grey", False, None))
    files.append(folder / "volume.nii")
    nib.save(nib.Nifti1Image(rng.normal(0, 100, (6, 5, 4)).astype(np.float32), np.eye(4)), files[-1])
    return files


@st.composite
def damages(draw: st.DrawFn) -> tuple[int, str, int, int]:
    """Which file, how it is damaged, where, and a byte value."""
    return (
        draw(st.integers(0, 5)),
        draw(st.sampled_from(["truncate", "flip", "zero_head", "garbage_tail", "shuffle_middle"])),
        draw(st.integers(0, 2**31 - 1)),
        draw(st.integers(0, 255)),
    )


@pytest.mark.filterwarnings("ignore::UserWarning")  # "Corrupt EXIF data" and the like, from damaged files
def test_fuzz_damaged_files_give_an_image_or_an_image_read_error(record_property) -> None:
    folder = Path(tempfile.mkdtemp(prefix="fuzz_damaged_"))
    sources = _valid_files(folder)
    loader = LoadMedicalImage()
    names = itertools.count()
    counts: Counter = Counter()
    start = time.perf_counter()

    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=DERANDOMIZE,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(damage=damages())
    def run(damage: tuple[int, str, int, int]) -> None:
        counts["examples"] += 1
        index, how, position, value = damage
        data = bytearray(sources[index].read_bytes())
        at = position % len(data)
        if how == "truncate":
            data = data[:at]
        elif how == "flip":
            data[at] ^= value or 0xFF
        elif how == "zero_head":
            data[: min(at, 400)] = bytes(min(at, 400))
        elif how == "garbage_tail":
            data = data[:at] + bytes(np.random.default_rng(position).integers(0, 256, 64, dtype=np.uint8))
        else:
            middle = data[len(data) // 4 : 3 * len(data) // 4]
            data[len(data) // 4 : 3 * len(data) // 4] = middle[::-1]
        path = folder / f"damaged{next(names)}{''.join(sources[index].suffixes)}"
        path.write_bytes(bytes(data))
        try:
            image = loader(path)
        except ImageReadError as error:
            assert str(path) in str(error) and error.reason
            counts["rejected"] += 1
            return
        assert image.ndim >= 3 and image.numel() > 0 and image.dtype == torch.float32
        counts["loaded"] += 1

    run()
    elapsed = time.perf_counter() - start
    summary = f"{counts['loaded']} still load, {counts['rejected']} refused"
    print(f"\ndamaged {counts['examples']} files in {elapsed:.1f} s: {summary}")
    record_property("damaged_fuzz", {**dict(counts), "seconds": round(elapsed, 1)})
    assert counts["examples"] >= FUZZ_EXAMPLES * 0.9 and counts["rejected"] > 0 and counts["loaded"] > 0
