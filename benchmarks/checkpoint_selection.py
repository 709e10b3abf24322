"""Which weights should a short SH-PEFT run keep? Checkpoint selection and weight averaging, judged on validation.

Issue 20 measured that BUSI's validation part (about 117 images a fold) swings by several points of macro-F1
between consecutive epochs, so "the epoch with the best validation macro-F1" picks noise as often as signal.
This benchmark trains the BUSI bundle (the README's main command, its CPU knobs) once per fold, keeps the weights
after every validation (epoch 0 is the warmed head alone, the probe), and scores candidate rules:

- ``best_f1``: the epoch with the best validation macro-F1 (the bundles' rule up to 0.5.1);
- ``best_loss``: the epoch with the lowest validation cross-entropy;
- ``final``: the last epoch;
- ``average``: the mean of the weights of epochs 1..E (stochastic weight averaging, Izmailov et al., UAI 2018);
- ``wise_final`` / ``wise_average``: halfway between the warmed start (epoch 0) and ``final`` / ``average`` in
  weight space (WiSE-FT, Wortsman et al., CVPR 2022);
- ``average_or_probe``: ``average``, unless the probe (epoch 0) validates better;
- ``best_f1_with_average``: ``best_f1`` over epochs 0..E and ``average`` (validated last, so ties keep an epoch).

A rule that selects on validation data cannot be scored on the same data, so the comparison splits each fold's
validation part into two stratified halves many times: a rule selects on one half and is scored on the other
(rules that select nothing are scored on the same halves). The test parts are written too, for the report made
once the rule is chosen; the choice reads only ``validation``.

Example (the figures in docs/benchmarks/checkpoint_selection.json came from this command; resumable per fold)::

    python benchmarks/checkpoint_selection.py --dataset_dir ../shared/data/busi \
        --pretrained ../shared/weights/vit_small_patch14_dinov2.safetensors --output_dir runs/checkpoint_selection
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.data import DataLoader, Dataset
from monai.transforms import Compose
from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score
from sklearn.model_selection import StratifiedShuffleSplit

from monai_shpeft.utils import atomic_write_json

BUNDLE = Path(__file__).resolve().parent.parent / "bundles" / "busi"
RULES = (
    "probe",
    "best_f1",
    "best_loss",
    "final",
    "average",
    "wise_final",
    "wise_average",
    "average_or_probe",
    "best_f1_with_average",
)


def _snapshot(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in network.state_dict().items()}


def _mean(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    averaged = {}
    for name, last in states[-1].items():
        averaged[name] = torch.stack([s[name] for s in states]).mean(0) if last.is_floating_point() else last
    return averaged


@torch.no_grad()
def _probabilities(network: torch.nn.Module, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
    network.eval()
    probabilities, labels = [], []
    for batch in loader:
        probabilities.append(torch.softmax(network(batch["image"]).float(), dim=1).numpy())
        labels.append(np.asarray(batch["label"]).reshape(-1))
    return np.concatenate(probabilities), np.concatenate(labels)


def train_fold(args: argparse.Namespace, fold: int, out: Path) -> None:
    """Train one fold through the bundle's configs and write every candidate's probabilities to ``fold<k>.npz``."""
    work = out / f"work_fold{fold}"
    (work / "configs").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(BUNDLE / "configs" / "metadata.json", work / "configs" / "metadata.json")
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    parser.update(
        {
            "bundle_root": str(work),
            "dataset_dir": args.dataset_dir,
            "backbone": args.backbone,
            "pretrained": args.pretrained,
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "max_epochs": args.max_epochs,
            "estimation_iterations": args.estimation_iterations,
            "learning_rate": args.learning_rate,
            "device": "cpu",
            "num_folds": args.num_folds,
            "fold": fold,
            "seed": args.seed,
            "feature_cache_dir": str(out / "feature_cache"),
        }
    )
    parser.get_parsed_content("initialize")
    trainer = parser.get_parsed_content("train#trainer")
    evaluator = parser.get_parsed_content("validate#evaluator")
    network = parser.get_parsed_content("network")
    states: list[dict[str, torch.Tensor]] = []
    from ignite.engine import Events

    evaluator.add_event_handler(Events.COMPLETED, lambda _: states.append(_snapshot(network)))
    trainer.run()
    if len(states) == args.max_epochs + 2:
        # the bundle's weight-averaging handler validates the average as one more epoch: it must be the same mean
        handler_average = states.pop()
        difference = max(
            (handler_average[k] - v).abs().max().item() for k, v in _mean(states[1:]).items() if v.is_floating_point()
        )
        if difference > 1e-5:
            raise RuntimeError(f"the bundle's averaged weights differ from the mean of the epochs by {difference}")
    if len(states) != args.max_epochs + 1:
        raise RuntimeError(f"expected {args.max_epochs + 1} validations (epoch 0 = warm-up), got {len(states)}")

    split = parser.get_parsed_content("split")
    transform = Compose(parser.get_parsed_content("transforms#images_eval"))
    loaders = {
        part: DataLoader(Dataset(split[part], transform), batch_size=args.batch_size, num_workers=2)
        for part in ("validation", "test")
    }
    average = _mean(states[1:])
    candidates = {f"epoch{e}": state for e, state in enumerate(states)}
    candidates["average"] = average
    candidates["wise_final"] = _mean([states[0], states[-1]])
    candidates["wise_average"] = _mean([states[0], average])
    arrays: dict[str, np.ndarray] = {}
    for name, state in candidates.items():
        network.load_state_dict(state)
        for part, loader in loaders.items():
            probabilities, labels = _probabilities(network, loader)
            arrays[f"{part}/{name}"] = probabilities
            arrays[f"{part}/labels"] = labels
        print(f"fold {fold} {name}: validation F1 {_f1(arrays, 'validation', name):.3f}", flush=True)
    np.savez(out / f"fold{fold}.npz", **arrays)


def _f1(arrays: dict[str, np.ndarray], part: str, name: str, index: np.ndarray | None = None) -> float:
    labels, probabilities = arrays[f"{part}/labels"], arrays[f"{part}/{name}"]
    if index is not None:
        labels, probabilities = labels[index], probabilities[index]
    return float(f1_score(labels, probabilities.argmax(1), average="macro"))


def _loss(arrays: dict[str, np.ndarray], part: str, name: str, index: np.ndarray) -> float:
    labels = arrays[f"{part}/labels"][index]
    return float(log_loss(labels, arrays[f"{part}/{name}"][index], labels=range(arrays[f"{part}/{name}"].shape[1])))


def choose(rule: str, arrays: dict[str, np.ndarray], part: str, index: np.ndarray, epochs: int) -> str:
    """The candidate a rule keeps, judging (where it selects) on ``arrays[part][index]`` only."""
    names = [f"epoch{e}" for e in range(epochs + 1)]
    if rule == "best_f1":  # strictly better replaces, as MONAI's evaluator keeps its best: ties keep the earlier
        scores = [_f1(arrays, part, n, index) for n in names]
        return names[int(np.argmax(scores))]
    if rule == "best_loss":
        return names[int(np.argmin([_loss(arrays, part, n, index) for n in names]))]
    if rule == "probe":  # the warmed head alone: the floor every rule is judged against
        return "epoch0"
    if rule == "final":
        return names[-1]
    if rule == "average_or_probe":
        return "average" if _f1(arrays, part, "average", index) >= _f1(arrays, part, "epoch0", index) else "epoch0"
    if rule == "best_f1_with_average":
        candidates = [*names, "average"]
        return candidates[int(np.argmax([_f1(arrays, part, n, index) for n in candidates]))]
    return rule  # average, wise_final, wise_average: stored as such


def validation_comparison(folds: dict[int, dict[str, np.ndarray]], epochs: int, repeats: int) -> dict[str, Any]:
    """Select on one stratified half of each validation part, score on the other; mean over halves and folds."""
    per_fold: dict[str, list[float]] = {rule: [] for rule in RULES}
    for arrays in folds.values():
        labels = arrays["validation/labels"]
        halves = StratifiedShuffleSplit(n_splits=repeats, test_size=0.5, random_state=0).split(labels, labels)
        scores: dict[str, list[float]] = {rule: [] for rule in RULES}
        for select_on, score_on in halves:
            for a, b in ((select_on, score_on), (score_on, select_on)):
                for rule in RULES:
                    scores[rule].append(_f1(arrays, "validation", choose(rule, arrays, "validation", a, epochs), b))
        for rule in RULES:
            per_fold[rule].append(float(np.mean(scores[rule])))
    return {
        rule: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)), "per_fold": [round(x, 4) for x in v]}
        for rule, v in per_fold.items()
    }


def test_figures(folds: dict[int, dict[str, np.ndarray]], epochs: int, rules: list[str]) -> dict[str, Any]:
    """Test macro-F1, accuracy and macro AUC of the given rules (each selecting on the whole validation part), with
    the probe (epoch 0) and each rule's paired macro-F1 difference against it."""
    report: dict[str, Any] = {}
    probe_f1: list[float] = []
    for rule in ["probe", *rules]:
        figures: dict[str, list[float]] = {"f1": [], "accuracy": [], "auc": []}
        for arrays in folds.values():
            every = np.arange(len(arrays["validation/labels"]))
            name = "epoch0" if rule == "probe" else choose(rule, arrays, "validation", every, epochs)
            labels, probabilities = arrays["test/labels"], arrays[f"test/{name}"]
            figures["f1"].append(_f1(arrays, "test", name))
            figures["accuracy"].append(float(accuracy_score(labels, probabilities.argmax(1))))
            figures["auc"].append(float(roc_auc_score(labels, probabilities, multi_class="ovr", average="macro")))
        entry: dict[str, Any] = {
            key: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)), "per_fold": v}
            for key, v in figures.items()
        }
        if rule == "probe":
            probe_f1 = figures["f1"]
        else:
            difference = np.asarray(figures["f1"]) - np.asarray(probe_f1)
            entry["paired_f1_difference"] = {
                "mean": float(difference.mean()),
                "std": float(difference.std(ddof=1)),
                "won_tied_lost": [
                    int((difference > 0).sum()),
                    int((difference == 0).sum()),
                    int((difference < 0).sum()),
                ],
            }
        report[rule] = entry
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset_dir", required=True)
    parser.add_argument("--backbone", default="timm:vit_small_patch14_dinov2")
    parser.add_argument("--pretrained", required=True)
    parser.add_argument("--image_size", type=int, default=112)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_epochs", type=int, default=5)
    parser.add_argument("--estimation_iterations", type=int, default=None, help="importance batches (all: None)")
    parser.add_argument("--learning_rate", type=float, default=None, help="backbone rate (None: the method's)")
    parser.add_argument("--num_folds", type=int, default=5)
    parser.add_argument("--folds", default="0,1,2,3,4")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=50, help="random half-splits of each validation part")
    parser.add_argument("--test_rules", default="", help="rules whose test figures to report (once chosen)")
    parser.add_argument("--output_dir", default="runs/checkpoint_selection")
    parser.add_argument("--output", default="docs/benchmarks/checkpoint_selection.json")
    args = parser.parse_args(argv)

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    folds = [int(f) for f in args.folds.split(",")]
    for fold in folds:
        if not (out / f"fold{fold}.npz").is_file():
            train_fold(args, fold, out)
    arrays = {fold: dict(np.load(out / f"fold{fold}.npz")) for fold in folds}
    report: dict[str, Any] = {
        "command": "python " + " ".join(["benchmarks/checkpoint_selection.py", *(argv or sys.argv[1:])]),
        "folds": folds,
        "validation_half_split_f1": validation_comparison(arrays, args.max_epochs, args.repeats),
    }
    if args.test_rules:
        report["test_f1"] = test_figures(arrays, args.max_epochs, args.test_rules.split(","))
    atomic_write_json(args.output, report)
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
