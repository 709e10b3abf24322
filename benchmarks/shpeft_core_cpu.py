"""Real check of the SH-PEFT core on BUSI: estimation cost, masked-step cost and validation macro-F1.

Runs side by side, in one process, on the same data and backbone:

1. one epoch of full fine-tuning (no handlers, same optimizer) to time the plain epoch and step;
2. SH-PEFT: ``ImportanceEstimationHandler`` (one epoch of the training loader) + ``GradientMaskHandler`` in a
   MONAI ``SupervisedTrainer`` for ``--max_epochs`` epochs, timing the estimation, each epoch and each step;
3. macro-F1 / accuracy / AUC of the SH-PEFT model on the validation split.

Example (the figures in the README came from this command)::

    python benchmarks/shpeft_core_cpu.py --dataset_dir ../shared/data/busi \
        --weights ../shared/weights/vit_small_patch14_dinov2.safetensors --image_size 112 --max_epochs 2
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import torch
from monai.data import CacheDataset, DataLoader
from monai.engines import SupervisedTrainer
from monai.utils import set_determinism
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from monai_shpeft.backbones import build_classifier, normalization_stats, parameter_groups
from monai_shpeft.data import BUSI_CLASSES, busi_datalist, stratified_split
from monai_shpeft.handlers import GradientMaskHandler, ImportanceEstimationHandler
from monai_shpeft.transforms import modality_transforms


class StepTimer:
    """Wall time of each training iteration (forward, backward, mask, optimizer step)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._completed)

    def _started(self, engine) -> None:
        self._start = time.perf_counter()

    def _completed(self, engine) -> None:
        self.times.append(time.perf_counter() - self._start)

    def median(self, skip: int = 2) -> float:
        return statistics.median(self.times[skip:] if len(self.times) > skip + 2 else self.times)


def make_trainer(network, loader, handlers, max_epochs, lr, head_lr) -> SupervisedTrainer:
    groups = parameter_groups(network, head_lr=head_lr)
    optimizer = torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=1e-4)
    return SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=max_epochs,
        train_data_loader=loader,
        network=network,
        optimizer=optimizer,
        loss_function=torch.nn.CrossEntropyLoss(),
        train_handlers=handlers,
    )


@torch.no_grad()
def evaluate(network, loader) -> dict[str, float]:
    network.eval()
    probabilities, labels = [], []
    for batch in loader:
        probabilities.append(torch.softmax(network(batch["image"]), dim=1))
        labels.append(batch["label"])
    prob = torch.cat(probabilities).numpy()
    true = torch.cat(labels).numpy()
    pred = prob.argmax(1)
    return {
        "macro_f1": float(f1_score(true, pred, average="macro")),
        "accuracy": float(accuracy_score(true, pred)),
        "auc_ovr": float(roc_auc_score(true, prob, multi_class="ovr")),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset_dir", required=True)
    parser.add_argument("--backbone", default="timm:vit_small_patch14_dinov2")
    parser.add_argument("--weights", required=True)
    parser.add_argument("--image_size", type=int, default=112)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--budget", type=float, default=0.01)
    parser.add_argument("--max_epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--head_lr", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="docs/benchmarks/shpeft_core_cpu.json")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    set_determinism(seed=args.seed)
    split = stratified_split(busi_datalist(args.dataset_dir), seed=args.seed)
    mean, std = normalization_stats(args.backbone)
    train_ds = CacheDataset(
        split["training"], modality_transforms("ultrasound", args.image_size, True, mean=mean, std=std), num_workers=2
    )
    val_ds = CacheDataset(
        split["validation"],
        modality_transforms("ultrasound", args.image_size, False, mean=mean, std=std),
        num_workers=2,
    )
    train_loader = DataLoader(train_ds, batch_size=args.batch_size, shuffle=True, num_workers=0)
    val_loader = DataLoader(val_ds, batch_size=args.batch_size, num_workers=0)

    def network():
        return build_classifier(
            args.backbone, num_classes=len(BUSI_CLASSES), pretrained=args.weights, image_size=args.image_size
        )

    # 1. the plain step: full fine-tuning, no handlers
    full_timer = StepTimer()
    full = make_trainer(network(), train_loader, [full_timer], 1, args.lr, args.head_lr)
    full.run()  # one epoch gives the epoch time without any SH-PEFT handler
    full_epoch = full.state.times["EPOCH_COMPLETED"]

    # 2. SH-PEFT: estimation over one epoch, then masked training
    set_determinism(seed=args.seed)
    sh_timer = StepTimer()
    estimation = ImportanceEstimationHandler(
        budget=args.budget, progress=True, save_path=Path(args.output).with_suffix(".sparse_set.safetensors")
    )
    model = network()
    trainer = make_trainer(
        model, train_loader, [estimation, GradientMaskHandler(), sh_timer], args.max_epochs, args.lr, args.head_lr
    )
    epoch_times: list[float] = []
    from ignite.engine import Events

    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: epoch_times.append(e.state.times["EPOCH_COMPLETED"]))
    trainer.run()
    metrics = evaluate(model, val_loader)

    result = {
        "command": "python benchmarks/shpeft_core_cpu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "backbone": args.backbone,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "train_images": len(split["training"]),
        "validation_images": len(split["validation"]),
        "budget": args.budget,
        "selected": estimation.trainable_set.num_selected,
        "total": estimation.trainable_set.num_total,
        "estimation_seconds": estimation.elapsed_seconds,
        "full_finetune_epoch_seconds": full_epoch,
        "shpeft_epoch_seconds_median": statistics.median(epoch_times),
        "estimation_over_full_epoch": estimation.elapsed_seconds / full_epoch,
        "estimation_over_shpeft_epoch": estimation.elapsed_seconds / statistics.median(epoch_times),
        "full_step_seconds_median": full_timer.median(),
        "masked_step_seconds_median": sh_timer.median(),
        "masked_over_full_step": sh_timer.median() / full_timer.median(),
        "max_epochs": args.max_epochs,
        "lr": args.lr,
        "head_lr": args.head_lr,
        "validation": metrics,
        "torch_threads": torch.get_num_threads(),
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
