"""benchmarks/fpt_recipe.py end to end on a tiny FPT and a synthetic BUSI folder: split, cache fill, training."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from tests.helpers import write_busi_folder

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fpt_recipe.py"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fpt_recipe", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fpt_recipe_trains_and_records_every_setting_and_fold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = _load_script()
    trained: list[tuple[dict[str, torch.Tensor], torch.nn.Module]] = []
    train_setting = recipe.train_setting

    def recording_train_setting(network: torch.nn.Module, parts: dict[str, tuple], setting: dict) -> dict[str, Any]:
        before = {name: p.detach().clone() for name, p in network.named_parameters() if p.requires_grad}
        trained.append((before, network))
        return train_setting(network, parts, setting)

    monkeypatch.setattr(recipe, "train_setting", recording_train_setting)
    dataset = write_busi_folder(tmp_path / "busi", per_class=8, size=40)
    output = tmp_path / "recipe.json"
    argv = [
        "--dataset_dir",
        str(dataset),
        "--tiny_backbone",
        "--splits_dir",
        str(tmp_path / "splits"),
        "--feature_cache_dir",
        str(tmp_path / "cache"),
        "--num_folds",
        "3",
        "--folds",
        "0",
        "--fpt_image_size",
        "56",
        "--fpt_side_image_size",
        "28",
        "--settings",
        json.dumps([{"lr": 1e-2, "epochs": 2}, {"lr": 1e-2, "epochs": 1, "wd": 0.05, "ls": 0.1}]),
        "--output",
        str(output),
    ]
    threads = torch.get_num_threads()
    try:
        record = recipe.main(argv)
    finally:
        torch.set_num_threads(threads)  # the script sets the process's torch threads

    assert json.loads(output.read_text()) == record
    assert record["command"].startswith("python benchmarks/fpt_recipe.py --dataset_dir")
    assert [(run["fold"], run["epochs"]) for run in record["runs"]] == [(0, 2), (0, 1)]
    for run in record["runs"]:
        assert len(run["history"]) == run["epochs"]
        assert all(set(h) == {"val_f1", "val_auc"} and 0 <= h["val_f1"] <= 1 for h in run["history"])
        assert run["best_val_f1"] == max(h["val_f1"] for h in run["history"])
        assert run["last_val_f1"] == run["history"][-1]["val_f1"] and 1 <= run["best_epoch"] <= run["epochs"]
        assert run["train_seconds"] >= 0 and "mean_val_f1_last5" in run
    assert record["runs"][1]["wd"] == 0.05 and record["runs"][1]["ls"] == 0.1
    assert [s["setting"] for s in record["summary"]] == [
        {"epochs": 2, "lr": 0.01},
        {"epochs": 1, "lr": 0.01, "ls": 0.1, "wd": 0.05},
    ]
    assert all(s["folds"] == [0] for s in record["summary"])
    assert (tmp_path / "splits" / "seed0_fold0of3.json").is_file()  # the split the bundle's config made
    assert any((tmp_path / "cache").rglob("*.safetensors"))  # the frozen features were filled, then read

    # each setting trained its own copy of the bundle's FPT network: the trainable weights moved, the frozen ones not
    assert len(trained) == 2 and trained[0][1] is not trained[1][1]
    for before, network in trained:
        after = dict(network.named_parameters())
        assert any(not torch.equal(before[name], after[name]) for name in before)
        assert all(not p.requires_grad for p in network.extractor.parameters())

    # a rerun skips the settings and folds already in the record
    trained.clear()
    assert recipe.main(argv)["runs"] == record["runs"] and not trained
    torch.set_num_threads(threads)
