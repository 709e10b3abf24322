"""The FPT memory benchmark end to end: a real run of the script, one fresh subprocess per method, tiny backbones."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from monai_shpeft.backbones import TINY_WIDTH

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "fpt_memory.py"
BACKBONE = "timm:vit_base_patch16_224"
METHODS = ("full", "linear", "shpeft", "fpt", "fpt_preload", "shpeft_gc")


def test_fpt_memory_benchmark_tiny(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    command = [
        sys.executable,
        str(SCRIPT),
        "--backbone",
        BACKBONE,
        "--tiny",
        "--image_size",
        "64",
        "--side_image_size",
        "32",
        "--batch_size",
        "2",
        "--steps",
        "1",
        "--warmup",
        "1",
        "--device",
        "cpu",
        "--cache_dir",
        str(cache_dir),
        "--output_dir",
        str(tmp_path),
        "--name",
        "bench",
        "--methods",
        *METHODS,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    for method in METHODS:  # one progress line as each method starts and finishes
        assert f"{method}: started" in done.stdout and f"{method}: done in" in done.stdout, done.stdout

    report = json.loads((tmp_path / "bench.json").read_text())
    results = report["results"]
    assert list(results) == list(METHODS)
    for method, result in results.items():
        assert result["ok"], (method, result)
        assert result["peak_bytes"] > 0, method
        assert result["step_seconds_median"] > 0, method
        assert len(result["step_seconds"]) == 1 and len(result["warmup_step_seconds"]) == 1, method
        assert result["batch_size"] == 2 and result["distinct_images"] == 4, method
        assert result["device"] == "cpu" and result["high_water_mark_reset"] in (True, False), method
        assert all(loss == loss for loss in result["losses"]), method  # finite training, no NaN

    # trainable counts: the head is an L2-norm linear layer on the tiny width, 4 classes
    head = 4 * (TINY_WIDTH + 1)
    total = results["full"]["total_params"]
    assert results["full"]["trainable_params"] == total and results["full"]["trainable_ratio"] == 1.0
    assert results["linear"]["total_params"] == total == results["shpeft"]["total_params"]
    assert results["linear"]["trainable_params"] == head == results["linear"]["head_params"]
    shpeft = results["shpeft"]
    backbone = total - head
    assert shpeft["backbone_weights"] == backbone
    assert shpeft["selected_backbone_weights"] == round(0.01 * backbone)
    assert shpeft["trainable_params"] == shpeft["selected_backbone_weights"] + head
    for method in ("fpt", "fpt_preload"):
        assert 0 < results[method]["trainable_params"] < results[method]["total_params"], method
    # SH-PEFT with gradient checkpointing: the same set and the same first loss, the blocks recomputed in backward
    checkpointed = results["shpeft_gc"]
    assert checkpointed["grad_checkpointing"] and not shpeft["grad_checkpointing"]
    assert checkpointed["selected_backbone_weights"] == shpeft["selected_backbone_weights"]
    assert abs(checkpointed["losses"][0] - shpeft["losses"][0]) < 1e-6
    assert checkpointed["step_cpu_seconds_median"] > 0 and checkpointed["step_cpu_time_relative_to_full"] > 0
    assert report["settings"]["grad_checkpointing"] == ["shpeft_gc"]
    assert results["fpt"]["trainable_params"] == results["fpt_preload"]["trainable_params"]
    assert results["fpt_preload"]["feature_shape"] == results["fpt"]["feature_shape"]
    # same images, same initial weights: the cached (float16) features give FPT's first loss
    assert abs(results["fpt_preload"]["losses"][0] - results["fpt"]["losses"][0]) < 1e-2
    assert all(r["peak_before_training_bytes"] <= r["peak_bytes"] for r in results.values())
    # the features came from the cache the preliminary process filled, one entry per distinct image
    preparation = report["cache_preparation"]
    assert preparation["ok"] and preparation["cache_entries"] == 4 and "fpt process" in preparation["filled_by"]
    assert results["fpt_preload"]["cache_root"] == report["cache_preparation"]["cache_root"]
    assert results["full"]["peak_fraction_of_full"] == 1.0 and results["full"]["step_time_relative_to_full"] == 1.0
    assert "fpt_preload_fraction_of_full" in report["target"]
    assert report["settings"]["batch_size"] == 2 and report["settings"]["image_size"] == 64

    markdown = (tmp_path / "bench.md").read_text()
    assert "| Method |" in markdown and "FPT + preloading" in markdown and "Full fine-tuning" in markdown
    assert (tmp_path / "bench.png").stat().st_size > 0
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _script() -> ModuleType:
    """The benchmark script as a module (its parent part imports no torch)."""
    spec = importlib.util.spec_from_file_location("fpt_memory", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_repeats_combine_into_medians_and_keep_each_measurement() -> None:
    script = _script()
    runs = [
        {"ok": True, "peak_bytes": peak, "peak_before_training_bytes": peak // 2, "step_seconds_median": step,
         "data_seconds_median": 0.1, "step_seconds": [step], "losses": [1.0], "method": "full"}
        for peak, step in ((300, 2.0), (100, 3.0), (200, 1.0))
    ]  # fmt: skip
    combined = script.combine_repeats([*runs, {"ok": False, "error": "killed"}])
    assert (combined["peak_bytes"], combined["step_seconds_median"]) == (200, 2.0)
    assert combined["peak_before_training_bytes"] == 100 and combined["method"] == "full"
    assert [r["peak_bytes"] for r in combined["repeats"][:3]] == [300, 100, 200]
    assert combined["repeats"][3] == {"ok": False, "error": "killed"} and combined["failed_repeats"] == 1
    assert script.combine_repeats(runs[:1]) is runs[0]
    failed = {"ok": False, "error": "boom"}
    assert script.combine_repeats([failed, failed]) is failed
