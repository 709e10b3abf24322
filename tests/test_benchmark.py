"""Tests of the accuracy benchmark (monai_shpeft.benchmark): protocols, folds, the FPT paper's efficiency scores, the
report (paired per-fold differences included), and real end-to-end runs of ``python -m monai_shpeft.benchmark`` on a
tiny BUSI-layout folder, including resume, a failing run, k folds and the linear probe."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
from PIL import Image

from monai_shpeft.amp import cpu_supports_bf16
from monai_shpeft.benchmark import DEFAULT_PROTOCOL, PROTOCOLS, RunSpec, expand_runs, paired_differences, summarize
from monai_shpeft.benchmark.__main__ import build_parser, main, protocol_from_args
from monai_shpeft.benchmark.report import METRICS, efficiency_score, markdown_table, paired_table, precision_line
from monai_shpeft.benchmark.runner import BenchmarkRunner, format_duration
from monai_shpeft.benchmark.worker import bundle_overrides
from monai_shpeft.methods import DEFAULT_HEAD_LEARNING_RATES, DEFAULT_LEARNING_RATES, METHODS
from tests.helpers import copy_bundles, run_process, write_busi_folder

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
    assert labels[:3] == ["linear_probe", "full", "linear"]  # the probe first: the floor every method must beat
    assert [lab for lab in labels if lab.startswith("shpeft")] == ["shpeft 0.01%", "shpeft 0.1%", "shpeft 1%"]
    assert len({r.key for r in runs}) == len(runs)  # result files never collide
    with pytest.raises(ValueError, match="supported methods"):
        expand_runs(["loraa"], seeds=[0])


def test_every_protocol_gives_every_method_a_learning_rate() -> None:
    for protocol in PROTOCOLS.values():
        assert set(protocol.learning_rates) == set(METHODS)
        assert protocol.description
    assert PROTOCOLS["full"].fpt_image_size == 512 and PROTOCOLS["full"].fpt_side_image_size == 224


def test_the_cpu_protocol_is_the_bundles_recipe_and_the_default() -> None:
    cpu = PROTOCOLS["cpu"]
    assert (cpu.image_size, cpu.fpt_image_size, cpu.fpt_side_image_size) == (112, 224, 112)
    assert (cpu.epochs, cpu.batch_size, cpu.val_interval, cpu.estimation_iterations) == (5, 32, 1, None)
    assert cpu.fpt_epochs == 20  # FPT's side network starts from random weights (benchmarks/fpt_recipe.py)
    assert cpu.learning_rates == DEFAULT_LEARNING_RATES and cpu.head_learning_rate is None
    assert cpu.head_learning_rates == DEFAULT_HEAD_LEARNING_RATES
    assert (cpu.weight_decay, cpu.amp, cpu.head_warmup, cpu.validate_warmup) == (0.0, "auto", "lbfgs", True)
    assert (cpu.head_logit_scale, cpu.lr_warmup_fraction) == (100.0, 0.1)
    assert DEFAULT_PROTOCOL == "cpu" and build_parser().parse_args(["--output_dir", "x"]).protocol == "cpu"


def _job(protocol: str = "cpu", method: str = "shpeft", fold: int | None = 3, **changes: object) -> dict:
    run = RunSpec(method, seed=1, budget=0.01 if method == "shpeft" else None, fold=fold)
    protocol_fields = {**asdict(PROTOCOLS[protocol]), **changes}
    return {
        "run": asdict(run),
        "protocol": protocol_fields,
        "work_dir": "work",
        "dataset_dir": "data",
        "datalist_file": "splits/x.json",
        "num_folds": 5 if fold is not None else None,
        "feature_cache_dir": "cache",
        "backbone": "timm:vit_small_patch14_dinov2",
        "device": "cpu",
    }


def test_the_worker_passes_every_recipe_knob_and_the_fold_to_the_bundle() -> None:
    knobs = bundle_overrides(_job())
    assert knobs["amp"] == "auto"  # as given: the bundle resolves it per device
    # both rates resolved here as the bundle would, so the record says exactly what trained
    assert knobs["learning_rate"] == DEFAULT_LEARNING_RATES["shpeft"]
    assert knobs["head_learning_rate"] == DEFAULT_HEAD_LEARNING_RATES["shpeft"] < knobs["learning_rate"]
    assert (knobs["head_warmup"], knobs["validate_warmup"], knobs["head_logit_scale"]) == ("lbfgs", True, 100.0)
    assert (knobs["lr_warmup_fraction"], knobs["weight_decay"]) == (0.1, 0.0)
    assert (knobs["num_folds"], knobs["fold"], knobs["seed"], knobs["budget"]) == (5, 3, 1, 0.01)
    plain = bundle_overrides(_job(fold=None))
    assert (plain["num_folds"], plain["fold"]) == (None, 0)
    # a method missing from a protocol's table trains at the bundles' default rate, FPT's own knob included
    missing = bundle_overrides(_job(method="fpt", learning_rates={}, amp="bf16", head_learning_rate=0.5))
    assert missing["learning_rate"] == missing["fpt_learning_rate"] == DEFAULT_LEARNING_RATES["fpt"]
    assert (missing["amp"], missing["head_learning_rate"]) == ("bf16", None)  # FPT's head trains in its side net
    assert bundle_overrides(_job(head_learning_rate=0.5))["head_learning_rate"] == 0.5
    quick = bundle_overrides(_job("quick"))
    assert (quick["head_warmup"], quick["head_logit_scale"], quick["head_learning_rate"]) == ("none", 1.0, 0.1)


def test_fpt_trains_for_its_own_epochs_and_the_command_line_can_set_them() -> None:
    assert (bundle_overrides(_job())["max_epochs"], bundle_overrides(_job(method="fpt"))["fpt_max_epochs"]) == (5, 20)
    assert bundle_overrides(_job("quick", method="fpt"))["fpt_max_epochs"] == 3  # no fpt_epochs: the protocol's
    # --epochs sets every method's epochs, FPT's included, unless --fpt_epochs says otherwise
    for argv, expected in ((["--epochs", "2"], (2, 2)), (["--epochs", "2", "--fpt_epochs", "7"], (2, 7))):
        protocol = protocol_from_args(build_parser().parse_args(["--output_dir", "x", *argv]))
        assert (protocol.epochs, protocol.fpt_epochs) == expected
    # the description a report prints names what the command line changed, and only that
    assert protocol_from_args(build_parser().parse_args(["--output_dir", "x"])) == PROTOCOLS["cpu"]
    changed = protocol_from_args(build_parser().parse_args(["--output_dir", "x", "--amp", "false", "--epochs", "5"]))
    # 5 epochs is cpu's own, but --epochs sets FPT's 20 to 5 too
    assert changed.description.endswith("Changed on the command line: fpt_epochs=5, amp='false'.")


def test_the_report_states_the_precision_each_run_trained_in() -> None:
    records = [{"precision": "float32"}, {"precision": "float32"}, {"precision": "bfloat16"}, {}]
    line = precision_line(records)
    assert line == "Precision the runs trained in: bfloat16 in 1 run; float32 in 2 runs; not recorded in 1 run."


def test_folds_give_every_run_its_own_key_and_keep_the_label() -> None:
    runs = expand_runs(["linear_probe", "shpeft"], seeds=[0], budgets=(0.01,), folds=[0, 3])
    assert [r.key for r in runs] == [
        "linear_probe_seed0_fold0",
        "shpeft_b0.01_seed0_fold0",
        "linear_probe_seed0_fold3",
        "shpeft_b0.01_seed0_fold3",
    ]
    assert [r.label for r in runs] == ["linear_probe", "shpeft 1%"] * 2
    assert [r.key for r in expand_runs(["shpeft"], seeds=[0], budgets=(0.01,))] == ["shpeft_b0.01_seed0"]


def test_the_runner_gives_each_fold_its_own_split_and_refuses_folds_without_k(tmp_path: Path) -> None:
    copy_bundles(tmp_path)
    (tmp_path / "data").mkdir()
    runs = expand_runs(["linear"], seeds=[2], folds=[0, 1])
    common = (PROTOCOLS["cpu"], "busi", tmp_path / "data", "timm:x", None, tmp_path / "out")
    runner = BenchmarkRunner(runs, *common, bundle=tmp_path / "bundles/busi", num_folds=4, echo=False)
    assert [runner.datalist_file(r).name for r in runs] == ["seed2_fold0of4.json", "seed2_fold1of4.json"]
    plain = expand_runs(["linear"], seeds=[2])[0]
    assert runner.datalist_file(plain).name == "seed2.json"
    with pytest.raises(ValueError, match="need num_folds"):
        BenchmarkRunner(runs, *common, bundle=tmp_path / "bundles/busi", echo=False)
    with pytest.raises(ValueError, match="need num_folds"):
        BenchmarkRunner(runs, *common, bundle=tmp_path / "bundles/busi", num_folds=1, echo=False)
    with pytest.raises(ValueError, match=r"folds \[5\] are not folds of a 4-fold split"):
        BenchmarkRunner([*runs, RunSpec("linear", 2, fold=5)], *common, bundle=tmp_path / "bundles/busi", num_folds=4)
    with pytest.raises(SystemExit, match="--folds needs --num_folds"):
        main(["--output_dir", str(tmp_path / "out"), "--dataset_dir", "d", "--folds", "0,1"])


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


def test_paired_differences_pair_runs_of_the_same_seed_and_fold() -> None:
    records = []
    for fold, (probe, lora, full) in enumerate([(0.50, 0.60, 0.40), (0.70, 0.65, 0.90), (0.60, 0.80, 0.70)]):
        records += [
            {**_record("linear_probe", "linear_probe", 0, probe, 100.0, 0.001), "fold": fold, "kept_warmup": True},
            {**_record("lora", "lora", 0, lora, 200.0, 0.01), "fold": fold, "kept_warmup": fold == 1},
        ]
        if fold < 2:  # full has no result on fold 2 (failed): only two pairs
            records.append({**_record("full", "full", 0, full, 1000.0, 1.0), "fold": fold})
    reference, rows = paired_differences(records)
    assert reference == "linear_probe" and [r["label"] for r in rows] == ["lora", "full"]
    lora, full = rows
    assert lora["n"] == 3 and full["n"] == 2
    assert [p["test_f1"] for p in lora["pairs"]] == pytest.approx([0.10, -0.05, 0.20])
    assert lora["test_f1_diff"] == pytest.approx(0.25 / 3) and lora["test_f1_wins"] == 2
    assert lora["test_f1_diff_std"] == pytest.approx(0.1258305739)
    assert full["test_f1_diff"] == pytest.approx(0.05) and full["test_f1_wins"] == 1
    assert "| lora | 3 | +8.3 ± 12.6 | 2/3 |" in paired_table(rows, reference)
    summary = {r["label"]: r for r in summarize(records)}
    assert summary["lora"]["n"] == 3 and summary["lora"]["folds"] == [0, 1, 2] and summary["lora"]["seeds"] == [0]
    assert summary["lora"]["kept_warmup"] == 1 and summary["full"]["kept_warmup"] is None
    assert "| 3 | 1/3 |" in markdown_table(list(summary.values()))
    # another reference on request; none without the linear probe or linear
    assert paired_differences(records, "full")[1][0]["label"] == "linear_probe"
    assert paired_differences([r for r in records if r["label"] == "lora"]) == (None, [])
    with pytest.raises(ValueError, match="not among the methods run"):
        paired_differences(records, "bitfit")


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
    return run_process([*command, *TINY, *args], work, timeout=900)


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
    failed = _benchmark(work, *args, "--learning_rates", "bitfit=-1")  # a negative rate is refused
    assert failed.returncode == 1
    assert "[failed] bitfit" in failed.stdout and "learning_rate must be a positive number" in failed.stdout
    record = json.loads((output / "failed" / "bitfit_seed0.json").read_text())
    assert record["exit_status"] != 0 and Path(record["log"]).is_file()
    assert (output / "results" / "linear_seed0.json").is_file()

    retried = _benchmark(work, *args)
    assert retried.returncode == 0, retried.stdout[-3000:]
    assert "1 already done (resumed), 1 to run" in retried.stdout
    assert not (output / "failed" / "bitfit_seed0.json").exists()
    assert [r["label"] for r in json.loads((output / "results.json").read_text())["runs"]] == ["linear", "bitfit"]


def test_folds_run_the_linear_probe_and_report_paired_differences_per_fold(work: Path) -> None:
    output = work / "folds"
    args = ["--methods", "linear_probe,linear", "--num_folds", "2", "--output_dir", str(output)]
    done = _benchmark(work, *args)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "4 to run" in done.stdout and "fold 1/2" in done.stdout
    context = json.loads((output / "benchmark.json").read_text())
    assert context["num_folds"] == 2 and context["folds"] == [0, 1] and context["protocol"]["name"] == "cpu"
    keys = ["linear_probe_seed0_fold0", "linear_seed0_fold0", "linear_probe_seed0_fold1", "linear_seed0_fold1"]
    assert context["runs"] == keys

    # one split per fold, shared by the methods; the test folds are disjoint and cover the dataset
    tests = [
        {item["image"] for item in json.loads((output / "splits" / f"seed0_fold{k}of2.json").read_text())["test"]}
        for k in (0, 1)
    ]
    assert tests[0] and tests[1] and not tests[0] & tests[1]
    assert len(tests[0] | tests[1]) == 30
    assert not (output / "splits" / "seed0.json").exists()

    records = {key: json.loads((output / "results" / f"{key}.json").read_text()) for key in keys}
    for key, record in records.items():
        assert record["key"] == key and record["fold"] == int(key[-1]) and record["num_folds"] == 2
        assert record["learning_rate"] == DEFAULT_LEARNING_RATES[record["method"]]
        assert record["head_learning_rate"] == record["learning_rate"]  # the bundle's default for these methods
        # what the protocol's amp "auto" became on this CPU, recorded so that tables never mix precisions unseen
        assert record["precision"] == ("bfloat16" if cpu_supports_bf16() else "float32")
        assert record["kept_warmup"] == (record["best_validation"]["epoch"] == 0)
        assert record["head_warmup"] is not None and "validation" in record["head_warmup"]
        for metric in METRICS:
            assert 0.0 <= record[metric] <= 1.0
    for fold in (0, 1):
        probe = records[f"linear_probe_seed0_fold{fold}"]
        assert probe["trainable"] == 64 * 3 + 3  # the head of the tiny backbone, and nothing else
        assert probe["kept_warmup"] is True  # the probe is its only model: validated as epoch 0, never trained

    # the report pairs the same folds, and its differences are those of the result files
    report = json.loads((output / "results.json").read_text())
    assert report["reference"] == "linear_probe"
    (row,) = report["paired_differences"]
    assert row["label"] == "linear" and row["n"] == 2
    for pair in row["pairs"]:
        mine, base = records[f"linear_seed0_fold{pair['fold']}"], records[f"linear_probe_seed0_fold{pair['fold']}"]
        for metric in METRICS:
            assert pair[metric] == pytest.approx(mine[metric] - base[metric])
    for metric in METRICS:
        differences = [
            records[f"linear_seed0_fold{k}"][metric] - records[f"linear_probe_seed0_fold{k}"][metric] for k in (0, 1)
        ]
        assert row[f"{metric}_diff"] == pytest.approx(sum(differences) / 2)
        assert row[f"{metric}_wins"] == sum(d > 0 for d in differences)
    summary = {r["label"]: r for r in report["summary"]}
    assert summary["linear"]["n"] == 2 and summary["linear"]["folds"] == [0, 1]
    table = (output / "results.md").read_text()
    assert "## Paired differences against linear_probe" in table and "| linear | 2 |" in table
    with Image.open(output / "paired_differences.png") as image:
        assert image.format == "PNG" and image.size[0] > 300

    # --report_only: another reference; one that was not run is refused
    rewritten = subprocess.run(
        [sys.executable, "-m", "monai_shpeft.benchmark", "--output_dir", str(output), "--report_only"]
        + ["--reference", "linear"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rewritten.returncode == 0, rewritten.stderr[-2000:]
    assert json.loads((output / "results.json").read_text())["paired_differences"][0]["label"] == "linear_probe"
    refused = subprocess.run(
        [sys.executable, "-m", "monai_shpeft.benchmark", "--output_dir", str(output), "--report_only"]
        + ["--reference", "bitfit"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert refused.returncode != 0 and "not among the results" in refused.stderr
