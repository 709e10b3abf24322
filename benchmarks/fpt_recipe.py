"""FPT's learning rate and schedule on a CPU, chosen on validation parts only (frozen features preloaded).

FPT's side network starts from random weights. With the benchmark's ``cpu`` protocol (5 epochs of 18 steps at 5e-4) it
never left the majority class on the four BUSI folds it ran (test macro-F1 0.24). This script trains the bundle's own
FPT network (built by the bundle's config, the frozen branch read from the bundle's feature cache) on the training part
of each fold of the bundle's k-fold split and scores every epoch on that fold's validation part; the test parts are
never read. Each setting is a dict of ``lr``, ``epochs`` and optionally ``wd`` (AdamW weight decay) and ``ls`` (label
smoothing). The loop follows the bundle's recipe (AdamW, 10% linear warm-up then cosine, batch 32, horizontal flips of
the side image) with the bundle's pieces (``build_optimizer``, MONAI's ``SupervisedTrainer``, ``RandFlipd`` and an
``LrScheduleHandler``) on the fold's features and side images kept in memory, so that a setting takes minutes rather
than the bundle's data loading: the chosen setting is then run through the bundle by
``python -m monai_shpeft.benchmark --methods fpt``. Frozen features missing from ``--feature_cache_dir`` are computed
first (``FrozenFeatureCache.fill``, as the bundle's ``FeaturePreloadHandler`` does).

Results are appended to ``--output`` one setting and fold at a time (a rerun skips what is there).

Example (docs/benchmarks/fpt_recipe_cpu.json came from this command, after the 5-fold benchmark filled the cache)::

    python benchmarks/fpt_recipe.py --dataset_dir ../shared/data/busi \
        --weights ../shared/weights/vit_small_patch14_dinov2.safetensors \
        --splits_dir runs/busi_cpu_5fold/splits --feature_cache_dir runs/busi_cpu_5fold/feature_cache --folds 0,1,2 \
        --settings '[{"lr":1e-3,"epochs":20},{"lr":3e-3,"epochs":20},{"lr":3e-3,"epochs":20,"wd":0.05,"ls":0.1}]' \
        --output docs/benchmarks/fpt_recipe_cpu.json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Events
from monai.bundle import ConfigParser
from monai.data import DataLoader, Dataset
from monai.engines import PrepareBatchExtraInput, SupervisedTrainer
from monai.handlers import LrScheduleHandler
from monai.transforms import Compose, EnsureTyped, RandFlipd
from sklearn.metrics import f1_score, roc_auc_score

from monai_shpeft.methods import build_optimizer

REPO = Path(__file__).resolve().parents[1]
BATCH_SIZE = 32


def load_fold(args: argparse.Namespace, fold: int, work: Path) -> tuple[torch.nn.Module, dict[str, tuple]]:
    """The bundle's FPT network and the fold's training and validation parts as tensors.

    Returns:
        the network and ``{part: (features [N, L, 2, n, D], side images [N, 3, s, s], labels [N])}``.
    """
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / args.dataset / "configs" / "train.json"))
    parser.update(
        {
            "bundle_root": str(work),
            "dataset_dir": args.dataset_dir,
            "datalist_file": str(Path(args.splits_dir) / f"seed0_fold{fold}of{args.num_folds}.json"),
            "num_folds": args.num_folds,
            "fold": fold,
            "backbone": args.backbone,
            "pretrained": args.weights,
            "tiny_backbone": args.tiny_backbone,
            "device": "cpu",
            "method": "fpt",
            "fpt_image_size": args.fpt_image_size,
            "fpt_side_image_size": args.fpt_side_image_size,
            "preload_features": True,
            "feature_cache_dir": args.feature_cache_dir,
            "num_workers": 0,
        }
    )
    split = parser.get_parsed_content("split")
    network = parser.get_parsed_content("network")
    images = Compose(parser.get_parsed_content("transforms#images_eval"))  # what the bundle's preloading fills from
    data = split["training"] + split["validation"]
    parser.get_parsed_content("feature_cache").fill(data, images, network, batch_size=BATCH_SIZE, progress=False)
    transform = Compose(parser.get_parsed_content("transforms#eval"))  # reads the cached features
    parts = {}
    for part in ("training", "validation"):
        items = list(Dataset(split[part], transform))
        parts[part] = (
            torch.stack([torch.as_tensor(item["image"]) for item in items]),
            torch.stack([torch.as_tensor(item["image_lr"]) for item in items]),
            torch.tensor([int(item["label"]) for item in items]),
        )
    return network, parts


def score(network: torch.nn.Module, part: tuple) -> tuple[float, float]:
    """Macro-F1 and one-vs-rest AUC of ``network`` on a part."""
    network.eval()
    with torch.no_grad():
        logits = torch.cat(
            [network(part[0][i : i + 64], part[1][i : i + 64]).float() for i in range(0, len(part[2]), 64)]
        )
    probabilities = logits.softmax(1)
    macro_f1 = f1_score(part[2], probabilities.argmax(1), average="macro")
    return float(macro_f1), float(roc_auc_score(part[2], probabilities, multi_class="ovr"))


def train_setting(network: torch.nn.Module, parts: dict[str, tuple], setting: dict[str, Any]) -> dict[str, Any]:
    """Train ``network`` (in place) with one setting through a ``SupervisedTrainer``; validate after every epoch."""
    torch.manual_seed(0)  # the shuffling and (through MONAI's DataLoader) the flips
    features, side_images, labels = parts["training"]
    items = [{"image": f, "image_lr": s, "label": y} for f, s, y in zip(features, side_images, labels)]
    augmentation = Compose(  # the bundles' horizontal flip of the side image
        [RandFlipd("image_lr", prob=0.5, spatial_axis=1), EnsureTyped("image_lr", track_meta=False)]
    )
    loader = DataLoader(Dataset(items, augmentation), batch_size=BATCH_SIZE, shuffle=True, num_workers=0)
    optimizer = build_optimizer(
        network, "fpt", fpt_learning_rate=setting["lr"], fpt_weight_decay=setting.get("wd", 0.0)
    )
    steps = setting["epochs"] * len(loader)
    warmup = int(0.1 * steps)

    # the shape of the bundles' monai.optimizers.WarmupCosineSchedule (linear warm-up, then cosine to zero); the
    # warm-up starts one step later than MONAI's, as in the run that made docs/benchmarks/fpt_recipe_cpu.json
    def rate(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=setting["epochs"],
        train_data_loader=loader,
        network=network,
        optimizer=optimizer,
        loss_function=torch.nn.CrossEntropyLoss(label_smoothing=setting.get("ls", 0.0)),
        prepare_batch=PrepareBatchExtraInput(extra_keys={"image_lr": "image_lr"}),
        train_handlers=[LrScheduleHandler(scheduler, print_lr=False, epoch_level=False)],
        decollate=False,
    )
    history: list[dict[str, float]] = []

    @trainer.on(Events.EPOCH_COMPLETED)
    def _validate(_: SupervisedTrainer) -> None:
        macro_f1, auc = score(network, parts["validation"])
        history.append({"val_f1": round(macro_f1, 4), "val_auc": round(auc, 4)})

    started = time.perf_counter()
    trainer.run()
    f1s = [h["val_f1"] for h in history]
    return {
        **setting,
        "best_val_f1": max(f1s),
        "best_epoch": 1 + f1s.index(max(f1s)),
        "last_val_f1": f1s[-1],
        "mean_val_f1_last5": round(sum(f1s[-5:]) / len(f1s[-5:]), 4),
        "history": history,
        "train_seconds": round(time.perf_counter() - started, 1),
    }


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean over folds of each setting's last-epoch and best validation macro-F1."""
    settings: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        key = json.dumps({k: run[k] for k in ("lr", "epochs", "wd", "ls") if k in run}, sort_keys=True)
        settings.setdefault(key, []).append(run)
    return [
        {
            "setting": json.loads(key),
            "folds": sorted(r["fold"] for r in group),
            "mean_last_val_f1": round(sum(r["last_val_f1"] for r in group) / len(group), 4),
            "mean_best_val_f1": round(sum(r["best_val_f1"] for r in group) / len(group), 4),
        }
        for key, group in settings.items()
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the settings on the folds; write the record."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="busi")
    parser.add_argument("--dataset_dir", required=True)
    parser.add_argument("--backbone", default="timm:vit_small_patch14_dinov2")
    parser.add_argument("--weights", default=None, help="the backbone's weights file (required unless --tiny_backbone)")
    parser.add_argument("--splits_dir", required=True, help="the benchmark's splits folder (seed0_fold<k>of<n>.json)")
    parser.add_argument("--feature_cache_dir", required=True)
    parser.add_argument("--num_folds", type=int, default=5)
    parser.add_argument("--folds", default="0,1,2")
    parser.add_argument("--fpt_image_size", type=int, default=224)
    parser.add_argument("--fpt_side_image_size", type=int, default=112)
    parser.add_argument("--tiny_backbone", action="store_true", help="the tiny test configuration, random weights")
    parser.add_argument("--settings", required=True, help="JSON list of {lr, epochs[, wd, ls]}")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 beside another CPU job)")
    parser.add_argument("--output", default="docs/benchmarks/fpt_recipe_cpu.json")
    args = parser.parse_args(argv)
    if args.weights is None and not args.tiny_backbone:
        parser.error("--weights is required (unless --tiny_backbone)")
    torch.set_num_threads(args.threads)
    output = Path(args.output)
    record = json.loads(output.read_text()) if output.is_file() else {"runs": []}
    record["command"] = "python benchmarks/fpt_recipe.py " + " ".join(argv or sys.argv[1:])
    settings = json.loads(args.settings)
    for fold in (int(f) for f in args.folds.split(",")):
        todo = [s for s in settings if not any(r["fold"] == fold and _same(r, s) for r in record["runs"])]
        if not todo:
            continue
        with tempfile.TemporaryDirectory() as work:
            network, parts = load_fold(args, fold, Path(work))
        for setting in todo:
            run = {"fold": fold, **train_setting(copy.deepcopy(network), parts, setting)}
            print(json.dumps({k: v for k, v in run.items() if k != "history"}), flush=True)
            record["runs"].append(run)
            record["summary"] = summarise(record["runs"])
            output.write_text(json.dumps(record, indent=1) + "\n")
    return record


def _same(run: dict[str, Any], setting: dict[str, Any]) -> bool:
    return all(run.get(k) == setting.get(k) for k in ("lr", "epochs", "wd", "ls"))


if __name__ == "__main__":
    main()
