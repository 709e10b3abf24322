from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
from ignite.engine import Events

from monai_shpeft.errors import SettingsError
from monai_shpeft.handlers import GradientMaskHandler, ImportanceEstimationHandler
from monai_shpeft.importance import NonFiniteGradientError
from monai_shpeft.sparse_set import SparseSetMismatchError, SparseTrainableSet
from tests.helpers import TINY_OPEN_CLIP, image_label_loader, make_trainer, tiny_classifier

SGD = partial(torch.optim.SGD, lr=0.01, momentum=0.9)


def estimate_with_trainer(tmp_path: Path, seed: int = 0, **kwargs) -> tuple[ImportanceEstimationHandler, dict]:
    network = tiny_classifier(seed=seed)
    start = {n: p.detach().clone() for n, p in network.named_parameters()}
    handler = ImportanceEstimationHandler(progress=False, **kwargs)
    trainer = make_trainer(network, image_label_loader(), SGD, [handler])
    # estimation alone: stop the trainer as soon as STARTED handlers ran
    trainer.add_event_handler(Events.STARTED, lambda engine: engine.terminate())
    trainer.run()
    changed = [n for n, p in network.named_parameters() if not torch.equal(p, start[n])]
    return handler, {"changed": changed, "iterations": trainer.state.iteration}


def test_estimation_builds_and_saves_the_set_without_touching_the_model(tmp_path: Path) -> None:
    path = tmp_path / "models" / "sparse_set.safetensors"
    handler, info = estimate_with_trainer(tmp_path, budget=0.01, save_path=path)
    assert info["changed"] == [] and info["iterations"] == 0
    selected = handler.trainable_set
    assert selected.num_selected == round(0.01 * selected.num_total)
    assert selected.header["strategy"] == "l2" and selected.header["backbone"] == "timm:vit_small_patch14_dinov2"
    assert selected.header["estimation_iterations"] == 4  # one epoch of the trainer's loader
    assert SparseTrainableSet.load(path) == selected
    assert all(n.startswith("backbone.") for n in selected.shapes)  # the head is outside the budget
    assert handler.elapsed_seconds is not None


def test_same_data_and_seed_give_the_same_set(tmp_path: Path) -> None:
    first, _ = estimate_with_trainer(tmp_path, budget=0.01)
    second, _ = estimate_with_trainer(tmp_path, budget=0.01)
    other_seed, _ = estimate_with_trainer(tmp_path, budget=0.01, seed=1)
    assert first.trainable_set == second.trainable_set
    assert first.trainable_set != other_seed.trainable_set


def test_ablation_modes_select_different_sets(tmp_path: Path) -> None:
    sets = {
        mode: estimate_with_trainer(tmp_path, budget=0.01, mode=mode)[0].trainable_set
        for mode in ["hybrid", "task_specific", "task_agnostic"]
    }
    assert sets["hybrid"] != sets["task_specific"] and sets["hybrid"] != sets["task_agnostic"]
    l1 = estimate_with_trainer(tmp_path, budget=0.01, strategy="l1")[0].trainable_set
    assert l1 != sets["hybrid"]


def test_load_path_and_reuse_saved(tmp_path: Path) -> None:
    path = tmp_path / "set.safetensors"
    made, _ = estimate_with_trainer(tmp_path, budget=20, save_path=path)
    loaded, _ = estimate_with_trainer(tmp_path, budget=0.5, load_path=path)
    assert loaded.trainable_set == made.trainable_set  # loaded, not re-estimated with the other budget
    reused, _ = estimate_with_trainer(tmp_path, budget=0.5, save_path=path, reuse_saved=True)
    assert reused.trainable_set.num_selected == 20


def test_load_path_for_another_backbone_fails_before_training(tmp_path: Path) -> None:
    path = tmp_path / "set.safetensors"
    estimate_with_trainer(tmp_path, budget=20, save_path=path)
    network = tiny_classifier(TINY_OPEN_CLIP)
    handler = ImportanceEstimationHandler(load_path=path, progress=False)
    trainer = make_trainer(network, image_label_loader(), SGD, [handler, GradientMaskHandler()])
    with pytest.raises(SparseSetMismatchError, match="set.safetensors"):
        trainer.run()
    assert trainer.state.iteration == 0


def test_nan_inputs_stop_estimation_with_a_clear_error(tmp_path: Path) -> None:
    network = tiny_classifier()
    loader = image_label_loader(num_samples=8)
    loader.dataset.data[5]["image"][0, 0, 0] = float("nan")  # second batch
    trainer = make_trainer(network, loader, SGD, [ImportanceEstimationHandler(progress=False)])
    with pytest.raises(NonFiniteGradientError, match="is NaN at mini-batch 1"):
        trainer.run()


def test_dedicated_loader_and_iteration_count(tmp_path: Path) -> None:
    network = tiny_classifier()
    handler = ImportanceEstimationHandler(
        budget=0.01, data_loader=image_label_loader(num_samples=8), num_iterations=5, progress=False
    )
    trainer = make_trainer(network, image_label_loader(), SGD, [handler, GradientMaskHandler()])
    trainer.run()
    assert handler.trainable_set.header["estimation_iterations"] == 5


def test_per_neuron_selection_saves_a_gps_set_and_unknown_selections_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "gps.safetensors"
    handler, info = estimate_with_trainer(
        tmp_path, budget=0.01, strategy="l1", mode="task_specific", selection="per_neuron", save_path=path
    )
    selected = handler.trainable_set
    assert info["changed"] == [] and selected.header["selection"] == "per_neuron"
    assert selected.header["k_per_row"] >= 1 and SparseTrainableSet.load(path) == selected
    global_set, _ = estimate_with_trainer(tmp_path, budget=0.01, strategy="l1", mode="task_specific")
    assert "selection" not in global_set.trainable_set.header and global_set.trainable_set != selected
    # what the bundles pass: the method's recipe replaces the strategy and mode knobs
    recipe, _ = estimate_with_trainer(tmp_path, budget=0.01, strategy="l2", mode="hybrid", method="gps")
    assert recipe.trainable_set == selected
    assert (recipe.trainable_set.header["method"], recipe.trainable_set.header["strategy"]) == ("gps", "l1")
    shpeft, _ = estimate_with_trainer(tmp_path, budget=0.01, method="shpeft")
    assert shpeft.selection == "global" and "method" not in shpeft.trainable_set.header
    with pytest.raises(ValueError, match="selection must be one of global, per_neuron"):
        ImportanceEstimationHandler(selection="per_row")


def test_estimation_in_parts_of_a_mini_batch_selects_the_same_set(tmp_path: Path) -> None:
    whole, _ = estimate_with_trainer(tmp_path, budget=0.01)
    parts, _ = estimate_with_trainer(tmp_path, budget=0.01, estimation_batch_size=1)
    assert parts.trainable_set.header["estimation_batch_size"] == 1
    assert whole.trainable_set.header["estimation_batch_size"] is None
    same = sum(
        int(torch.isin(parts.trainable_set.indices[n], whole.trainable_set.indices[n]).sum())
        for n in whole.trainable_set.shapes
    )
    # the same importance up to float rounding: at most a near-tie at the budget's edge may swap
    assert same >= 0.99 * whole.trainable_set.num_selected


@pytest.mark.parametrize("bad", [0, -1, 2.5, "4", True])
def test_estimation_batch_size_must_be_a_positive_integer(bad: object) -> None:
    with pytest.raises(SettingsError, match="estimation_batch_size must be a positive integer"):
        ImportanceEstimationHandler(estimation_batch_size=bad)  # type: ignore[arg-type]
