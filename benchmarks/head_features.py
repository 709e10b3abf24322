"""Which frozen features should the head read, and at which image size? Judged on validation parts only.

The probe (and the warmed head that SH-PEFT fine-tunes from) reads one pooled vector per image. For a
DINOv2 ViT this can be the class token (``cls``), the mean of the patch tokens (``mean``), or both side by side
(``cls_mean``, the pooling of DINOv2's own linear evaluation: Oquab et al., "DINOv2: Learning Robust Visual
Features without Supervision", TMLR 2024). This benchmark extracts the frozen tokens of every BUSI image once per
image size, fits the package's probe (:func:`monai_shpeft.linear_probe.fit_probe`) on each fold's training part
and scores macro-F1 on the fold's **validation** part; it also times the frozen forward per image size, since the
main job must train in minutes on a CPU. With ``--autocast bfloat16`` the frozen forward runs under CPU bfloat16
autocast, as the bundles' ``amp auto`` does on a CPU with native bfloat16, so the probe's validation cost of that
precision can be read beside the float32 record. Test parts are never read.

Example (the figures in docs/benchmarks/head_features.json came from this command)::

    python benchmarks/head_features.py --dataset_dir ../shared/data/busi \
        --pretrained ../shared/weights/vit_small_patch14_dinov2.safetensors --output docs/benchmarks/head_features.json

and the precision check (docs/benchmarks/head_features_precision.json: both precisions, one machine)::

    python benchmarks/head_features.py --dataset_dir ../shared/data/busi \
        --pretrained ../shared/weights/vit_small_patch14_dinov2.safetensors --sizes 224 \
        --autocast float32 bfloat16 --output docs/benchmarks/head_features_precision.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.data import DataLoader, Dataset
from monai.transforms import Compose
from sklearn.metrics import f1_score

from monai_shpeft.amp import cpu_supports_bf16
from monai_shpeft.backbones import build_classifier
from monai_shpeft.linear_probe import fit_probe
from monai_shpeft.utils import atomic_write_json

BUNDLE = Path(__file__).resolve().parent.parent / "bundles" / "busi"
POOLINGS = ("cls", "mean", "cls_mean")


def _parts(args: argparse.Namespace, fold: int, work: Path) -> tuple[dict[str, list[dict]], Any]:
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    parser.update(
        {
            "bundle_root": str(work),
            "output_dir": str(work / f"fold{fold}"),
            "dataset_dir": args.dataset_dir,
            "num_folds": args.num_folds,
            "fold": fold,
            "seed": args.seed,
        }
    )
    return parser.get_parsed_content("split"), parser


@torch.no_grad()
def _tokens(
    args: argparse.Namespace, items: list[dict], parser: ConfigParser, size: int, precision: str = "float32"
) -> dict[str, np.ndarray]:
    parser.update({"image_size": size})
    transform = Compose(parser.get_parsed_content("transforms#images_eval", lazy=False))
    num_classes = int(parser.get_parsed_content("num_classes"))
    model = build_classifier(args.backbone, num_classes, pretrained=args.pretrained, image_size=size).eval()
    prefix = int(getattr(model.backbone, "num_prefix_tokens", 1))
    loader = DataLoader(Dataset(items, transform), batch_size=32, num_workers=2)
    pooled: dict[str, list[np.ndarray]] = {p: [] for p in POOLINGS}
    start = time.perf_counter()
    for batch in loader:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16"):
            tokens = model.backbone.forward_features(batch["image"].as_tensor().float()).float()
        cls, mean = tokens[:, 0], tokens[:, prefix:].mean(1)
        pooled["cls"].append(cls.numpy())
        pooled["mean"].append(mean.numpy())
        # each half L2-normalised before the probe normalises the whole, so neither half dominates by its norm
        both = torch.cat([torch.nn.functional.normalize(cls, dim=1), torch.nn.functional.normalize(mean, dim=1)], 1)
        pooled["cls_mean"].append(both.numpy())
    seconds = time.perf_counter() - start
    out = {p: np.concatenate(v) for p, v in pooled.items()}
    out["seconds_per_image"] = np.asarray(seconds / len(items))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset_dir", required=True)
    parser.add_argument("--backbone", default="timm:vit_small_patch14_dinov2")
    parser.add_argument("--pretrained", required=True)
    parser.add_argument("--sizes", type=int, nargs="+", default=[112, 140, 168, 224])
    parser.add_argument("--num_folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--autocast", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
    parser.add_argument("--output", default="runs/head_features.json")
    args = parser.parse_args()
    torch.set_num_threads(2)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "configs").mkdir()
        (work / "configs" / "metadata.json").write_text((BUNDLE / "configs" / "metadata.json").read_text())
        folds = {k: _parts(args, k, work) for k in range(args.num_folds)}
        # every image that is in some fold's training or validation part (the test parts are never read)
        items: dict[str, dict] = {}
        for split, _ in folds.values():
            for part in ("training", "validation"):
                for item in split[part]:
                    items[str(item["image"])] = item
        keys = sorted(items)
        index = {k: i for i, k in enumerate(keys)}
        report: dict[str, Any] = {
            "command": "python benchmarks/head_features.py "
            + " ".join(f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items()),
            "num_images": len(keys),
            "sizes": {},
        }
        if args.autocast != ["float32"]:
            report["native_bf16"] = cpu_supports_bf16()
        for size, precision in [(size, precision) for size in args.sizes for precision in args.autocast]:
            features = _tokens(args, [items[k] for k in keys], folds[0][1], size, precision)
            labels = np.asarray([int(items[k]["label"]) for k in keys])
            num_classes = int(folds[0][1].get_parsed_content("num_classes"))
            entry: dict[str, Any] = {"seconds_per_image_forward": round(float(features["seconds_per_image"]), 4)}
            for pooling in POOLINGS:
                scores = []
                for split, _ in folds.values():
                    train = [index[str(i["image"])] for i in split["training"]]
                    val = [index[str(i["image"])] for i in split["validation"]]
                    fit = fit_probe(features[pooling][train], labels[train], num_classes=num_classes)
                    predicted = fit.logits(features[pooling][val]).argmax(1)
                    scores.append(float(f1_score(labels[val], predicted, average="macro")))
                entry[pooling] = {
                    "validation_f1_mean": round(float(np.mean(scores)), 4),
                    "validation_f1_std": round(float(np.std(scores, ddof=1)), 4),
                    "per_fold": [round(s, 4) for s in scores],
                }
            # the float32 record keeps its keys ("224"); another precision is recorded as "224 bfloat16"
            key = str(size) if precision == "float32" else f"{size} {precision}"
            report["sizes"][key] = entry
            print(key, json.dumps(entry), flush=True)
            atomic_write_json(args.output, report)


if __name__ == "__main__":
    main()
