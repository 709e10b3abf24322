"""Command line of the accuracy benchmark: ``python -m monai_shpeft.benchmark --help``."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from dataclasses import asdict
from pathlib import Path

from monai_shpeft.amp import AMP_CHOICES
from monai_shpeft.benchmark.protocols import (
    DEFAULT_PROTOCOL,
    PROTOCOLS,
    SHPEFT_BUDGETS,
    Protocol,
    expand_runs,
    with_overrides,
)
from monai_shpeft.benchmark.report import write_report
from monai_shpeft.benchmark.runner import BenchmarkRunner
from monai_shpeft.methods import METHODS
from monai_shpeft.utils import atomic_write_json

#: the benchmark's command, protocol and runs, saved in --output_dir before the first run
CONTEXT_FILE = "benchmark.json"


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m monai_shpeft.benchmark",
        description="Train and test fine-tuning methods on one dataset with the same budget; write a table and plots.",
    )
    parser.add_argument("--dataset", default="busi", help="dataset layout name (default busi)")
    parser.add_argument("--dataset_dir", default=None, help="the dataset folder in its published layout (required)")
    parser.add_argument("--backbone", default="timm:vit_small_patch14_dinov2")
    parser.add_argument("--pretrained", default=None, help="local weights file or pretrained tag")
    parser.add_argument(
        "--protocol",
        default=DEFAULT_PROTOCOL,
        choices=sorted(PROTOCOLS),
        help=f"the shared training recipe (default {DEFAULT_PROTOCOL})",
    )
    parser.add_argument(
        "--methods", default="all", help=f"comma-separated subset of: {', '.join(METHODS)} (default all)"
    )
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    parser.add_argument(
        "--num_folds",
        type=int,
        default=None,
        help="k of a stratified, seeded k-fold split (duplicates kept together): each fold is the test part once",
    )
    parser.add_argument(
        "--folds", default=None, help="comma-separated test folds, e.g. 0,1,2 (default: all, with --num_folds)"
    )
    parser.add_argument(
        "--budgets",
        default=",".join(f"{b:g}" for b in SHPEFT_BUDGETS),
        help="SH-PEFT budgets as ratios (default 0.0001,0.001,0.01)",
    )
    parser.add_argument("--output_dir", required=True, help="results, logs, splits and the feature cache go here")
    parser.add_argument("--bundle", default=None, help="bundle folder (default bundles/<dataset>)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=None, help="override the protocol's epochs (FPT's too)")
    parser.add_argument("--fpt_epochs", type=int, default=None, help="override FPT's epochs (default: the protocol's)")
    parser.add_argument("--batch_size", type=int, default=None, help="override the protocol's batch size")
    parser.add_argument("--image_size", type=int, default=None, help="override the protocol's image size")
    parser.add_argument("--fpt_image_size", type=int, default=None)
    parser.add_argument("--fpt_side_image_size", type=int, default=None)
    parser.add_argument("--estimation_iterations", type=int, default=None)
    parser.add_argument(
        "--head_learning_rate",
        type=float,
        default=None,
        help="override the head's learning rate in every method (default: the protocol's head rates)",
    )
    parser.add_argument("--weight_decay", type=float, default=None, help="override the protocol's AdamW weight decay")
    parser.add_argument("--amp", default=None, choices=AMP_CHOICES, help="override the protocol's mixed precision")
    # the values of the bundles' head_warmup knob (monai_shpeft.handlers.HEAD_WARMUP_MODES)
    parser.add_argument("--head_warmup", default=None, choices=("lbfgs", "none"), help="override the head warm-up")
    parser.add_argument(
        "--learning_rates", default=None, help="override per-method learning rates, e.g. 'lora=5e-4,full=1e-5'"
    )
    parser.add_argument("--tiny_backbone", action="store_true", help="the tiny test configuration (tests only)")
    parser.add_argument(
        "--report_only", action="store_true", help="only rewrite the table and plots from the results in --output_dir"
    )
    parser.add_argument("--title", default=None, help="title of the table and plots")
    parser.add_argument(
        "--reference",
        default=None,
        help="label of the method the paired per-fold differences are taken against (default: linear_probe when run)",
    )
    return parser


def _learning_rates(defaults: dict[str, float], text: str | None) -> dict[str, float] | None:
    """``"lora=5e-4,full=1e-5"`` applied over ``defaults``; ``None`` when there is nothing to change."""
    if not text:
        return None
    rates = dict(defaults)
    for item in text.split(","):
        name, _, value = item.partition("=")
        if name.strip() not in rates or not value:
            known = ", ".join(METHODS)
            raise SystemExit(f"--learning_rates: expected method=rate with a method of {known}; got {item!r}")
        rates[name.strip()] = float(value)
    return rates


def protocol_from_args(args: argparse.Namespace) -> Protocol:
    """The protocol named by ``--protocol`` with the command line's overrides.

    ``--epochs`` sets every method's epochs, FPT's included, unless ``--fpt_epochs`` is given too.
    """
    return with_overrides(
        PROTOCOLS[args.protocol],
        epochs=args.epochs,
        fpt_epochs=args.fpt_epochs if args.fpt_epochs is not None else args.epochs,
        batch_size=args.batch_size,
        image_size=args.image_size,
        fpt_image_size=args.fpt_image_size,
        fpt_side_image_size=args.fpt_side_image_size,
        estimation_iterations=args.estimation_iterations,
        head_learning_rate=args.head_learning_rate,
        weight_decay=args.weight_decay,
        amp=args.amp,
        head_warmup=args.head_warmup,
        learning_rates=_learning_rates(PROTOCOLS[args.protocol].learning_rates, args.learning_rates),
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark.

    Args:
        argv: command-line arguments.

    Returns:
        0 when every run succeeded, 1 otherwise.
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    protocol = protocol_from_args(args)
    output_dir = Path(args.output_dir)
    if args.report_only:
        return _report_only(output_dir, args.title, args.reference)
    if not args.dataset_dir:
        raise SystemExit("--dataset_dir is required (except with --report_only).")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    budgets = tuple(float(b) for b in args.budgets.split(",") if b.strip())
    folds = _folds(args.num_folds, args.folds)
    runs = expand_runs([m.strip() for m in args.methods.split(",") if m.strip()], seeds, budgets, folds)
    if args.reference and args.reference not in {run.label for run in runs}:
        # refused now rather than after hours of training, when the report is written
        raise SystemExit(f"--reference {args.reference!r} is not among the runs: {', '.join(r.label for r in runs)}.")
    runner = BenchmarkRunner(
        runs,
        protocol,
        args.dataset,
        args.dataset_dir,
        args.backbone,
        args.pretrained,
        output_dir,
        bundle=args.bundle,
        device=args.device,
        num_workers=args.num_workers,
        tiny_backbone=args.tiny_backbone,
        num_folds=args.num_folds,
    )
    context = {
        "command": "python -m monai_shpeft.benchmark " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "title": args.title or f"{args.dataset} · {args.backbone} · {protocol.name} protocol",
        "dataset": args.dataset,
        "dataset_dir": args.dataset_dir,
        "backbone": args.backbone,
        "pretrained": args.pretrained,
        "protocol": asdict(protocol),
        "seeds": seeds,
        "num_folds": args.num_folds,
        "folds": folds,
        "reference": args.reference,
        "runs": [run.key for run in runs],
    }
    atomic_write_json(output_dir / CONTEXT_FILE, context)  # what --report_only and a reader of the results need
    outcome = runner.run()
    return _write(outcome["results"], output_dir, {**context, "failed": outcome["failed"]})


def _folds(num_folds: int | None, text: str | None) -> list[int] | None:
    """The test folds of ``--num_folds`` / ``--folds``: every fold by default, ``None`` without folds."""
    if num_folds is None:
        if text:
            raise SystemExit("--folds needs --num_folds (e.g. --num_folds 5 --folds 0,1).")
        return None
    if num_folds < 2:
        raise SystemExit(f"--num_folds must be at least 2, got {num_folds}.")
    if not text:
        return list(range(num_folds))
    try:
        folds = [int(f) for f in text.split(",") if f.strip()]
    except ValueError:
        raise SystemExit(f"--folds: expected comma-separated fold numbers, got {text!r}.") from None
    outside = [f for f in folds if not 0 <= f < num_folds]
    if outside or not folds or len(set(folds)) != len(folds):
        raise SystemExit(f"--folds: expected distinct folds of 0..{num_folds - 1}, got {text!r}.")
    return folds


def _report_only(output_dir: Path, title: str | None, reference: str | None = None) -> int:
    """Rewrite the table and plots from the results of an earlier run in ``output_dir``."""
    context_file = output_dir / CONTEXT_FILE
    if not context_file.is_file():
        raise SystemExit(f"{context_file} does not exist: --report_only needs a benchmark run in --output_dir.")
    context = json.loads(context_file.read_text())
    if title:
        context["title"] = title
    files = [output_dir / "results" / f"{key}.json" for key in context["runs"]]
    results = [json.loads(path.read_text()) for path in files if path.is_file()]
    missing = [key for key, path in zip(context["runs"], files) if not path.is_file()]
    if reference:
        labels = list(dict.fromkeys(r["label"] for r in results))
        if reference not in labels:
            raise SystemExit(f"--reference {reference!r} is not among the results: {', '.join(labels)}.")
        context["reference"] = reference
    return _write(results, output_dir, {**context, "failed": missing})


def _write(results: list[dict], output_dir: Path, context: dict) -> int:
    context = {**context, "memory_source": results[0]["memory_source"] if results else None}
    reference = context.get("reference")
    if reference and reference not in {r["label"] for r in results}:
        # its runs failed or are missing: the report still goes out, paired against the default reference
        print(f"No result of the reference {reference!r} yet; the paired differences use the default reference.")
        reference = None
    files = write_report(results, output_dir, context, title=context["title"], reference=reference)
    print(json.dumps({k: str(v) for k, v in files.items()}, indent=2))
    if context["failed"]:
        print(f"{len(context['failed'])} run(s) failed or missing: {', '.join(context['failed'])}; run again to retry.")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
