"""Array and dictionary transforms: ToRGB, InvertMonochrome1, DicomWindow, SelectFrame, ScaleToUnitRange; fuzzing."""

from __future__ import annotations

import math
import os
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from monai.data import MetaTensor

from monai_shpeft.transforms import (
    DicomWindow,
    DicomWindowd,
    InvalidImageError,
    InvertMonochrome1,
    InvertMonochrome1d,
    ScaleToUnitRange,
    ScaleToUnitRanged,
    SelectFrame,
    SelectFramed,
    SourceMetaKeys,
    ToRGB,
    ToRGBd,
    apply_window,
)


def meta_tensor(array, **meta) -> MetaTensor:
    return MetaTensor(torch.as_tensor(array), meta=meta)


# --- ToRGB ---------------------------------------------------------------------------------------------------


def test_to_rgb_repeats_grey_and_drops_alpha():
    grey = torch.arange(6, dtype=torch.float32).reshape(1, 2, 3)
    assert torch.equal(ToRGB()(grey), grey.repeat(3, 1, 1))
    grey_alpha = torch.stack([grey[0], torch.full((2, 3), 255.0)])
    assert torch.equal(ToRGB()(grey_alpha), grey.repeat(3, 1, 1))
    rgba = torch.rand(4, 2, 3)
    assert torch.equal(ToRGB()(rgba), rgba[:3])
    rgb = torch.rand(3, 2, 3)
    assert torch.equal(ToRGB()(rgb), rgb)


def test_to_rgb_keeps_16bit_values_and_dtype():
    grey16 = np.array([[[0, 1000, 65535]]], dtype=np.float32)
    out = ToRGB()(grey16)
    assert out.dtype == torch.float32 and out.shape == (3, 1, 3)
    assert out.max().item() == 65535.0


def test_to_rgb_rejects_channel_last_and_other_channel_counts():
    with pytest.raises(InvalidImageError, match="channel-last"):
        ToRGB()(np.zeros((20, 30, 3), np.uint8))
    with pytest.raises(InvalidImageError):
        ToRGB()(np.zeros((5, 4, 4)))


def test_to_rgb_dictionary_version():
    data = ToRGBd(keys="image")({"image": torch.zeros(1, 4, 4), "label": 2})
    assert data["image"].shape == (3, 4, 4) and data["label"] == 2


# --- InvertMonochrome1 ---------------------------------------------------------------------------------------


def test_invert_monochrome1_from_metadata_only():
    values = torch.tensor([[[0.0, 0.25, 1.0]]])
    mono1 = meta_tensor(values, **{SourceMetaKeys.PHOTOMETRIC_INTERPRETATION: "MONOCHROME1"})
    inverted = InvertMonochrome1(value_range=(0, 1))(mono1)
    assert torch.allclose(inverted.as_tensor(), 1 - values)
    assert inverted.meta[SourceMetaKeys.MONOCHROME1_INVERTED] is True
    mono2 = meta_tensor(values, **{SourceMetaKeys.PHOTOMETRIC_INTERPRETATION: "MONOCHROME2"})
    assert torch.equal(InvertMonochrome1()(mono2).as_tensor(), values)
    assert torch.equal(torch.as_tensor(InvertMonochrome1()(values.numpy())), values)  # no metadata: unchanged


def test_invert_monochrome1_explicit_interpretation_and_data_range():
    values = np.array([[[100.0, 300.0, 4000.0]]])
    out = InvertMonochrome1()(values, photometric_interpretation="MONOCHROME1")
    np.testing.assert_allclose(out.numpy(), 4100.0 - values)


def test_invert_monochrome1_dictionary_and_bad_range():
    data = {"image": meta_tensor(torch.ones(1, 2, 2), **{SourceMetaKeys.PHOTOMETRIC_INTERPRETATION: "MONOCHROME1"})}
    assert InvertMonochrome1d(keys="image", value_range=[0.0, 1.0])(data)["image"].sum().item() == 0.0
    with pytest.raises(ValueError):
        InvertMonochrome1(value_range=(1.0, 0.0))


# --- DicomWindow ---------------------------------------------------------------------------------------------


def dicom_linear(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1, written out branch by branch."""
    low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    y = ((x - (center - 0.5)) / (width - 1) + 0.5).astype(np.float64)
    return np.where(x <= low, 0.0, np.where(x > high, 1.0, y))


def test_explicit_window_follows_the_dicom_formula():
    hu = np.arange(-1200, 1201, 7, dtype=np.float32)[None, None]
    out = DicomWindow(center=40, width=400)(hu)
    np.testing.assert_allclose(out.numpy(), dicom_linear(hu, 40, 400), atol=1e-6)
    assert out.dtype == torch.float32


def test_file_window_and_function_from_metadata():
    values = torch.linspace(-1000, 3000, 50).reshape(1, 5, 10)
    meta = {
        SourceMetaKeys.WINDOW_CENTER: 600.0,
        SourceMetaKeys.WINDOW_WIDTH: 1600.0,
        SourceMetaKeys.VOI_LUT_FUNCTION: "SIGMOID",
    }
    out = DicomWindow()(meta_tensor(values, **meta))
    assert torch.allclose(out.as_tensor(), torch.sigmoid(4 * (values - 600) / 1600), atol=1e-6)
    assert out.meta[SourceMetaKeys.APPLIED_WINDOW_CENTER] == 600.0
    explicit = DicomWindow(center=0, width=100)(meta_tensor(values, **meta))  # explicit wins over the file's
    assert explicit.meta[SourceMetaKeys.APPLIED_WINDOW_WIDTH] == 100.0
    exact = apply_window(values, 0.0, 100.0, "LINEAR_EXACT")
    assert torch.allclose(exact, torch.clamp(values / 100 + 0.5, 0, 1))


def test_no_window_raises_or_falls_back():
    image = meta_tensor(np.array([[[0.0, 127.5, 255.0]]]), **{SourceMetaKeys.SOURCE_DTYPE: "uint8"})
    with pytest.raises(InvalidImageError, match="no window"):
        DicomWindow()(image)
    out = DicomWindow(fallback="auto")(image)
    assert torch.allclose(out.as_tensor(), torch.tensor([[[0.0, 0.5, 1.0]]]))
    assert math.isnan(out.meta[SourceMetaKeys.APPLIED_WINDOW_CENTER])


def test_window_argument_checks():
    with pytest.raises(ValueError, match="both"):
        DicomWindow(center=40)
    with pytest.raises(ValueError):
        DicomWindow(center=40, width=0)
    with pytest.raises(ValueError):
        DicomWindow(fallback="nearest")
    data = DicomWindowd(keys="image", center=0.5, width=2.0)({"image": torch.zeros(1, 2, 2)})
    assert data["image"].shape == (1, 2, 2)


# --- SelectFrame ---------------------------------------------------------------------------------------------


def test_select_frame_by_index_name_and_axis():
    volume = torch.arange(2 * 5 * 3 * 4, dtype=torch.float32).reshape(2, 5, 3, 4)
    assert torch.equal(SelectFrame(1)(volume), volume[:, 1])
    assert torch.equal(SelectFrame("middle")(volume), volume[:, 2])
    assert torch.equal(SelectFrame("last")(volume), volume[:, 4])
    assert torch.equal(SelectFrame(-2)(volume), volume[:, 3])
    assert torch.equal(SelectFrame(0, spatial_axis=2)(volume), volume[..., 0])
    nifti_like = meta_tensor(volume, **{SourceMetaKeys.FRAME_AXIS: 2})
    assert torch.equal(SelectFrame("middle")(nifti_like).as_tensor(), volume[..., 2])
    image = torch.rand(3, 8, 8)
    assert torch.equal(SelectFrame(5)(image), image)  # 2-D passes unchanged
    assert SelectFramed(keys="image", index=0)({"image": volume})["image"].shape == (2, 3, 4)


def test_select_frame_rejects_bad_indices():
    with pytest.raises(InvalidImageError, match="5 frames"):
        SelectFrame(5)(torch.zeros(1, 5, 2, 2))
    with pytest.raises(InvalidImageError):
        SelectFrame()(torch.zeros(1, 2, 2, 2, 2))
    with pytest.raises(ValueError):
        SelectFrame("centre")


# --- ScaleToUnitRange ----------------------------------------------------------------------------------------


def test_scale_by_stored_bit_depth():
    uint8 = np.array([[[0, 51, 255]]], np.uint8)
    np.testing.assert_allclose(ScaleToUnitRange()(uint8).numpy(), uint8 / 255.0)
    dark_uint8 = np.array([[[0, 10, 20]]], np.uint8)  # 8-bit stays / 255, not stretched
    np.testing.assert_allclose(ScaleToUnitRange()(dark_uint8).numpy(), dark_uint8 / 255.0)
    uint16 = np.array([[[0, 300, 4095]]], np.uint16)
    np.testing.assert_allclose(ScaleToUnitRange()(uint16).numpy(), uint16 / 4095.0)
    loaded_8bit = meta_tensor(np.array([[[0.0, 51.0, 102.0]]], np.float32), **{SourceMetaKeys.SOURCE_DTYPE: "uint8"})
    np.testing.assert_allclose(ScaleToUnitRange()(loaded_8bit).numpy(), [[[0.0, 0.2, 0.4]]], rtol=1e-6)
    hu = np.array([[[-1000.0, 0.0, 1000.0]]], np.float32)
    np.testing.assert_allclose(ScaleToUnitRange()(hu).numpy(), [[[0.0, 0.5, 1.0]]])
    unit = np.array([[[0.1, 0.7]]], np.float32)
    np.testing.assert_allclose(ScaleToUnitRange()(unit).numpy(), unit)  # already scaled: kept (idempotent)


def test_scale_minmax_percentile_and_constant():
    values = torch.arange(1000, dtype=torch.float32).reshape(1, 10, 100)
    values[0, 0, 0] = 1e6  # a hot pixel
    robust = ScaleToUnitRange(mode="percentile", lower=1, upper=99)(values)
    assert robust.max() == 1.0 and (robust > 0.99).sum() > 1  # the hot pixel does not squash the rest
    assert ScaleToUnitRange(mode="minmax")(values)[0, 9, 99] < 0.01
    assert torch.equal(ScaleToUnitRange()(torch.full((1, 3, 3), 7.0)), torch.zeros(1, 3, 3))
    data = ScaleToUnitRanged(keys="image", mode="minmax")({"image": torch.tensor([[[2.0, 4.0]]])})
    assert torch.equal(data["image"], torch.tensor([[[0.0, 1.0]]]))
    with pytest.raises(ValueError):
        ScaleToUnitRange(mode="zscore")


def test_non_finite_values_are_rejected_clearly():
    with pytest.raises(InvalidImageError, match="NaN"):
        ScaleToUnitRange()(torch.tensor([[[0.0, float("nan")]]]))


# --- fuzzing -------------------------------------------------------------------------------------------------

FUZZ_EXAMPLES = int(os.environ.get("MONAI_SHPEFT_FUZZ_EXAMPLES", "100"))
_DTYPES = [np.bool_, np.uint8, np.int8, np.int16, np.uint16, np.int32, np.uint32, np.int64]
_DTYPES += [np.float16, np.float32, np.float64]
_MONO1 = {SourceMetaKeys.PHOTOMETRIC_INTERPRETATION: "MONOCHROME1"}

#: (name, transform, check of a processed output given the input shape)
_FUZZED = [
    ("ToRGB", lambda x: ToRGB()(x), lambda out, shape: tuple(out.shape) == (3, *shape[1:])),
    ("InvertMonochrome1", lambda x: InvertMonochrome1()(x, "MONOCHROME1"), lambda out, shape: out.shape == shape),
    ("InvertMonochrome1[0,1]", lambda x: InvertMonochrome1((0, 1))(x, "MONOCHROME1"), lambda o, s: o.shape == s),
    ("DicomWindow(40,400)", lambda x: DicomWindow(40, 400)(x), lambda out, shape: out.shape == shape),
    ("DicomWindow(sigmoid)", lambda x: DicomWindow(0, 1e-3, "SIGMOID")(x), lambda out, shape: out.shape == shape),
    ("DicomWindow(fallback)", lambda x: DicomWindow(fallback="auto")(x), lambda out, shape: out.shape == shape),
    ("SelectFrame(middle)", lambda x: SelectFrame()(x), lambda out, shape: out.ndim == 3),
    ("SelectFrame(2)", lambda x: SelectFrame(2, spatial_axis=1)(x), lambda out, shape: out.ndim == 3),
    ("ScaleToUnitRange(auto)", lambda x: ScaleToUnitRange()(x), lambda out, shape: out.shape == shape),
    ("ScaleToUnitRange(minmax)", lambda x: ScaleToUnitRange("minmax")(x), lambda out, shape: out.shape == shape),
    ("ScaleToUnitRange(pct)", lambda x: ScaleToUnitRange("percentile")(x), lambda out, shape: out.shape == shape),
]
_UNIT_OUTPUT = ("DicomWindow", "ScaleToUnitRange")


@st.composite
def fuzz_images(draw):
    """Arrays of random rank (0-5), sizes (0-5), dtype and values, as numpy, torch or MetaTensor.

    Mostly images a transform can take (rank 2-4, no empty axis, finite values of any magnitude), sometimes not
    (scalars, empty axes, NaN/inf): both kinds must end in a valid tensor or in InvalidImageError.
    """
    rank = draw(st.sampled_from([2, 3, 3, 4, 4, 0, 1, 5]))
    shape = tuple(draw(st.lists(st.sampled_from([1, 1, 2, 3, 3, 4, 5, 0]), min_size=rank, max_size=rank)))
    dtype = np.dtype(draw(st.sampled_from(_DTYPES)))
    elements = None
    if dtype.kind == "f" and draw(st.integers(0, 4)) > 0:
        elements = st.floats(allow_nan=False, allow_infinity=False, width=8 * dtype.itemsize)
    array = draw(arrays(dtype, shape, elements=elements))
    kind = draw(st.sampled_from(["numpy", "torch", "meta"]))
    if kind == "numpy":
        return array
    tensor = torch.from_numpy(array.copy())
    if kind == "torch":
        return tensor
    meta = {
        SourceMetaKeys.PHOTOMETRIC_INTERPRETATION: draw(st.sampled_from(["MONOCHROME1", "MONOCHROME2", "RGB"])),
        SourceMetaKeys.SOURCE_DTYPE: draw(st.sampled_from(["uint8", "uint16", "int16", "float32", ""])),
        SourceMetaKeys.WINDOW_CENTER: draw(st.floats(allow_nan=True)),
        SourceMetaKeys.WINDOW_WIDTH: draw(st.floats(allow_nan=True)),
        SourceMetaKeys.FRAME_AXIS: draw(st.integers(-1, 3)),
    }
    return MetaTensor(tensor, meta=meta)


def test_fuzz_array_transforms_give_valid_tensors_or_our_error(record_property):
    counts: Counter = Counter()

    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=FUZZ_EXAMPLES <= 100,  # the CI run is reproducible; raise the count to explore
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(image=fuzz_images())
    def run(image):
        counts["examples"] += 1
        shape = tuple(image.shape)
        for name, transform, check in _FUZZED:
            try:
                out = transform(image)
            except InvalidImageError as error:
                assert isinstance(error, ValueError) and str(error)
                counts[f"{name} rejected"] += 1
                continue
            assert isinstance(out, torch.Tensor), name
            assert check(out, shape), (name, shape, tuple(out.shape))
            if out.is_floating_point():
                assert bool(torch.isfinite(out).all()), name
            if name.startswith(_UNIT_OUTPUT):
                assert out.dtype == torch.float32 and out.min() >= 0 and out.max() <= 1, name
            counts[f"{name} processed"] += 1

    run()
    summary = dict(sorted(counts.items()))
    print(f"\nfuzzed {counts['examples']} inputs x {len(_FUZZED)} transforms: {summary}")
    record_property("fuzz_counts", summary)
    assert counts["examples"] >= min(FUZZ_EXAMPLES, 100) * 0.9
    assert sum(v for k, v in counts.items() if k.endswith("processed")) > 0
    assert sum(v for k, v in counts.items() if k.endswith("rejected")) > 0
