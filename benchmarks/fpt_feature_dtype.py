"""How much storing FPT's preloaded frozen features in float16, bfloat16 or int8 changes a trained network's outputs.

The network, the preprocessing and the split are taken from a bundle's own ``train.json`` with MONAI's
``ConfigParser`` (so they are exactly what training used); the trained weights come from ``--checkpoint``. For every
image of the chosen split part, the logits from live float32 features are compared with the logits from the same
features rounded to each storage dtype (int8: quantised with a per-token scale and read back as float16, as the
cache does), and the part's macro AUC is given for each. Writes ``--output`` (JSON) and prints a summary.

Example (the figures in the README)::

    python benchmarks/fpt_feature_dtype.py --dataset_dir ../shared/data/busi \\
        --backbone timm:vit_small_patch14_dinov2 --fpt_image_size 448 --fpt_side_image_size 224 \\
        --checkpoint bundles/busi/models/model.pt --output docs/benchmarks/fpt_feature_dtype.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config_file", default="bundles/busi/configs/train.json")
    parser.add_argument("--dataset_dir", required=True)
    parser.add_argument("--backbone", default="timm:vit_small_patch14_dinov2")
    parser.add_argument("--fpt_image_size", type=int, default=448)
    parser.add_argument("--fpt_side_image_size", type=int, default=224)
    parser.add_argument("--checkpoint", required=True, help="a trained FPT model.pt of that bundle")
    parser.add_argument("--part", default="validation", choices=("training", "validation", "test"))
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--tiny_backbone", action="store_true", help="the tiny test configuration of the backbone")
    parser.add_argument("--datalist_file", default=None, help="the training run's datalist (its split)")
    parser.add_argument("--num_folds", type=int, default=None, help="the training run's --num_folds")
    parser.add_argument("--fold", type=int, default=None, help="the training run's --fold")
    parser.add_argument("--output", default="docs/benchmarks/fpt_feature_dtype.json")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from monai.bundle import ConfigParser
    from monai.data import DataLoader, Dataset
    from monai.transforms import Compose

    config = ConfigParser()
    config.read_config(args.config_file)
    config.update(
        {
            "dataset_dir": args.dataset_dir,
            "backbone": args.backbone,
            "pretrained": None,  # the checkpoint holds every weight, the frozen ones included
            "method": "fpt",
            "fpt_image_size": args.fpt_image_size,
            "fpt_side_image_size": args.fpt_side_image_size,
            "device": torch.device("cpu"),
            "tiny_backbone": args.tiny_backbone,
        }
    )
    for knob in ("datalist_file", "num_folds", "fold"):  # the run's split, when it was not the default one
        if getattr(args, knob) is not None:
            config.update({knob: getattr(args, knob)})
    network = config.get_parsed_content("network")
    network.load_state_dict(torch.load(args.checkpoint, map_location="cpu", weights_only=True))
    network.eval()
    items = config.get_parsed_content("split")[args.part]
    transform = Compose(config.get_parsed_content("transforms#images_eval"))
    loader = DataLoader(Dataset(items, transform), batch_size=args.batch_size, num_workers=0)

    from monai_shpeft.feature_cache import dequantize_int8, quantize_int8

    # what each storage dtype gives back (int8: per-token absmax scale, read back as float16, as the cache does)
    dtypes: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "float16": lambda f: f.to(torch.float16),
        "bfloat16": lambda f: f.to(torch.bfloat16),
        "int8": lambda f: dequantize_int8(*quantize_int8(f)),
    }
    worst = {name: {"max_abs_logit": 0.0, "max_abs_probability": 0.0, "changed_predictions": 0} for name in dtypes}
    probabilities: dict[str, list[torch.Tensor]] = {name: [] for name in ("float32", *dtypes)}
    labels: list[torch.Tensor] = []
    scale = 0.0
    start = time.perf_counter()
    with torch.no_grad():
        for batch in loader:
            image, image_lr = batch["image"].as_tensor(), batch["image_lr"].as_tensor()
            features = network.frozen_features(image)
            reference = network(features, image_lr)
            scale = max(scale, reference.abs().max().item())
            labels.append(torch.as_tensor(batch["label"]).reshape(-1))
            probabilities["float32"].append(reference.softmax(1))
            for name, stored in dtypes.items():
                logits = network(stored(features), image_lr)
                probabilities[name].append(logits.softmax(1))
                record = worst[name]
                record["max_abs_logit"] = max(record["max_abs_logit"], (logits - reference).abs().max().item())
                delta = (logits.softmax(1) - reference.softmax(1)).abs().max().item()
                record["max_abs_probability"] = max(record["max_abs_probability"], delta)
                record["changed_predictions"] += int((logits.argmax(1) != reference.argmax(1)).sum())
    for name, record in worst.items():
        record["auc"] = _macro_auc(torch.cat(labels), torch.cat(probabilities[name]))
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "images": len(items),
        "part": args.part,
        "backbone": args.backbone,
        "fpt_image_size": args.fpt_image_size,
        "feature_shape": list(network.extractor.feature_shape),
        "max_abs_reference_logit": scale,
        "float32_auc": _macro_auc(torch.cat(labels), torch.cat(probabilities["float32"])),
        "storage_dtypes": worst,
        "seconds": round(time.perf_counter() - start, 1),
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


def _macro_auc(labels: torch.Tensor, probabilities: torch.Tensor) -> float | None:
    """Macro one-vs-rest ROC AUC (as the bundles' val_auc), or ``None`` when a class is absent from the part."""
    from sklearn.metrics import roc_auc_score

    classes = probabilities.shape[1]
    if len(set(labels.tolist())) < classes:
        return None
    scores = probabilities.double()
    scores = (scores / scores.sum(1, keepdim=True)).numpy()  # sklearn checks that the rows sum to 1
    return round(float(roc_auc_score(labels.numpy(), scores, multi_class="ovr", average="macro")), 6)


if __name__ == "__main__":
    raise SystemExit(main())
