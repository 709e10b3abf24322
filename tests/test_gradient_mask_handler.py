from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
from monai.engines.utils import IterationEvents

from monai_shpeft.handlers import GradientMaskHandler, ImportanceEstimationHandler
from monai_shpeft.sparse_set import SparseSetMismatchError, SparseTrainableSet
from tests.helpers import TINY_OPEN_CLIP, TINY_TIMM, image_label_loader, make_trainer, tiny_classifier

OPTIMIZERS = {
    "sgd": partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=1e-4),
    "adamw": partial(torch.optim.AdamW, lr=1e-2, weight_decay=0.05),
}


def train_sparse(
    backbone: str,
    optimizer: str,
    budget: float | int = 0.01,
    iterations: int = 20,
    compact: bool | None = None,
    extra_handlers: Sequence[Any] = (),
    mask_handler: GradientMaskHandler | None = None,
):
    torch.manual_seed(0)
    network = tiny_classifier(backbone)
    before = {n: p.detach().clone() for n, p in network.named_parameters()}
    loader = image_label_loader(num_samples=4 * iterations // 2, batch_size=4)  # 10 batches, 2 epochs
    estimation = ImportanceEstimationHandler(budget=budget, progress=False)
    handlers = [estimation, mask_handler or GradientMaskHandler(compact=compact), *extra_handlers]
    trainer = make_trainer(network, loader, OPTIMIZERS[optimizer], handlers, max_epochs=2)
    trainer.run()
    assert trainer.state.iteration == iterations
    return network, before, estimation.trainable_set, trainer


@pytest.mark.parametrize("compact", [True, False])
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("backbone", [TINY_TIMM, TINY_OPEN_CLIP])
def test_only_selected_entries_and_head_change(backbone: str, optimizer: str, compact: bool) -> None:
    network, before, trainable_set, _ = train_sparse(backbone, optimizer, compact=compact)
    assert trainable_set is not None
    changed_selected = total_selected = 0
    for name, param in network.named_parameters():
        after = param.detach()
        if name.startswith("head."):
            assert not torch.equal(after, before[name]), f"head parameter {name} did not train"
            continue
        mask = trainable_set.mask(name)
        # bit-identical outside the set, despite momentum and (decoupled) weight decay
        assert torch.equal(after[~mask], before[name][~mask]), f"frozen entries of {name} moved"
        changed_selected += int((after[mask] != before[name][mask]).sum())
        total_selected += int(mask.sum())
    assert total_selected == trainable_set.num_selected
    assert changed_selected >= 0.9 * total_selected


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("backbone", [TINY_TIMM, TINY_OPEN_CLIP])
def test_compact_and_dense_updates_train_the_same_weights(backbone: str, optimizer: str) -> None:
    compact, _, compact_set, _ = train_sparse(backbone, optimizer, compact=True)
    dense, _, dense_set, _ = train_sparse(backbone, optimizer, compact=False)
    assert compact_set == dense_set
    for (name, a), b in zip(compact.named_parameters(), dense.parameters()):
        assert torch.equal(a, b), f"{name} differs between the compact and the dense update"


class StateProbe:
    """Records, during training, the gradients and optimizer state the backbone holds."""

    def __init__(self) -> None:
        self.dense_grads_after_backward: list[str] = []
        self.state_sizes: dict[int, int] = {}

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self.after_backward)
        engine.add_event_handler(IterationEvents.MODEL_COMPLETED, self.after_step)

    def after_backward(self, engine: Any) -> None:
        for name, param in engine.network.backbone.named_parameters():
            if param.grad is not None:
                self.dense_grads_after_backward.append(name)

    def after_step(self, engine: Any) -> None:
        for param, state in engine.optimizer.state.items():
            self.state_sizes[id(param)] = sum(v.numel() for v in state.values() if v.dim() > 0)


def test_compact_update_keeps_gradients_and_state_for_the_selected_entries_only() -> None:
    probe, mask_handler = StateProbe(), GradientMaskHandler()
    network, _, trainable_set, trainer = train_sparse(
        TINY_TIMM, "adamw", budget=0.02, extra_handlers=[probe], mask_handler=mask_handler
    )
    assert probe.dense_grads_after_backward == [], "a dense backbone gradient outlived backward"
    head = sum(p.numel() for p in network.head.parameters())
    # AdamW keeps two moments per trainable entry: selected entries and the head, nothing else
    assert sum(probe.state_sizes.values()) == 2 * (trainable_set.num_selected + head)
    assert mask_handler.compact_update is None, "the hooks must not outlive the run"
    # after the run, the optimizer holds the dense tensors again and a backward pass fills dense gradients as usual
    assert {id(p) for g in trainer.optimizer.param_groups for p in g["params"]} == {id(p) for p in network.parameters()}
    network(torch.randn(2, 3, 28, 28)).sum().backward()
    assert all(p.grad is not None for n, p in network.named_parameters() if n in trainable_set.trainable_names())


def test_dense_update_keeps_full_gradients_and_frozen_tensors_get_none() -> None:
    network, _, trainable_set, trainer = train_sparse(TINY_TIMM, "adamw", budget=5, compact=False)
    params = dict(network.named_parameters())
    frozen = trainable_set.frozen_names()
    assert frozen, "with 5 weights most tensors hold none"
    for name in frozen:
        assert params[name].requires_grad is False and params[name].grad is None
        assert params[name] not in trainer.optimizer.state
    for name in trainable_set.trainable_names():
        assert params[name] in trainer.optimizer.state
        assert trainer.optimizer.state[params[name]]["exp_avg"].shape == params[name].shape


def test_compact_update_is_refused_under_data_parallel_and_dense_is_chosen() -> None:
    wrapped = torch.nn.DataParallel(tiny_classifier())
    estimation = ImportanceEstimationHandler(budget=0.02, progress=False)
    auto = GradientMaskHandler()
    trainer = make_trainer(wrapped, image_label_loader(num_samples=8), OPTIMIZERS["adamw"], [estimation, auto])
    trainer.run()
    assert auto.compact_update is None and auto.restores_frozen_entries
    refused = GradientMaskHandler(compact=True)
    trainer = make_trainer(wrapped, image_label_loader(num_samples=8), OPTIMIZERS["adamw"], [estimation, refused])
    with pytest.raises(ValueError, match="data-parallel"):
        trainer.run()


def test_without_weight_decay_no_copy_is_kept_and_entries_still_stay_identical() -> None:
    network = tiny_classifier()
    before = {n: p.detach().clone() for n, p in network.named_parameters()}
    mask_handler = GradientMaskHandler(compact=False)
    sgd = partial(torch.optim.SGD, lr=0.1, momentum=0.9)
    trainer = make_trainer(
        network, image_label_loader(), sgd, [mask_handler, ImportanceEstimationHandler(budget=0.05, progress=False)]
    )
    trainer.run()  # the mask handler is attached first: it waits for the estimation
    assert mask_handler._references == {}
    selected = mask_handler.active_set
    for name, param in network.named_parameters():
        if not name.startswith("head."):
            mask = selected.mask(name)
            assert torch.equal(param.detach()[~mask], before[name][~mask])


def test_set_from_file_and_mismatch(tmp_path: Path) -> None:
    network = tiny_classifier()
    importance = {f"backbone.{n}": p.detach().abs() for n, p in network.backbone.named_parameters()}
    path = SparseTrainableSet.from_importance(importance, 0.02, header={"backbone": "timm tiny"}).save(
        tmp_path / "set.safetensors"
    )
    handler = GradientMaskHandler(trainable_set=path)
    trainer = make_trainer(network, image_label_loader(num_samples=4), OPTIMIZERS["sgd"], [handler])
    trainer.run()
    assert handler.active_set == SparseTrainableSet.load(path)

    other = tiny_classifier(TINY_OPEN_CLIP)
    trainer = make_trainer(
        other, image_label_loader(num_samples=4), OPTIMIZERS["sgd"], [GradientMaskHandler(trainable_set=path)]
    )
    with pytest.raises(SparseSetMismatchError, match=r"set \(from .*set\.safetensors\) was made for timm tiny"):
        trainer.run()


def test_missing_set_is_a_clear_error() -> None:
    trainer = make_trainer(
        tiny_classifier(), image_label_loader(num_samples=4), OPTIMIZERS["sgd"], [GradientMaskHandler()]
    )
    with pytest.raises(RuntimeError, match="no sparse trainable set"):
        trainer.run()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="AMP training needs a CUDA device")
def test_amp_on_gpu_keeps_frozen_entries_identical() -> None:
    from monai.engines import SupervisedTrainer

    device = torch.device("cuda")
    network = tiny_classifier().to(device)
    before = {n: p.detach().clone() for n, p in network.named_parameters()}
    estimation = ImportanceEstimationHandler(budget=0.01, progress=False)
    trainer = SupervisedTrainer(
        device=device,
        max_epochs=2,
        train_data_loader=image_label_loader(num_samples=20),
        network=network,
        optimizer=OPTIMIZERS["adamw"](network.parameters()),
        loss_function=torch.nn.CrossEntropyLoss(),
        train_handlers=[estimation, GradientMaskHandler()],
        amp=True,
    )
    trainer.run()
    selected = estimation.trainable_set
    for name, param in network.named_parameters():
        if not name.startswith("head."):
            mask = selected.mask(name, device=device)
            assert torch.equal(param.detach()[~mask], before[name][~mask])
