"""How fast the paper's L2-normalised linear head learns, per learning rate, on frozen backbone features.

The head's logits are bounded by the norm of its weight, so a short schedule needs a large head learning rate.
This sweep trains the head alone (SGD, momentum 0.9, weight decay 1e-4, batch 32) for a fixed number of steps on
frozen features of the BUSI training split and reports the validation macro-F1, next to a scikit-learn logistic
regression on the same normalised features as the ceiling of a linear head.

Example (the README's figures came from this command)::

    python benchmarks/head_learning_rate.py --dataset_dir ../shared/data/busi \
        --weights ../shared/weights/vit_small_patch14_dinov2.safetensors --image_size 112 --steps 170
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from monai.data import DataLoader, Dataset
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

from monai_shpeft.backbones import L2NormLinearHead, build_classifier, normalization_stats
from monai_shpeft.data import BUSI_CLASSES, busi_datalist, stratified_split
from monai_shpeft.transforms import modality_transforms


@torch.no_grad()
def features(network: torch.nn.Module, items: list[dict], image_size: int, backbone: str) -> tuple:
    mean, std = normalization_stats(backbone)
    loader = DataLoader(
        Dataset(items, modality_transforms("ultrasound", image_size, False, mean=mean, std=std)), batch_size=64
    )
    pairs = [(network.forward_features(batch["image"]), batch["label"]) for batch in loader]
    return torch.cat([f for f, _ in pairs]), torch.cat([label for _, label in pairs])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset_dir", required=True)
    parser.add_argument("--backbone", default="timm:vit_small_patch14_dinov2")
    parser.add_argument("--weights", required=True)
    parser.add_argument("--image_size", type=int, default=112)
    parser.add_argument("--steps", type=int, default=170)
    parser.add_argument("--learning_rates", default="0.001,0.01,0.1,1,5")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="docs/benchmarks/head_learning_rate.json")
    args = parser.parse_args(argv)

    split = stratified_split(busi_datalist(args.dataset_dir), seed=args.seed)
    network = build_classifier(args.backbone, len(BUSI_CLASSES), pretrained=args.weights, image_size=args.image_size)
    network.eval()
    train_x, train_y = features(network, split["training"], args.image_size, args.backbone)
    val_x, val_y = features(network, split["validation"], args.image_size, args.backbone)

    rows = []
    for lr in [float(v) for v in args.learning_rates.split(",")]:
        torch.manual_seed(args.seed)
        head = L2NormLinearHead(train_x.shape[1], len(BUSI_CLASSES))
        optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
        for _ in range(args.steps):
            index = torch.randint(0, len(train_x), (32,))
            loss = torch.nn.functional.cross_entropy(head(train_x[index]), train_y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            predicted = head(val_x).argmax(1)
        rows.append(
            {
                "head_learning_rate": lr,
                "validation_macro_f1": float(f1_score(val_y, predicted, average="macro")),
                "head_weight_norm": float(head.linear.weight.norm()),
            }
        )
        print(json.dumps(rows[-1]), flush=True)

    unit = lambda x: (x / x.norm(dim=1, keepdim=True)).numpy()  # noqa: E731 - the same normalisation as the head
    ceiling = LogisticRegression(C=100.0, max_iter=5000).fit(unit(train_x), train_y.numpy())
    result = {
        "command": "python benchmarks/head_learning_rate.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "backbone": args.backbone,
        "image_size": args.image_size,
        "steps": args.steps,
        "majority_class_macro_f1": float(f1_score(val_y, np.zeros_like(val_y.numpy()), average="macro")),
        "logistic_regression_macro_f1": float(f1_score(val_y, ceiling.predict(unit(val_x)), average="macro")),
        "sweep": rows,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
