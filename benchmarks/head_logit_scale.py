"""How the fixed logit scale of the L2-normalised head decides whether it trains: frozen features, validation only.

The bundles' head multiplies ``W x / |x| + b`` by ``head_logit_scale``. This script takes the training and
validation parts of one fold of the bundle's k-fold split (the fold's test part is never read), computes the frozen
backbone's features once with the bundle's own evaluation transforms, and trains the head alone from a random start
(AdamW, ``--steps`` mini-batches) at each scale, scoring macro-F1 by stratified cross-validation inside those
images. The bundles' default (30) is the best of this grid.

Example (docs/benchmarks/head_logit_scale.json came from this command)::

    python benchmarks/head_logit_scale.py --dataset_dir ../shared/data/busi \
        --weights ../shared/weights/vit_small_patch14_dinov2.safetensors --image_size 112 \
        --output docs/benchmarks/head_logit_scale.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.bundle import ConfigParser
from monai.data import DataLoader, Dataset
from monai.transforms import Compose
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold

from monai_shpeft.backbones import build_classifier
from monai_shpeft.data import prepare_datalist
from monai_shpeft.linear_probe import extract_features

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> dict:
    """Run the grid and write the JSON record.

    Args:
        argv: command-line arguments (``--help``).

    Returns:
        the record.
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="busi")
    parser.add_argument("--dataset_dir", required=True)
    parser.add_argument("--backbone", default="timm:vit_small_patch14_dinov2")
    parser.add_argument("--weights", required=True)
    parser.add_argument("--image_size", type=int, default=112)
    parser.add_argument("--num_folds", type=int, default=5)
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--scales", default="1,10,16,30,100")
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--output", default="docs/benchmarks/head_logit_scale.json")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        split = prepare_datalist(
            args.dataset, args.dataset_dir, Path(scratch) / "datalist.json", num_folds=args.num_folds, fold=args.fold
        )
    items = split["training"] + split["validation"]  # the fold's test part stays unread
    config = ConfigParser()
    config.read_config(str(REPO / "bundles" / args.dataset / "configs" / "train.json"))
    config.update({"backbone": args.backbone, "image_size": args.image_size})
    steps = config.get_parsed_content("modality_transforms")
    transform = Compose(steps["load"] + steps["normalize"])
    network = build_classifier(args.backbone, 3, pretrained=args.weights, image_size=args.image_size)
    loader = DataLoader(Dataset(items, transform), batch_size=32, num_workers=0)
    features, labels = extract_features(network, loader, "cpu")
    x = F.normalize(torch.as_tensor(features), dim=-1)
    y = torch.as_tensor(labels)
    record: dict = {
        "command": "python benchmarks/head_logit_scale.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "images": len(items),
        "fold": args.fold,
        "num_folds": args.num_folds,
        "steps": args.steps,
        "learning_rate": args.learning_rate,
        "macro_f1": {},
    }
    for scale in (float(s) for s in args.scales.split(",")):
        scores = []
        for train, held_out in StratifiedKFold(5, shuffle=True, random_state=0).split(features, labels):
            torch.manual_seed(0)
            head = torch.nn.Linear(x.shape[1], int(y.max()) + 1)
            optimizer = torch.optim.AdamW(head.parameters(), lr=args.learning_rate, weight_decay=0.0)
            train = torch.as_tensor(train)
            for _ in range(args.steps):
                batch = train[torch.randint(len(train), (32,))]
                loss = F.cross_entropy(scale * head(x[batch]), y[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                predicted = head(x[held_out]).argmax(1)
            scores.append(f1_score(y[held_out], predicted, average="macro"))
        record["macro_f1"][f"{scale:g}"] = {"mean": float(np.mean(scores)), "std": float(np.std(scores))}
        print(f"logit scale {scale:g}: macro-F1 {np.mean(scores):.3f} +- {np.std(scores):.3f}")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    main()
