"""Shared builders for tests: tiny real models and MONAI trainers on small in-memory data."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
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


REPO_ROOT = Path(__file__).resolve().parents[1]


def write_png(path: Path, size: int = 40, value: int = 128, mode: str = "RGB") -> Path:
    """A real PNG with a little structure (so that classes can differ), written with PIL."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(value)
    pixels = np.clip(rng.normal(value, 30, (size, size, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    path.parent.mkdir(parents=True, exist_ok=True)
    (image.convert("L") if mode == "L" else image).save(path)
    return path


def write_busi_folder(root: Path, per_class: int = 6, size: int = 40) -> Path:
    """A BUSI-layout folder (benign / malignant / normal, with the release's *_mask.png files)."""
    for label, name in enumerate(("benign", "malignant", "normal")):
        for index in range(1, per_class + 1):
            mode = "L" if index == 1 else "RGB"  # the release mixes grey and RGB PNGs
            write_png(root / name / f"{name} ({index}).png", size, 60 + 60 * label + index, mode)
            write_png(root / name / f"{name} ({index})_mask.png", size, 255, "L")
    return root


def copy_bundles(destination: Path, names: Sequence[str] = ("busi",)) -> Path:
    """Copy the named (self-contained) bundles to ``<destination>/bundles``, so runs write into the copy."""
    import shutil

    for name in names:
        shutil.copytree(
            REPO_ROOT / "bundles" / name,
            destination / "bundles" / name,
            ignore=shutil.ignore_patterns("runs", "*.pt", "*.ts", "*.safetensors"),
        )
    return destination


def monai_bundle(verb: str, *args: str) -> list[str]:
    """The command line ``python -m monai.bundle <verb> <args...>`` with this interpreter."""
    import sys

    return [sys.executable, "-m", "monai.bundle", verb, *args]


def torchrun_bundle(nproc: int, port: int, *args: str) -> list[str]:
    """The command line ``torchrun --nproc_per_node N --master_port P -m monai.bundle run <args...>``."""
    import shutil
    import sys

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun is installed with torch"
    return [torchrun, "--nproc_per_node", str(nproc), "--master_port", str(port), "-m", "monai.bundle", "run", *args]


def run_process(args: Sequence[str], cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a real subprocess (one OpenMP thread, unbuffered output) and return it, whatever its exit status."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def run_command(args: Sequence[str], cwd: Path, timeout: int = 600, tail: int = 4000) -> str:
    """Run a real subprocess; fail the test with the end of its output when it exits non-zero."""
    done = run_process(args, cwd, timeout)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {done.returncode}:\n{output[-tail:]}")
    return output


# knobs that make a bundle run tiny: a 2-layer backbone of the real family, random weights, 28 px, CPU
TINY_BUNDLE_ARGS = (
    "--backbone timm:vit_small_patch14_dinov2 --tiny_backbone True --pretrained $None --image_size 28 "
    "--batch_size 4 --num_workers 0 --device cpu"
).split()
