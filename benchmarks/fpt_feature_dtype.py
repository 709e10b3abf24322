"""How much storing FPT's preloaded frozen features in float16 or bfloat16 changes a trained network's outputs.

The network, the preprocessing and the split are taken from a bundle's own ``train.json`` with MONAI's
``ConfigParser`` (so they are exactly what training used); the trained weights come from ``--checkpoint``. For every
image of the chosen split part, the logits from live float32 features are compared with the logits from the same
features rounded to each storage dtype. Writes ``--output`` (JSON) and prints a summary.

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
    network = config.get_parsed_content("network")
    network.load_state_dict(torch.load(args.checkpoint, map_location="cpu", weights_only=True))
    network.eval()
    items = config.get_parsed_content("split")[args.part]
    transform = Compose(config.get_parsed_content("transforms#images_eval"))
    loader = DataLoader(Dataset(items, transform), batch_size=args.batch_size, num_workers=0)

    dtypes = {"float16": torch.float16, "bfloat16": torch.bfloat16}
    worst = {name: {"max_abs_logit": 0.0, "max_abs_probability": 0.0, "changed_predictions": 0} for name in dtypes}
    scale = 0.0
    start = time.perf_counter()
    with torch.no_grad():
        for batch in loader:
            image, image_lr = batch["image"].as_tensor(), batch["image_lr"].as_tensor()
            features = network.frozen_features(image)
            reference = network(features, image_lr)
            scale = max(scale, reference.abs().max().item())
            for name, dtype in dtypes.items():
                logits = network(features.to(dtype), image_lr)
                record = worst[name]
                record["max_abs_logit"] = max(record["max_abs_logit"], (logits - reference).abs().max().item())
                delta = (logits.softmax(1) - reference.softmax(1)).abs().max().item()
                record["max_abs_probability"] = max(record["max_abs_probability"], delta)
                record["changed_predictions"] += int((logits.argmax(1) != reference.argmax(1)).sum())
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "images": len(items),
        "part": args.part,
        "backbone": args.backbone,
        "fpt_image_size": args.fpt_image_size,
        "feature_shape": list(network.extractor.feature_shape),
        "max_abs_reference_logit": scale,
        "storage_dtypes": worst,
        "seconds": round(time.perf_counter() - start, 1),
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
