"""Shared builders for tests: tiny real models and MONAI trainers on small in-memory data."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedTrainer

from monai_shpeft.backbones import BackboneClassifier, build_classifier

TINY_TIMM = "timm:vit_small_patch14_dinov2"
TINY_OPEN_CLIP = "open_clip:ViT-B-16"


def tiny_classifier(
    backbone: str = TINY_TIMM, num_classes: int = 3, image_size: int = 28, seed: int = 0
) -> BackboneClassifier:
    """A tiny ViT of the named family, randomly initialised with a fixed seed."""
    torch.manual_seed(seed)
    return build_classifier(backbone, num_classes=num_classes, image_size=image_size, tiny=True)


def image_label_loader(
    num_samples: int = 16, image_size: int = 28, num_classes: int = 3, batch_size: int = 4, seed: int = 0
) -> DataLoader:
    """A MONAI DataLoader over ``{"image", "label"}`` dictionaries whose labels depend on the images."""
    generator = torch.Generator().manual_seed(seed)
    items = []
    for index in range(num_samples):
        label = index % num_classes
        image = torch.randn(3, image_size, image_size, generator=generator) * 0.5 + label
        items.append({"image": image, "label": torch.tensor(label)})
    return DataLoader(Dataset(items), batch_size=batch_size, shuffle=False, num_workers=0)


def make_trainer(
    network: torch.nn.Module,
    loader: DataLoader,
    optimizer_factory: Callable[[Any], torch.optim.Optimizer],
    handlers: Sequence[Any],
    max_epochs: int = 1,
) -> SupervisedTrainer:
    """A real MONAI SupervisedTrainer on the CPU with cross-entropy loss."""
    optimizer = optimizer_factory(network.parameters())
    return SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=max_epochs,
        train_data_loader=loader,
        network=network,
        optimizer=optimizer,
        loss_function=torch.nn.CrossEntropyLoss(),
        train_handlers=list(handlers),
    )
