"""FPT through the bundles: `--method fpt` trains, preloads, evaluates and predicts with real `python -m monai.bundle`
subprocesses, on a tiny BUSI-layout folder and on the FPT paper's four datasets in their published layouts."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.dataset_writers import write_covid_cxr, write_ddsm, write_isic2018, write_messidor2
from tests.helpers import (
    TINY_BUNDLE_ARGS,
    copy_bundles,
    monai_bundle,
    run_command,
    torchrun_bundle,
    write_busi_folder,
)

BUNDLE = "bundles/busi"
TRAIN = f"{BUNDLE}/configs/train.json"
#: the tiny backbone at 56 px for the frozen branch and 28 px for the side network
FPT_ARGS = ("--method", "fpt", "--fpt_image_size", "56", "--fpt_side_image_size", "28")
#: the bundle's metadata and inference config with the tiny backbone, as the model-zoo commands take them
ZOO_ARGS = (
    "--meta_file",
    f"{BUNDLE}/configs/metadata.json",
    "--config_file",
    f"{BUNDLE}/configs/inference.json",
    "--backbone",
    "timm:vit_small_patch14_dinov2",
    "--tiny_backbone",
    "True",
)


def _train(work: Path, bundle: str, dataset_dir: str, *extra: str) -> str:
    return run_command(
        monai_bundle(
            "run",
            "--config_file",
            f"{bundle}/configs/train.json",
            "--dataset_dir",
            dataset_dir,
            *TINY_BUNDLE_ARGS,
            *FPT_ARGS,
            *extra,
        ),
        cwd=work,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Two FPT epochs with feature preloading on a tiny BUSI folder; returns the work folder and the log.

    ``--max_epochs 7`` is the classifier methods' knob: FPT's schedule is ``fpt_max_epochs``.
    """
    work = copy_bundles(tmp_path_factory.mktemp("fpt"))
    write_busi_folder(work / "busi", per_class=10)
    return work, _train(work, BUNDLE, "busi", "--max_epochs", "7", "--fpt_max_epochs", "2")


def _cache_entries(work: Path) -> list[Path]:
    return sorted((work / BUNDLE / "runs" / "feature_cache").glob("*/*/*.safetensors"))


def test_training_preloads_train_and_validation_features_and_keys_on_f1(trained: tuple[Path, str]) -> None:
    work, log = trained
    split = json.loads((work / BUNDLE / "runs" / "datalist.json").read_text())
    assert len(_cache_entries(work)) == len(split["training"]) + len(split["validation"])
    manifest = next((work / BUNDLE / "runs" / "feature_cache").glob("*/manifest.json"))
    identity = json.loads(manifest.read_text())
    assert identity["backbone"] == "timm:vit_small_patch14_dinov2" and identity["token_ratio"] == 0.2
    assert identity["dtype"] == "float16" and identity["image_size"] == 56
    assert "Key metric: val_f1" in log  # macro-F1 picks the checkpoint, as for every method
    assert "FPT trains for fpt_max_epochs=2 epochs (max_epochs=7" in log
    assert "Epoch[2] Metrics" in log and "Epoch[3] Metrics" not in log
    assert "sparse_trainable_set" not in json.loads((work / BUNDLE / "configs" / "metadata.json").read_text())
    # FPT's own head starts at random; the probe is fitted on the frozen branch's features for the record only
    probe = json.loads((work / BUNDLE / "models" / "linear_probe.json").read_text())
    assert probe["recipe"]["image_size"] == 56 and probe["num_images"] == len(split["training"])
    assert "trains its own head: the linear probe is fitted for the record only" in log

    state = torch.load(work / BUNDLE / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert any(k.startswith("extractor.backbone.") for k in state)
    assert any(k.startswith("fusion.prompts") for k in state) and "head.weight" in state


def test_a_second_run_reuses_the_cache(trained: tuple[Path, str]) -> None:
    work, _ = trained
    before = {p: p.stat().st_mtime_ns for p in _cache_entries(work)}
    log = _train(work, BUNDLE, "busi", "--fpt_max_epochs", "1")
    assert "0 computed" in log
    assert {p: p.stat().st_mtime_ns for p in _cache_entries(work)} == before


def test_evaluate_and_inference_run_the_frozen_branch(trained: tuple[Path, str]) -> None:
    work, _ = trained
    run_command(
        monai_bundle(
            "run",
            "--config_file",
            f"['{TRAIN}','{BUNDLE}/configs/evaluate.json']",
            "--dataset_dir",
            "busi",
            *TINY_BUNDLE_ARGS,
            *FPT_ARGS,
        ),
        cwd=work,
    )
    metrics = dict(csv.reader((work / BUNDLE / "runs" / "eval" / "metrics.csv").open()))
    assert 0.0 <= float(metrics["test_auc"]) <= 1.0
    comparison = json.loads((work / BUNDLE / "runs" / "eval" / "linear_probe_comparison.json").read_text())
    assert comparison["model"]["f1"] == pytest.approx(float(metrics["test_f1"]), abs=1e-6)
    assert comparison["num_images"] == len(json.loads((work / BUNDLE / "runs" / "datalist.json").read_text())["test"])

    run_command(
        monai_bundle(
            "run",
            "--config_file",
            f"{BUNDLE}/configs/inference.json",
            "--input_dir",
            "busi/benign",
            *TINY_BUNDLE_ARGS,
            *FPT_ARGS,
        ),
        cwd=work,
    )
    rows = list(csv.DictReader((work / BUNDLE / "runs" / "predictions.csv").open()))
    assert len(rows) == 10
    assert all(abs(sum(float(r[f"p_{c}"]) for c in ("benign", "malignant", "normal")) - 1) < 1e-4 for r in rows)


def test_inference_saliency_is_drawn_over_the_high_resolution_image(trained: tuple[Path, str]) -> None:
    """FPT's Grad-CAM is the side network's (28 px, 2 x 2 patches) drawn over the frozen branch's 56 px input."""
    from PIL import Image

    work, _ = trained
    args = ["--config_file", f"{BUNDLE}/configs/inference.json", "--input_dir", "busi/benign", "--saliency", "gradcam"]
    log = run_command(monai_bundle("run", *args, *TINY_BUNDLE_ARGS, *FPT_ARGS, "--output_dir", "runs_saliency"), work)
    assert "Saliency gradcam on the FPT side network, 2x2 patches of the low-resolution image" in log
    rows = list(csv.DictReader((work / "runs_saliency" / "predictions.csv").open()))
    assert len(rows) == 10 and len(list((work / "runs_saliency" / "saliency").glob("*.png"))) == 10
    for row in rows:
        with Image.open(work / row["saliency"]) as overlay:
            assert overlay.size == (56, 56)


def test_verify_net_in_out_with_a_single_high_resolution_image(tmp_path: Path) -> None:
    """The metadata's 3 x 224 x 224 input alone: the network makes the side network's copy itself."""
    work = copy_bundles(tmp_path)
    output = run_command(
        monai_bundle(
            "verify_net_in_out",
            "network_def",
            *ZOO_ARGS,
            "--method",
            "fpt",
            "--fpt_image_size",
            "224",
            "--fpt_side_image_size",
            "112",
        ),
        cwd=work,
    )
    assert "data shape of network is verified with no error" in output


@pytest.mark.parametrize("switch_off", ["False", "false"])  # a command line passes both spellings
def test_without_preloading_no_cache_is_written(tmp_path: Path, switch_off: str) -> None:
    work = copy_bundles(tmp_path)
    write_busi_folder(work / "busi", per_class=10)
    log = _train(work, BUNDLE, "busi", "--fpt_max_epochs", "1", "--preload_features", switch_off)
    assert not (work / BUNDLE / "runs" / "feature_cache").exists()
    assert "Key metric: val_f1" in log


#: the FPT paper's datasets: bundle -> writer of a tiny copy in the published layout, returning --dataset_dir
FPT_PAPER_BUNDLES: dict[str, Callable[[Path], Path]] = {
    "messidor2": lambda root: write_messidor2(root, per_grade=10),
    "isic2018": lambda root: write_isic2018(root, {"Training": 2, "Validation": 1, "Test": 1}),
    "ddsm": lambda root: write_ddsm(root, train_patients=5, test_patients=2),
    "covid_cxr": lambda root: write_covid_cxr(root, per_class=10),
}


@pytest.mark.parametrize("name", sorted(FPT_PAPER_BUNDLES))
def test_fpt_paper_bundles_train_with_preloading(name: str, tmp_path: Path) -> None:
    work = copy_bundles(tmp_path, names=(name,))
    dataset_dir = FPT_PAPER_BUNDLES[name](work / "data")
    log = _train(work, f"bundles/{name}", str(dataset_dir.relative_to(work)), "--fpt_max_epochs", "1")
    assert "Key metric: val_f1" in log
    assert (work / "bundles" / name / "models" / "model.pt").is_file()
    assert list((work / "bundles" / name / "runs" / "feature_cache").glob("*/*/*.safetensors"))


def test_two_process_gloo_training_shares_the_preloaded_cache(tmp_path: Path) -> None:
    """Each rank preloads its share of the items; after the barrier both ranks train on the whole cache."""
    work = copy_bundles(tmp_path)
    write_busi_folder(work / "busi", per_class=8)
    multi = f"['{TRAIN}','{BUNDLE}/configs/multi_gpu_train.json']"
    output = run_command(
        torchrun_bundle(
            2,
            29523,
            "--config_file",
            multi,
            "--dataset_dir",
            "busi",
            "--fpt_max_epochs",
            "1",
            *TINY_BUNDLE_ARGS,
            *FPT_ARGS,
        ),
        cwd=work,
    )
    split = json.loads((work / BUNDLE / "runs" / "datalist.json").read_text())
    total = len(split["training"]) + len(split["validation"])
    assert len(_cache_entries(work)) == total
    computed = [
        int(line.split(" computed")[0].rsplit(" ", 1)[1]) for line in output.splitlines() if " computed in " in line
    ]
    assert len(computed) == 2 and sum(computed) == total  # each rank filled its own share, nothing twice
    assert (work / BUNDLE / "models" / "model.pt").is_file()


def test_traced_export_matches_the_trained_network(trained: tuple[Path, str]) -> None:
    """FPT's attention hooks rule out scripting; `ckpt_export --use_trace` gives a TorchScript file that agrees."""
    work, _ = trained
    run_command(
        monai_bundle(
            "ckpt_export",
            "network_def",
            "--filepath",
            f"{BUNDLE}/models/model.ts",
            "--ckpt_file",
            f"{BUNDLE}/models/model.pt",
            *ZOO_ARGS,
            *FPT_ARGS,
            "--use_trace",
            "True",
            "--input_shape",
            "[1,3,56,56]",
        ),
        cwd=work,
    )
    from monai_shpeft.networks import build_fpt

    network = build_fpt("timm:vit_small_patch14_dinov2", 3, image_size=56, side_image_size=28, tiny=True)
    network.load_state_dict(torch.load(work / BUNDLE / "models" / "model.pt", map_location="cpu", weights_only=True))
    network.eval()
    traced = torch.jit.load(str(work / BUNDLE / "models" / "model.ts"))
    image = torch.rand(3, 3, 56, 56)  # another batch size than the trace's
    torch.testing.assert_close(traced(image), network(image))


def test_feature_dtype_benchmark_on_the_trained_bundle(trained: tuple[Path, str]) -> None:
    """benchmarks/fpt_feature_dtype.py reads the bundle's own config and checkpoint and reports each storage dtype."""
    work, _ = trained
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "fpt_feature_dtype.py"
    output = work / "dtype.json"
    run_command(
        [
            sys.executable,
            str(script),
            "--dataset_dir",
            "busi",
            "--fpt_image_size",
            "56",
            "--fpt_side_image_size",
            "28",
            "--tiny_backbone",
            "--checkpoint",
            f"{BUNDLE}/models/model.pt",
            "--output",
            str(output),
        ],
        cwd=work,
    )
    result = json.loads(output.read_text())
    split = json.loads((work / BUNDLE / "runs" / "datalist.json").read_text())
    assert result["images"] == len(split["validation"])
    assert result["feature_shape"] == [2, 2, 4, 64]
    for name in ("float16", "bfloat16"):
        assert 0 < result["storage_dtypes"][name]["max_abs_logit"] < 1e-2
    assert result["storage_dtypes"]["float16"]["max_abs_logit"] < result["storage_dtypes"]["bfloat16"]["max_abs_logit"]


def test_an_unknown_method_stops_before_training_with_the_supported_ones(tmp_path: Path) -> None:
    work = copy_bundles(tmp_path)
    write_busi_folder(work / "busi", per_class=10)
    with pytest.raises(AssertionError) as failure:
        run_command(
            monai_bundle(
                "run", "--config_file", TRAIN, "--dataset_dir", "busi", *TINY_BUNDLE_ARGS, "--method", "lorra"
            ),
            cwd=work,
            tail=100_000,
        )
    supported = "supported methods: linear_probe, full, linear, bitfit, ln, attn, lora,"
    assert f"Unknown method 'lorra'; {supported}" in str(failure.value)
    assert not (work / BUNDLE / "models" / "model.pt").exists()
