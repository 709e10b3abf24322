from __future__ import annotations

import copy
import logging
import math
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from monai_shpeft.analysis import (
    HYBRIDITY_FRACTIONS,
    hybridity,
    hybridity_figure,
    set_overlap,
    sparsity_curve,
    sparsity_figure,
    top_changed_positions,
    transplant_top_changes,
    weight_changes,
)
from monai_shpeft.importance import scoped_parameters
from monai_shpeft.plots import save_figure
from monai_shpeft.sparse_set import SparseSetMismatchError, SparseTrainableSet
from tests.helpers import TINY_OPEN_CLIP, image_label_loader, make_trainer, tiny_classifier


@pytest.fixture(scope="module")
def pretrained_and_finetuned() -> tuple[nn.Module, nn.Module]:
    """A tiny ViT and a copy of it fully fine-tuned for one epoch by a real MONAI trainer."""
    pretrained = tiny_classifier(seed=0)
    finetuned = copy.deepcopy(pretrained)
    make_trainer(finetuned, image_label_loader(num_samples=16), partial(torch.optim.SGD, lr=0.05), []).run()
    return pretrained.eval(), finetuned.eval()


def _images(seed: int = 1) -> torch.Tensor:
    return torch.randn(4, 3, 28, 28, generator=torch.Generator().manual_seed(seed))


def _accuracy(model: nn.Module) -> float:
    correct = total = 0
    with torch.no_grad():
        for batch in image_label_loader(num_samples=16):
            correct += int((model(batch["image"]).argmax(1) == batch["label"]).sum())
            total += len(batch["label"])
    return correct / total


def _brute_force_top(changes: dict[str, torch.Tensor], k: int) -> dict[str, np.ndarray]:
    """Top-k flat positions per tensor by a stable sort of all changes (ties: earlier position first)."""
    flat = np.concatenate([t.numpy().ravel() for t in changes.values()])
    chosen = np.zeros(flat.size, dtype=bool)
    chosen[np.argsort(-flat, kind="stable")[:k]] = True
    masks, offset = {}, 0
    for name, tensor in changes.items():
        masks[name] = chosen[offset : offset + tensor.numel()].reshape(tensor.shape)
        offset += tensor.numel()
    return masks


def test_weight_changes_are_absolute_backbone_differences(pretrained_and_finetuned) -> None:
    pretrained, finetuned = pretrained_and_finetuned
    changes = weight_changes(pretrained, finetuned)
    assert list(changes) == list(scoped_parameters(pretrained))  # the backbone only, in model order
    assert not any(name.startswith("head.") for name in changes)
    for name, change in changes.items():
        expected = (dict(finetuned.named_parameters())[name] - dict(pretrained.named_parameters())[name]).abs()
        assert torch.equal(change, expected.detach())
    assert sum(float(c.sum()) for c in changes.values()) > 0  # training really moved the backbone
    from_state_dicts = weight_changes(pretrained.state_dict(), finetuned.state_dict())
    assert list(from_state_dicts) == list(changes)
    assert all(torch.equal(from_state_dicts[n], changes[n]) for n in changes)


@pytest.mark.parametrize(
    ("other", "message"),
    [
        (partial(tiny_classifier, TINY_OPEN_CLIP), r"parameter 'backbone\.\S+' of the pretrained model is not in"),
        (partial(tiny_classifier, image_size=42), r"'backbone\.pos_embed' has shape \[1, 5, 64\] .* \[1, 10, 64\]"),
    ],
    ids=["other_backbone", "other_image_size"],
)
def test_mismatched_models_raise_a_clear_error(pretrained_and_finetuned, other, message: str) -> None:
    pretrained, _ = pretrained_and_finetuned
    with pytest.raises(ValueError, match=message):
        weight_changes(pretrained, other())
    with pytest.raises(ValueError, match=message):
        transplant_top_changes(pretrained, other(), 0.1)


def test_top_k_counts_are_exact_and_nested(pretrained_and_finetuned) -> None:
    changes = weight_changes(*pretrained_and_finetuned)
    total = sum(c.numel() for c in changes.values())
    previous: SparseTrainableSet | None = None
    for fraction in (0.0, 1e-5, 0.001, 0.01, 0.1, 0.37, 1.0):
        positions = top_changed_positions(changes, fraction)
        assert positions.num_selected == (0 if fraction == 0 else max(1, round(fraction * total)))
        if previous is not None:  # a larger k keeps every position of a smaller one
            for name, indices in previous.indices.items():
                assert bool(torch.isin(indices, positions.indices[name]).all())
        previous = positions
    assert top_changed_positions(changes, 1).num_selected == total  # the int 1 means 100%, not one entry
    with pytest.raises(ValueError, match="fraction must be in"):
        top_changed_positions(changes, 1.5)


@pytest.mark.parametrize("fraction", [0.003, 0.05, 0.5])
def test_transplanted_entries_are_exactly_the_largest_changes(pretrained_and_finetuned, fraction: float) -> None:
    pretrained, finetuned = pretrained_and_finetuned
    changes = weight_changes(pretrained, finetuned)
    k = round(fraction * sum(c.numel() for c in changes.values()))
    expected_masks = _brute_force_top(changes, k)
    transplanted = transplant_top_changes(pretrained, finetuned, fraction)
    original, tuned = dict(pretrained.named_parameters()), dict(finetuned.named_parameters())
    for name, parameter in scoped_parameters(transplanted).items():
        mask = torch.from_numpy(expected_masks[name])
        assert torch.equal(parameter.detach(), torch.where(mask, tuned[name], original[name]).detach()), name
    assert sum(int(m.sum()) for m in expected_masks.values()) == k


def test_transplant_of_everything_is_the_finetuned_model(pretrained_and_finetuned) -> None:
    pretrained, finetuned = pretrained_and_finetuned
    before = copy.deepcopy(finetuned.state_dict())
    transplanted = transplant_top_changes(pretrained, finetuned, 1.0)
    images = _images()
    with torch.no_grad():
        assert torch.equal(transplanted(images), finetuned(images))
    assert all(torch.equal(before[n], t) for n, t in finetuned.state_dict().items())  # the inputs are untouched
    assert transplanted is not finetuned


def test_transplant_of_nothing_is_the_pretrained_backbone_under_the_finetuned_head(pretrained_and_finetuned) -> None:
    pretrained, finetuned = pretrained_and_finetuned
    transplanted = transplant_top_changes(pretrained, finetuned, 0.0)
    assert all(
        torch.equal(transplanted.backbone.state_dict()[n], t) for n, t in pretrained.backbone.state_dict().items()
    )
    assert all(torch.equal(transplanted.head.state_dict()[n], t) for n, t in finetuned.head.state_dict().items())
    assembled = copy.deepcopy(pretrained)
    assembled.head.load_state_dict(finetuned.head.state_dict())
    images = _images()
    with torch.no_grad():
        assert torch.equal(transplanted(images), assembled(images))
        assert not torch.equal(transplanted(images), finetuned(images))


def test_transplant_takes_the_head_of_another_task(pretrained_and_finetuned) -> None:
    pretrained, _ = pretrained_and_finetuned
    two_classes = tiny_classifier(num_classes=2, seed=5)  # same backbone, another head: the pretrained has none
    transplanted = transplant_top_changes(pretrained, two_classes, 0.0)
    with torch.no_grad():
        assert transplanted(_images()).shape == (4, 2)


def test_sparsity_curve_runs_from_pretrained_to_finetuned(pretrained_and_finetuned, caplog) -> None:
    pretrained, finetuned = pretrained_and_finetuned
    fractions = [0.0, 0.001, 0.01, 0.1, 0.5, 1.0]
    with caplog.at_level(logging.INFO, logger="monai_shpeft.analysis"):
        points = sparsity_curve(pretrained, finetuned, fractions, _accuracy)
    assert [p.fraction for p in points] == fractions
    counts = [p.num_entries for p in points]
    assert counts[0] == 0 and counts == sorted(counts) and len(set(counts)) == len(counts)
    assert counts[-1] == sum(c.numel() for c in weight_changes(pretrained, finetuned).values())
    assert points[-1].metric == _accuracy(finetuned)
    assert points[0].metric == _accuracy(transplant_top_changes(pretrained, finetuned, 0.0))
    assert "Sparsity 6/6: k=100%" in caplog.text


def _random_scores(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "backbone.patch_embed.proj.weight": torch.rand(400, 1000, generator=generator),
        "backbone.blocks.0.attn.qkv.weight": torch.rand(800, 1000, generator=generator),
        "backbone.blocks.1.mlp.fc1.weight": torch.rand(800, 1000, generator=generator),
    }


def test_hybridity_of_a_ranking_with_itself_is_complete(pretrained_and_finetuned) -> None:
    changes = weight_changes(*pretrained_and_finetuned)
    points = hybridity(changes, changes)
    assert [p.fraction for p in points] == list(HYBRIDITY_FRACTIONS)
    for point in points:
        assert point.overlap == 1.0 and point.iou == 1.0 and point.shared == point.selected_a == point.selected_b
        assert all(math.isnan(b.overlap) or b.overlap == 1.0 for b in point.per_block.values())
        assert sum(b.shared for b in point.per_block.values()) == point.shared


def test_hybridity_of_opposite_rankings_is_zero() -> None:
    scores = _random_scores(0)
    opposite = {name: -tensor for name, tensor in scores.items()}  # top of one = bottom of the other
    for point in hybridity(scores, opposite):
        assert point.shared == 0 and point.overlap == 0.0 and point.iou == 0.0
        assert point.selected_a == point.selected_b == round(point.fraction * point.total) > 0


def test_independent_rankings_overlap_at_the_chance_level_k() -> None:
    points = hybridity(_random_scores(1), _random_scores(2))
    for point in points:
        assert point.chance == pytest.approx(point.fraction, rel=1e-12)
        # shared ~ Binomial(k, k/N): five standard deviations of the overlap around its mean
        tolerance = 5 * math.sqrt(point.fraction * (1 - point.fraction) / point.selected_a)
        assert abs(point.overlap - point.fraction) < tolerance, point.to_dict()
        assert point.iou <= point.overlap
    largest = points[0]  # 5%: 100,000 positions per set, enough to check every block
    assert largest.iou == pytest.approx(largest.shared / (2 * largest.selected_a - largest.shared))
    for block in largest.per_block.values():
        assert abs(block.overlap - largest.fraction) < 0.1 * largest.fraction


def test_hybridity_rejects_rankings_of_different_parameters() -> None:
    scores = _random_scores(0)
    fewer = dict(list(scores.items())[:2])
    with pytest.raises(ValueError, match=r"'backbone\.blocks\.1\.mlp\.fc1\.weight' of the scores of task A"):
        hybridity(scores, fewer)
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        hybridity(scores, scores, fractions=(0.0,))


def test_set_overlap_of_saved_sets(tmp_path: Path) -> None:
    scores_a, scores_b = _random_scores(3), _random_scores(4)
    shared_head = {"backbone": "timm:vit_small_patch14_dinov2"}
    set_a = SparseTrainableSet.from_importance(scores_a, 0.01, header=shared_head)
    set_b = SparseTrainableSet.from_importance(scores_b, 0.02, header=shared_head)
    loaded_a = SparseTrainableSet.load(set_a.save(tmp_path / "a.safetensors"))
    loaded_b = SparseTrainableSet.load(set_b.save(tmp_path / "b.safetensors"))
    point = set_overlap(loaded_a, loaded_b)
    expected = sum(
        int(torch.isin(set_a.indices[n], set_b.indices[n]).sum()) for n in scores_a
    )  # an independent count of the shared positions
    assert point.shared == expected and point.selected_a == 20_000 and point.selected_b == 40_000
    assert point.overlap == pytest.approx(2 * expected / 60_000)
    assert point.chance == pytest.approx(2 * 0.01 * 0.02 / 0.03)
    assert list(point.per_block) == ["patch_embed", "blocks.0", "blocks.1"]
    other = SparseTrainableSet.from_importance(scores_b, 0.02, header={"backbone": "open_clip:ViT-B-16"})
    with pytest.raises(SparseSetMismatchError, match="different backbones"):
        set_overlap(loaded_a, other)
    smaller = SparseTrainableSet.from_importance(dict(list(scores_b.items())[:2]), 0.02)
    with pytest.raises(SparseSetMismatchError, match="blocks.1.mlp.fc1.weight"):
        set_overlap(loaded_a, smaller)


def test_sparsity_figure_shows_the_curve_and_the_reference_levels(tmp_path: Path) -> None:
    from monai_shpeft.analysis import SparsityPoint

    points = [
        SparsityPoint(0.0, 0, 0.30),
        SparsityPoint(0.001, 10, 0.40),
        SparsityPoint(0.1, 1000, 0.78),
        SparsityPoint(1.0, 10000, 0.80),
    ]
    figure = sparsity_figure(points, "macro-F1")
    (axis,) = figure.axes
    assert axis.get_xscale() == "log" and axis.get_ylabel() == "macro-F1"
    curve = axis.lines[0]
    assert list(curve.get_xdata()) == [0.1, 10.0, 100.0]  # k = 0 is not on the log axis ...
    labels = [text.get_text() for text in axis.get_legend().get_texts()]
    assert labels == ["pretrained + top-k% changes", "k = 0 (pretrained backbone)", "full fine-tuning", "95% of full"]
    levels = {line.get_label(): line.get_ydata()[0] for line in axis.lines[1:4]}
    assert levels["k = 0 (pretrained backbone)"] == 0.30  # ... it is a horizontal line
    assert levels["full fine-tuning"] == 0.80 and levels["95% of full"] == pytest.approx(0.76)
    assert [text.get_text() for text in axis.texts] == ["k = 10%"]  # the first k reaching 95% of full
    explicit = sparsity_figure(points, reference=0.9).axes[0]
    assert [line.get_ydata()[0] for line in explicit.lines[2:4]] == pytest.approx([0.9, 0.855])
    with Image.open(save_figure(figure, tmp_path / "sparsity.png")) as image:
        assert image.format == "PNG" and image.size[0] > 300


def test_hybridity_figure_has_overall_bars_and_per_block_lines(tmp_path: Path) -> None:
    points = hybridity(_random_scores(1), _random_scores(2))
    figure = hybridity_figure(points)
    overall, per_block = figure.axes
    assert len(overall.patches) == 2 * len(points)  # measured and chance bars per k
    assert [t.get_text() for t in overall.get_xticklabels()] == ["5%", "1%", "0.1%", "0.05%"]
    assert len(per_block.lines) == 2 * len(points)  # one curve and one chance level per k
    assert [t.get_text() for t in per_block.get_xticklabels()] == ["patch_embed", "blocks.0", "blocks.1"]
    assert list(per_block.lines[1].get_ydata()) == [points[0].chance] * 2
    assert hybridity_figure(points[:1], title="task A vs task B").get_suptitle() == "task A vs task B"
    with Image.open(save_figure(figure, tmp_path / "hybridity.png")) as image:
        assert image.format == "PNG" and image.size[0] > 300
