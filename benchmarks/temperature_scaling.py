"""Does temperature scaling make the main job's probabilities trustworthy? ECE and Brier score before and after.

Runs the README's main job (the BUSI bundle's train.json with its CPU knobs) and its evaluation once per fold of a
5-fold split, through real ``python -m monai.bundle run`` processes: training fits the temperature on the fold's
validation part (``models/temperature.json``), evaluation applies it and writes the clinical report, whose
``temperature_scaling`` entry holds the test ECE and Brier score of the network's own probabilities (before) and of
the scaled ones (after). The temperature is chosen on validation only; the test figures are read once. The summary
also gives the figures of the default mode, ``auto`` (the temperature applied only on folds where it lowered the
validation ECE).

Example (the record docs/benchmarks/temperature_scaling.json came from this command; resumable per fold)::

    python benchmarks/temperature_scaling.py --dataset_dir ../shared/data/busi \
        --pretrained ../shared/weights/vit_small_patch14_dinov2.safetensors --output_dir runs/temperature_scaling \
        --output docs/benchmarks/temperature_scaling.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from monai_shpeft.utils import atomic_write_json

BUNDLE = Path(__file__).resolve().parent.parent / "bundles" / "busi"
#: the README's main job, its CPU knobs (the backbone and weights file come from the command line)
MAIN_JOB_KNOBS = (
    "--image_size 224 --batch_size 32 --max_epochs 1 --estimation_iterations 4 --learning_rate 1e-5 "
    "--checkpoint_rule best --device cpu"
).split()


def _bundle_run(config_files: list[str], knobs: list[str], log_file: Path) -> None:
    files = config_files[0] if len(config_files) == 1 else str(config_files)
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", files, *knobs]
    with log_file.open("w") as log:
        done = subprocess.run(
            command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
    if done.returncode != 0:
        tail = log_file.read_text().strip().splitlines()[-1:]
        raise RuntimeError(f"{' '.join(command[:5])} failed ({log_file}): {tail}")


def run_fold(args: argparse.Namespace, fold: int) -> dict[str, Any]:
    """Train and evaluate one fold (skipped when its report exists) and return its calibration figures."""
    out = Path(args.output_dir) / f"fold{fold}"
    report_file = out / "runs" / "eval" / "report.json"
    train_json, evaluate_json = str(BUNDLE / "configs" / "train.json"), str(BUNDLE / "configs" / "evaluate.json")
    knobs = [
        "--dataset_dir", args.dataset_dir, "--backbone", args.backbone, "--pretrained", args.pretrained,
        *MAIN_JOB_KNOBS, "--num_folds", str(args.num_folds), "--fold", str(fold), "--seed", str(args.seed),
        "--output_dir", str(out / "runs"), "--ckpt_dir", str(out / "models"),
    ]  # fmt: skip
    if not report_file.is_file():
        out.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        _bundle_run([train_json], knobs, out / "train.log")
        train_seconds = time.perf_counter() - start
        _bundle_run([train_json, evaluate_json], knobs, out / "evaluate.log")
        atomic_write_json(out / "timing.json", {"train_seconds": train_seconds})
    report = json.loads(report_file.read_text())
    fit = json.loads((out / "models" / "temperature.json").read_text())
    scaling = report["temperature_scaling"]
    return {
        "fold": fold,
        "temperature": fit["temperature"],
        "validation": {"cases": fit["num_cases"], "nll": fit["nll"], "ece": fit["ece"], "brier": fit["brier"]},
        "test": {
            "cases": report["num_cases"],
            "ece": scaling["ece"],
            "brier": scaling["brier"],
            "macro_f1": report["overall"]["macro_f1"]["value"],
        },
        "train_seconds": json.loads((out / "timing.json").read_text())["train_seconds"],
    }


def summary(folds: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation over folds of every figure, and the folds where scaling lowered test ECE."""

    def stat(values: list[float]) -> dict[str, float]:
        return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}

    out: dict[str, Any] = {"temperature": stat([f["temperature"] for f in folds])}
    for when in ("before", "after"):  # the NLL the temperature minimised, in-sample
        out[f"validation_nll_{when}"] = stat([f["validation"]["nll"][when] for f in folds])
    for part in ("validation", "test"):
        for figure in ("ece", "brier"):
            for when in ("before", "after"):
                out[f"{part}_{figure}_{when}"] = stat([f[part][figure][when] for f in folds])
    # the default mode, auto: the fitted temperature is applied only where it lowered the validation ECE
    auto = [f["validation"]["ece"]["after"] < f["validation"]["ece"]["before"] for f in folds]
    out["test_ece_auto"] = stat([f["test"]["ece"]["after" if a else "before"] for f, a in zip(folds, auto)])
    out["test_brier_auto"] = stat([f["test"]["brier"]["after" if a else "before"] for f, a in zip(folds, auto)])
    out["auto_applied"] = f"{sum(auto)}/{len(folds)}"
    out["test_ece_lowered"] = (
        f"{sum(f['test']['ece']['after'] < f['test']['ece']['before'] for f in folds)}/{len(folds)}"
    )
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset_dir", required=True)
    parser.add_argument("--backbone", default="timm:vit_small_patch14_dinov2")
    parser.add_argument("--pretrained", required=True, help="the backbone's weights file")
    parser.add_argument("--num_folds", type=int, default=5)
    parser.add_argument("--folds", type=int, nargs="*", default=None, help="folds to run (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", default="runs/temperature_scaling")
    parser.add_argument("--output", default=None, help="write the record (JSON) here too")
    args = parser.parse_args(argv)
    folds = [run_fold(args, fold) for fold in (args.folds if args.folds is not None else range(args.num_folds))]
    record = {
        "command": "python benchmarks/temperature_scaling.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "main_job_knobs": " ".join(MAIN_JOB_KNOBS),
        "backbone": args.backbone,
        "folds": folds,
        "summary": summary(folds),
    }
    atomic_write_json(Path(args.output_dir) / "temperature_scaling.json", record)
    if args.output:
        atomic_write_json(args.output, record)
    print(json.dumps(record["summary"], indent=2))
    return record


if __name__ == "__main__":
    main()
