"""LoadMedicalImage on real files: readers, orientation, metadata, DICOM rescale/photometry/frames, and failures."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor, PydicomReader
from monai.transforms import LoadImage
from PIL import Image
from pydicom.pixels import apply_color_lut

from monai_shpeft.transforms import (
    ImageReadError,
    InvertMonochrome1,
    LoadMedicalImage,
    LoadMedicalImaged,
    ScaleToUnitRange,
    SelectFrame,
    SourceMetaKeys,
    available_wsi_backend,
    default_source_meta,
    detect_image_format,
)
from tests.test_transforms_support import (
    NIBABEL_DECIMAL_RESCALE,
    local_file,
    pydicom_file,
    write_monochrome1,
    write_nifti,
    write_raster_files,
    write_truncated,
    write_without_pixel_data,
)


@pytest.fixture(scope="module")
def raster(tmp_path_factory) -> dict[str, Path]:
    return write_raster_files(tmp_path_factory.mktemp("raster"))


@pytest.fixture(scope="module")
def loader() -> LoadMedicalImage:
    return LoadMedicalImage()


# --- raster files (PILReader) ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, channels, source_dtype, photometric, stored_mode, source_format",
    [
        ("grey8_png", 1, "uint8", "MONOCHROME2", "L", "png"),
        ("rgb8_jpeg", 3, "uint8", "RGB", "RGB", "jpeg"),
        ("rgba_png", 4, "uint8", "RGBA", "RGBA", "png"),
        ("grey16_png", 1, "uint16", "MONOCHROME2", "I;16", "png"),
        ("palette_png", 3, "uint8", "RGB", "P", "png"),
        ("cmyk_jpeg", 3, "uint8", "RGB", "CMYK", "jpeg"),
        ("rgb_tiff", 3, "uint8", "RGB", "RGB", "tiff"),
        ("grey16_tiff", 1, "uint16", "MONOCHROME2", "I;16", "tiff"),
        ("grey_alpha_png", 1, "uint8", "MONOCHROME2", "LA", "png"),
        ("bilevel_png", 1, "uint8", "MONOCHROME2", "1", "png"),
        ("rgb_bmp", 3, "uint8", "RGB", "RGB", "bmp"),
    ],
)
def test_raster_files_load_channel_first_in_row_column_order(
    raster, loader, key, channels, source_dtype, photometric, stored_mode, source_format
):
    img = loader(raster[key])
    assert isinstance(img, MetaTensor)
    assert tuple(img.shape) == (channels, 20, 30)  # rows x columns, not MONAI's default transposition
    assert img.dtype == torch.float32
    meta = img.meta
    assert meta[SourceMetaKeys.SOURCE_DTYPE] == source_dtype
    assert meta[SourceMetaKeys.PHOTOMETRIC_INTERPRETATION] == photometric
    assert meta[SourceMetaKeys.STORED_PHOTOMETRIC_INTERPRETATION] == stored_mode
    assert meta[SourceMetaKeys.SOURCE_FORMAT] == source_format
    assert set(default_source_meta()) <= set(meta)  # every documented key is there, for collation


def test_pixels_match_pil_exactly(raster, loader):
    for key, mode in [("grey8_png", "L"), ("rgb_tiff", "RGB"), ("palette_png", "RGB"), ("cmyk_jpeg", "RGB")]:
        expected = np.asarray(Image.open(raster[key]).convert(mode), dtype=np.float32)
        expected = expected[None] if expected.ndim == 2 else expected.transpose(2, 0, 1)
        np.testing.assert_array_equal(loader(raster[key]).numpy(), expected, err_msg=key)


def test_16bit_png_keeps_its_dynamic_range(raster, loader):
    stored = np.asarray(Image.open(raster["grey16_png"]))
    assert stored.dtype == np.uint16 and stored.max() > 255
    img = loader(raster["grey16_png"])
    np.testing.assert_array_equal(img[0].numpy(), stored.astype(np.float32))  # not clipped, not cast to 8 bits
    scaled = ScaleToUnitRange()(img)
    np.testing.assert_allclose(scaled[0].numpy(), stored / stored.max(), rtol=1e-6)
    assert len(np.unique(scaled.numpy())) == len(np.unique(stored))  # no two 16-bit levels merged


def test_exif_orientation_is_applied(tmp_path, loader):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "phone.jpg"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(path, exif=exif)
    assert tuple(loader(path).shape) == (3, 30, 20)


def test_content_decides_over_a_wrong_extension(raster, tmp_path, loader):
    mislabelled = tmp_path / "really_a_jpeg.png"
    mislabelled.write_bytes(raster["rgb8_jpeg"].read_bytes())
    img = loader(mislabelled)
    assert img.meta[SourceMetaKeys.SOURCE_FORMAT] == "jpeg"
    np.testing.assert_array_equal(img.numpy(), loader(raster["rgb8_jpeg"]).numpy())
    dicom_without_extension = tmp_path / "IM0001"
    dicom_without_extension.write_bytes(pydicom_file("CT_small.dcm").read_bytes())
    assert detect_image_format(dicom_without_extension) == "dicom"


# --- DICOM (PydicomReader) ---------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::UserWarning")  # MONAI's own notes about the GPU decoder and missing affine
def test_monai_pydicom_reader_facts_this_package_relies_on():
    """Pin what MONAI's own PydicomReader does, so that a MONAI change shows here first."""
    path = pydicom_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    raw = ds.pixel_array
    img = LoadImage(reader=PydicomReader(), image_only=True)(path)
    # it applies RescaleSlope/RescaleIntercept itself, and transposes rows and columns (swap_ij=True)
    np.testing.assert_array_equal(img.numpy(), (raw * float(ds.RescaleSlope) + float(ds.RescaleIntercept)).T)
    # by default (prune_metadata=True) its metadata carries none of the display tags
    assert not {"00280004", "00281050", "00281052", "PhotometricInterpretation"} & set(img.meta)
    # a 2-D RGB DICOM gets no channel axis: it would look like a 3-D grey volume downstream
    rgb = LoadImage(reader=PydicomReader(), image_only=True)(pydicom_file("examples_rgb_color.dcm"))
    assert math.isnan(rgb.meta["original_channel_dim"])


@pytest.mark.parametrize("source", ["CT_small.dcm", "decimal_rescale"])
def test_dicom_rescale_is_applied_exactly_once(loader, source):
    path = local_file(NIBABEL_DECIMAL_RESCALE) if source == "decimal_rescale" else pydicom_file(source)
    ds = pydicom.dcmread(path)
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    img = loader(path)
    expected = ds.pixel_array.astype(np.float64) * slope + intercept
    np.testing.assert_array_equal(img[0].numpy(), expected.astype(np.float32))
    assert img[0, 10, 20].item() == ds.pixel_array[10, 20] * slope + intercept
    assert img.meta[SourceMetaKeys.RESCALE_APPLIED] is True
    assert (img.meta[SourceMetaKeys.RESCALE_SLOPE], img.meta[SourceMetaKeys.RESCALE_INTERCEPT]) == (slope, intercept)
    assert img.meta[SourceMetaKeys.SOURCE_DTYPE] == ds.pixel_array.dtype.name


def test_dicom_window_and_modality_are_in_the_metadata(loader):
    img = loader(pydicom_file("MR_small.dcm"))
    assert (img.meta[SourceMetaKeys.WINDOW_CENTER], img.meta[SourceMetaKeys.WINDOW_WIDTH]) == (600.0, 1600.0)
    assert img.meta[SourceMetaKeys.RESCALE_APPLIED] is False
    assert img.meta[SourceMetaKeys.MODALITY] == "MR"
    ct = loader(pydicom_file("CT_small.dcm"))
    assert math.isnan(ct.meta[SourceMetaKeys.WINDOW_CENTER])  # CT_small has no window


def test_monochrome1_is_kept_by_the_loader_and_inverted_by_the_transform(tmp_path, loader):
    mono1, _ = write_monochrome1(tmp_path)
    raw = pydicom.dcmread(mono1).pixel_array.astype(np.float32)
    img = loader(mono1)
    assert img.meta[SourceMetaKeys.PHOTOMETRIC_INTERPRETATION] == "MONOCHROME1"
    np.testing.assert_array_equal(img[0].numpy(), raw)  # loading does not invert
    inverted = InvertMonochrome1()(img)
    np.testing.assert_array_equal(inverted[0].numpy(), raw.max() + raw.min() - raw)
    assert inverted.meta[SourceMetaKeys.PHOTOMETRIC_INTERPRETATION] == "MONOCHROME2"
    assert img.meta[SourceMetaKeys.PHOTOMETRIC_INTERPRETATION] == "MONOCHROME1"  # the input is not modified
    np.testing.assert_array_equal(InvertMonochrome1()(inverted).numpy(), inverted.numpy())  # inverted once only


def test_rgb_ultrasound_dicom_has_a_channel_axis(loader):
    path = pydicom_file("examples_rgb_color.dcm")
    img = loader(path)
    raw = pydicom.dcmread(path).pixel_array
    assert tuple(img.shape) == (3, *raw.shape[:2])
    np.testing.assert_array_equal(img.numpy(), raw.transpose(2, 0, 1))
    assert img.meta[SourceMetaKeys.PHOTOMETRIC_INTERPRETATION] == "RGB"


def test_palette_dicom_is_expanded_to_rgb(loader):
    path = pydicom_file("examples_palette.dcm")
    ds = pydicom.dcmread(path)
    img = loader(path)
    np.testing.assert_array_equal(img.numpy(), apply_color_lut(ds.pixel_array, ds).transpose(2, 0, 1))
    assert img.meta[SourceMetaKeys.STORED_PHOTOMETRIC_INTERPRETATION] == "PALETTE COLOR"
    assert img.meta[SourceMetaKeys.PHOTOMETRIC_INTERPRETATION] == "RGB"


@pytest.mark.parametrize(
    "name, index, expected_index",
    [("rtdose.dcm", 3, 3), ("rtdose.dcm", "middle", 7), ("rtdose.dcm", -1, 14), ("SC_rgb_rle_2frame.dcm", 1, 1)],
)
def test_multiframe_dicom_picks_the_requested_frame(loader, name, index, expected_index):
    path = pydicom_file(name)
    frames = pydicom.dcmread(path).pixel_array
    img = loader(path)
    assert img.meta[SourceMetaKeys.NUMBER_OF_FRAMES] == frames.shape[0]
    frame = SelectFrame(index=index)(img)
    expected = frames[expected_index]
    expected = expected[None] if expected.ndim == 2 else expected.transpose(2, 0, 1)
    np.testing.assert_array_equal(frame.numpy(), expected.astype(np.float32))
    assert frame.meta[SourceMetaKeys.SELECTED_FRAME] == expected_index


def test_ybr_cine_ultrasound_is_converted_to_rgb(loader):
    path = pydicom_file("examples_ybr_color.dcm")  # 30 frames of YBR_FULL_422 JPEG
    img = loader(path)
    assert tuple(img.shape) == (3, 30, 240, 320)
    assert img.meta[SourceMetaKeys.STORED_PHOTOMETRIC_INTERPRETATION] == "YBR_FULL_422"
    frame = pydicom.dcmread(path).pixel_array[15]  # pydicom converts YBR to RGB when it decodes
    np.testing.assert_array_equal(SelectFrame(15)(img).numpy(), frame.transpose(2, 0, 1))


# --- NIfTI (NibabelReader) ---------------------------------------------------------------------------------------


def test_nifti_volume_keeps_slices_until_one_is_selected(tmp_path, loader):
    path, voxels = write_nifti(tmp_path)
    img = loader(path)
    assert tuple(img.shape) == (1, 10, 12, 7)
    assert (img.meta[SourceMetaKeys.FRAME_AXIS], img.meta[SourceMetaKeys.NUMBER_OF_FRAMES]) == (2, 7)
    assert img.meta[SourceMetaKeys.SOURCE_DTYPE] == "int16"
    np.testing.assert_array_equal(SelectFrame(2)(img)[0].numpy(), voxels[:, :, 2])
    np.testing.assert_array_equal(SelectFrame("middle")(img)[0].numpy(), voxels[:, :, 3])


def test_nifti_scaling_is_applied_once_by_nibabel(tmp_path, loader):
    path, voxels = write_nifti(tmp_path, "scaled.nii", slope=2.0)
    raw = np.asarray(__import__("nibabel").load(path).dataobj.get_unscaled())
    np.testing.assert_allclose(voxels, raw * 2.0 - 100.0)
    img = loader(path)
    np.testing.assert_allclose(img[0].numpy(), raw * 2.0 - 100.0)
    assert img.meta[SourceMetaKeys.RESCALE_APPLIED] is True


# --- failures ----------------------------------------------------------------------------------------------------


def _read_error(loader: LoadMedicalImage, path: Path) -> ImageReadError:
    with pytest.raises(ImageReadError) as info:
        loader(path)
    assert str(path) in str(info.value)
    assert info.value.path == str(path)
    return info.value


@pytest.mark.parametrize("key", ["grey8_png", "rgb8_jpeg"])
def test_truncated_png_and_jpeg(raster, tmp_path, loader, key):
    error = _read_error(loader, write_truncated(raster[key], tmp_path))
    assert "truncated" in error.reason


def test_text_file_named_png(tmp_path, loader):
    path = tmp_path / "notes.png"
    path.write_text("these are not pixels\n")
    assert "not an image" in _read_error(loader, path).reason


def test_empty_file(tmp_path, loader):
    path = tmp_path / "empty.png"
    path.touch()
    assert "empty file" in _read_error(loader, path).reason


def test_missing_file(tmp_path, loader):
    assert "not found" in _read_error(loader, tmp_path / "missing.png").reason


def test_unsupported_type(tmp_path, loader):
    path = tmp_path / "table.csv"
    path.write_text("a,b\n1,2\n")
    error = _read_error(loader, path)
    assert "unsupported file type" in error.reason and ".svs" in error.reason


def test_dicom_without_pixel_data(tmp_path, loader):
    assert "no pixel data" in _read_error(loader, write_without_pixel_data(tmp_path)).reason


def test_truncated_dicom(loader):
    assert "truncated DICOM pixel data" in _read_error(loader, pydicom_file("MR_truncated.dcm")).reason


def test_dicom_without_an_installed_decoder_says_what_to_install(loader):
    path = pydicom_file("MR_small_jpeg_ls_lossless.dcm")
    try:
        _ = pydicom.dcmread(path).pixel_array
    except RuntimeError:
        assert "pip install" in _read_error(loader, path).reason
    else:
        pytest.skip("a JPEG-LS decoder is installed here")


def test_not_a_dicom_file_named_dcm(tmp_path, loader):
    path = tmp_path / "fake.dcm"
    path.write_bytes(b"\x00" * 64 + b"not dicom at all" * 10)
    assert "not a valid DICOM" in _read_error(loader, path).reason


def test_a_path_is_required(loader):
    with pytest.raises(ImageReadError, match="one file"):
        loader(["a.png", "b.png"])


def test_whole_slide_image_without_backend_says_what_to_install(raster, tmp_path, loader):
    if available_wsi_backend() is not None:
        pytest.skip("a WSI backend is installed here")
    path = tmp_path / "slide.svs"
    path.write_bytes(raster["rgb_tiff"].read_bytes())
    reason = _read_error(loader, path).reason
    assert "pip install" in reason and "openslide" in reason


def test_whole_slide_image_with_tifffile(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    base = np.random.default_rng(0).integers(0, 256, (256, 192, 3), dtype=np.uint8)
    path = tmp_path / "pyramid.svs"
    with tifffile.TiffWriter(path) as tif:
        tif.write(base, tile=(64, 64), photometric="rgb", subifds=2)
        tif.write(base[::2, ::2], tile=(64, 64), photometric="rgb", subfiletype=1)
        tif.write(base[::4, ::4], tile=(64, 64), photometric="rgb", subfiletype=1)
    coarsest = LoadMedicalImage(wsi_backend="tifffile")(path)
    np.testing.assert_array_equal(coarsest.numpy(), base[::4, ::4].transpose(2, 0, 1))
    full = LoadMedicalImage(wsi_backend="tifffile", wsi_level=0)(path)
    np.testing.assert_array_equal(full.numpy(), base.transpose(2, 0, 1))
    with pytest.raises(ImageReadError, match="3 level"):
        LoadMedicalImage(wsi_backend="tifffile", wsi_level=3)(path)


# --- dictionary version and bundle configs -----------------------------------------------------------------------


def test_dictionary_loader_from_a_bundle_config(tmp_path):
    mono1, _ = write_monochrome1(tmp_path)
    parser = ConfigParser(
        {
            "load": {"_target_": "monai_shpeft.transforms.LoadMedicalImaged", "keys": "image"},
            "invert": {"_target_": "monai_shpeft.transforms.InvertMonochrome1d", "keys": "image"},
        }
    )
    load, invert = parser.get_parsed_content("load"), parser.get_parsed_content("invert")
    assert isinstance(load, LoadMedicalImaged)
    data = invert(load({"image": str(mono1), "label": 1}))
    raw = pydicom.dcmread(mono1).pixel_array.astype(np.float32)
    np.testing.assert_array_equal(data["image"][0].numpy(), raw.max() + raw.min() - raw)
    assert data["label"] == 1
