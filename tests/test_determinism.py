"""The same seed and data give the same split, the same sparse trainable set and, on the CPU, the same run."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.utils import set_determinism

from monai_shpeft.backbones import build_classifier
from monai_shpeft.data import prepare_datalist
from monai_shpeft.importance import estimate_importance
from monai_shpeft.sparse_set import SparseTrainableSet
from tests.helpers import TINY_BUNDLE_ARGS, copy_bundles, monai_bundle, run_command, write_busi_folder

BUNDLE = "bundles/busi"
PARTS = ("training", "validation", "test")


def test_same_seed_gives_the_same_datalist_file_and_another_seed_another_split(tmp_path: Path) -> None:
    root = write_busi_folder(tmp_path / "busi", per_class=10)
    for mode in ("report", "keep_together"):
        first = tmp_path / f"{mode}_a.json"
        second = tmp_path / f"{mode}_b.json"
        prepare_datalist("busi", root, first, seed=7, duplicates=mode)
        prepare_datalist("busi", root, second, seed=7, duplicates=mode)
        assert first.read_bytes() == second.read_bytes()
    other = prepare_datalist("busi", root, tmp_path / "seed8.json", seed=8)
    same = json.loads((tmp_path / "report_a.json").read_text())
    assert {p: other[p] for p in PARTS} != {p: same[p] for p in PARTS}


def sparse_set_of_a_seeded_run(seed: int) -> SparseTrainableSet:
    """Seed, build a tiny ViT, estimate importance over a shuffled loader, select 1%: what a bundle does first."""
    set_determinism(seed=seed)
    network = build_classifier("timm:vit_small_patch14_dinov2", num_classes=3, image_size=28, tiny=True)
    items = [{"image": torch.randn(3, 28, 28) + label, "label": torch.tensor(label)} for label in (0, 1, 2) * 8]
    loader = DataLoader(Dataset(items), batch_size=4, shuffle=True, num_workers=0)
    importance = estimate_importance(network, loader, torch.nn.CrossEntropyLoss())
    return SparseTrainableSet.from_importance(importance, 0.01)


def test_importance_and_selection_are_deterministic_for_a_seed() -> None:
    try:
        first, second = sparse_set_of_a_seeded_run(3), sparse_set_of_a_seeded_run(3)
        assert first.fingerprint() == second.fingerprint() and first.num_selected == second.num_selected > 0
        assert sparse_set_of_a_seeded_run(4).fingerprint() != first.fingerprint()
    finally:
        set_determinism(seed=None)  # other tests should not inherit the seeded state


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every TensorBoard scalar series of a run (validation metrics per epoch, training loss per iteration)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def train(work: Path) -> Path:
    args = ("--config_file", f"{BUNDLE}/configs/train.json", "--dataset_dir", "busi", "--max_epochs", "2")
    run_command(monai_bundle("run", *args, "--learning_rate", "0.05", "--seed", "5", *TINY_BUNDLE_ARGS), cwd=work)
    return work / BUNDLE


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two copies of the bundle trained side by side (two processes) with the same seed on the same images."""
    works = []
    for name in ("first", "second"):
        work = copy_bundles(tmp_path_factory.mktemp(name))
        write_busi_folder(work / "busi", per_class=20)
        works.append(work)
    with ThreadPoolExecutor(max_workers=2) as pool:
        first, second = pool.map(train, works)
    return first, second


def test_two_bundle_runs_with_one_seed_agree_exactly(two_runs: tuple[Path, Path]) -> None:
    first, second = two_runs
    splits = [json.loads((run / "runs" / "datalist.json").read_text()) for run in two_runs]
    assert {p: splits[0][p] for p in PARTS} == {p: splits[1][p] for p in PARTS}

    sets = [SparseTrainableSet.load(run / "models" / "sparse_trainable_set.safetensors") for run in two_runs]
    assert sets[0].fingerprint() == sets[1].fingerprint() and sets[0].num_selected > 0

    states = [torch.load(run / "models" / "model.pt", map_location="cpu", weights_only=True) for run in two_runs]
    assert states[0].keys() == states[1].keys()
    for name, tensor in states[0].items():
        assert torch.equal(tensor, states[1][name]), name

    series = [scalars(run / "runs") for run in two_runs]
    assert {"val_f1", "val_accuracy", "val_auc", "train_loss"} <= set(series[0])
    # epoch 0 (the warmed head, validated before training), the two epochs, and the average of the two (epoch 3)
    assert len(series[0]["val_f1"]) == 4 and len(series[0]["train_loss"]) > 2
    assert series[0] == series[1]  # bit-equal floats: every validation metric and every training loss
