"""Every baseline method through the BUSI bundle: real ``python -m monai.bundle run`` subprocesses train it (one
epoch, tiny backbone), report its trainable count, and evaluate its checkpoint (which must load strictly into the
network the evaluation rebuilds for the same method); SPT-LoRA's evaluation and inference rebuild its data-chosen
LoRA structure from the saved set; GPS trains exactly its per-neuron set."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import torch

from monai_shpeft.backbones import build_classifier
from monai_shpeft.methods import count_trainable, prepare_network
from monai_shpeft.methods.gps import neuron_weight_names
from monai_shpeft.sparse_set import SparseTrainableSet
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
EVALUATE = f"['{TRAIN}','{BUNDLE}/configs/evaluate.json']"
#: baselines without a bundle test elsewhere (shpeft: test_bundle_busi.py, fpt: test_bundle_fpt.py) or below
FIXED_STRUCTURE = ["full", "linear", "bitfit", "ln", "attn", "lora", "adapter", "ssf", "vpt_shallow", "vpt_deep"]
#: the logged count, e.g. "Method bitfit (...): 1,731 trainable of 138,627 parameters"
COUNT = re.compile(r"Method (\w+) \(.*?\): ([\d,]+) trainable of ([\d,]+) parameters")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("busi_data")
    write_busi_folder(root / "busi", per_class=10)
    return root / "busi"


def _run(work: Path, config: str, data: Path, *extra: str) -> str:
    args = ["--config_file", config, "--dataset_dir", str(data), *TINY_BUNDLE_ARGS, "--optimizer_name", "adamw"]
    if config == EVALUATE:  # the clinical report's intervals are tested elsewhere: a few resamples keep this fast
        args += ["--report_resamples", "20"]
    return run_command(monai_bundle("run", *args, *extra), cwd=work)


@pytest.mark.parametrize("method", FIXED_STRUCTURE)
def test_a_baseline_trains_and_its_checkpoint_evaluates_through_the_bundle(
    method: str, data_root: Path, tmp_path: Path
) -> None:
    work = copy_bundles(tmp_path)
    # one method trains with gradient checkpointing; its evaluation builds without it and loads the checkpoint strictly
    checkpointing = ["--grad_checkpointing", "true"] if method == "vpt_deep" else []
    log = _run(work, TRAIN, data_root, "--method", method, "--max_epochs", "1", *checkpointing)
    reported = COUNT.search(log)
    assert reported and reported.group(1) == method, log[-2000:]
    assert ("Gradient checkpointing on: the backbone's blocks" in log) == bool(checkpointing)
    # the same method on an identically configured model gives the count the bundle reported
    model = prepare_network(build_classifier("timm:vit_small_patch14_dinov2", 3, image_size=28, tiny=True), method)
    count = count_trainable(model)
    assert (int(reported.group(2).replace(",", "")), int(reported.group(3).replace(",", ""))) == (
        count.trainable,
        count.total,
    )
    checkpoint = torch.load(work / BUNDLE / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert set(checkpoint) == set(model.state_dict())  # the method's modules are saved with the network

    _run(work, EVALUATE, data_root, "--method", method)
    _assert_test_metrics(work)


def _assert_test_metrics(work: Path) -> None:
    with open(work / BUNDLE / "runs" / "eval" / "metrics.csv", newline="") as handle:
        metrics = {name: float(value) for name, value in csv.reader(handle)}
    assert set(metrics) == {"test_f1", "test_accuracy", "test_auc"}
    assert all(0.0 <= value <= 1.0 for value in metrics.values())


def test_spt_lora_trains_then_evaluation_and_inference_rebuild_its_structure(data_root: Path, tmp_path: Path) -> None:
    work = copy_bundles(tmp_path)
    options = "{'rank': 2, 'alpha': 4}"
    train_log = _run(
        work,
        TRAIN,
        data_root,
        "--method",
        "spt_lora",
        "--method_options",
        options,
        "--budget",
        "0.05",
        "--max_epochs",
        "2",
    )
    set_file = work / BUNDLE / "models" / "sparse_trainable_set.safetensors"
    trainable_set = SparseTrainableSet.load(set_file)
    lora_modules = trainable_set.header["lora_modules"]
    assert trainable_set.header["method"] == "spt_lora" and lora_modules, train_log[-2000:]
    checkpoint = torch.load(work / BUNDLE / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert any(name.startswith(f"{lora_modules[0]}.lora_A") for name in checkpoint)

    _run(work, EVALUATE, data_root, "--method", "spt_lora", "--method_options", options)
    _assert_test_metrics(work)
    predictions = work / BUNDLE / "runs" / "predictions.csv"
    inference_args = [
        "--config_file",
        f"{BUNDLE}/configs/inference.json",
        "--input_dir",
        str(data_root / "benign"),
        "--method",
        "spt_lora",
        "--backbone",
        "timm:vit_small_patch14_dinov2",
        "--tiny_backbone",
        "True",
        "--image_size",
        "28",
        "--num_workers",
        "0",
        "--device",
        "cpu",
    ]
    run_command(monai_bundle("run", *inference_args), cwd=work)
    with open(predictions, newline="") as handle:
        rows = list(csv.DictReader(handle))
    images = [p for p in (data_root / "benign").glob("*.png") if not p.stem.endswith("_mask")]  # masks are skipped
    assert sorted(r["image"] for r in rows) == sorted(str(p) for p in images)


def test_gps_trains_its_per_neuron_set_through_the_bundle_and_evaluates(data_root: Path, tmp_path: Path) -> None:
    from monai.utils import set_determinism

    work = copy_bundles(tmp_path)
    log = _run(work, TRAIN, data_root, "--method", "gps", "--max_epochs", "1")
    models = work / BUNDLE / "models"
    trainable_set = SparseTrainableSet.load(models / "sparse_trainable_set.safetensors")
    header = trainable_set.header
    assert (header["selection"], header["strategy"], header["mode"], header["budget"]) == (
        "per_neuron",
        "l1",
        "task_specific",
        0.01,
    ), log[-2000:]
    set_determinism(seed=0)  # the bundle's seed: the same initial network
    initial = build_classifier("timm:vit_small_patch14_dinov2", 3, image_size=28, tiny=True)
    matrices = neuron_weight_names(initial)
    assert set(trainable_set.trainable_names()) == set(matrices)  # no bias, norm or token
    for name in matrices:
        rows = trainable_set.mask(name).reshape(trainable_set.shapes[name][0], -1)
        assert (rows.sum(dim=1) == header["k_per_row"]).all(), name
    record = json.loads((models / "metadata.json").read_text())["sparse_trainable_set"]
    assert record["selection"] == "per_neuron" and record["selected"] == trainable_set.num_selected

    trained = torch.load(models / "model.pt", map_location="cpu", weights_only=True)
    for name, start in initial.state_dict().items():
        if name in trainable_set.shapes:  # everything outside the set is the initial backbone, bit for bit
            frozen = ~trainable_set.mask(name)
            assert torch.equal(trained[name][frozen], start[frozen]), name
    _run(work, EVALUATE, data_root, "--method", "gps")
    _assert_test_metrics(work)


def test_spt_lora_trains_in_two_gloo_processes_with_the_same_allocation(data_root: Path, tmp_path: Path) -> None:
    """Under torchrun the sensitivity is summed over ranks, LoRA goes into the same matrices on both, and the
    network is wrapped in DDP again so that the LoRA factors are synchronised."""
    work = copy_bundles(tmp_path)
    multi = f"['{TRAIN}','{BUNDLE}/configs/multi_gpu_train.json']"
    args = ["--config_file", multi, "--dataset_dir", str(data_root), *TINY_BUNDLE_ARGS, "--optimizer_name", "adamw"]
    options = ["--method", "spt_lora", "--method_options", "{'rank': 2, 'alpha': 4}", "--budget", "0.05"]
    output = run_command(torchrun_bundle(2, 29531, *args, *options, "--max_epochs", "1"), cwd=work)
    fingerprints = set(re.findall(r"fingerprint ([0-9a-f]{64})", output))
    assert len(re.findall(r"SPT-LoRA in [\d.]+ s", output)) == 2, output[-3000:]  # both ranks allocated
    assert len(fingerprints) == 1  # ... the same entries and LoRA modules
    trainable_set = SparseTrainableSet.load(work / BUNDLE / "models" / "sparse_trainable_set.safetensors")
    assert trainable_set.fingerprint() in fingerprints
    checkpoint = torch.load(work / BUNDLE / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert any(".lora_B." in name for name in checkpoint)


def test_linear_probe_is_fitted_without_an_epoch_and_evaluation_states_it_next_to_the_model(
    data_root: Path, tmp_path: Path
) -> None:
    from safetensors.torch import save_file

    work = copy_bundles(tmp_path)
    torch.manual_seed(3)
    weights = tmp_path / "tiny_backbone.safetensors"
    pretrained = build_classifier("timm:vit_small_patch14_dinov2", 3, image_size=28, tiny=True)
    with torch.no_grad():  # DINOv2's LayerScale starts at 1e-5: blocks near the identity, features near constant
        for name, param in pretrained.backbone.named_parameters():
            if name.endswith("gamma"):
                param.fill_(1.0)
    save_file({k: v.contiguous() for k, v in pretrained.backbone.state_dict().items()}, str(weights))
    knobs = ["--method", "linear_probe", "--pretrained", str(weights)]
    args = [a for a in TINY_BUNDLE_ARGS if a != "$None"]
    args = args[: args.index("--pretrained")] + args[args.index("--pretrained") + 1 :]
    log = run_command(monai_bundle("run", "--config_file", TRAIN, "--dataset_dir", str(data_root), *args, *knobs), work)
    assert "Epoch: 1/" not in log  # no gradient step: the model is the fit
    assert "Linear probe: training stops after the fit" in log

    record = json.loads((work / BUNDLE / "models" / "linear_probe.json").read_text())
    checkpoint = torch.load(work / BUNDLE / "models" / "model.pt", map_location="cpu", weights_only=True)
    scale = float(checkpoint["head.logit_scale"])
    torch.testing.assert_close(checkpoint["head.linear.weight"], torch.tensor(record["weight"]) / scale)
    for name, value in pretrained.backbone.state_dict().items():
        assert torch.equal(checkpoint[f"backbone.{name}"], value), name
    assert record["recipe"]["pretrained"] == str(weights) and "validation" in record

    run_command(monai_bundle("run", "--config_file", EVALUATE, "--dataset_dir", str(data_root), *args, *knobs), work)
    _assert_test_metrics(work)
    comparison = json.loads((work / BUNDLE / "runs" / "eval" / "linear_probe_comparison.json").read_text())
    # the comparison rebuilt the probe from its record: for the probe itself both columns agree, and macro-F1 and
    # accuracy to the last bit (one scoring function on both sides: a tie never reads as a loss of 1e-16)
    assert comparison["num_images"] == 6
    for name in ("f1", "accuracy"):
        assert comparison["model"][name] == comparison["linear_probe"][name], comparison
        assert comparison["difference"][name] == 0.0, comparison
    assert abs(comparison["difference"]["auc"]) < 1e-6, comparison
