from __future__ import annotations

import json
from pathlib import Path

import pytest

from monai_shpeft.data import DatalistError, inference_items, load_datalist, prepare_datalist
from tests.helpers import write_busi_folder


def test_split_is_written_once_and_reused(tmp_path: Path) -> None:
    root = write_busi_folder(tmp_path / "busi", per_class=10)
    datalist = tmp_path / "runs" / "datalist.json"
    first = prepare_datalist("busi", root, datalist, seed=3)
    record = json.loads(datalist.read_text())
    assert record["dataset"] == "busi" and record["split"] == "seeded stratified" and record["seed"] == 3
    assert record["classes"] == ["benign", "malignant", "normal"]
    (root / "benign" / "benign (11).png").write_bytes((root / "benign" / "benign (1).png").read_bytes())
    again = prepare_datalist("busi", root, datalist, seed=99)  # reused: the new image and seed change nothing
    assert again == first


def test_broken_or_stale_datalists_name_the_problem(tmp_path: Path) -> None:
    root = write_busi_folder(tmp_path / "busi", per_class=10)
    datalist = tmp_path / "datalist.json"
    split = prepare_datalist("busi", root, datalist)
    Path(split["test"][0]["image"]).unlink()
    with pytest.raises(DatalistError, match=r"'test' item 0 points to a missing file .*delete the datalist"):
        load_datalist(datalist)
    datalist.write_text("{broken")
    with pytest.raises(DatalistError, match="cannot read datalist"):
        load_datalist(datalist)
    datalist.write_text(json.dumps({"training": [{"image": "x.png"}]}))
    with pytest.raises(DatalistError, match="needs 'image' and 'label'"):
        load_datalist(datalist, check_files=False)


def test_unknown_dataset_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown dataset 'nope'; known datasets: \[.*'busi'"):
        prepare_datalist("nope", tmp_path, tmp_path / "d.json")


def test_inference_items_from_a_folder_or_a_datalist(tmp_path: Path) -> None:
    root = write_busi_folder(tmp_path / "busi", per_class=10)
    items = inference_items(input_dir=root / "normal")
    assert len(items) == 10 and all("_mask" not in Path(i["image"]).name for i in items)
    datalist = tmp_path / "datalist.json"
    split = prepare_datalist("busi", root, datalist)
    assert inference_items(datalist_file=datalist, part="validation") == split["validation"]
    with pytest.raises(ValueError, match="needs input_dir"):
        inference_items()
    with pytest.raises(ValueError, match="part must be one of"):
        inference_items(datalist_file=datalist, part="train")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no image"):
        inference_items(input_dir=empty)
