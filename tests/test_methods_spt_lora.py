from __future__ import annotations

from pathlib import Path

import pytest
import torch

from monai_shpeft.importance import estimate_importance
from monai_shpeft.methods import spt_lora
from monai_shpeft.methods.base import count_trainable
from monai_shpeft.sparse_set import SparseSetMismatchError, SparseTrainableSet
from tests.helpers import TINY_OPEN_CLIP, image_label_loader, tiny_classifier

IMAGE_SIZE = 56
# on the tiny ViT (4 matrices of 64-256 rows per block) this budget and rank give both LoRA and unstructured matrices
BUDGET, RANK = 0.05, 4


def hand_made_importance() -> dict[str, torch.Tensor]:
    """Two matrices: ``a`` holds 20 very sensitive entries, ``b`` holds 5."""
    a = torch.zeros(4, 8)  # LoRA cost at rank 1: 12
    a.view(-1)[:20] = torch.arange(20, dtype=torch.float32) + 100.0
    b = torch.zeros(16, 16)  # LoRA cost at rank 1: 32
    b.view(-1)[[3, 50, 77, 200, 255]] = 50.0
    return {"backbone.a.weight": a, "backbone.b.weight": b}


def test_matrix_with_enough_sensitive_entries_gets_lora_the_other_its_entries() -> None:
    selection = spt_lora.select_spt(hand_made_importance(), budget=25, rank=1)
    assert selection.num_sensitive == 25 and selection.num_candidates == 32 + 256
    assert selection.sensitive_per_matrix == {"backbone.a.weight": 20, "backbone.b.weight": 5}
    assert selection.lora_modules == ["backbone.a"]
    assert list(selection.sparse) == ["backbone.b.weight"]
    assert selection.sparse["backbone.b.weight"].tolist() == [3, 50, 77, 200, 255]
    assert selection.num_lora_parameters == 1 * (4 + 8)
    assert selection.num_unstructured == 5 and selection.num_trainable == 17


def test_ratio_budget_is_exact_and_lora_needs_its_full_cost() -> None:
    # 10% of 288 entries = 29 sensitive: all 20 of a, the 5 of b, 4 ties at zero taken in position order (a first)
    selection = spt_lora.select_spt(hand_made_importance(), budget=0.1, rank=2)
    assert selection.num_sensitive == round(0.1 * 288) == 29
    assert sum(selection.sensitive_per_matrix.values()) == 29
    assert selection.sensitive_per_matrix["backbone.a.weight"] == 24  # rank-2 cost is 24: exactly enough
    assert selection.lora_modules == ["backbone.a"]
    higher_rank = spt_lora.select_spt(hand_made_importance(), budget=0.1, rank=3)  # cost 36 > 24
    assert higher_rank.lora_modules == [] and higher_rank.num_unstructured == 29
    assert higher_rank.sparse["backbone.a.weight"].numel() == 24


def test_matrices_peft_cannot_adapt_stay_unstructured() -> None:
    selection = spt_lora.select_spt(hand_made_importance(), budget=25, rank=1, lora_capable={"backbone.b.weight"})
    assert selection.lora_modules == [] and selection.num_unstructured == 25


def test_select_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="weight matrices"):
        spt_lora.select_spt({"backbone.norm.weight": torch.ones(8)}, budget=2, rank=1)
    with pytest.raises(ValueError, match="rank"):
        spt_lora.select_spt(hand_made_importance(), budget=2, rank=0)
    with pytest.raises(ValueError, match="at least one"):
        spt_lora.select_spt({}, budget=2, rank=1)
    with pytest.raises(ValueError, match="budget"):
        spt_lora.select_spt(hand_made_importance(), budget=1.5, rank=1)


def estimated_selection(seed: int = 0) -> tuple[torch.nn.Module, spt_lora.SPTSelection]:
    model = tiny_classifier(image_size=IMAGE_SIZE, seed=seed)
    importance = estimate_importance(
        model,
        image_label_loader(image_size=IMAGE_SIZE),
        torch.nn.CrossEntropyLoss(),
        strategy="l2",
        mode="task_specific",
    )
    candidates = spt_lora.linear_weight_names(model)
    return model, spt_lora.select_spt({n: importance[n] for n in candidates}, BUDGET, RANK)


def test_apply_injects_lora_and_trains_only_it_and_the_head() -> None:
    model = tiny_classifier(image_size=IMAGE_SIZE)
    images = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    model.eval()
    before = model(images)
    modules = ["backbone.blocks.0.attn.qkv", "backbone.blocks.1.mlp.fc2"]
    assert spt_lora.apply(model, modules, rank=2, alpha=4) is model
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == [*spt_lora.lora_parameters(model, modules), "head.linear.weight", "head.linear.bias"]
    assert len(trainable) == 6
    assert model.backbone.blocks[0].attn.qkv.scaling["default"] == 2.0
    torch.testing.assert_close(model(images), before)  # lora_B starts at zero
    with pytest.raises(ValueError, match="cannot put LoRA"):
        spt_lora.apply(model, ["backbone.blocks.0.attn.qkv"])  # already adapted
    bare = spt_lora.apply(tiny_classifier(image_size=IMAGE_SIZE), [])
    assert [n for n, p in bare.named_parameters() if p.requires_grad] == ["head.linear.weight", "head.linear.bias"]
    with pytest.raises(ValueError, match="cannot put LoRA on 'backbone.norm'"):
        spt_lora.apply(tiny_classifier(image_size=IMAGE_SIZE), ["backbone.norm"])


def test_attention_projections_of_multihead_attention_are_not_lora_candidates() -> None:
    model = tiny_classifier(TINY_OPEN_CLIP, image_size=32)
    every = spt_lora.linear_weight_names(model)
    capable = spt_lora.linear_weight_names(model, lora_capable_only=True)
    assert "backbone.transformer.resblocks.0.attn.out_proj.weight" in every
    assert [n for n in every if n not in capable] == [
        "backbone.transformer.resblocks.0.attn.out_proj.weight",
        "backbone.transformer.resblocks.1.attn.out_proj.weight",
    ]
    with pytest.raises(ValueError, match="MultiheadAttention"):
        spt_lora.apply(model, ["backbone.transformer.resblocks.0.attn.out_proj"])


def test_trainable_set_covers_the_model_and_counts_what_trains(tmp_path: Path) -> None:
    model, selection = estimated_selection()
    assert selection.lora_modules and selection.sparse, "the test budget must give both kinds of tuning"
    spt_lora.apply(model, selection.lora_modules, rank=RANK, alpha=8)
    trainable_set = spt_lora.build_trainable_set(model, selection, {"estimation_iterations": 4})
    trainable_set.check_compatible(model.named_parameters())
    head = sum(p.numel() for p in model.head.parameters())
    count = count_trainable(model, trainable_set)
    assert count.trainable == selection.num_lora_parameters + selection.num_unstructured + head
    assert trainable_set.num_selected == selection.num_trainable
    for module in selection.lora_modules:
        assert trainable_set.indices[f"{module}.base_layer.weight"].numel() == 0
        assert trainable_set.indices[f"{module}.base_layer.bias"].numel() == 0
    for name, entries in selection.sparse.items():
        assert torch.equal(trainable_set.indices[name], entries)
    assert set(trainable_set.trainable_names()) == set(spt_lora.lora_parameters(model, selection.lora_modules)) | set(
        selection.sparse
    )
    header = trainable_set.header
    assert header["method"] == "spt_lora" and header["rank"] == RANK and header["alpha"] == 8.0
    assert header["lora_modules"] == selection.lora_modules and header["budget"] == BUDGET
    assert header["backbone"] == "timm:vit_small_patch14_dinov2" and header["estimation_iterations"] == 4
    path = trainable_set.save(tmp_path / "spt.safetensors")
    loaded = SparseTrainableSet.load(path)
    assert loaded == trainable_set and loaded.header["lora_modules"] == selection.lora_modules

    fresh = spt_lora.apply_from_file(tiny_classifier(image_size=IMAGE_SIZE, seed=1), path)
    assert [n for n, _ in fresh.named_parameters()] == [n for n, _ in model.named_parameters()]
    trainable = {n for n, p in fresh.named_parameters() if p.requires_grad}
    assert trainable == set(trainable_set.trainable_names()) | {"head.linear.weight", "head.linear.bias"}


def test_trainable_set_without_lora_is_all_unstructured() -> None:
    model = tiny_classifier(image_size=IMAGE_SIZE)
    selection = spt_lora.select_spt(
        {n: torch.rand(p.shape) for n, p in model.named_parameters() if n in spt_lora.linear_weight_names(model)},
        budget=100,
        rank=RANK,
    )
    assert selection.lora_modules == []
    spt_lora.apply(model, [])
    trainable_set = spt_lora.build_trainable_set(model, selection)
    assert trainable_set.num_selected == 100 and trainable_set.header["alpha"] is None


def test_apply_from_file_refuses_other_sets_naming_the_file(tmp_path: Path) -> None:
    model = tiny_classifier(image_size=IMAGE_SIZE)
    importance = {n: torch.rand(p.shape) for n, p in model.backbone.named_parameters()}
    shpeft_set = SparseTrainableSet.from_importance({f"backbone.{n}": t for n, t in importance.items()}, 10)
    path = shpeft_set.save(tmp_path / "shpeft_set.safetensors")
    with pytest.raises(ValueError, match=r"shpeft_set\.safetensors is not an SPT-LoRA trainable set"):
        spt_lora.apply_from_file(model, path)
    # an SPT set made for another architecture
    other, selection = estimated_selection()
    spt_lora.apply(other, selection.lora_modules, rank=RANK)
    path = spt_lora.build_trainable_set(other, selection).save(tmp_path / "spt.safetensors")
    with pytest.raises(SparseSetMismatchError, match=r"spt\.safetensors was made for timm:vit_small_patch14_dinov2"):
        spt_lora.apply_from_file(tiny_classifier(TINY_OPEN_CLIP, image_size=32), path)
    # same family, other image size: the LoRA modules exist, the shapes of the position table do not match
    with pytest.raises(SparseSetMismatchError, match=r"spt\.safetensors"):
        spt_lora.apply_from_file(tiny_classifier(image_size=28), path)


def test_method_info() -> None:
    assert spt_lora.INFO.name == "spt_lora" and spt_lora.INFO.kind == "selective+additive"
    assert spt_lora.INFO.apply is spt_lora.apply
    assert spt_lora.lora_cost((192, 64), 8) == 8 * 256
