"""Peak memory of whole training runs, each method against full fine-tuning, side by side, at 224 and 512 px.

Each configuration is one real ``python -m monai.bundle run`` of the BUSI bundle's train.json (the network,
optimizer, handlers and data pipeline a user runs), with ``--memory_profile true``: the bundle's
:class:`~monai_shpeft.handlers.MemoryProfileHandler` records the peak resident memory of each phase (``setup``:
imports, network, cached datasets; ``cache_fill``: FPT's feature preloading; ``head_warmup``: the LP-FT probe;
``importance``: SH-PEFT's estimation pass; ``training``: the steps, validation and the completion handlers). The
process's peak is the largest of them (the first phase counts from the process's start). On a CUDA machine
(``--device cuda``) the handler also records ``torch.cuda.max_memory_allocated`` per phase.

The runs use a small fixed part of BUSI (``--train_images`` training and ``--val_images`` validation images of a
seeded split, written once as the runs' datalist) and one epoch: peak memory depends on the batch, the image size and
the method, not on how many batches follow. Every method runs at the same batch size, image size and weights; FPT's
high-resolution branch reads the image size and its side network half of it (the paper's 512/224 pairing at 512).
DINOv2's ViT-S/14 has 14-pixel patches, so the 512 px class runs at 518 px (37 x 37 patches).

Example (the record docs/benchmarks/bundle_memory.json came from this command; resumable per run)::

    python benchmarks/bundle_memory.py --dataset_dir ../shared/data/busi \
        --pretrained ../shared/weights/vit_small_patch14_dinov2.safetensors --output_dir runs/bundle_memory \
        --output docs/benchmarks/bundle_memory.json
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

from monai_shpeft.utils import atomic_write_json

BUNDLE = Path(__file__).resolve().parent.parent / "bundles" / "busi"
MB = 1024.0**2
#: method label -> the bundle knobs that select it
METHODS: dict[str, list[str]] = {
    "full": ["--method", "full"],
    "full_gc": ["--method", "full", "--grad_checkpointing", "true"],
    "linear": ["--method", "linear"],
    "bitfit": ["--method", "bitfit"],
    "lora": ["--method", "lora"],
    "shpeft": ["--method", "shpeft"],
    "shpeft_gc": ["--method", "shpeft", "--grad_checkpointing", "true"],
    "shpeft_split": ["--method", "shpeft", "--estimation_batch_size", "4"],
    "fpt": ["--method", "fpt"],
}
LABELS = {
    "full": "Full fine-tuning",
    "full_gc": "Full fine-tuning + checkpointing",
    "linear": "Linear probing",
    "bitfit": "BitFit",
    "lora": "LoRA",
    "shpeft": "SH-PEFT 1%",
    "shpeft_gc": "SH-PEFT 1% + checkpointing",
    "shpeft_split": "SH-PEFT 1%, estimation in parts of 4",
    "fpt": "FPT + preloading",
}
DEFAULT_SIZES = (224, 518)
DEFAULT_METHODS = {
    224: ("full", "full_gc", "linear", "lora", "shpeft", "shpeft_gc", "shpeft_split"),
    518: ("full", "full_gc", "shpeft", "shpeft_gc"),
}
PHASES = ("setup", "cache_fill", "head_warmup", "importance", "training")


def write_datalist(args: argparse.Namespace, path: Path) -> None:
    """A seeded split of the dataset cut to ``train_images`` / ``val_images`` images, classes interleaved."""
    from monai_shpeft.data import prepare_datalist

    if path.is_file():
        return
    full = path.with_name("full_datalist.json")
    prepare_datalist("busi", args.dataset_dir, full, seed=args.seed)
    datalist = json.loads(full.read_text())

    def interleaved(items: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
        by_label: dict[int, list[dict[str, Any]]] = {}
        for item in items:
            by_label.setdefault(int(item["label"]), []).append(item)
        picked: list[dict[str, Any]] = []
        while len(picked) < count and any(by_label.values()):
            for label in sorted(by_label):
                if by_label[label] and len(picked) < count:
                    picked.append(by_label[label].pop(0))
        return picked

    datalist["training"] = interleaved(datalist["training"], args.train_images)
    datalist["validation"] = interleaved(datalist["validation"], args.val_images)
    datalist["test"] = interleaved(datalist["test"], args.val_images)
    datalist.pop("duplicates", None)  # it describes the whole dataset's split, not this cut
    atomic_write_json(path, datalist)


def run_one(args: argparse.Namespace, size: int, method: str) -> dict[str, Any]:
    """One bundle run (skipped when its result exists): its phases and the process's peak."""
    out = Path(args.output_dir) / f"{size}px" / method
    result_file = out / "result.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    out.mkdir(parents=True, exist_ok=True)
    datalist = Path(args.output_dir) / "datalist.json"
    knobs = [
        "--dataset_dir", args.dataset_dir, "--backbone", args.backbone,
        *(["--pretrained", "$None", "--tiny_backbone", "true"] if args.tiny else ["--pretrained", args.pretrained]),
        "--image_size", str(size), "--fpt_image_size", str(size),
        "--fpt_side_image_size", str(max(14, size // 2 // 14 * 14)),
        "--batch_size", str(args.batch_size), "--max_epochs", "1", "--fpt_max_epochs", "1",
        "--estimation_iterations", "1", "--learning_rate", "1e-5", "--checkpoint_rule", "best",
        "--device", args.device, "--num_workers", "0", "--seed", str(args.seed), "--memory_profile", "true",
        "--datalist_file", str(datalist), "--output_dir", str(out / "runs"), "--ckpt_dir", str(out / "models"),
        *METHODS[method],
    ]  # fmt: skip
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(BUNDLE / "configs" / "train.json")]
    start = time.perf_counter()
    with (out / "train.log").open("w") as log:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if args.malloc_mmap_threshold is not None:
            env["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)
        process = subprocess.run([*command, *knobs], stdout=log, stderr=subprocess.STDOUT, env=env)
    if process.returncode != 0:
        tail = (out / "train.log").read_text().strip().splitlines()[-1:]
        raise RuntimeError(f"{method} at {size} px failed ({out / 'train.log'}): {tail}")
    profile = json.loads((out / "runs" / "memory_profile.json").read_text())
    result = {
        "method": method,
        "image_size": size,
        # the kernel's own ru_maxrss of the child would miss the phases before the handler's last high-water reset
        "process_peak_rss_bytes": profile["peak_rss_bytes"],
        "profile": profile,
        "seconds": time.perf_counter() - start,
        "command": " ".join(
            ["python", "-m", "monai.bundle", "run", "--config_file", "bundles/busi/configs/train.json", *knobs]
        ),
    }
    atomic_write_json(result_file, result)
    return result


def phase_peak(result: dict[str, Any], phase: str) -> float | None:
    """A phase's peak in MB, ``None`` when the run has no such phase."""
    found = result["profile"]["phases"].get(phase)
    return None if found is None else found["peak_rss_bytes"] / MB


def table(results: dict[int, dict[str, dict[str, Any]]]) -> str:
    """A Markdown table: the process's peak and its ratio to full fine-tuning, and each phase's peak."""
    head = "| Size | Method | Process peak MB | vs full | " + " | ".join(f"{p} MB" for p in PHASES) + " | Run s |"
    lines = [head, "|" + "---|" * 2 + "--:|" * (3 + len(PHASES))]
    for size, runs in results.items():
        full = runs.get("full")
        for method, result in runs.items():
            peak = result["process_peak_rss_bytes"]
            ratio = f"{peak / full['process_peak_rss_bytes']:.2f}x" if full else "-"
            phases = [phase_peak(result, p) for p in PHASES]
            cells = " | ".join("-" if v is None else f"{v:,.0f}" for v in phases)
            lines.append(
                f"| {size} | {LABELS[method]} | {peak / MB:,.0f} | {ratio} | {cells} | {result['seconds']:.0f} |"
            )
    return "\n".join(lines)


def plot(results: dict[int, dict[str, dict[str, Any]]], path: Path, batch_size: int) -> None:
    """Peak memory per method as a share of full fine-tuning's, one panel per image size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from monai_shpeft.plots import save_figure

    figure, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), squeeze=False)
    for axis, (size, runs) in zip(axes[0], results.items()):
        full = runs["full"]["process_peak_rss_bytes"]
        names = list(runs)
        ratios = [runs[m]["process_peak_rss_bytes"] / full for m in names]
        bars = axis.barh(
            [LABELS[m] for m in names], ratios, color=["#888" if m.startswith("full") else "#2a7" for m in names]
        )
        axis.bar_label(bars, labels=[f"{r:.2f}x" for r in ratios], padding=3)
        axis.axvline(1.0, color="black", linewidth=0.8)
        axis.invert_yaxis()
        axis.set_xlim(0, max(ratios) * 1.2)
        axis.set_xlabel(f"peak memory of the whole bundle run / full fine-tuning's (batch {batch_size})")
        axis.set_title(f"{size} px")
    figure.tight_layout()
    save_figure(figure, path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset_dir", required=True)
    parser.add_argument("--backbone", default="timm:vit_small_patch14_dinov2")
    parser.add_argument("--pretrained", default=None, help="the backbone's weights file (needed unless --tiny)")
    parser.add_argument("--tiny", action="store_true", help="a tiny backbone of the same family, no weights (tests)")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=None, help="default: per size")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--train_images", type=int, default=32)
    parser.add_argument("--val_images", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--malloc_mmap_threshold",
        type=int,
        default=None,
        help="fix glibc's mmap threshold in the runs (bytes, e.g. 65536), so that the resident peak follows live "
        "memory (default: glibc's dynamic threshold, what a user's process gets)",
    )
    parser.add_argument("--output_dir", default="runs/bundle_memory")
    parser.add_argument("--collect_only", action="store_true", help="write the record of the finished runs only")
    parser.add_argument("--output", default=None, help="write the record (JSON) here too, with .md and .png beside")
    args = parser.parse_args(argv)
    if args.pretrained is None and not args.tiny:
        parser.error("--pretrained is required (the backbone's weights file), unless --tiny")
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    write_datalist(args, Path(args.output_dir) / "datalist.json")
    results: dict[int, dict[str, dict[str, Any]]] = {}
    for size in args.sizes:
        methods = args.methods or DEFAULT_METHODS.get(size, tuple(METHODS))
        order = ["full", *[m for m in methods if m != "full"]]  # the reference first
        for method in order:
            done = Path(args.output_dir) / f"{size}px" / method / "result.json"
            if args.collect_only and not done.is_file():
                continue
            print(f"{size} px {method}: running", flush=True)
            result = run_one(args, size, method)
            results.setdefault(size, {})[method] = result
            print(f"{size} px {method}: peak {result['process_peak_rss_bytes'] / MB:,.0f} MB", flush=True)
    record = {
        "command": "python benchmarks/bundle_memory.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "backbone": args.backbone,
        "batch_size": args.batch_size,
        "train_images": args.train_images,
        "val_images": args.val_images,
        "device": args.device,
        "malloc_mmap_threshold": args.malloc_mmap_threshold,
        "results": {str(size): runs for size, runs in results.items()},
        "ratios_to_full": {
            str(size): {
                m: r["process_peak_rss_bytes"] / runs["full"]["process_peak_rss_bytes"] for m, r in runs.items()
            }
            for size, runs in results.items()
            if "full" in runs
        },
    }
    atomic_write_json(Path(args.output_dir) / "bundle_memory.json", record)
    markdown = table(results)
    print(markdown)
    if args.output:
        output = Path(args.output)
        atomic_write_json(output, record)
        output.with_suffix(".md").write_text(
            f"# Peak memory of whole bundle runs\n\n{markdown}\n\nCommand: `{record['command']}`\n"
        )
        plot(results, output.with_suffix(".png"), args.batch_size)
    return record


if __name__ == "__main__":
    main()
