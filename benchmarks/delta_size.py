"""Size on disk of a sparse delta against the full fine-tuned checkpoint, per SH-PEFT budget.

For each budget, on the same backbone and the same real BUSI batches:

1. hybrid importance (L2, lambda 1) estimated once over ``--estimation_batches`` training batches;
2. the top ``budget`` of all backbone weights selected and trained for ``--steps`` masked SGD steps in a MONAI
   ``SupervisedTrainer`` (enough for every selected entry with a gradient to move);
3. the full checkpoint written as the bundle's ``CheckpointSaver`` writes ``models/model.pt`` (``torch.save`` of the
   state dict) and the delta with :class:`monai_shpeft.delta.SparseDelta`; the delta is applied to a fresh build and
   must reproduce the trained network exactly.

The sizes depend on the number of changed entries and their dtype, not on the weights' values, so CLIP ViT-B/16 can
be measured with random weights where its OpenAI weights cannot be downloaded (the base is then a random start).

Example (the README's table came from this command)::

    python benchmarks/delta_size.py --dataset_dir ../shared/data/busi --output docs/benchmarks/delta_size.json
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import tempfile
from pathlib import Path

import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedTrainer
from monai.utils import set_determinism

from monai_shpeft.backbones import build_classifier, normalization_stats
from monai_shpeft.data import busi_datalist, stratified_split
from monai_shpeft.delta import SparseDelta
from monai_shpeft.handlers import GradientMaskHandler
from monai_shpeft.importance import estimate_importance
from monai_shpeft.sparse_set import SparseTrainableSet
from monai_shpeft.transforms import modality_transforms
from monai_shpeft.utils import atomic_write_json


def measure(args: argparse.Namespace) -> dict:
    set_determinism(seed=0)
    split = stratified_split(busi_datalist(args.dataset_dir), seed=0)
    mean, std = normalization_stats(args.backbone)
    items = split["training"][: args.batch_size * max(args.estimation_batches, args.steps)]
    dataset = Dataset(items, modality_transforms("ultrasound", args.image_size, False, mean=mean, std=std))
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=0)

    torch.manual_seed(0)
    base = build_classifier(args.backbone, num_classes=3, pretrained=args.pretrained, image_size=args.image_size)
    importance = estimate_importance(
        copy.deepcopy(base),
        loader,
        torch.nn.CrossEntropyLoss(),
        strategy="l2",
        lambda_=1.0,
        num_iterations=args.estimation_batches,
        progress=False,
    )
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for budget in args.budgets:
            trainable_set = SparseTrainableSet.from_importance(importance, budget)
            trained = copy.deepcopy(base)
            optimizer = torch.optim.SGD(trained.parameters(), lr=args.learning_rate, momentum=0.9)
            trainer = SupervisedTrainer(
                device=torch.device("cpu"),
                max_epochs=1,
                epoch_length=args.steps,
                train_data_loader=loader,
                network=trained,
                optimizer=optimizer,
                loss_function=torch.nn.CrossEntropyLoss(),
                train_handlers=[GradientMaskHandler(trainable_set)],
            )
            trainer.run()
            checkpoint = Path(workdir) / f"model_{budget}.pt"
            torch.save(trained.state_dict(), checkpoint)
            delta = SparseDelta.from_networks(base, trained, recipe={"backbone": args.backbone, "budget": budget})
            delta_file = delta.save(Path(workdir) / f"delta_{budget}.safetensors")
            set_file = trainable_set.save(Path(workdir) / f"set_{budget}.safetensors")
            rebuilt = SparseDelta.load(delta_file).apply_to(copy.deepcopy(base))
            exact = all(torch.equal(rebuilt.state_dict()[k], v) for k, v in trained.state_dict().items())
            row = {
                "budget": budget,
                "selected": trainable_set.num_selected,
                "changed_entries_by_index": delta.num_sparse_entries,
                "entries_stored_whole": delta.num_dense_entries,
                "delta_bytes": delta_file.stat().st_size,
                "checkpoint_bytes": checkpoint.stat().st_size,
                "ratio": delta_file.stat().st_size / checkpoint.stat().st_size,
                "sparse_set_bytes": set_file.stat().st_size,
                "rebuilds_exactly": exact,
            }
            rows.append(row)
            print(
                f"budget {budget:.4%}: {row['selected']:,} selected, {row['changed_entries_by_index']:,} changed; "
                f"delta {row['delta_bytes'] / 2**20:.2f} MiB vs checkpoint {row['checkpoint_bytes'] / 2**20:.1f} MiB "
                f"({row['ratio']:.3%}); exact rebuild: {exact}",
                flush=True,
            )
    return {
        "command": " ".join(sys.argv),
        "backbone": args.backbone,
        "pretrained": args.pretrained,
        "image_size": args.image_size,
        "backbone_parameters": sum(p.numel() for p in base.backbone.parameters()),
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset_dir", required=True)
    parser.add_argument("--backbone", default="open_clip:ViT-B-16")
    parser.add_argument("--pretrained", default=None, help="local weights file; default: random initialisation")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.01, 0.001, 0.0001])
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--estimation_batches", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--output", default=None, help="write the measurements as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    result = measure(args)
    if args.output:
        atomic_write_json(args.output, result)


if __name__ == "__main__":
    main()
