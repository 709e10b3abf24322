"""SH-PEFT's statistical evidence (Liu et al., Sec. 2.1, Fig. 2) on real data: sparsity and hybridity on BUSI.

1. Fully fine-tunes the real DINOv2 ViT-S/14 on two tasks over the same BUSI images (Al-Dhabyani et al., Data
   in Brief 28, 2020), each by running the BUSI bundle (``python -m monai.bundle run``, method ``full``) with
   every file it writes redirected to ``--work_dir``:

   * task A: the 3-class BUSI task (benign / malignant / normal);
   * task B: lesion present (normal vs benign + malignant), a datalist of the same split with merged labels.

2. Sparsity: puts the top ``k`` of each task's weight changes ``|W_ft - W_ori|`` into the pretrained backbone
   (the fine-tuned head on top) and measures the test macro-F1 for each ``k``.
3. Hybridity: the positional overlap of the two tasks' top ``k`` weight changes at the paper's 5%, 1%, 0.1% and
   0.05%, against the chance level ``k``; and the overlap of SH-PEFT's importance rankings of the two tasks
   (hybrid and task-specific only), estimated on the pretrained model as the bundle's handler does.
4. Writes ``results.json``, ``sparsity.png``, ``hybridity.png`` and ``heatmap_counts.png`` (where task A's top 1%
   changes sit) to ``--output_dir`` and prints a table.

Example (the figures in ``docs/benchmarks/sparsity_hybridity`` came from this command)::

    nice -n 5 python benchmarks/sparsity_hybridity.py --dataset_dir ../shared/data/busi \
        --pretrained ../shared/weights/vit_small_patch14_dinov2.safetensors
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from sklearn.metrics import f1_score

from monai_shpeft.analysis import (
    HYBRIDITY_FRACTIONS,
    SparsityPoint,
    hybridity,
    hybridity_figure,
    set_overlap,
    sparsity_curve,
    sparsity_figure,
    top_changed_positions,
    weight_changes,
)
from monai_shpeft.backbones import BackboneClassifier, build_classifier
from monai_shpeft.data import BUSI_CLASSES, prepare_datalist
from monai_shpeft.importance import ImportanceMode, combine_importance, estimate_importance, task_agnostic_importance
from monai_shpeft.plots import save_figure, trainable_count_heatmap_figure
from monai_shpeft.sparse_set import SparseTrainableSet
from monai_shpeft.utils import atomic_write_json

logger = logging.getLogger("sparsity_hybridity")

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE_CONFIG = "bundles/busi/configs/train.json"
#: the k of the sparsity curve: 0, 0.01, 0.1, 1, 5, 10, 20, 50 and 100 %
SPARSITY_FRACTIONS = (0.0, 0.0001, 0.001, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0)
#: task B: BUSI label -> lesion present (benign and malignant hold a lesion, normal does not)
LESION_CLASSES = ("normal", "lesion")
_LESION_OF = {BUSI_CLASSES.index("benign"): 1, BUSI_CLASSES.index("malignant"): 1, BUSI_CLASSES.index("normal"): 0}
BUSI_CITATION = (
    "Al-Dhabyani W., Gomaa M., Khaled H., Fahmy A. Dataset of breast ultrasound images. Data in Brief 28 (2020) 104863."
)


def write_task_datalists(dataset_dir: str, work_dir: Path, seed: int) -> dict[str, tuple[Path, tuple[str, ...]]]:
    """The datalists of both tasks: the bundle's seeded split, and the same split with lesion-present labels.

    Args:
        dataset_dir: the BUSI folder.
        work_dir: where the datalists are written.
        seed: seed of the split.

    Returns:
        task name -> (datalist file, class names in label order).
    """
    task_a = work_dir / "task_a" / "datalist.json"
    split = prepare_datalist("busi", dataset_dir, task_a, seed=seed)
    record = json.loads(task_a.read_text(encoding="utf-8"))
    lesion = {part: [{**item, "label": _LESION_OF[item["label"]]} for item in items] for part, items in split.items()}
    task_b = work_dir / "task_b" / "datalist.json"
    atomic_write_json(task_b, {**record, "classes": list(LESION_CLASSES), "task": "lesion present", **lesion})
    return {"A": (task_a, BUSI_CLASSES), "B": (task_b, LESION_CLASSES)}


def bundle_overrides(args: argparse.Namespace, task_dir: Path, datalist: Path, classes: Sequence[str]) -> dict:
    """The knobs of one full fine-tuning run of the BUSI bundle; every file it writes goes under ``task_dir``."""
    return {
        "dataset_dir": args.dataset_dir,
        "datalist_file": str(datalist),
        "output_dir": str(task_dir / "runs"),
        "ckpt_dir": str(task_dir / "models"),
        "metadata_file": str(task_dir / "metadata.json"),
        "classes": list(classes),
        "backbone": args.backbone,
        "pretrained": args.pretrained,
        "image_size": args.image_size,
        "method": "full",
        "optimizer_name": "adamw",
        "learning_rate": args.learning_rate,
        "head_learning_rate": args.head_learning_rate,
        "weight_decay": args.weight_decay,
        "batch_size": args.batch_size,
        "max_epochs": args.max_epochs,
        "num_workers": args.num_workers,
        "seed": args.seed,
        "device": "cpu",
        "amp": False,
    }


def train_task(args: argparse.Namespace, name: str, datalist: Path, classes: Sequence[str]) -> dict[str, Any]:
    """Fully fine-tune one task by running the BUSI bundle in a subprocess (its log goes to the task folder).

    Args:
        args: the command line.
        name: task name (``A`` or ``B``).
        datalist: the task's datalist.
        classes: its class names.

    Returns:
        the command, the checkpoint path and the training time.

    Raises:
        RuntimeError: with the end of the log when the bundle run fails.
    """
    task_dir = Path(args.work_dir) / f"task_{name.lower()}"
    checkpoint = task_dir / "models" / "model.pt"
    overrides = bundle_overrides(args, task_dir, datalist, classes)
    # the bundle writes the metadata it was given; keep the repository's bundle untouched
    (task_dir / "metadata.json").write_text((REPO_ROOT / "bundles/busi/configs/metadata.json").read_text())
    args_file = task_dir / "bundle_args.json"
    atomic_write_json(args_file, overrides)
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        BUNDLE_CONFIG,
        "--args_file",
        str(args_file),
    ]
    record = {"command": shlex.join(command), "args_file": str(args_file), "checkpoint": str(checkpoint)}
    if args.reuse and checkpoint.is_file():
        logger.info("Task %s: reusing %s.", name, checkpoint)
        return {**record, "train_seconds": None}
    logger.info("Task %s: %s", name, record["command"])
    log_file = task_dir / "train.log"
    started = time.perf_counter()
    with open(log_file, "w", encoding="utf-8") as log:
        done = subprocess.run(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0 or not checkpoint.is_file():
        tail = log_file.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise RuntimeError(f"task {name} training failed (exit {done.returncode}); end of {log_file}:\n{tail}")
    logger.info("Task %s trained in %.0f s.", name, seconds)
    return {**record, "train_seconds": seconds, "log": str(log_file)}


def load_finetuned(args: argparse.Namespace, checkpoint: Path, num_classes: int) -> BackboneClassifier:
    """A classifier with the weights the bundle's CheckpointSaver wrote (best validation macro-F1)."""
    model = build_classifier(args.backbone, num_classes=num_classes, image_size=args.image_size)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
    return model.eval()


def preprocessed_images(args: argparse.Namespace, items: Sequence[dict[str, Any]]) -> torch.Tensor:
    """Datalist items through the bundle's own evaluation transforms, stacked in memory.

    Args:
        args: the command line.
        items: ``{"image": path, ...}`` dictionaries.

    Returns:
        images ``[N, 3, S, S]``.
    """
    from monai.bundle import ConfigParser
    from monai.data import Dataset
    from monai.transforms import Compose

    parser = ConfigParser()
    parser.read_config(str(REPO_ROOT / BUNDLE_CONFIG))
    parser.update({"backbone": args.backbone, "image_size": args.image_size, "method": "full"})
    # the transforms of validation and test without the FPT feature lookup (whose cache would build the network)
    transform = Compose(parser.get_parsed_content("transforms#images_eval"))
    dataset = Dataset([{"image": item["image"]} for item in items], transform=transform)
    return torch.stack([torch.as_tensor(dataset[index]["image"]) for index in range(len(dataset))]).float()


def shared_images(datalists: dict[str, tuple[Path, Sequence[str]]], part: str) -> tuple[list[dict], dict[str, list]]:
    """The items of one part, which both tasks share, and each task's labels for them.

    Args:
        datalists: task name -> (datalist file, classes).
        part: ``training``, ``validation`` or ``test``.

    Returns:
        the items of the first task, and task name -> labels in the same order.

    Raises:
        ValueError: if the tasks' datalists list different images (the analysis compares them on the same data).
    """
    parts = {name: json.loads(path.read_text(encoding="utf-8"))[part] for name, (path, _) in datalists.items()}
    images = {name: [item["image"] for item in items] for name, items in parts.items()}
    first = next(iter(parts))
    if any(paths != images[first] for paths in images.values()):
        raise ValueError(f"the tasks' '{part}' parts list different images; delete --work_dir to write them anew.")
    return parts[first], {name: [int(item["label"]) for item in items] for name, items in parts.items()}


def macro_f1_on(images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> Callable[[torch.nn.Module], float]:
    """``model -> macro-F1`` on fixed, preprocessed images."""

    def evaluate(model: torch.nn.Module) -> float:
        model.eval()
        with torch.no_grad():
            predictions = torch.cat([model(batch).argmax(1) for batch in images.split(batch_size)])
        return float(f1_score(labels.numpy(), predictions.numpy(), average="macro"))

    return evaluate


def importance_of_task(
    args: argparse.Namespace, num_classes: int, images: torch.Tensor, labels: torch.Tensor
) -> dict[str, dict[str, torch.Tensor]]:
    """SH-PEFT's importance of every backbone weight for a task, hybrid and task-specific only.

    As the bundle's ``ImportanceEstimationHandler`` does at the start of training: the pretrained backbone under
    a new (seeded) head, squared gradients (L2) over mini-batches of ``--batch_size`` of the given (shuffled)
    training images.
    """
    torch.manual_seed(args.seed)
    model = build_classifier(args.backbone, num_classes, pretrained=args.pretrained, image_size=args.image_size)
    batches = list(zip(images.split(args.batch_size), labels.split(args.batch_size)))
    task_specific = estimate_importance(
        model, batches, torch.nn.CrossEntropyLoss(), mode=ImportanceMode.TASK_SPECIFIC, device="cpu"
    )
    agnostic = task_agnostic_importance({n: p for n, p in model.backbone.named_parameters(prefix="backbone")})
    hybrid = combine_importance(task_specific, agnostic, lambda_=1.0)
    return {"hybrid": hybrid, "task_specific": task_specific}


def _percent(fraction: float) -> str:
    return f"{100 * fraction:g}%"


def print_tables(results: dict[str, Any]) -> None:
    """Print the sparsity curves and the overlaps as plain-text tables."""
    tasks = results["tasks"]
    print("\nSparsity: test macro-F1 of the pretrained backbone with the top k% changes of fine-tuning put back")
    print(f"{'k':>7} {'entries':>12} " + " ".join(f"{'task ' + t:>10}" for t in tasks))
    for index, point in enumerate(tasks["A"]["sparsity"]):
        values = " ".join(f"{tasks[t]['sparsity'][index]['metric']:>10.4f}" for t in tasks)
        print(f"{_percent(point['fraction']):>7} {point['num_entries']:>12,} {values}")
    for task, record in tasks.items():
        share = record["smallest_k_reaching_95_percent"]
        reached = _percent(share) if share is not None else "no k"
        print(f"task {task}: full fine-tuning {record['finetuned_f1']:.4f}; 95% of it reached at k = {reached}")
    print("\nHybridity: share of the top-k positions two tasks have in common (chance level = k)")
    header = f"{'k':>7} {'changes':>10} {'IoU':>8} {'chance':>9} {'x chance':>9}"
    print(header + f" {'SH-PEFT hybrid':>15} {'task-specific':>14}")
    for index, point in enumerate(results["hybridity"]["weight_changes"]):
        hybrid = results["hybridity"]["importance_hybrid"][index]["overlap"]
        specific = results["hybridity"]["importance_task_specific"][index]["overlap"]
        print(
            f"{_percent(point['fraction']):>7} {point['overlap']:>10.4f} {point['iou']:>8.4f} {point['chance']:>9.4g} "
            f"{point['enrichment']:>9.1f} {hybrid:>15.4f} {specific:>14.4f}"
        )


def smallest_k_reaching(points: Sequence[SparsityPoint], share: float = 0.95) -> float | None:
    """The smallest ``k > 0`` whose metric reaches ``share`` of the ``k = 100%`` (fine-tuned) metric."""
    full = next(p.metric for p in points if p.fraction == 1.0)
    reached = [
        p.fraction for p in sorted(points, key=lambda p: p.fraction) if p.fraction > 0 and p.metric >= share * full
    ]
    return reached[0] if reached else None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the analysis; see the module docstring.

    Args:
        argv: the command line (``sys.argv[1:]`` by default).

    Returns:
        the exit status.
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_dir", default="../shared/data/busi")
    parser.add_argument("--backbone", default="timm:vit_small_patch14_dinov2")
    parser.add_argument("--pretrained", default="../shared/weights/vit_small_patch14_dinov2.safetensors")
    parser.add_argument("--image_size", type=int, default=112)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_epochs", type=int, default=3)
    parser.add_argument("--learning_rate", type=float, default=2e-5, help="AdamW rate of the backbone (full)")
    parser.add_argument("--head_learning_rate", type=float, default=0.1, help="the benchmark protocols' head rate")
    parser.add_argument("--weight_decay", type=float, default=0.05)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--estimation_iterations", type=int, default=8, help="mini-batches of SH-PEFT's estimation")
    parser.add_argument("--shpeft_budget", type=float, default=0.01, help="budget of the SH-PEFT sets compared")
    parser.add_argument("--heatmap_fraction", type=float, default=0.01, help="k of the count heatmap (task A)")
    parser.add_argument("--work_dir", default="runs/sparsity_hybridity", help="bundle runs and checkpoints")
    parser.add_argument("--output_dir", default="docs/benchmarks/sparsity_hybridity")
    parser.add_argument("--reuse", action="store_true", help="reuse trained checkpoints found in --work_dir")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("monai_shpeft.importance").setLevel(logging.WARNING)
    torch.set_num_threads(max(1, min(os.cpu_count() or 1, 16)))
    started = time.perf_counter()
    settings = {k: v for k, v in vars(args).items() if k != "reuse"}  # as given, for the record
    # paths are the caller's; the bundle's '%' macros are paths from the repository root, so work from there
    for key in ("dataset_dir", "pretrained", "work_dir", "output_dir"):
        setattr(args, key, str(Path(getattr(args, key)).resolve()))
    os.chdir(REPO_ROOT)
    work_dir, output_dir = Path(args.work_dir), Path(args.output_dir)

    datalists = write_task_datalists(args.dataset_dir, work_dir, args.seed)
    pretrained_model = build_classifier(args.backbone, 3, pretrained=args.pretrained, image_size=args.image_size)
    pretrained_weights = {n: p.detach().clone() for n, p in pretrained_model.named_parameters()}
    del pretrained_model  # the analysis only needs the backbone's weights

    # both tasks label the same images: preprocess them once
    test_items, test_labels = shared_images(datalists, "test")
    test_images = preprocessed_images(args, test_items)
    train_items, train_labels = shared_images(datalists, "training")
    order = torch.randperm(len(train_items), generator=torch.Generator().manual_seed(args.seed))
    estimation_order = order[: args.estimation_iterations * args.batch_size].tolist()
    estimation_images = preprocessed_images(args, [train_items[i] for i in estimation_order])

    tasks: dict[str, dict[str, Any]] = {}
    changes: dict[str, dict[str, torch.Tensor]] = {}
    importance: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
    sparsity: dict[str, list[SparsityPoint]] = {}
    for name, (datalist, classes) in datalists.items():
        training = train_task(args, name, datalist, classes)
        finetuned = load_finetuned(args, Path(training["checkpoint"]), len(classes))
        labels = torch.tensor(test_labels[name])
        evaluate = macro_f1_on(test_images, labels, args.batch_size)
        curve_started = time.perf_counter()
        sparsity[name] = sparsity_curve(pretrained_weights, finetuned, SPARSITY_FRACTIONS, evaluate)
        curve_seconds = time.perf_counter() - curve_started
        changes[name] = weight_changes(pretrained_weights, finetuned)
        estimation_started = time.perf_counter()
        estimation_labels = torch.tensor([train_labels[name][i] for i in estimation_order])
        importance[name] = importance_of_task(args, len(classes), estimation_images, estimation_labels)
        tasks[name] = {
            "task": "BUSI 3 classes" if name == "A" else "lesion present (normal vs benign + malignant)",
            "classes": list(classes),
            "test_images": len(labels),
            "test_class_counts": torch.bincount(labels, minlength=len(classes)).tolist(),
            **training,
            "finetuned_f1": evaluate(finetuned),
            "sparsity": [vars(point) for point in sparsity[name]],
            "smallest_k_reaching_95_percent": smallest_k_reaching(sparsity[name]),
            "sparsity_seconds": curve_seconds,
            "estimation_seconds": time.perf_counter() - estimation_started,
        }
        del finetuned

    rankings = {
        "weight_changes": (changes["A"], changes["B"]),
        "importance_hybrid": (importance["A"]["hybrid"], importance["B"]["hybrid"]),
        "importance_task_specific": (importance["A"]["task_specific"], importance["B"]["task_specific"]),
    }
    overlaps = {key: hybridity(a, b, fractions=HYBRIDITY_FRACTIONS) for key, (a, b) in rankings.items()}
    shpeft_sets = {
        name: SparseTrainableSet.from_importance(
            importance[name]["hybrid"], args.shpeft_budget, header={"backbone": args.backbone, "task": name}
        )
        for name in datalists
    }
    shpeft_overlap = set_overlap(shpeft_sets["A"], shpeft_sets["B"])
    changes_vs_importance = {
        name: hybridity(changes[name], importance[name]["hybrid"], fractions=(args.shpeft_budget,))[0].to_dict()
        for name in datalists
    }

    output_dir.mkdir(parents=True, exist_ok=True)
    full_f1 = tasks["A"]["finetuned_f1"]
    save_figure(
        sparsity_figure(sparsity["A"], "test macro-F1 (BUSI, 3 classes)", reference=full_f1),
        output_dir / "sparsity.png",
    )
    save_figure(sparsity_figure(sparsity["B"], "test macro-F1 (lesion present)"), output_dir / "sparsity_task_b.png")
    title = "Hybridity: top weight changes of full fine-tuning, BUSI 3 classes (A) vs lesion present (B)"
    save_figure(hybridity_figure(overlaps["weight_changes"], title=title), output_dir / "hybridity.png")
    top_changes = top_changed_positions(changes["A"], args.heatmap_fraction)
    heatmap = trainable_count_heatmap_figure(top_changes)
    heatmap.axes[0].set_title(
        f"Top {_percent(args.heatmap_fraction)} weight changes of full fine-tuning, task A "
        f"({top_changes.num_selected:,} entries)"
    )
    save_figure(heatmap, output_dir / "heatmap_counts.png")
    save_figure(trainable_count_heatmap_figure(shpeft_sets["A"]), output_dir / "heatmap_counts_shpeft.png")

    results = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "description": (
            "SH-PEFT Sec. 2.1 on BUSI with the real DINOv2 ViT-S/14: test macro-F1 of the pretrained backbone with "
            "the top k% weight changes of full fine-tuning put back (fine-tuned head), and the positional overlap "
            "of two tasks' top-k changes (and SH-PEFT importances) at the paper's k."
        ),
        "dataset": {"name": "BUSI", "dir": settings["dataset_dir"], "citation": BUSI_CITATION},
        "settings": settings,
        "tasks": tasks,
        "hybridity": {key: [point.to_dict() for point in points] for key, points in overlaps.items()},
        "shpeft_set_overlap": shpeft_overlap.to_dict(),
        "top_changes_vs_shpeft_importance": changes_vs_importance,
        "heatmap_counts": {"task": "A", "fraction": args.heatmap_fraction, "per_block": top_changes.to_record()},
        "total_seconds": time.perf_counter() - started,
        "host": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count()},
    }
    atomic_write_json(output_dir / "results.json", results)
    print_tables(results)
    print(
        f"\nSH-PEFT sets at {_percent(args.shpeft_budget)}: overlap {shpeft_overlap.overlap:.4f} "
        f"(chance {shpeft_overlap.chance:.4g}); wrote {output_dir} in {results['total_seconds'] / 60:.1f} min."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
