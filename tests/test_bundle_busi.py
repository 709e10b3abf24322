"""The BUSI bundle end to end, through real `python -m monai.bundle` subprocesses on a tiny BUSI-layout folder."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from monai_shpeft.clinical import REPORT_FIGURES
from monai_shpeft.methods import DEFAULT_HEAD_LEARNING_RATES, DEFAULT_LEARNING_RATES
from monai_shpeft.sparse_set import SparseTrainableSet
from monai_shpeft.utils import sha256_of_file
from monai_shpeft.zoo import METADATA_SCHEMA
from tests.helpers import (
    REPO_ROOT,
    TINY_BUNDLE_ARGS,
    copy_bundles,
    monai_bundle,
    run_command,
    run_process,
    torchrun_bundle,
    write_busi_folder,
)

BUNDLE = "bundles/busi"
TRAIN = f"{BUNDLE}/configs/train.json"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Copy the bundle, write a tiny BUSI folder and train for two epochs with the tiny backbone."""
    work = copy_bundles(tmp_path_factory.mktemp("bundle"))
    write_busi_folder(work / "busi", per_class=10)
    run_command(
        monai_bundle(
            "run",
            "--config_file",
            TRAIN,
            "--dataset_dir",
            "busi",
            "--max_epochs",
            "2",
            "--learning_rate",
            "0.05",
            "--estimation_batch_size",
            "2",
            "--memory_profile",
            "true",
            *TINY_BUNDLE_ARGS,
        ),
        cwd=work,
    )
    return work


def test_training_writes_model_set_split_and_metadata_record(trained: Path) -> None:
    models = trained / BUNDLE / "models"
    assert (models / "model.pt").is_file()
    trainable_set = SparseTrainableSet.load(models / "sparse_trainable_set.safetensors")
    assert trainable_set.num_selected == round(0.01 * trainable_set.num_total)
    assert trainable_set.header["estimation_batch_size"] == 2  # the knob reaches the estimation
    profile = json.loads((trained / BUNDLE / "runs" / "memory_profile.json").read_text())
    assert list(profile["phases"]) == ["setup", "head_warmup", "importance", "training"]
    assert profile["peak_rss_bytes"] == max(p["peak_rss_bytes"] for p in profile["phases"].values())
    assert trainable_set.header["backbone"] == "timm:vit_small_patch14_dinov2"

    # the record goes into the run's metadata beside the checkpoint; the bundle's tracked metadata is untouched
    assert (trained / BUNDLE / "configs" / "metadata.json").read_bytes() == (
        REPO_ROOT / "bundles" / "busi" / "configs" / "metadata.json"
    ).read_bytes()
    run_metadata = json.loads((models / "metadata.json").read_text())
    shipped = json.loads((REPO_ROOT / "bundles" / "busi" / "configs" / "metadata.json").read_text())
    assert {k: v for k, v in run_metadata.items() if k != "sparse_trainable_set"} == shipped
    record = run_metadata["sparse_trainable_set"]
    assert record["selected"] == trainable_set.num_selected and record["strategy"] == "l2"
    assert record["lambda"] == 1.0 and record["budget"] == 0.01
    assert record["file"] == "sparse_trainable_set.safetensors"
    assert record["sha256"] == sha256_of_file(models / "sparse_trainable_set.safetensors")
    assert sum(record["counts_per_block"].values()) == record["selected"]
    # temperature scaling fitted on the validation split for the kept model
    temperature = json.loads((models / "temperature.json").read_text())
    assert temperature["temperature"] > 0 and temperature["fitted_on"] == "validation"

    split = json.loads((trained / BUNDLE / "runs" / "datalist.json").read_text())
    parts = {part: {item["image"] for item in split[part]} for part in ("training", "validation", "test")}
    assert sum(len(p) for p in parts.values()) == 30  # masks skipped
    assert not parts["training"] & parts["test"] and not parts["validation"] & parts["test"]
    assert list(trained.joinpath(BUNDLE, "runs").glob("events.out.tfevents.*")), "no TensorBoard log"


def test_checkpoint_holds_the_sparse_update(trained: Path) -> None:
    """Entries outside the saved set equal a fresh build of the same seed: only the set (and the head) trained."""
    from monai.utils import set_determinism

    from monai_shpeft.backbones import build_classifier

    set_determinism(seed=0)
    initial = build_classifier("timm:vit_small_patch14_dinov2", num_classes=3, image_size=28, tiny=True)
    trained_state = torch.load(trained / BUNDLE / "models" / "model.pt", map_location="cpu", weights_only=True)
    trainable_set = SparseTrainableSet.load(trained / BUNDLE / "models" / "sparse_trainable_set.safetensors")
    for name, start in initial.state_dict().items():
        if name in trainable_set.shapes:
            frozen = ~trainable_set.mask(name)
            assert torch.equal(trained_state[name][frozen], start[frozen]), name


def test_the_kept_checkpoint_is_the_average_of_the_epoch_weights(trained: Path) -> None:
    """SH-PEFT's default checkpoint rule: model.pt holds the running average the resume checkpoint carries."""
    models = trained / BUNDLE / "models"
    kept = torch.load(models / "model.pt", map_location="cpu", weights_only=True)
    resume = torch.load(models / "resume" / "checkpoint.pt", map_location="cpu", weights_only=False)
    average = resume["weight_average"]
    assert average["count"] == 2 and "head.linear.weight" in average["average"]
    for name, value in average["average"].items():
        torch.testing.assert_close(kept[name], value)
    assert not torch.equal(kept["head.linear.weight"], resume["network"]["head.linear.weight"])  # not the last epoch


def test_evaluate_reports_f1_accuracy_auc_on_the_test_split(trained: Path) -> None:
    run_command(
        monai_bundle(
            "run",
            "--config_file",
            f"['{TRAIN}','{BUNDLE}/configs/evaluate.json']",
            "--dataset_dir",
            "busi",
            *TINY_BUNDLE_ARGS,
        ),
        cwd=trained,
    )
    eval_dir = trained / BUNDLE / "runs" / "eval"
    metrics = {name: float(value) for name, value in csv.reader((eval_dir / "metrics.csv").open())}
    assert set(metrics) == {"test_f1", "test_accuracy", "test_auc"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    rows = list(csv.DictReader((eval_dir / "test_predictions.csv").open()))
    split = json.loads((trained / BUNDLE / "runs" / "datalist.json").read_text())
    assert sorted(r["image"] for r in rows) == sorted(i["image"] for i in split["test"])
    # the clinical report: per-class figures with intervals, calibration, the confusion matrix, three figures
    report = json.loads((eval_dir / "report.json").read_text())
    assert report["classes"] == ["benign", "malignant", "normal"] and report["num_cases"] == len(split["test"])
    assert sum(map(sum, report["confusion_matrix"]["counts"])) == len(split["test"])
    assert report["intervals"]["resamples"] == 1000 and set(report["per_class"]["malignant"]) >= {"sensitivity", "npv"}
    assert abs(report["overall"]["macro_f1"]["value"] - metrics["test_f1"]) < 1e-6
    assert all((eval_dir / name).stat().st_size > 0 for name in REPORT_FIGURES)
    # the probabilities are the temperature-scaled ones; the report says by how much and what it did to ECE
    # (the default, auto: applied when it lowered the validation ECE); what it does is in the report either way
    scaling = report["temperature_scaling"]
    fitted = json.loads((trained / BUNDLE / "models" / "temperature.json").read_text())
    assert scaling["applied"] == fitted["lowers_validation_ece"]
    assert scaling["temperature"] == pytest.approx(fitted["temperature"])
    used = "after" if scaling["applied"] else "before"
    assert scaling["ece"][used] == pytest.approx(report["overall"]["ece"]["value"])


def test_a_positive_class_gives_operating_points_and_an_unknown_one_is_named(trained: Path) -> None:
    evaluate = ["--config_file", f"['{TRAIN}','{BUNDLE}/configs/evaluate.json']", "--dataset_dir", "busi"]
    args = [*evaluate, *TINY_BUNDLE_ARGS, "--report_resamples", "20", "--output_dir", "runs_positive"]
    run_command(monai_bundle("run", *args, "--positive_class", "malignant"), cwd=trained)
    report = json.loads((trained / "runs_positive" / "eval" / "report.json").read_text())
    points = report["operating_points"]
    assert points["positive_class"] == "malignant" and [
        p["specificity"] >= s for p, s in zip(points["at_specificity"], (0.9, 0.95))
    ] == [True, True]
    assert points["validation_threshold"]["validation"]["sensitivity"] >= 0.95

    failed = run_process(monai_bundle("run", *args, "--positive_class", "cancer"), trained)
    assert failed.returncode != 0
    last = (failed.stdout + failed.stderr).strip().splitlines()[-1]
    assert last.startswith("SettingsError: positive_class 'cancer' is not a class of this bundle"), last
    assert last.endswith("benign, malignant, normal."), last


def test_inference_writes_one_prediction_per_image(trained: Path) -> None:
    run_command(
        monai_bundle(
            "run", "--config_file", f"{BUNDLE}/configs/inference.json", "--input_dir", "busi/normal", *TINY_BUNDLE_ARGS
        ),
        cwd=trained,
    )
    rows = list(csv.DictReader((trained / BUNDLE / "runs" / "predictions.csv").open()))
    assert len(rows) == 10  # masks skipped
    assert "saliency" not in rows[0] and not (trained / BUNDLE / "runs" / "saliency").exists()  # off by default
    for row in rows:
        probabilities = [float(row[f"p_{c}"]) for c in ("benign", "malignant", "normal")]
        assert abs(sum(probabilities) - 1.0) < 1e-4
        assert row["predicted_class"] == ("benign", "malignant", "normal")[probabilities.index(max(probabilities))]

    # with and without temperature scaling: other probabilities, the same classes
    args = ["--input_dir", "busi/normal", "--predictions_file", "scaled.csv", "--temperature_scaling", "true"]
    run_command(
        monai_bundle("run", "--config_file", f"{BUNDLE}/configs/inference.json", *args, *TINY_BUNDLE_ARGS), cwd=trained
    )
    scaled = {row["image"]: row for row in csv.DictReader((trained / "scaled.csv").open())}
    assert {row["image"]: row["predicted_class"] for row in rows} == {
        image: row["predicted_class"] for image, row in scaled.items()
    }
    # the default (auto) applied the fitted temperature exactly when it lowered the validation ECE
    applied = json.loads((trained / BUNDLE / "models" / "temperature.json").read_text())["lowers_validation_ece"]
    same = all(row["p_normal"] == scaled[row["image"]]["p_normal"] for row in rows)
    assert same == applied


def test_inference_with_saliency_writes_an_overlay_per_image_and_a_bad_value_is_named(trained: Path) -> None:
    from PIL import Image

    inference = ["--config_file", f"{BUNDLE}/configs/inference.json", "--input_dir", "busi/normal", *TINY_BUNDLE_ARGS]
    args = [*inference, "--output_dir", "runs_saliency"]
    run_command(monai_bundle("run", *args, "--saliency", "gradcam"), cwd=trained)
    overlays = sorted((trained / "runs_saliency" / "saliency").glob("*.png"))
    rows = list(csv.DictReader((trained / "runs_saliency" / "predictions.csv").open()))
    assert len(overlays) == len(rows) == 10
    for row in rows:  # <output_dir>/saliency/<image stem>_<predicted class>.png, listed beside the prediction
        stem = Path(row["image"]).stem.replace(" (", "_").rstrip(")")
        assert row["saliency"] == f"runs_saliency/saliency/{stem}_{row['predicted_class']}.png"
        with Image.open(trained / row["saliency"]) as overlay:
            assert overlay.size == (28, 28) and overlay.mode == "RGB"

    failed = run_process(monai_bundle("run", *args, "--saliency", "gradcm"), trained)
    assert failed.returncode != 0
    last = (failed.stdout + failed.stderr).strip().splitlines()[-1]
    assert last == (
        "SettingsError: saliency 'gradcm' is not a saliency method; use one of: gradcam, rollout (or \"\" for none), "
        "e.g. --saliency gradcam."
    ), last


def test_ckpt_export_and_verify_commands(trained: Path) -> None:
    bundle = trained / BUNDLE
    run_command(
        monai_bundle(
            "ckpt_export",
            "network_def",
            "--filepath",
            f"{BUNDLE}/models/model.ts",
            "--ckpt_file",
            f"{BUNDLE}/models/model.pt",
            "--meta_file",
            f"{BUNDLE}/configs/metadata.json",
            "--config_file",
            f"{BUNDLE}/configs/inference.json",
            *TINY_BUNDLE_ARGS[:8],
        ),
        cwd=trained,
    )
    scripted = torch.jit.load(str(bundle / "models" / "model.ts"))
    from monai_shpeft.backbones import build_classifier

    network = build_classifier("timm:vit_small_patch14_dinov2", num_classes=3, image_size=28, tiny=True)
    network.load_state_dict(torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True))
    network.eval()
    image = torch.rand(2, 3, 28, 28)
    torch.testing.assert_close(scripted(image), network(image))

    run_command(
        monai_bundle(
            "verify_net_in_out",
            "network_def",
            "--meta_file",
            f"{BUNDLE}/configs/metadata.json",
            "--config_file",
            f"{BUNDLE}/configs/inference.json",
            "--tiny_backbone",
            "True",
        ),
        cwd=trained,
    )
    output = run_command(
        monai_bundle(
            "verify_metadata",
            "--meta_file",
            f"{BUNDLE}/models/metadata.json",
            "--filepath",
            str(METADATA_SCHEMA),
        ),
        cwd=trained,
    )
    assert "verified with no error" in output  # the run's metadata, with the training record, passes offline


def test_verify_metadata_rejects_a_broken_record(tmp_path: Path) -> None:
    work = copy_bundles(tmp_path)
    path = work / BUNDLE / "configs" / "metadata.json"
    metadata = json.loads(path.read_text())
    metadata["sparse_trainable_set"] = {"backbone": "x", "strategy": "l3"}
    path.write_text(json.dumps(metadata))
    with pytest.raises(AssertionError, match="Failed validating"):
        run_command(
            monai_bundle(
                "verify_metadata",
                "--meta_file",
                f"{BUNDLE}/configs/metadata.json",
                "--filepath",
                str(METADATA_SCHEMA),
            ),
            cwd=work,
        )


def test_two_process_gloo_training(tmp_path: Path) -> None:
    work = copy_bundles(tmp_path)
    write_busi_folder(work / "busi", per_class=8)
    multi = f"['{TRAIN}','{BUNDLE}/configs/multi_gpu_train.json']"
    output = run_command(
        torchrun_bundle(
            2, 29517, "--config_file", multi, "--dataset_dir", "busi", "--max_epochs", "1", *TINY_BUNDLE_ARGS
        ),
        cwd=work,
    )
    trainable_set = SparseTrainableSet.load(work / BUNDLE / "models" / "sparse_trainable_set.safetensors")
    assert trainable_set.num_selected == round(0.01 * trainable_set.num_total)
    # both ranks logged the same selection fingerprint
    fingerprints = {line.split("fingerprint ")[1].split()[0] for line in output.splitlines() if "fingerprint " in line}
    assert len(fingerprints) == 1 and output.count("fingerprint ") == 2


def test_default_backbone_offline_fails_with_the_actionable_message(tmp_path: Path) -> None:
    """The paper's default (open_clip ViT-B/16, 'openai') needs the hub: offline the run stops and says what to do."""
    work = copy_bundles(tmp_path)
    write_busi_folder(work / "busi", per_class=10)
    with pytest.raises(AssertionError) as failure:
        run_command(
            monai_bundle("run", "--config_file", TRAIN) + "--dataset_dir busi --device cpu --num_workers 0".split(),
            cwd=work,
            tail=100_000,
        )
    message = str(failure.value)
    assert "PretrainedWeightsUnavailableError" in message and "open_clip:ViT-B-16" in message
    assert "pretrained='/path/to/open_clip_pytorch_model.bin'" in message
    assert not (work / BUNDLE / "models" / "model.pt").exists()


@pytest.mark.parametrize(
    ("knobs", "expected"),
    [
        ({}, (DEFAULT_LEARNING_RATES["shpeft"], DEFAULT_HEAD_LEARNING_RATES["shpeft"])),
        ({"learning_rate": 0.002}, (0.002, 0.002)),  # one knob sets both, as the papers' recipes do
        ({"learning_rate": 0.002, "head_learning_rate": 0.5}, (0.002, 0.5)),
        ({"method": "full"}, (DEFAULT_LEARNING_RATES["full"],) * 2),
    ],
)
def test_the_optimizer_gets_the_resolved_rates_for_backbone_and_head(
    knobs: dict, expected: tuple[float, float], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = copy_bundles(tmp_path)
    monkeypatch.chdir(work)  # the bundle's % macros are paths from the repository root
    parser = ConfigParser()
    parser.read_config(TRAIN)
    tiny = {"backbone": "timm:vit_small_patch14_dinov2", "tiny_backbone": True, "pretrained": None, "image_size": 28}
    parser.update({**tiny, "device": "cpu", **knobs})
    optimizer = parser.get_parsed_content("optimizer")
    assert isinstance(optimizer, torch.optim.AdamW)
    groups = {len(group["params"]) <= 2: group["lr"] for group in optimizer.param_groups}  # head: weight, bias
    assert (groups[False], groups[True]) == pytest.approx(expected)
