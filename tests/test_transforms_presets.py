"""Modality presets on real files: output contract, bundle-config parity, windows, MONOCHROME1, options, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import DataLoader, Dataset
from monai.transforms import Compose
from PIL import Image

from monai_shpeft.transforms import (
    MODALITIES,
    NORMALIZATIONS,
    ImageReadError,
    apply_window,
    modality_transform_config,
    modality_transforms,
)
from tests.test_transforms_support import (
    NIBABEL_DECIMAL_RESCALE,
    local_file,
    pydicom_file,
    write_monochrome1,
    write_nifti,
    write_raster_files,
    write_truncated,
)

SIZE = 32
BUSI_FOLDER = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "busi"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("preset_files")
    paths = dict(write_raster_files(folder))
    paths["mono1_dcm"], paths["mono2_dcm"] = write_monochrome1(folder / "dicom")
    paths["volume_nii"], _ = write_nifti(folder)
    return paths


def resolve(files: dict[str, Path], name: str) -> Path:
    if name in files:
        return files[name]
    if name == "decimal_rescale":
        return local_file(NIBABEL_DECIMAL_RESCALE)
    return pydicom_file(name)


CASES = [
    ("ultrasound", "grey8_png"),
    ("ultrasound", "examples_rgb_color.dcm"),
    ("ultrasound", "examples_ybr_color.dcm"),
    ("ultrasound", "examples_palette.dcm"),
    ("ct", "CT_small.dcm"),
    ("ct", "volume_nii"),
    ("ct", "grey8_png"),
    ("xray", "mono1_dcm"),
    ("xray", "grey16_png"),
    ("xray", "rgb8_jpeg"),
    ("mammography", "grey16_png"),
    ("mammography", "mono1_dcm"),
    ("mammography", "decimal_rescale"),
    ("oct", "grey8_png"),
    ("fundus", "rgb8_jpeg"),
    ("fundus", "cmyk_jpeg"),
    ("pathology", "rgb_tiff"),
    ("pathology", "rgba_png"),
    ("dermoscopy", "rgb8_jpeg"),
    ("dermoscopy", "palette_png"),
    ("endoscopy", "rgb_bmp"),
    ("endoscopy", "grey16_tiff"),
]


def check_output(image: torch.Tensor, size: int) -> None:
    assert isinstance(image, torch.Tensor)
    assert tuple(image.shape) == (3, size, size)
    assert image.dtype == torch.float32
    assert bool(torch.isfinite(image).all())


@pytest.mark.parametrize("modality, name", CASES, ids=[f"{m}-{n}" for m, n in CASES])
def test_every_preset_gives_a_normalised_rgb_square(files, modality, name):
    path = resolve(files, name)
    for train in (False, True):
        data = modality_transforms(modality, image_size=SIZE, train=train)({"image": str(path), "label": 1})
        check_output(data["image"], SIZE)
        assert data["label"] == 1


def test_default_size_is_224_for_every_modality(files):
    assert set(MODALITIES) == {"ultrasound", "ct", "xray", "mammography", "oct", "fundus", "pathology"} | {
        "dermoscopy",
        "endoscopy",
        "natural",
    }
    for modality in MODALITIES:
        check_output(modality_transforms(modality)({"image": str(files["rgb8_jpeg"])})["image"], 224)


@pytest.mark.parametrize("modality", MODALITIES)
def test_bundle_config_instantiates_the_same_pipeline(files, modality):
    path = str(files["mono1_dcm"] if modality in ("ct", "xray", "mammography") else files["rgb8_jpeg"])
    for train in (False, True):
        config = modality_transform_config(modality, image_size=SIZE, train=train)
        assert json.loads(json.dumps(config)) == config  # writable into a bundle's JSON
        parser = ConfigParser({"preprocessing": {"_target_": "Compose", "transforms": config}})
        from_config = parser.get_parsed_content("preprocessing")
        direct = modality_transforms(modality, image_size=SIZE, train=train)
        assert isinstance(from_config, Compose)
        assert [type(t) for t in from_config.transforms] == [type(t) for t in direct.transforms]
        for seed in (0, 1, 2):
            from_config.set_random_state(seed=seed)
            direct.set_random_state(seed=seed)
            expected = direct({"image": path})["image"]
            actual = from_config({"image": path})["image"]
            assert torch.equal(actual.as_tensor(), expected.as_tensor())


def test_training_augments_and_evaluation_does_not(files):
    path = str(files["rgb_tiff"])
    evaluation = modality_transforms("pathology", image_size=SIZE)({"image": path})["image"]
    assert torch.equal(evaluation, modality_transforms("pathology", image_size=SIZE)({"image": path})["image"])
    train = modality_transforms("pathology", image_size=SIZE, train=True)
    changed = 0
    for seed in range(6):
        train.set_random_state(seed=seed)
        augmented = train({"image": path})["image"]
        check_output(augmented, SIZE)
        changed += not torch.allclose(augmented, evaluation)
    assert changed > 0


def unnormalise(image: torch.Tensor, normalization: str = "imagenet") -> torch.Tensor:
    mean, std = (torch.tensor(v).reshape(3, 1, 1) for v in NORMALIZATIONS[normalization])
    return image.as_tensor() * std + mean


def test_ct_window_in_hounsfield_units_exactly(files):
    path = pydicom_file("CT_small.dcm")  # 128 x 128, slope 1, intercept -1024, no window of its own
    ds = pydicom.dcmread(path)
    hu = torch.as_tensor(ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept), dtype=torch.float32)
    image = modality_transforms("ct", image_size=128, window=(40, 400))({"image": str(path)})["image"]
    expected = apply_window(hu, 40.0, 400.0)
    for channel in range(3):
        assert torch.allclose(unnormalise(image)[channel], expected, atol=1e-5)
    # without an explicit window and none in the file, the HU range is min-max scaled
    fallback = unnormalise(modality_transforms("ct", image_size=128)({"image": str(path)})["image"])[0]
    assert torch.allclose(fallback, (hu - hu.min()) / (hu.max() - hu.min()), atol=1e-5)


def test_xray_monochrome1_comes_out_as_the_mirror_of_monochrome2(files):
    # same pixels, MR_small's own window 600/1600: the MONOCHROME1 image must be 1 - the MONOCHROME2 image
    pipeline = modality_transforms("xray", image_size=64)
    mono1 = unnormalise(pipeline({"image": str(files["mono1_dcm"])})["image"])
    mono2 = unnormalise(pipeline({"image": str(files["mono2_dcm"])})["image"])
    assert torch.allclose(mono1 + mono2, torch.ones_like(mono1), atol=1e-5)
    raw = torch.as_tensor(pydicom.dcmread(files["mono2_dcm"]).pixel_array, dtype=torch.float32)
    assert torch.allclose(mono2[0], apply_window(raw, 600.0, 1600.0), atol=1e-5)


def test_clip_normalisation_is_a_named_option(files):
    path = str(files["rgb8_jpeg"])
    imagenet = modality_transforms("fundus", image_size=SIZE)({"image": path})["image"]
    clip = modality_transforms("fundus", image_size=SIZE, normalization="clip")({"image": path})["image"]
    assert torch.allclose(unnormalise(imagenet, "imagenet"), unnormalise(clip, "clip"), atol=1e-5)
    custom = modality_transforms("fundus", image_size=SIZE, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert torch.allclose(custom({"image": path})["image"] * 0.5 + 0.5, unnormalise(imagenet), atol=1e-5)


def test_multiframe_frame_option(files):
    path = str(pydicom_file("rtdose.dcm"))  # 15 frames of 10 x 10
    first = modality_transforms("ct", image_size=10, frame=0)({"image": path})["image"]
    last = modality_transforms("ct", image_size=10, frame="last")({"image": path})["image"]
    check_output(first, 10)
    assert not torch.equal(first, last)


def test_unknown_modality_lists_the_valid_ones():
    with pytest.raises(ValueError) as info:
        modality_transforms("xray_cr")
    for modality in MODALITIES:
        assert modality in str(info.value)
    with pytest.raises(ValueError, match="valid modalities"):
        modality_transform_config("MRI")
    assert isinstance(modality_transforms("CT"), Compose)  # case-insensitive


@pytest.mark.parametrize(
    "options",
    [
        {"image_size": 0},
        {"image_size": 22.5},
        {"normalization": "openai"},
        {"mean": (0.5, 0.5)},
        {"std": (0.2, 0.0, 0.2)},
        {"window": (40, 0)},
        {"frame": "centre"},
    ],
)
def test_invalid_options(options):
    with pytest.raises(ValueError):
        modality_transforms("ct", **options)


def test_unreadable_file_through_a_preset_names_the_file(files, tmp_path):
    broken = write_truncated(files["grey8_png"], tmp_path)
    with pytest.raises(ImageReadError) as info:  # ours, not the RuntimeError MONAI's Compose wraps it in
        modality_transforms("ultrasound", image_size=SIZE)({"image": str(broken)})
    assert str(broken) in str(info.value) and "truncated" in str(info.value)


def test_a_batch_mixing_formats_collates(files):
    items = [{"image": str(p)} for p in (pydicom_file("CT_small.dcm"), files["grey8_png"], files["volume_nii"])]
    loader = DataLoader(Dataset(items, modality_transforms("ct", image_size=SIZE)), batch_size=3, num_workers=0)
    batch = next(iter(loader))
    assert tuple(batch["image"].shape) == (3, 3, SIZE, SIZE)


def test_real_busi_ultrasound_image():
    images = sorted(BUSI_FOLDER.glob("benign/*.png"))[:1] if BUSI_FOLDER.is_dir() else []
    if not images:
        pytest.skip(f"BUSI images not found under {BUSI_FOLDER}")
    data = modality_transforms("ultrasound")({"image": str(images[0])})
    check_output(data["image"], 224)
    stored = np.asarray(Image.open(images[0]))
    assert data["image"].meta["source_dtype"] == stored.dtype.name
