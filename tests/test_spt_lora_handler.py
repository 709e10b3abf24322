from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedTrainer
from monai.handlers import LrScheduleHandler

from monai_shpeft.handlers import GradientMaskHandler, SPTLoRAHandler
from monai_shpeft.methods import spt_lora
from monai_shpeft.methods.base import count_trainable
from monai_shpeft.sparse_set import SparseTrainableSet
from tests.helpers import tiny_classifier

IMAGE_SIZE = 56
# on the tiny ViT this budget and rank give both LoRA and unstructured matrices (see test_methods_spt_lora)
BUDGET, RANK = 0.05, 4


def in_memory_loader(num_samples: int = 12, num_classes: int = 3, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    items = [
        {"image": torch.randn(3, IMAGE_SIZE, IMAGE_SIZE, generator=generator) * 0.5 + i % num_classes,
         "label": i % num_classes}
        for i in range(num_samples)
    ]  # fmt: skip
    return DataLoader(Dataset(items), batch_size=4, shuffle=False, num_workers=0)


def spt_trainer(
    network: torch.nn.Module, handlers: list, max_epochs: int = 2
) -> tuple[SupervisedTrainer, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    optimizer = torch.optim.AdamW(
        [{"params": list(network.backbone.parameters()), "name": "backbone"}, {"params": network.head.parameters()}],
        lr=1e-2,
        weight_decay=0.05,
    )
    # T_max=1 over 2 epochs takes CosineAnnealingLR's restart branch, which zips base_lrs with the groups strictly
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=1)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=max_epochs,
        train_data_loader=in_memory_loader(),
        network=network,
        optimizer=optimizer,
        loss_function=torch.nn.CrossEntropyLoss(),
        train_handlers=[*handlers, LrScheduleHandler(scheduler, print_lr=False)],
    )
    return trainer, optimizer, scheduler


def test_training_moves_lora_the_selected_entries_and_the_head_only(tmp_path: Path) -> None:
    network = tiny_classifier(image_size=IMAGE_SIZE)
    start = {id(p): p.detach().clone() for p in network.parameters()}
    path = tmp_path / "models" / "spt_set.safetensors"
    handler = SPTLoRAHandler(budget=BUDGET, rank=RANK, alpha=8, save_path=path, progress=False)
    mask = GradientMaskHandler()
    trainer, optimizer, scheduler = spt_trainer(network, [handler, mask])
    trainer.run()

    selection, trainable_set = handler.selection, handler.trainable_set
    assert selection is not None and trainable_set is not None
    assert selection.lora_modules and selection.sparse, "the test budget must give both kinds of tuning"
    assert mask.active_set is trainable_set and trainer.state.sparse_trainable_set is trainable_set
    assert trainable_set.header["estimation_iterations"] == 3  # one epoch of the trainer
    assert SparseTrainableSet.load(path) == trainable_set

    params = dict(network.named_parameters())
    lora = spt_lora.lora_parameters(network, selection.lora_modules)
    assert set(lora) == {n for n, p in params.items() if id(p) not in start}
    # the LoRA tensors trained, in their own optimizer group with the backbone's hyperparameters and schedule
    lora_group = next(g for g in optimizer.param_groups if g.get("name") == "lora")
    assert {id(p) for p in lora_group["params"]} == {id(p) for p in lora.values()}
    assert lora_group["weight_decay"] == 0.05
    assert len(scheduler.base_lrs) == len(optimizer.param_groups) == 3
    assert lora_group["lr"] == optimizer.param_groups[0]["lr"]
    for name, param in lora.items():
        if ".lora_B." in name:
            assert param.abs().sum() > 0, name  # lora_B starts at zero
    # the backbone moved exactly where the set says: LoRA-ed and other frozen weights bit-identical
    moved_entries = 0
    for name in trainable_set.shapes:
        param = params[name]
        if name in lora:
            continue
        before = start[id(param)]
        frozen = ~trainable_set.mask(name)
        assert torch.equal(param.detach()[frozen], before[frozen]), name
        moved_entries += int((param.detach() != before).sum())
    assert 0 < moved_entries <= selection.num_unstructured
    for name in selection.sparse:
        assert not torch.equal(params[name].detach(), start[id(params[name])]), name
    for module in selection.lora_modules:
        base = params[f"{module}.base_layer.weight"]
        assert torch.equal(base.detach(), start[id(base)])
    assert all(not torch.equal(p.detach(), start[id(p)]) for p in network.head.parameters())

    head = sum(p.numel() for p in network.head.parameters())
    assert count_trainable(network, trainable_set).trainable == selection.num_trainable + head

    # evaluation: rebuild the structure from the saved set, load the trained weights, same outputs
    fresh = spt_lora.apply_from_file(tiny_classifier(image_size=IMAGE_SIZE, seed=1), path)
    fresh.load_state_dict(network.state_dict())
    images = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    network.eval(), fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(images), network(images), rtol=0, atol=0)


def test_handler_refuses_a_network_that_already_has_lora(tmp_path: Path) -> None:
    network = spt_lora.apply(tiny_classifier(image_size=IMAGE_SIZE), ["backbone.blocks.0.attn.qkv"], rank=2)
    trainer, _, _ = spt_trainer(network, [SPTLoRAHandler(progress=False), GradientMaskHandler()], max_epochs=1)
    with pytest.raises(RuntimeError, match="LoRA already in the network"):
        trainer.run()


def test_handler_rejects_a_bad_rank() -> None:
    with pytest.raises(ValueError, match="rank"):
        SPTLoRAHandler(rank=0)
