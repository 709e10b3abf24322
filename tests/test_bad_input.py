"""Messy clinical data: every bad input fails early with a message naming the file (or key) and what to do.

Each case is a real file written here (PIL, pydicom, nibabel, numpy) and goes through the path a user hits: the
dataset listing and split of :func:`prepare_datalist`, the pre-training check of :func:`check_datalist` (what the
bundles' ``split`` runs), the modality transforms, the handlers, and real ``python -m monai.bundle run``
subprocesses for the bundle wiring (a bad file stops the run before training; ``--skip_bad_files true`` trains
without it and reports it; a checkpoint for another number of classes is named as such).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.bundle import ConfigParser
from monai.engines import SupervisedEvaluator
from monai.handlers import CheckpointLoader
from PIL import Image
from safetensors.torch import save_file

from monai_shpeft.backbones import build_classifier
from monai_shpeft.data import DatalistError, inference_items, prepare_datalist
from monai_shpeft.data.validation import check_datalist, check_image_file, check_items
from monai_shpeft.delta import DeltaMismatchError, SparseDelta
from monai_shpeft.handlers import (
    CheckpointCheckHandler,
    CheckpointMismatchError,
    GradientMaskHandler,
    ImportanceEstimationHandler,
)
from monai_shpeft.methods import prepare_network, spt_lora
from monai_shpeft.sparse_set import SparseSetMismatchError, SparseTrainableSet
from monai_shpeft.transforms import (
    ImageReadError,
    InvalidImageError,
    LoadMedicalImage,
    ScaleToUnitRange,
    modality_transforms,
)
from monai_shpeft.utils import sha256_of_file
from tests.helpers import (
    TINY_BUNDLE_ARGS,
    TINY_OPEN_CLIP,
    TINY_TIMM,
    copy_bundles,
    image_label_loader,
    make_trainer,
    monai_bundle,
    run_command,
    tiny_classifier,
    write_busi_folder,
)
from tests.test_transforms_support import pydicom_file

BUSI = ("benign", "malignant", "normal")
BUNDLE = "bundles/busi"
TRAIN = f"{BUNDLE}/configs/train.json"


def busi_split(tmp_path: Path, per_class: int = 10) -> tuple[Path, Path, dict[str, list[dict]]]:
    """A BUSI-layout folder, its datalist file and the split, as the bundle makes them."""
    root = write_busi_folder(tmp_path / "busi", per_class=per_class)
    datalist = tmp_path / "runs" / "datalist.json"
    return root, datalist, prepare_datalist("busi", root, datalist)


def item_path(split: dict[str, list[dict]], part: str = "training", index: int = 0) -> Path:
    return Path(split[part][index]["image"])


def truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_jpeg_over(path: Path) -> Path:
    """Replace ``path`` by a JPEG of its pixels (the content decides the reader, not the name)."""
    pixels = np.asarray(Image.open(path).convert("RGB"))
    Image.fromarray(pixels).save(path, format="JPEG", quality=90)
    return path


def check_fails(split: dict, datalist: Path, **kwargs) -> ImageReadError:
    with pytest.raises(ImageReadError) as info:
        check_datalist(split, BUSI, datalist_file=datalist, **kwargs)
    return info.value


# --- unreadable files ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["png", "jpeg"])
def test_truncated_png_and_jpeg_are_named_before_training(tmp_path: Path, kind: str) -> None:
    _, datalist, split = busi_split(tmp_path)
    bad = item_path(split, "validation", 1)
    if kind == "jpeg":
        write_jpeg_over(bad)
    truncate(bad)
    error = check_fails(split, datalist)
    message = str(error)
    assert error.path == str(bad) and f"cannot read image '{bad}'" in message
    assert "truncated" in error.reason
    assert f"'validation' item 1 of datalist {datalist}" in message
    assert "--skip_bad_files true" in message and f"delete {datalist}" in message
    # read through a preset, the same file raises the same error, not MONAI's "applying transform" wrapper
    with pytest.raises(ImageReadError, match="truncated") as late:
        modality_transforms("ultrasound", image_size=16)({"image": str(bad)})
    assert late.value.path == str(bad)


def test_text_file_renamed_png(tmp_path: Path) -> None:
    _, datalist, split = busi_split(tmp_path)
    bad = item_path(split, "test", 0)
    bad.write_text("patient id, finding\n17, benign\n")
    error = check_fails(split, datalist)
    assert error.path == str(bad) and "not an image" in error.reason and "wrong extension" in error.reason


def test_dicom_without_pixel_data(tmp_path: Path) -> None:
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    del ds.PixelData
    bad = tmp_path / "no_pixels.dcm"
    ds.save_as(bad)
    split = {"training": [{"image": str(bad), "label": 0}]}
    with pytest.raises(ImageReadError) as info:
        check_datalist(split, BUSI)
    assert info.value.path == str(bad) and "no pixel data" in info.value.reason
    assert "'training' item 0 of the datalist" in str(info.value)


def test_nan_pixels_are_refused_before_training(tmp_path: Path) -> None:
    volume = np.random.default_rng(0).normal(0, 100, (8, 8)).astype(np.float32)
    volume[2, 3] = np.nan
    bad = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.eye(4)), bad)
    with pytest.raises(ImageReadError, match=r"1 of 64 pixel values are NaN or infinite") as info:
        check_image_file(bad)
    assert info.value.path == str(bad)
    # the transforms name the file too, should the image reach them
    with pytest.raises(InvalidImageError) as late:
        modality_transforms("ct", image_size=8)({"image": str(bad)})
    assert str(bad) in str(late.value) and "NaN" in str(late.value)


# --- files that must be read, and read right --------------------------------------------------------------------


def test_16bit_png_is_scaled_by_its_own_range(tmp_path: Path) -> None:
    stored = np.random.default_rng(3).integers(0, 40000, (16, 16)).astype(np.uint16)
    stored[0, 0] = 40000  # the maximum: 16-bit data is divided by its maximum, not by 255 (nor clipped at 255)
    path = tmp_path / "grey16.png"
    Image.fromarray(stored).save(path)
    check_image_file(path)  # readable: not an error
    loaded = LoadMedicalImage()(path)
    np.testing.assert_array_equal(loaded[0].numpy(), stored.astype(np.float32))
    np.testing.assert_allclose(ScaleToUnitRange()(loaded)[0].numpy(), stored / 40000.0, rtol=1e-6)
    # through the whole ultrasound preset at the image's own size (no resampling): exactly (v / max - mean) / std
    out = modality_transforms("ultrasound", image_size=16)({"image": str(path)})["image"]
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    expected = (stored[None] / 40000.0 - mean[:, None, None]) / std[:, None, None]
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_palette_png_and_cmyk_jpeg_become_the_right_rgb(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    colours = rng.integers(0, 256, (12, 3), dtype=np.uint8)
    rgb = colours[rng.integers(0, 12, (10, 14))]  # 12 colours: a palette holds them exactly
    palette = tmp_path / "palette.png"
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=12).save(palette)
    assert Image.open(palette).mode == "P"
    np.testing.assert_array_equal(LoadMedicalImage()(palette).numpy(), rgb.transpose(2, 0, 1).astype(np.float32))

    red = np.zeros((10, 14, 3), np.uint8)
    red[..., 0] = 220
    cmyk = tmp_path / "cmyk.jpg"
    Image.fromarray(red).convert("CMYK").save(cmyk, quality=95)
    assert Image.open(cmyk).mode == "CMYK"
    loaded = LoadMedicalImage()(cmyk)
    assert tuple(loaded.shape) == (3, 10, 14)
    np.testing.assert_array_equal(loaded.numpy(), np.asarray(Image.open(cmyk).convert("RGB")).transpose(2, 0, 1))
    assert loaded[0].mean() > 200 and loaded[1].mean() < 20 and loaded[2].mean() < 20  # still red, not inverted
    for path in (palette, cmyk):
        out = modality_transforms("dermoscopy", image_size=8)({"image": str(path)})["image"]
        assert tuple(out.shape) == (3, 8, 8) and bool(torch.isfinite(out).all())


# --- dataset folders and datalists ------------------------------------------------------------------------------


def test_empty_class_folder(tmp_path: Path) -> None:
    root = write_busi_folder(tmp_path / "busi", per_class=10)
    for image in (root / "normal").glob("*).png"):
        image.unlink()  # the masks stay: they are not images to classify
    with pytest.raises(ValueError, match=r"BUSI class folder .*normal holds no image .*Add its images"):
        prepare_datalist("busi", root, tmp_path / "datalist.json")


def test_class_folder_the_bundle_does_not_know(tmp_path: Path) -> None:
    root = write_busi_folder(tmp_path / "busi", per_class=10)
    (root / "lymph node").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "lymph node" / "a.png")
    with pytest.raises(ValueError, match=r"folder\(s\) \['lymph node'\] that are not BUSI classes .*Move them out"):
        prepare_datalist("busi", root, tmp_path / "datalist.json")


def test_empty_dataset(tmp_path: Path) -> None:
    (tmp_path / "busi").mkdir()
    with pytest.raises(FileNotFoundError, match=r"BUSI dataset folder .*busi is empty"):
        prepare_datalist("busi", tmp_path / "busi", tmp_path / "datalist.json")
    # a datalist with an empty part (written by hand): nothing to train on
    datalist = tmp_path / "by_hand.json"
    datalist.write_text(json.dumps({"training": [], "validation": [], "test": []}))
    split = prepare_datalist("busi", tmp_path / "busi", datalist)
    with pytest.raises(
        DatalistError, match=r"by_hand\.json: no items in part\(s\) \['training', 'validation', 'test'\]"
    ):
        check_datalist(split, BUSI, datalist_file=datalist)


def test_tiny_dataset_split_says_how_many_images_it_needs(tmp_path: Path) -> None:
    root = write_busi_folder(tmp_path / "busi", per_class=6)
    with pytest.raises(DatalistError) as info:
        prepare_datalist("busi", root, tmp_path / "datalist.json")
    message = str(info.value)
    assert f"busi in {root}: 18 images (benign 6, malignant 6, normal 6) are too few" in message
    assert "needs at least 20 images and 3 of each class" in message
    assert "test_size" not in message  # not scikit-learn's wording
    assert not (tmp_path / "datalist.json").exists()
    for extra in range(7, 8):  # 21 images are enough: the bound is the real one
        for name in BUSI:
            Image.open(root / name / f"{name} (1).png").save(root / name / f"{name} ({extra}).png")
    split = prepare_datalist("busi", root, tmp_path / "datalist.json")
    assert all({item["label"] for item in part} == {0, 1, 2} for part in split.values())


def test_datalist_pointing_to_missing_files(tmp_path: Path) -> None:
    root, datalist, split = busi_split(tmp_path)
    missing = item_path(split, "training", 3)
    missing.unlink()
    with pytest.raises(
        DatalistError,
        match=rf"'training' item 3 points to a missing file {re.escape(str(missing))}.*delete the datalist",
    ):
        prepare_datalist("busi", root, datalist)  # the bundle reuses the datalist: checked on reading


@pytest.mark.parametrize(
    "label, problem",
    [
        (5, r"is 5, outside 0\.\.2"),
        (-1, r"is -1, outside 0\.\.2"),
        (1.5, r"is 1\.5 \(float\), not an integer class index"),
        (1.0, r"is the float 1\.0, not an integer \(write 1\)"),
        ("1", r"is '1' \(str\), not an integer class index"),
        (True, r"is True \(bool\), not an integer class index"),
    ],
)
def test_labels_out_of_range_or_not_integers(tmp_path: Path, label: object, problem: str) -> None:
    _, datalist, split = busi_split(tmp_path)
    record = json.loads(datalist.read_text())
    record["validation"][2]["label"] = label  # edited by hand, or a datalist of another dataset
    datalist.write_text(json.dumps(record))
    split = prepare_datalist("busi", tmp_path / "busi", datalist)
    image = split["validation"][2]["image"]
    with pytest.raises(DatalistError) as info:
        check_datalist(split, BUSI, datalist_file=datalist)
    message = str(info.value)
    assert f"datalist {datalist}: 'validation' item 2 ({image}) has a label that" in message
    assert re.search(problem, message), message
    assert "this bundle has 3 classes (0 benign, 1 malignant, 2 normal)" in message


# --- the skip option --------------------------------------------------------------------------------------------


def test_skip_bad_files_drops_and_reports_them(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _, datalist, split = busi_split(tmp_path)
    truncated = truncate(item_path(split, "training", 4))
    text = item_path(split, "test", 2)
    text.write_text("not pixels")
    report = tmp_path / "runs" / "bad_files.json"
    with caplog.at_level(logging.INFO, logger="monai_shpeft.data.validation"):
        kept = check_datalist(
            split, BUSI, skip_bad_files=True, report_file=report, datalist_file=datalist, num_workers=2
        )
    assert len(kept["training"]) == len(split["training"]) - 1 and len(kept["test"]) == len(split["test"]) - 1
    assert kept["validation"] == split["validation"]
    assert str(truncated) not in {i["image"] for i in kept["training"]} and str(text) not in {
        i["image"] for i in kept["test"]
    }
    record = json.loads(report.read_text())
    assert record["checked"] == 30 and record["skipped"] == 2 and record["skip_bad_files"] is True
    assert [(f["part"], f["index"], f["image"]) for f in record["files"]] == [
        ("training", 4, str(truncated)),
        ("test", 2, str(text)),
    ]
    assert "truncated" in record["files"][0]["reason"] and "not an image" in record["files"][1]["reason"]
    assert f"Skipped 2 of 30 images that cannot be used, listed in {report}" in caplog.text
    assert str(truncated) in caplog.text and str(text) in caplog.text
    # the default stops at the first bad file in datalist order, whatever the threads
    assert check_fails(split, datalist, num_workers=2).path == str(truncated)


def test_skipping_every_image_of_a_part_is_an_error(tmp_path: Path) -> None:
    _, datalist, split = busi_split(tmp_path)
    for item in split["validation"]:
        Path(item["image"]).write_bytes(b"")
    with pytest.raises(DatalistError, match=r"after leaving out 4 unreadable image\(s\), part\(s\) \['validation'\]"):
        check_datalist(split, BUSI, skip_bad_files=True, datalist_file=datalist)


def test_inference_items_are_checked_too(tmp_path: Path) -> None:
    root = write_busi_folder(tmp_path / "busi", per_class=4)
    bad = truncate(root / "normal" / "normal (3).png")
    items = inference_items(input_dir=root / "normal")
    with pytest.raises(ImageReadError, match=r"'inference' item 2 of the images of .*normal\]\. Replace the file"):
        check_items(items, source=root / "normal")
    assert [i["image"] for i in check_items(items, skip_bad_files=True)] == [
        i["image"] for i in items if i["image"] != str(bad)
    ]


# --- artefacts made for another model ---------------------------------------------------------------------------


def test_sparse_set_for_another_backbone_fails_before_the_first_step(tmp_path: Path) -> None:
    """A saved set reused by a resumed run (``reuse_saved``) after the backbone changed."""
    timm = tiny_classifier(TINY_TIMM)
    importance = {f"backbone.{n}": p.detach().abs() for n, p in timm.backbone.named_parameters()}
    path = SparseTrainableSet.from_importance(importance, 0.02, header={"backbone": TINY_TIMM}).save(
        tmp_path / "sparse_trainable_set.safetensors"
    )
    handlers = [ImportanceEstimationHandler(save_path=path, reuse_saved=True, progress=False), GradientMaskHandler()]
    trainer = make_trainer(
        tiny_classifier(TINY_OPEN_CLIP), image_label_loader(num_samples=4), torch.optim.SGD, handlers
    )
    with pytest.raises(
        SparseSetMismatchError, match=rf"{re.escape(path.name)}\) was made for {TINY_TIMM}.*re-run importance"
    ):
        trainer.run()
    assert trainer.state.iteration == 0


def test_spt_lora_structure_for_another_backbone_names_the_file(tmp_path: Path) -> None:
    """What evaluation and inference do for ``--method spt_lora``: rebuild the structure from the saved set."""
    timm = tiny_classifier(TINY_TIMM)
    candidates = spt_lora.linear_weight_names(timm)
    params = dict(timm.named_parameters())
    selection = spt_lora.select_spt({n: params[n].detach().abs() for n in candidates}, 0.05, rank=2)
    spt_lora.apply(timm, selection.lora_modules, rank=2)
    path = spt_lora.build_trainable_set(timm, selection, header={"backbone": TINY_TIMM}).save(
        tmp_path / "spt.safetensors"
    )
    with pytest.raises(SparseSetMismatchError, match=rf"{re.escape(str(path))}.* was made for {TINY_TIMM}"):
        prepare_network(tiny_classifier(TINY_OPEN_CLIP), "spt_lora", structure_file=path)


def test_delta_for_another_number_of_classes_through_the_inference_config(tmp_path: Path, monkeypatch) -> None:
    work = copy_bundles(tmp_path)
    monkeypatch.chdir(work)
    weights = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_classifier(TINY_TIMM).backbone.state_dict().items()}, str(weights))
    pretrained = build_classifier(TINY_TIMM, num_classes=5, pretrained=weights, image_size=28, tiny=True)
    trained = build_classifier(TINY_TIMM, num_classes=5, pretrained=weights, image_size=28, tiny=True)
    with torch.no_grad():
        next(trained.backbone.parameters()).add_(0.5)
    recipe = {"backbone": TINY_TIMM, "pretrained": str(weights), "pretrained_sha256": sha256_of_file(weights)}
    models = work / BUNDLE / "models"
    delta = SparseDelta.from_networks(pretrained, trained, recipe=recipe).save(models / "delta.safetensors")
    parser = ConfigParser()
    parser.read_config(f"{BUNDLE}/configs/inference.json")
    parser.update({"backbone": TINY_TIMM, "tiny_backbone": True, "image_size": 28, "device": "$torch.device('cpu')"})
    parser["bundle_root"] = BUNDLE  # a bare ConfigParser has no config path to find the bundle from
    with pytest.raises(RuntimeError) as info:
        parser.get_parsed_content("network_def")
    cause = info.value
    while cause.__cause__ is not None and not isinstance(cause, DeltaMismatchError):
        cause = cause.__cause__
    assert isinstance(cause, DeltaMismatchError), repr(cause)
    assert str(models / "delta.safetensors") in str(cause) or delta.name in str(cause)
    assert re.search(r"head\.linear\.\w+' has shape \[5(, 64)?\] there but \[3(, 64)?\]", str(cause)), str(cause)


def test_checkpoint_for_another_number_of_classes(tmp_path: Path) -> None:
    five = tmp_path / "five.pt"
    torch.save(tiny_classifier(num_classes=5).state_dict(), five)
    network = tiny_classifier(num_classes=3)

    def evaluate(path: Path) -> SupervisedEvaluator:
        evaluator = SupervisedEvaluator(
            device=torch.device("cpu"),
            val_data_loader=image_label_loader(num_samples=4),
            network=network,
            val_handlers=[
                CheckpointCheckHandler(path, network, classes=BUSI),
                CheckpointLoader(load_path=str(path), load_dict={"model": network}),
            ],
        )
        evaluator.run()
        return evaluator

    with pytest.raises(CheckpointMismatchError) as info:
        evaluate(five)
    assert str(info.value).startswith(
        f"the checkpoint {five} has a 5-class head but this bundle has 3 classes (benign, malignant, normal)"
    )
    other = tmp_path / "open_clip.pt"
    torch.save(tiny_classifier(TINY_OPEN_CLIP).state_dict(), other)
    with pytest.raises(
        CheckpointMismatchError, match=rf"{re.escape(str(other))} does not fit this network: .*pass the --backbone"
    ):
        evaluate(other)
    with pytest.raises(FileNotFoundError, match=r"no trained checkpoint at .*missing\.pt: train the bundle first"):
        evaluate(tmp_path / "missing.pt")
    right = tmp_path / "right.pt"
    trained = tiny_classifier(num_classes=3, seed=9)
    torch.save(trained.state_dict(), right)
    assert evaluate(right).state.iteration == 1
    assert torch.equal(network.head.linear.weight, trained.head.linear.weight)


# --- the bundles, end to end ------------------------------------------------------------------------------------


def bundle_with_a_bad_file(tmp_path: Path) -> tuple[Path, Path]:
    work = copy_bundles(tmp_path)
    root = write_busi_folder(work / "busi", per_class=10)
    return work, truncate(root / "malignant" / "malignant (4).png")


def test_bundle_with_a_bad_file_stops_before_training(tmp_path: Path) -> None:
    work, bad = bundle_with_a_bad_file(tmp_path)
    with pytest.raises(AssertionError) as failure:
        run_command(
            monai_bundle(
                "run", "--config_file", TRAIN, "--dataset_dir", "busi", "--max_epochs", "1", *TINY_BUNDLE_ARGS
            ),
            cwd=work,
            tail=100_000,
        )
    output = str(failure.value)
    relative = str(bad.relative_to(work))
    assert f"ImageReadError: cannot read image '{relative}': truncated or corrupt image data" in output
    assert f"ERROR - cannot read image '{relative}'" in output  # logged as well, above the traceback
    assert "--skip_bad_files true" in output
    assert "Epoch" not in output and "Estimating SH-PEFT importance" not in output  # training never started
    assert not (work / BUNDLE / "models" / "model.pt").exists()


def test_bundle_skips_bad_files_on_request_and_reports_them(tmp_path: Path) -> None:
    work, bad = bundle_with_a_bad_file(tmp_path)
    output = run_command(
        monai_bundle(
            "run",
            "--config_file",
            TRAIN,
            "--dataset_dir",
            "busi",
            "--max_epochs",
            "1",
            "--skip_bad_files",
            "true",
            *TINY_BUNDLE_ARGS,
        ),
        cwd=work,
    )
    report_file = work / BUNDLE / "runs" / "bad_files.json"
    relative = str(bad.relative_to(work))
    assert f"Skipped 1 of 30 images that cannot be used, listed in {report_file.relative_to(work)}" in output
    assert relative in output
    report = json.loads(report_file.read_text())
    assert report["skipped"] == 1 and [f["image"] for f in report["files"]] == [relative]
    assert (work / BUNDLE / "models" / "model.pt").is_file()  # trained without it
    assert "Epoch[1] Complete" in output


def test_bundle_evaluation_names_a_checkpoint_for_another_number_of_classes(tmp_path: Path) -> None:
    work = copy_bundles(tmp_path)
    write_busi_folder(work / "busi", per_class=10)
    checkpoint = work / BUNDLE / "models" / "model.pt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    torch.save(build_classifier(TINY_TIMM, num_classes=5, image_size=28, tiny=True).state_dict(), checkpoint)
    with pytest.raises(AssertionError) as failure:
        run_command(
            monai_bundle(
                "run",
                "--config_file",
                f"['{TRAIN}','{BUNDLE}/configs/evaluate.json']",
                "--dataset_dir",
                "busi",
                *TINY_BUNDLE_ARGS,
            ),
            cwd=work,
            tail=100_000,
        )
    output = str(failure.value)
    assert (
        f"CheckpointMismatchError: the checkpoint {BUNDLE}/models/model.pt has a 5-class head but this bundle has 3 "
        "classes (benign, malignant, normal)" in output
    )
    assert "size mismatch" not in output  # torch's own message never comes
