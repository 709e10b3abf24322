"""Tests of the accuracy benchmark (monai_shpeft.benchmark): protocols, the FPT paper's efficiency scores, the
report, and real end-to-end runs of ``python -m monai_shpeft.benchmark`` on a tiny BUSI-layout folder, including
resume and a failing run."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from monai_shpeft.benchmark import PROTOCOLS, expand_runs, summarize
from monai_shpeft.benchmark.report import efficiency_score, markdown_table
from monai_shpeft.benchmark.runner import format_duration
from monai_shpeft.methods import METHODS
from tests.helpers import copy_bundles, write_busi_folder

#: the tiny backbone at tiny sizes
TINY = [
    "--backbone",
    "timm:vit_small_patch14_dinov2",
    "--tiny_backbone",
    "--epochs",
    "1",
    "--image_size",
    "28",
    "--fpt_image_size",
    "56",
    "--fpt_side_image_size",
    "28",
    "--batch_size",
    "4",
    "--num_workers",
    "0",
    "--device",
    "cpu",
]


@pytest.mark.parametrize(
    ("score", "ratio", "paper"),
    [
        (93.96, 1.0, 69.54),  # full fine-tuning, PPE and PME
        (92.26, 0.0181, 91.54),  # FPT, PPE (1.81% trainable)
        (92.26, 3182 / 24116, 87.42),  # FPT, PME
        (88.30, 4364 / 24116, 82.15),  # linear probing, PME
        (91.01, 0.0069, 90.74),  # LoRA, PPE
    ],
)
def test_efficiency_scores_reproduce_the_fpt_papers_table(score: float, ratio: float, paper: float) -> None:
    assert efficiency_score(score, ratio) == pytest.approx(paper, abs=0.01)


def test_runs_cover_every_method_with_shpeft_once_per_budget() -> None:
    runs = expand_runs(["all"], seeds=[0, 1])
    assert len(runs) == 2 * (len(METHODS) - 1 + 3)
    labels = [r.label for r in runs if r.seed == 0]
    assert labels[:2] == ["full", "linear"]
    assert [lab for lab in labels if lab.startswith("shpeft")] == ["shpeft 0.01%", "shpeft 0.1%", "shpeft 1%"]
    assert len({r.key for r in runs}) == len(runs)  # result files never collide
    with pytest.raises(ValueError, match="supported methods"):
        expand_runs(["loraa"], seeds=[0])


def test_both_protocols_give_every_method_a_learning_rate() -> None:
    for protocol in PROTOCOLS.values():
        assert set(protocol.learning_rates) == set(METHODS)
        assert protocol.description
    assert PROTOCOLS["full"].fpt_image_size == 512 and PROTOCOLS["full"].fpt_side_image_size == 224


def _record(label: str, method: str, seed: int, f1: float, memory: float, ratio: float) -> dict:
    return {
        "label": label,
        "method": method,
        "kind": "reference",
        "budget": None,
        "seed": seed,
        "trainable": int(ratio * 1000),
        "total": 1000,
        "ratio": ratio,
        "peak_memory_mb": memory,
        "train_seconds": 60.0,
        "test_f1": f1,
        "test_accuracy": f1,
        "test_auc": 0.9,
    }


def test_summary_averages_seeds_and_scores_memory_against_full_fine_tuning() -> None:
    records = [
        _record("full", "full", 0, 0.80, 1000.0, 1.0),
        _record("full", "full", 1, 0.70, 1000.0, 1.0),
        _record("linear", "linear", 0, 0.60, 100.0, 0.001),
    ]
    rows = {r["label"]: r for r in summarize(records)}
    assert rows["full"]["test_f1"] == pytest.approx(0.75)
    assert rows["full"]["test_f1_std"] == pytest.approx(math.sqrt(0.005))
    assert rows["linear"]["memory_ratio"] == pytest.approx(0.1)
    assert rows["linear"]["pme"] == pytest.approx(0.9 * math.exp(-math.log10(1.1)))
    table = markdown_table(list(rows.values()))
    assert "| full | reference | – | 1,000 | 100.000% | **75.0 ± 7.1** |" in table
    assert "| linear |" in table and "10%" in table


def test_without_full_fine_tuning_pme_is_left_out() -> None:
    rows = summarize([_record("linear", "linear", 0, 0.6, 100.0, 0.001)])
    assert rows[0]["pme"] is None and rows[0]["memory_ratio"] is None
    assert "| – |" in markdown_table(rows)


def test_durations_read_naturally() -> None:
    assert format_duration(42) == "42 s"
    assert format_duration(95) == "1 min 35 s"
    assert format_duration(3725) == "1 h 02 min"


def _benchmark(work: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "monai_shpeft.benchmark", "--dataset_dir", "busi", "--bundle", "bundles/busi"]
    return subprocess.run([*command, *TINY, *args], cwd=work, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = copy_bundles(tmp_path_factory.mktemp("benchmark"))
    write_busi_folder(work / "busi", per_class=10)
    return work


def test_the_benchmark_runs_methods_end_to_end_writes_its_report_and_resumes(work: Path) -> None:
    output = work / "out"
    args = ["--methods", "linear,lora,shpeft,fpt", "--budgets", "0.001,0.01", "--output_dir", str(output)]
    done = _benchmark(work, *args)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "5 to run" in done.stdout and "ETA" in done.stdout
    report = json.loads((output / "results.json").read_text())
    labels = [r["label"] for r in report["runs"]]
    assert labels == ["linear", "lora", "shpeft 0.1%", "shpeft 1%", "fpt"]
    for run in report["runs"]:
        assert 0.0 <= run["test_f1"] <= 1.0 and 0.0 <= run["test_auc"] <= 1.0
        assert 0 < run["trainable"] < run["total"] and run["peak_memory_mb"] > 0
    by_label = {r["label"]: r for r in report["runs"]}
    assert by_label["shpeft 0.1%"]["trainable"] < by_label["shpeft 1%"]["trainable"]
    assert by_label["linear"]["trainable"] == 64 * 3 + 3  # the head of the tiny backbone
    assert report["command"].startswith("python -m monai_shpeft.benchmark")
    table = (output / "results.md").read_text()
    assert all(f"| {label} |" in table for label in labels)
    for plot in ("f1_per_method.png", "f1_vs_trainable_ratio.png"):
        with Image.open(output / plot) as image:
            assert image.format == "PNG" and image.size[0] > 300
    # the bundle's own metadata is never touched by the benchmark's SH-PEFT runs
    assert "sparse_trainable_set" not in (work / "bundles/busi/configs/metadata.json").read_text()

    again = _benchmark(work, *args)
    assert again.returncode == 0
    assert "5 already done (resumed), 0 to run" in again.stdout
    assert json.loads((output / "results.json").read_text())["runs"] == report["runs"]

    (output / "results.md").unlink()
    rewritten = subprocess.run(
        [sys.executable, "-m", "monai_shpeft.benchmark", "--output_dir", str(output), "--report_only"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rewritten.returncode == 0, rewritten.stderr[-2000:]
    assert "--methods linear,lora,shpeft,fpt" in (output / "results.md").read_text()  # the command that ran


def test_report_only_without_a_run_says_what_is_missing(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "monai_shpeft.benchmark", "--output_dir", str(tmp_path), "--report_only"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0 and "benchmark.json does not exist" in done.stderr


def test_a_failing_run_is_recorded_the_others_go_on_and_the_next_start_retries_it(work: Path) -> None:
    output = work / "failing"
    args = ["--methods", "linear,bitfit", "--output_dir", str(output)]
    failed = _benchmark(work, *args, "--learning_rates", "bitfit=-1")  # AdamW refuses a negative rate
    assert failed.returncode == 1
    assert "[failed] bitfit" in failed.stdout and "Invalid learning rate" in failed.stdout
    record = json.loads((output / "failed" / "bitfit_seed0.json").read_text())
    assert record["exit_status"] != 0 and Path(record["log"]).is_file()
    assert (output / "results" / "linear_seed0.json").is_file()

    retried = _benchmark(work, *args)
    assert retried.returncode == 0, retried.stdout[-3000:]
    assert "1 already done (resumed), 1 to run" in retried.stdout
    assert not (output / "failed" / "bitfit_seed0.json").exists()
    assert [r["label"] for r in json.loads((output / "results.json").read_text())["runs"]] == ["linear", "bitfit"]
