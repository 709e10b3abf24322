"""What storing FPT's preloaded frozen features in 8 bits costs in accuracy: int8 against float16, through the bundle.

For every fold of a 5-fold split of BUSI and every storage dtype (``--feature_dtype`` of the bundle: float16, the
default, and int8 with a per-token absmax scale), the BUSI bundle's train.json trains FPT with preloaded features in a
real ``python -m monai.bundle run`` process (the CPU knobs: DINOv2 ViT-S/14 frozen at 224 px, side network at 112 px,
20 epochs, batch 32, no linear-probe record), then evaluate.json scores the kept checkpoint on the fold's test part.
The comparison figure is the validation AUC (macro, one-vs-rest) of the checkpoint the bundle keeps (best validation
macro-F1), from the training log; the test macro-F1 and AUC are a secondary figure, read once, never used to choose
anything. The dtypes share one feature cache folder (their namespaces differ), and the folds reuse each other's
entries. Writes ``--output`` (JSON) and prints a summary.

Example (the record docs/benchmarks/fpt_feature_int8.json came from this command; resumable per fold and dtype)::

    python benchmarks/fpt_feature_int8.py --dataset_dir ../shared/data/busi \
        --pretrained ../shared/weights/vit_small_patch14_dinov2.safetensors --folds 0 1 2 \
        --output_dir runs/fpt_int8 --output docs/benchmarks/fpt_feature_int8.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from monai_shpeft.utils import atomic_write_json

BUNDLE = Path(__file__).resolve().parent.parent / "bundles" / "busi"
#: FPT's CPU knobs of the benchmark protocol (frozen 224 px, side 112 px, 20 epochs at the bundle's 3e-3)
FPT_KNOBS = (
    "--method fpt --fpt_image_size 224 --fpt_side_image_size 112 --batch_size 32 --head_warmup none --device cpu"
).split()
_EPOCH_LINE = re.compile(r"Epoch\[(\d+)\] Metrics -- (.*)$")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset_dir", required=True)
    parser.add_argument("--backbone", default="timm:vit_small_patch14_dinov2")
    parser.add_argument("--pretrained", required=True, help="weights file of the frozen backbone")
    parser.add_argument("--dtypes", nargs="+", default=["float16", "int8"], help="feature_dtype values to compare")
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--num_folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no_test", action="store_true", help="skip the test evaluation (validation only)")
    parser.add_argument("--summary_only", action="store_true", help="summarise the runs already done, train none")
    parser.add_argument("--output_dir", default="runs/fpt_int8", help="runs and the shared feature cache")
    parser.add_argument("--output", default="docs/benchmarks/fpt_feature_int8.json")
    return parser


def _bundle_run(config_files: list[str], knobs: list[str], log_file: Path) -> tuple[float, float]:
    """Run a bundle in its own process (output to ``log_file``); returns its seconds and peak resident MB."""
    files = config_files[0] if len(config_files) == 1 else str(config_files)
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", files, *knobs]
    start = time.perf_counter()
    with log_file.open("w") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
        # wait4 gives this process's own peak resident size (its waited-for children, the DataLoader workers,
        # included as the largest of them), as /usr/bin/time -v reports it
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = log_file.read_text().strip().splitlines()[-1:]
        raise RuntimeError(f"{' '.join(command[:5])} failed ({log_file}): {tail}")
    return time.perf_counter() - start, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def validation_epochs(log_file: Path) -> list[dict[str, float]]:
    """The per-epoch validation metrics of a training log (``Epoch[k] Metrics -- name: value ...`` lines)."""
    epochs = []
    for line in log_file.read_text().splitlines():
        match = _EPOCH_LINE.search(line)
        if match:
            pairs = re.findall(r"(\w+): ([-+0-9.eE]+)", match.group(2))
            epochs.append({"epoch": int(match.group(1)), **{k: float(v) for k, v in pairs}})
    return epochs


def run_one(args: argparse.Namespace, fold: int, dtype: str) -> dict[str, Any]:
    """Train (and evaluate) one fold with one storage dtype; skipped when its record exists."""
    out = Path(args.output_dir) / dtype / f"fold{fold}"
    record_file = out / "record.json"
    if record_file.is_file():
        return json.loads(record_file.read_text())
    out.mkdir(parents=True, exist_ok=True)
    train_json, evaluate_json = str(BUNDLE / "configs" / "train.json"), str(BUNDLE / "configs" / "evaluate.json")
    knobs = [
        "--dataset_dir", args.dataset_dir, "--backbone", args.backbone, "--pretrained", args.pretrained, *FPT_KNOBS,
        "--feature_dtype", dtype, "--feature_cache_dir", str(Path(args.output_dir) / "feature_cache"),
        "--num_folds", str(args.num_folds), "--fold", str(fold), "--seed", str(args.seed),
        "--output_dir", str(out / "runs"), "--ckpt_dir", str(out / "models"),
    ]  # fmt: skip
    train_seconds, train_rss_mb = _bundle_run([train_json], knobs, out / "train.log")
    epochs = validation_epochs(out / "train.log")
    kept = max(epochs, key=lambda e: (e["val_f1"], -e["epoch"]))  # CheckpointSaver keeps the first best macro-F1
    record: dict[str, Any] = {
        "fold": fold,
        "dtype": dtype,
        "train_seconds": round(train_seconds, 1),
        "train_peak_rss_mb": round(train_rss_mb, 1),
        "kept_epoch": kept["epoch"],
        "val_auc": kept["val_auc"],
        "val_f1": kept["val_f1"],
        "val_auc_last_epoch": epochs[-1]["val_auc"],
        "val_auc_best_epoch": max(e["val_auc"] for e in epochs),
        "validation_per_epoch": epochs,
    }
    if not args.no_test:
        _bundle_run([train_json, evaluate_json], knobs, out / "evaluate.log")
        record["test"] = _eval_metrics(out)
    atomic_write_json(record_file, record)
    return record


def _eval_metrics(out: Path) -> dict[str, float]:
    """Test macro-F1, accuracy and AUC from the evaluation's ``metrics.csv`` (MONAI's MetricsSaver)."""
    metrics = {}
    for line in (out / "runs" / "eval" / "metrics.csv").read_text().splitlines():
        name, _, value = line.partition(",")
        if value:
            metrics[name.strip()] = float(value)
    return metrics


def summary(records: list[dict[str, Any]], dtypes: list[str]) -> dict[str, Any]:
    """Mean and standard deviation per dtype, and the paired difference of each dtype to the first, over folds."""
    by_dtype = {d: {r["fold"]: r for r in records if r["dtype"] == d} for d in dtypes}
    folds = sorted(set.intersection(*(set(v) for v in by_dtype.values()))) if by_dtype else []

    def stat(values: list[float]) -> dict[str, float]:
        return {"mean": round(float(np.mean(values)), 4), "std": round(float(np.std(values)), 4)}

    out: dict[str, Any] = {"paired_folds": folds}
    names = ["val_auc", "val_f1", "val_auc_last_epoch"]
    for dtype in dtypes:
        rows = [by_dtype[dtype][f] for f in folds]
        out[dtype] = {n: stat([r[n] for r in rows]) for n in names}
        if rows and all("test" in r for r in rows):
            out[dtype].update({f"test_{n}": stat([r["test"][f"test_{n}"] for r in rows]) for n in ("f1", "auc")})
    reference = dtypes[0]
    for dtype in dtypes[1:]:
        for name in ("val_auc", "val_auc_last_epoch"):
            diffs = [by_dtype[dtype][f][name] - by_dtype[reference][f][name] for f in folds]
            out[f"{dtype}_minus_{reference}_{name}"] = {**stat(diffs), "per_fold": [round(d, 4) for d in diffs]}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    records = []
    for fold in args.folds:
        for dtype in args.dtypes:
            done = Path(args.output_dir) / dtype / f"fold{fold}" / "record.json"
            if args.summary_only and not done.is_file():
                continue
            records.append(run_one(args, fold, dtype))
            print(f"fold {fold} {dtype}: val AUC {records[-1]['val_auc']:.4f} (epoch {records[-1]['kept_epoch']})")
    if not records:
        raise SystemExit("no run is done yet")
    result = {
        "what": "FPT on BUSI through the bundle, preloaded features stored as float16 or int8 (per-token scale)",
        "knobs": " ".join(FPT_KNOBS),
        "backbone": args.backbone,
        "pretrained": args.pretrained,
        "num_folds": args.num_folds,
        "seed": args.seed,
        "command": "python benchmarks/fpt_feature_int8.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "summary": summary(records, args.dtypes),
        "runs": records,
    }
    atomic_write_json(args.output, result)
    print(json.dumps(result["summary"], indent=2))
    return result


if __name__ == "__main__":
    main()
