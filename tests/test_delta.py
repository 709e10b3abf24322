"""Sparse delta: export a real SH-PEFT training run, rebuild the exact model, refuse the wrong backbone."""

from __future__ import annotations

import copy
from functools import partial
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from monai_shpeft.backbones import build_classifier
from monai_shpeft.delta import (
    DeltaMismatchError,
    SparseDelta,
    apply_delta,
    choose_weights,
    recorded_pretrained,
    size_report,
)
from monai_shpeft.handlers import GradientMaskHandler, ImportanceEstimationHandler
from monai_shpeft.utils import sha256_of_file
from tests.helpers import TINY_OPEN_CLIP, TINY_TIMM, image_label_loader, make_trainer, tiny_classifier


def write_backbone_weights(path: Path, backbone: str, seed: int) -> Path:
    """A local "public" weights file: a tiny backbone's own state dict, as a downloaded file would hold it."""
    state = {k: v.contiguous() for k, v in tiny_classifier(backbone, seed=seed).backbone.state_dict().items()}
    save_file(state, str(path))
    return path


def build(backbone: str, weights: Path) -> torch.nn.Module:
    torch.manual_seed(123)  # the head's random start differs from the trained head anyway
    return build_classifier(backbone, num_classes=3, pretrained=weights, image_size=28, tiny=True)


def train_shpeft(network: torch.nn.Module, budget: float = 0.02) -> tuple[torch.nn.Module, object]:
    estimation = ImportanceEstimationHandler(budget=budget, progress=False)
    sgd = partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=1e-4)
    make_trainer(network, image_label_loader(), sgd, [estimation, GradientMaskHandler()], max_epochs=2).run()
    return network, estimation.trainable_set


@pytest.fixture(params=[TINY_TIMM, TINY_OPEN_CLIP], ids=["timm", "open_clip"])
def trained_pair(request: pytest.FixtureRequest, tmp_path: Path):
    weights = write_backbone_weights(tmp_path / "backbone.safetensors", request.param, seed=7)
    pretrained = build(request.param, weights)
    trained, trainable_set = train_shpeft(copy.deepcopy(pretrained))
    return request.param, weights, pretrained, trained, trainable_set


def test_delta_rebuilds_the_trained_model_exactly(trained_pair, tmp_path: Path) -> None:
    backbone, weights, pretrained, trained, trainable_set = trained_pair
    recipe = {"backbone": backbone, "pretrained": str(weights), "pretrained_sha256": sha256_of_file(weights)}
    delta = SparseDelta.from_networks(pretrained, trained, recipe=recipe)
    path = delta.save(tmp_path / "delta.safetensors")

    # the changed backbone entries are exactly those inside the trainable set that moved
    moved = 0
    for name, param in trained.named_parameters():
        if name.startswith("head."):
            continue
        changed = param.detach() != pretrained.get_parameter(name).detach()
        assert not (changed & ~trainable_set.mask(name)).any()
        moved += int(changed.sum())
    # small tensors that mostly changed (e.g. the class token) are cheaper whole than by index
    whole = [name for name in delta.dense if not name.startswith("head.")]
    changed_whole = sum(int((trained.get_parameter(n) != pretrained.get_parameter(n)).sum()) for n in whole)
    assert delta.num_sparse_entries + changed_whole == moved > 0
    assert {"head.linear.weight", "head.linear.bias"} <= set(delta.dense)
    assert sum(trained.get_parameter(n).numel() for n in whole) < 0.2 * trainable_set.num_total

    rebuilt = apply_delta(build(backbone, weights), path)
    for name, value in trained.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[name], value), name
    image = torch.rand(2, 3, 28, 28)
    trained.eval(), rebuilt.eval()
    assert torch.equal(rebuilt(image), trained(image))

    loaded = SparseDelta.load(path)
    assert loaded.recipe == recipe and loaded.base_sha256 == delta.base_sha256
    full = tmp_path / "model.pt"
    torch.save(trained.state_dict(), full)
    report = size_report(path, full)
    assert report["sparse_entries"] == delta.num_sparse_entries
    assert report["delta_bytes"] < report["checkpoint_bytes"]


def test_other_backbone_weights_are_refused_with_the_file_to_pass(trained_pair, tmp_path: Path) -> None:
    backbone, weights, pretrained, trained, _ = trained_pair
    recipe = {"backbone": backbone, "pretrained": str(weights), "pretrained_sha256": sha256_of_file(weights)}
    path = SparseDelta.from_networks(pretrained, trained, recipe=recipe).save(tmp_path / "delta.safetensors")
    other_weights = write_backbone_weights(tmp_path / "other.safetensors", backbone, seed=8)
    with pytest.raises(
        DeltaMismatchError, match=r"not the ones the sparse delta .*delta.safetensors.*backbone\.safetensors"
    ):
        apply_delta(build(backbone, other_weights), path)


def test_another_architecture_is_refused_naming_the_entry(tmp_path: Path) -> None:
    weights = write_backbone_weights(tmp_path / "timm.safetensors", TINY_TIMM, seed=1)
    pretrained = build(TINY_TIMM, weights)
    trained, _ = train_shpeft(copy.deepcopy(pretrained))
    path = SparseDelta.from_networks(pretrained, trained, recipe={"backbone": TINY_TIMM}).save(
        tmp_path / "d.safetensors"
    )
    clip = tiny_classifier(TINY_OPEN_CLIP)
    with pytest.raises(DeltaMismatchError, match=r"made for backbone=timm:vit_small_patch14_dinov2.*has no entry"):
        apply_delta(clip, path)
    other_size = build_classifier(TINY_TIMM, num_classes=3, pretrained=weights, image_size=42, tiny=True)
    with pytest.raises(DeltaMismatchError, match=r"shape"):
        apply_delta(other_size, path)
    five_classes = build_classifier(TINY_TIMM, num_classes=5, pretrained=weights, image_size=28, tiny=True)
    with pytest.raises(DeltaMismatchError, match=r"head\.linear\.\w+. has shape \[3\] there but \[5\]"):
        apply_delta(five_classes, path)


def test_mostly_changed_tensors_are_stored_whole_and_untouched_ones_not_at_all(tmp_path: Path) -> None:
    weights = write_backbone_weights(tmp_path / "w.safetensors", TINY_TIMM, seed=3)
    pretrained = build(TINY_TIMM, weights)
    trained = copy.deepcopy(pretrained)
    with torch.no_grad():
        trained.backbone.get_parameter("cls_token").add_(1.0)  # every entry changes
        norm = trained.backbone.get_parameter("norm.weight")
        norm[:3] += 0.5  # 3 of 64 entries
    delta = SparseDelta.from_networks(pretrained, trained)
    assert "backbone.cls_token" in delta.dense
    indices, values = delta.sparse["backbone.norm.weight"]
    assert indices.tolist() == [0, 1, 2] and indices.dtype == torch.int32
    assert torch.equal(values, norm.detach()[:3])
    assert set(delta.sparse) == {"backbone.norm.weight"}
    rebuilt = delta.apply_to(build(TINY_TIMM, weights))
    assert all(torch.equal(rebuilt.state_dict()[k], v) for k, v in trained.state_dict().items())


def test_structure_mismatch_between_the_two_networks_is_refused() -> None:
    with pytest.raises(DeltaMismatchError, match=r"differ in structure"):
        SparseDelta.from_networks(tiny_classifier(TINY_TIMM), tiny_classifier(TINY_OPEN_CLIP))


def test_a_file_that_is_not_a_delta(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"sparse delta file not found"):
        SparseDelta.load(tmp_path / "missing.safetensors")
    other = tmp_path / "weights.safetensors"
    save_file({"x": torch.zeros(2)}, str(other))
    with pytest.raises(ValueError, match=r"not a sparse delta"):
        SparseDelta.load(other)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00\x01 not safetensors")
    with pytest.raises(ValueError, match=r"not a readable safetensors file"):
        SparseDelta.load(broken)


def test_recorded_pretrained_finds_the_file_or_says_which_to_pass(tmp_path: Path) -> None:
    weights = write_backbone_weights(tmp_path / "vit_weights.safetensors", TINY_TIMM, seed=4)
    pretrained = build(TINY_TIMM, weights)
    recipe = {"backbone": TINY_TIMM, "pretrained": str(weights), "pretrained_sha256": sha256_of_file(weights)}
    path = SparseDelta.from_networks(pretrained, copy.deepcopy(pretrained), recipe=recipe).save(tmp_path / "d.st")
    assert recorded_pretrained(path) == str(weights)
    weights.rename(tmp_path / "moved.safetensors")
    with pytest.raises(FileNotFoundError, match=r"--pretrained /path/to/vit_weights.safetensors"):
        recorded_pretrained(path)
    tagged = SparseDelta.from_networks(pretrained, pretrained, recipe={"pretrained": "openai"})
    assert recorded_pretrained(tagged.save(tmp_path / "t.st")) == "openai"


def test_choose_weights(tmp_path: Path) -> None:
    ckpt, delta = tmp_path / "model.pt", tmp_path / "delta.safetensors"
    assert choose_weights("auto", ckpt, delta) == "checkpoint"  # untrained: builds; inference stops at the loader
    delta.write_bytes(b"x")
    assert choose_weights("auto", ckpt, delta) == "delta"
    with pytest.raises(FileNotFoundError, match=r"--weights checkpoint"):
        choose_weights("checkpoint", ckpt, delta)
    ckpt.write_bytes(b"x")
    assert choose_weights("auto", ckpt, delta) == "checkpoint"
    assert choose_weights("delta", ckpt, delta) == "delta"
    with pytest.raises(ValueError, match=r"weights must be one of"):
        choose_weights("latest", ckpt, delta)
