from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn

from monai_shpeft.sparse_set import (
    SparseSetMismatchError,
    SparseTrainableSet,
    block_of,
    layer_type_of,
    resolve_budget,
    select_top_k,
    select_top_k_per_row,
)


def random_importance(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "backbone.pos_embed": torch.rand(1, 5, 4, generator=generator),
        "backbone.blocks.0.attn.qkv.weight": torch.rand(12, 4, generator=generator),
        "backbone.blocks.0.norm1.bias": torch.rand(4, generator=generator),
        "backbone.blocks.1.mlp.fc1.weight": torch.rand(8, 4, generator=generator),
        "backbone.norm.weight": torch.rand(4, generator=generator),
    }


@pytest.mark.parametrize("budget", [0.01, 0.1, 0.5, 1.0, 1, 7, 40])
def test_selected_count_equals_budget_exactly(budget: float | int) -> None:
    importance = random_importance()
    total = sum(t.numel() for t in importance.values())
    selected = SparseTrainableSet.from_importance(importance, budget)
    expected = max(1, round(budget * total)) if isinstance(budget, float) else budget
    assert selected.num_selected == expected
    assert selected.num_total == total


def test_selection_takes_the_largest_scores() -> None:
    importance = random_importance()
    selected = SparseTrainableSet.from_importance(importance, 10)
    flat = torch.cat([t.flatten() for t in importance.values()])
    chosen = torch.cat([selected.mask(n).flatten() for n in importance])
    assert flat[chosen].min() > flat[~chosen].max()


def test_ties_are_broken_by_position() -> None:
    importance = {"a": torch.ones(4), "b": torch.ones(3)}
    indices = select_top_k(importance, 5)
    assert indices["a"].tolist() == [0, 1, 2, 3] and indices["b"].tolist() == [0]
    again = select_top_k({"a": torch.ones(4), "b": torch.ones(3)}, 5)
    assert all(torch.equal(indices[n], again[n]) for n in indices)


def test_nan_importance_is_refused() -> None:
    with pytest.raises(ValueError, match="'b' contains NaN"):
        select_top_k({"a": torch.ones(2), "b": torch.tensor([1.0, float("nan")])}, 1)


@pytest.mark.parametrize("budget", [0.0, 1.5, -3, 10_000, True, "1%"])
def test_bad_budgets_are_refused(budget: object) -> None:
    with pytest.raises(ValueError, match="budget"):
        resolve_budget(budget, 100)  # type: ignore[arg-type]


def test_counts_per_block_and_layer_type() -> None:
    selected = SparseTrainableSet.from_importance(random_importance(), 1.0)
    blocks = selected.counts_per_block()
    assert list(blocks) == ["pos_embed", "blocks.0", "blocks.1", "norm"]
    assert blocks["blocks.0"] == (52, 52)
    assert selected.counts_per_layer_type()["attn.qkv.weight"] == (48, 48)
    assert block_of("backbone.transformer.resblocks.11.attn.in_proj_weight") == "blocks.11"
    assert layer_type_of("backbone.transformer.resblocks.11.attn.in_proj_weight") == "attn.in_proj_weight"
    assert block_of("backbone.class_embedding") == "class_embedding"
    table = selected.summary()
    assert "blocks.1" in table and "100.0000%" in table


def test_save_load_round_trip(tmp_path: Path) -> None:
    header = {"backbone": "timm:test", "strategy": "l2", "lambda": 1.0}
    selected = SparseTrainableSet.from_importance(random_importance(), 0.1, header=header)
    path = selected.save(tmp_path / "set.safetensors")
    loaded = SparseTrainableSet.load(path)
    assert loaded == selected
    assert loaded.header["backbone"] == "timm:test" and loaded.header["budget"] == 0.1
    assert loaded.counts_per_block() == selected.counts_per_block()
    with safe_open(str(path), framework="pt") as handle:
        info = json.loads(handle.metadata()["header"])
        assert info["shapes"]["backbone.blocks.0.attn.qkv.weight"] == [12, 4]
        assert info["selected"] == selected.num_selected
        assert all(handle.get_tensor(k).dtype == torch.int32 for k in handle.keys())
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temporary file


def test_loading_something_else_fails_clearly(tmp_path: Path) -> None:
    missing = tmp_path / "none.safetensors"
    with pytest.raises(FileNotFoundError, match="none.safetensors"):
        SparseTrainableSet.load(missing)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="garbage.safetensors"):
        SparseTrainableSet.load(garbage)
    from safetensors.torch import save_file

    other = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(ValueError, match="not a sparse trainable set"):
        SparseTrainableSet.load(other)


class Tiny(nn.Module):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(3, width), nn.LayerNorm(width))
        self.head = nn.Linear(width, 2)


def test_check_compatible_names_the_first_mismatch() -> None:
    model = Tiny()
    importance = {f"backbone.{n}": p.detach().abs() for n, p in model.backbone.named_parameters()}
    selected = SparseTrainableSet.from_importance(importance, 3, header={"backbone": "tiny-4"})
    selected.check_compatible(model.named_parameters())
    with pytest.raises(
        SparseSetMismatchError,
        match=r"'backbone\.0\.weight' has shape \[4, 3\] in the set but "
        r"\[5, 3\] in the model",
    ):
        selected.check_compatible(Tiny(width=5).named_parameters(), source="set.safetensors")

    class Renamed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = nn.Sequential(nn.Identity(), nn.Linear(3, 4), nn.LayerNorm(4))

    with pytest.raises(SparseSetMismatchError, match=r"made for tiny-4: its parameter 'backbone\.0\.weight' is not"):
        selected.check_compatible(Renamed().named_parameters())


def test_indices_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match="outside its 4 entries"):
        SparseTrainableSet(indices={"w": torch.tensor([4])}, shapes={"w": (2, 2)})


# ---------------------------------------------------------------- per-neuron selection (GPS)
MATRICES = ["backbone.blocks.0.attn.qkv.weight", "backbone.blocks.1.mlp.fc1.weight"]  # 12 + 8 rows of 4


# K = max(1, round(budget of the 108 entries / 20 rows)); a row of 4 has at most 4
@pytest.mark.parametrize(("budget", "k", "per_row"), [(0.01, 1, 1), (0.2, 1, 1), (0.3, 2, 2), (40, 2, 2), (1.0, 5, 4)])
def test_per_row_selection_keeps_the_k_largest_of_every_row(budget: float | int, k: int, per_row: int) -> None:
    importance = random_importance()
    selected = SparseTrainableSet.from_importance_per_row(importance, budget, MATRICES, header={"backbone": "t"})
    assert selected.header == {"backbone": "t", "budget": budget, "k_per_row": k}
    for name in MATRICES:
        mask = selected.mask(name)
        assert (mask.sum(dim=1) == per_row).all()
        scores = importance[name]
        if per_row < 4:
            kept = scores.masked_fill(~mask, float("inf")).min(dim=1).values
            dropped = scores.masked_fill(mask, float("-inf")).max(dim=1).values
            assert (kept > dropped).all()
    assert selected.num_selected == 20 * per_row
    assert selected.frozen_names() == [n for n in importance if n not in MATRICES]  # tokens, biases and norms
    assert list(selected.shapes) == list(importance)  # the whole scope, so the set checks against a model


def test_per_row_selection_of_a_convolution_works_per_output_channel_and_round_trips(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(3)
    importance = {"backbone.conv.weight": torch.rand(4, 3, 2, 2, generator=generator), "backbone.b": torch.rand(4)}
    selected = SparseTrainableSet.from_importance_per_row(importance, 8, ["backbone.conv.weight"])
    mask = selected.mask("backbone.conv.weight").reshape(4, -1)
    assert selected.header["k_per_row"] == 2 and (mask.sum(dim=1) == 2).all()
    top = importance["backbone.conv.weight"].reshape(4, -1).topk(2, dim=1).indices
    assert torch.equal(mask.nonzero()[:, 1].reshape(4, 2), top.sort(dim=1).values)
    loaded = SparseTrainableSet.load(selected.save(tmp_path / "gps.safetensors"))
    assert loaded == selected and loaded.header["k_per_row"] == 2


def test_per_row_selection_breaks_ties_by_position_and_takes_short_rows_whole() -> None:
    assert select_top_k_per_row(torch.ones(2, 3), 2).tolist() == [0, 1, 3, 4]
    assert select_top_k_per_row(torch.tensor([[0.0, 2.0, 1.0]]), 5).tolist() == [0, 1, 2]
    default = SparseTrainableSet.from_importance_per_row(random_importance(), 0.2)  # every tensor of 2+ dims
    assert default.counts_per_tensor()["backbone.pos_embed"] == 1  # one row of 20: its single top entry


def test_per_row_selection_refuses_bad_input() -> None:
    importance = random_importance()
    with pytest.raises(ValueError, match="'backbone.norm.weight' is \\[4\\]"):
        SparseTrainableSet.from_importance_per_row(importance, 0.1, ["backbone.norm.weight"])
    with pytest.raises(ValueError, match="not in the importance"):
        SparseTrainableSet.from_importance_per_row(importance, 0.1, ["backbone.head.weight"])
    with pytest.raises(ValueError, match="at least one weight matrix"):
        SparseTrainableSet.from_importance_per_row(importance, 0.1, [])
    importance["backbone.blocks.1.mlp.fc1.weight"][2, 1] = float("nan")
    with pytest.raises(ValueError, match="'backbone.blocks.1.mlp.fc1.weight' contains NaN"):
        SparseTrainableSet.from_importance_per_row(importance, 0.1, MATRICES)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        select_top_k_per_row(torch.ones(2, 2), 0)
    with pytest.raises(ValueError, match="budget"):
        SparseTrainableSet.from_importance_per_row(random_importance(), 0.0, MATRICES)


def sorted_reference_top_k(importance: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """Top k by one stable descending sort of the concatenation: ties in parameter then position order."""
    names = list(importance)
    flat = torch.cat([importance[n].reshape(-1).float() for n in names])
    order = torch.sort(-flat, stable=True).indices[:k]
    chosen = torch.zeros_like(flat, dtype=torch.bool)
    chosen[order] = True
    out, offset = {}, 0
    for name in names:
        numel = importance[name].numel()
        out[name] = torch.nonzero(chosen[offset : offset + numel]).flatten()
        offset += numel
    return out


@pytest.mark.parametrize("case", ["random", "ties", "signed", "structured", "infinite"])
def test_select_top_k_matches_a_full_sort_without_concatenating(case: str) -> None:
    generator = torch.Generator().manual_seed(3)
    if case == "structured":  # sorted rows: a strided sample of them is unlike the whole, the bracket must widen
        importance = {f"t{i}": torch.linspace(0, 1, 40_000) * (i + 1) for i in range(30)}
    else:
        importance = {f"t{i}": torch.rand(int(5_000 * (i + 1)), generator=generator) for i in range(12)}
    if case == "ties":
        importance = {n: (t * 20).round() for n, t in importance.items()}
    if case == "signed":
        importance = {n: t - 0.5 for n, t in importance.items()}
    if case == "infinite":
        importance["t0"][:3] = torch.tensor([float("inf"), float("-inf"), 0.0])
    total = sum(t.numel() for t in importance.values())
    for k in (1, 7, total // 100, total // 3, total - 1, total):
        found = select_top_k(importance, k)
        expected = sorted_reference_top_k(importance, k)
        assert all(torch.equal(found[n], expected[n]) for n in importance), (case, k)
