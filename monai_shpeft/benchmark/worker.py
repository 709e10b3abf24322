"""One benchmark run in a fresh process: train a method through the bundle's own configs, then test it.

The runner starts ``python -m monai_shpeft.benchmark.worker --job JOB.json --result RESULT.json``; a fresh process
per run keeps the memory peaks of the methods apart. Training uses the bundle's ``train.json`` and the test its
``evaluate.json``, read with MONAI's ``ConfigParser`` exactly as ``python -m monai.bundle run`` reads them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from monai_shpeft.amp import resolve_amp
from monai_shpeft.memory import PeakMemoryMeter
from monai_shpeft.methods import count_trainable, method_info, resolve_checkpoint_rule, resolve_learning_rates
from monai_shpeft.utils import atomic_write_json

__all__ = ["bundle_overrides", "learning_rates", "run_job", "main"]

logger = logging.getLogger("monai_shpeft.benchmark")


def learning_rates(job: dict[str, Any]) -> tuple[float, float | None]:
    """The learning rates a run trains with, as the bundle resolves them.

    Args:
        job: the runner's job description.

    Returns:
        ``(backbone rate, head rate)`` from :func:`~monai_shpeft.methods.resolve_learning_rates` with the
        protocol's rate of the method and its head rate (``head_learning_rate``, else the method's entry of
        ``head_learning_rates``, else the backbone's), and
        ``None`` for the head of FPT, whose head trains inside the side network at the side network's rate.
    """
    method, protocol = job["run"]["method"], job["protocol"]
    head_rate = protocol.get("head_learning_rate")
    if head_rate is None:
        head_rate = (protocol.get("head_learning_rates") or {}).get(method)
    backbone, head = resolve_learning_rates(method, (protocol.get("learning_rates") or {}).get(method), head_rate)
    return (backbone, None) if method == "fpt" else (backbone, head)


def _epochs(method: str, protocol: dict[str, Any]) -> int:
    """The epochs ``method`` trains for under ``protocol`` (a :class:`Protocol` as a dict): FPT's own when set."""
    fpt_epochs = protocol.get("fpt_epochs")
    return int(fpt_epochs) if method == "fpt" and fpt_epochs is not None else int(protocol["epochs"])


def bundle_overrides(job: dict[str, Any]) -> dict[str, Any]:
    """The bundle knobs of one run: the shared protocol, the method and its settings, the fold, and where files go.

    Args:
        job: the runner's job description (``run``, ``protocol``, ``num_folds``, paths and backbone).

    Returns:
        ``{knob: value}`` for ``ConfigParser.update``.
    """
    run, protocol, work = job["run"], job["protocol"], Path(job["work_dir"])
    method = run["method"]
    # resolved here (not left to the bundle's null) so that FPT's own rate knob gets it too and the record is exact
    learning_rate, head_learning_rate = learning_rates(job)
    device = torch.device(job.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
    fold = run.get("fold")
    overrides: dict[str, Any] = {
        "bundle_root": str(work),
        "dataset_dir": job["dataset_dir"],
        "datalist_file": job["datalist_file"],
        "num_folds": job.get("num_folds") if fold is not None else None,
        "fold": 0 if fold is None else int(fold),
        "backbone": job["backbone"],
        "pretrained": job.get("pretrained"),
        "tiny_backbone": bool(job.get("tiny_backbone", False)),
        "device": device,
        "amp": protocol.get("amp", "auto"),  # as given: the bundle resolves "auto" per device (monai_shpeft.amp)
        "seed": run["seed"],
        "method": method,
        "method_options": dict(run.get("options") or {}),
        "image_size": protocol["image_size"],
        "max_epochs": protocol["epochs"],
        "fpt_max_epochs": _epochs(method, protocol),
        "batch_size": protocol["batch_size"],
        "val_interval": protocol["val_interval"],
        "optimizer_name": "adamw",
        "learning_rate": learning_rate,
        "head_learning_rate": head_learning_rate,  # None only for FPT, whose head trains in the side network
        "weight_decay": protocol["weight_decay"],
        "lr_warmup_fraction": protocol.get("lr_warmup_fraction", 0.1),
        "head_warmup": protocol.get("head_warmup", "lbfgs"),
        "validate_warmup": bool(protocol.get("validate_warmup", True)),
        "head_logit_scale": float(protocol.get("head_logit_scale", 30.0)),
        "checkpoint_rule": protocol.get("checkpoint_rule"),  # None: the method's default
        "estimation_iterations": protocol["estimation_iterations"],
        "num_workers": job.get("num_workers", 2),
        "fpt_image_size": protocol["fpt_image_size"],
        "fpt_side_image_size": protocol["fpt_side_image_size"],
        "fpt_learning_rate": learning_rate,
        "fpt_weight_decay": protocol["weight_decay"],
        "preload_features": True,
        "feature_cache_dir": job["feature_cache_dir"],
    }
    if run.get("budget") is not None:
        overrides["budget"] = run["budget"]
    return overrides


def _parser(config_files: list[str], overrides: dict[str, Any]) -> Any:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config_files if len(config_files) > 1 else config_files[0])
    parser.update(overrides)
    return parser


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Train and test one method; return its result record.

    Args:
        job: the runner's job description.

    Returns:
        the record: seed and fold, trainable count and ratio, peak training memory, times, the learning rates
        used, the best validation metric and its epoch (``kept_warmup``: epoch 0, the warmed head alone), the head
        warm-up's record, and the test macro-F1, accuracy and AUC.
    """
    bundle = Path(job["bundle"])
    work = Path(job["work_dir"])
    (work / "configs").mkdir(parents=True, exist_ok=True)
    # SH-PEFT records its set in the bundle's metadata: give each run its own copy, never the repository's
    shutil.copyfile(bundle / "configs" / "metadata.json", work / "configs" / "metadata.json")
    overrides = bundle_overrides(job)
    train_config = str(bundle / "configs" / "train.json")
    evaluate_config = str(bundle / "configs" / "evaluate.json")

    parser = _parser([train_config], overrides)
    parser.get_parsed_content("initialize")
    trainer = parser.get_parsed_content("train#trainer")  # builds (and caches) the datasets before the baseline
    meter = PeakMemoryMeter(overrides["device"])
    meter.start()
    started = time.perf_counter()
    trainer.run()
    train_seconds = time.perf_counter() - started
    peak = meter.peak_bytes()

    network = parser.get_parsed_content("network")
    trainable_set = getattr(trainer.state, "sparse_trainable_set", None)
    count = count_trainable(network, trainable_set)
    evaluator = parser.get_parsed_content("validate#evaluator")
    key_metric = parser.get_parsed_content("validate#key_metric_name")
    best_value, best_epoch = evaluator.state.best_metric, int(evaluator.state.best_metric_epoch)
    rule = resolve_checkpoint_rule(job["run"]["method"], overrides.get("checkpoint_rule"))
    averaged = getattr(trainer.state, "weight_average", None)
    warmup_file = Path(parser.get_parsed_content("probe_record_file"))
    warmup = None
    if warmup_file.is_file():  # the fit's figures, without its weights
        warmup = {k: v for k, v in json.loads(warmup_file.read_text()).items() if k not in ("weight", "bias")}
    del trainer, evaluator, network, parser

    started = time.perf_counter()
    evaluation = _parser([train_config, evaluate_config], {**overrides, "pretrained": None})
    evaluation.get_parsed_content("initialize")
    tester = evaluation.get_parsed_content("validate#evaluator")
    tester.run()
    eval_seconds = time.perf_counter() - started
    metrics = {k: float(v) for k, v in tester.state.metrics.items()}

    run = job["run"]
    info = method_info(run["method"])
    learning_rate, head_learning_rate = learning_rates(job)
    return {
        "key": job["key"],
        "label": job["label"],
        "method": run["method"],
        "kind": info.kind,
        "budget": run.get("budget"),
        "options": run.get("options") or {},
        "seed": run["seed"],
        "fold": run.get("fold"),
        "num_folds": job.get("num_folds") if run.get("fold") is not None else None,
        "protocol": job["protocol"]["name"],
        **count.as_dict(),
        "peak_memory_mb": peak / 2**20,
        "memory_source": meter.source,
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "epochs": _epochs(job["run"]["method"], job["protocol"]),
        "learning_rate": learning_rate,
        "head_learning_rate": head_learning_rate,
        "best_validation": {"metric": key_metric, "value": float(best_value), "epoch": best_epoch},
        # which weights were kept: the best validation ("best") or the average of the epochs ("average")
        "checkpoint_rule": rule,
        "weight_average": averaged,
        # epoch 0 is the validation of the warmed head alone (validate_warmup): fine-tuning never beat the probe
        "kept_warmup": rule == "best" and best_epoch == 0,
        "head_warmup": warmup,
        "test_f1": metrics["test_f1"],
        "test_accuracy": metrics["test_accuracy"],
        "test_auc": metrics["test_auc"],
        "device": str(overrides["device"]),
        # what "auto" became on this machine: a CPU with native bfloat16 trains in it, another in float32
        "precision": _precision(overrides["amp"], overrides["device"]),
        "host": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count()},
    }


def _precision(amp: Any, device: torch.device) -> str:
    policy = resolve_amp(amp, device)
    if policy.trainer_amp:
        return "cuda mixed precision"
    return str(policy.autocast_dtype or torch.float32).replace("torch.", "")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the worker process.

    Args:
        argv: ``--job JOB.json --result RESULT.json``.

    Returns:
        the exit status.
    """
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--job", required=True, help="the job description written by the runner")
    parser.add_argument("--result", required=True, help="where to write the result (atomically)")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(asctime)s - %(name)s - %(message)s")
    job = json.loads(Path(args.job).read_text())
    os.chdir(job["repo_root"])  # the bundles' '%' macros are paths from the repository root
    result = run_job(job)
    atomic_write_json(args.result, result)
    logger.info("Result written to %s.", args.result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
