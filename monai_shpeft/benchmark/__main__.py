"""Command line of the accuracy benchmark: ``python -m monai_shpeft.benchmark --help``."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from dataclasses import asdict
from pathlib import Path

from monai_shpeft.benchmark.protocols import PROTOCOLS, SHPEFT_BUDGETS, expand_runs, with_overrides
from monai_shpeft.benchmark.report import write_report
from monai_shpeft.benchmark.runner import BenchmarkRunner
from monai_shpeft.methods import METHODS


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m monai_shpeft.benchmark",
        description="Train and test fine-tuning methods on one dataset with the same budget; write a table and plots.",
    )
    parser.add_argument("--dataset", default="busi", help="dataset layout name (default busi)")
    parser.add_argument("--dataset_dir", required=True, help="the dataset folder in its published layout")
    parser.add_argument("--backbone", default="timm:vit_small_patch14_dinov2")
    parser.add_argument("--pretrained", default=None, help="local weights file or pretrained tag")
    parser.add_argument("--protocol", default="quick", choices=sorted(PROTOCOLS))
    parser.add_argument(
        "--methods", default="all", help=f"comma-separated subset of: {', '.join(METHODS)} (default all)"
    )
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    parser.add_argument(
        "--budgets",
        default=",".join(f"{b:g}" for b in SHPEFT_BUDGETS),
        help="SH-PEFT budgets as ratios (default 0.0001,0.001,0.01)",
    )
    parser.add_argument("--output_dir", required=True, help="results, logs, splits and the feature cache go here")
    parser.add_argument("--bundle", default=None, help="bundle folder (default bundles/<dataset>)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=None, help="override the protocol's epochs")
    parser.add_argument("--batch_size", type=int, default=None, help="override the protocol's batch size")
    parser.add_argument("--image_size", type=int, default=None, help="override the protocol's image size")
    parser.add_argument("--fpt_image_size", type=int, default=None)
    parser.add_argument("--fpt_side_image_size", type=int, default=None)
    parser.add_argument("--estimation_iterations", type=int, default=None)
    parser.add_argument("--head_learning_rate", type=float, default=None, help="override the head's learning rate")
    parser.add_argument(
        "--learning_rates", default=None, help="override per-method learning rates, e.g. 'lora=5e-4,full=1e-5'"
    )
    parser.add_argument("--tiny_backbone", action="store_true", help="the tiny test configuration (tests only)")
    parser.add_argument("--report_only", action="store_true", help="only rewrite the table and plots from results")
    parser.add_argument("--title", default=None, help="title of the table and plots")
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


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark.

    Args:
        argv: command-line arguments.

    Returns:
        0 when every run succeeded, 1 otherwise.
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    protocol = with_overrides(
        PROTOCOLS[args.protocol],
        epochs=args.epochs,
        batch_size=args.batch_size,
        image_size=args.image_size,
        fpt_image_size=args.fpt_image_size,
        fpt_side_image_size=args.fpt_side_image_size,
        estimation_iterations=args.estimation_iterations,
        head_learning_rate=args.head_learning_rate,
        learning_rates=_learning_rates(PROTOCOLS[args.protocol].learning_rates, args.learning_rates),
    )
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    budgets = tuple(float(b) for b in args.budgets.split(",") if b.strip())
    runs = expand_runs([m.strip() for m in args.methods.split(",") if m.strip()], seeds, budgets)
    runner = BenchmarkRunner(
        runs,
        protocol,
        args.dataset,
        args.dataset_dir,
        args.backbone,
        args.pretrained,
        args.output_dir,
        bundle=args.bundle,
        device=args.device,
        num_workers=args.num_workers,
        tiny_backbone=args.tiny_backbone,
    )
    if args.report_only:
        outcome = {"results": list(runner.completed().values()), "failed": []}
    else:
        outcome = runner.run()
    results = outcome["results"]
    memory_source = results[0]["memory_source"] if results else None
    context = {
        "command": "python -m monai_shpeft.benchmark " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "dataset": args.dataset,
        "dataset_dir": args.dataset_dir,
        "backbone": args.backbone,
        "pretrained": args.pretrained,
        "protocol": asdict(protocol),
        "seeds": seeds,
        "memory_source": memory_source,
        "failed": outcome["failed"],
    }
    title = args.title or f"{args.dataset} · {args.backbone} · {protocol.name} protocol"
    files = write_report(results, Path(args.output_dir), context, title=title)
    print(json.dumps({k: str(v) for k, v in files.items()}, indent=2))
    if outcome["failed"]:
        print(f"{len(outcome['failed'])} run(s) failed: {', '.join(outcome['failed'])}; run again to retry them.")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
