from __future__ import annotations

import json
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from monai_shpeft.data import DatalistError, busi_datalist, inference_items, load_datalist, prepare_datalist
from monai_shpeft.data.messidor2 import MESSIDOR2_CLASSES
from monai_shpeft.data.split import kfold_split
from tests.dataset_writers import write_chaoyang, write_messidor2
from tests.helpers import copy_bundles, write_busi_folder

PARTS = ("training", "validation", "test")


def test_split_is_written_once_and_reused(tmp_path: Path) -> None:
    root = write_busi_folder(tmp_path / "busi", per_class=10)
    datalist = tmp_path / "runs" / "datalist.json"
    first = prepare_datalist("busi", root, datalist, seed=3)
    record = json.loads(datalist.read_text())
    assert record["dataset"] == "busi" and record["split"] == "seeded stratified" and record["seed"] == 3
    assert record["classes"] == ["benign", "malignant", "normal"]
    assert record["num_folds"] is None and record["fold"] == 0
    (root / "benign" / "benign (11).png").write_bytes((root / "benign" / "benign (1).png").read_bytes())
    again = prepare_datalist("busi", root, datalist, seed=3)  # reused: the new image changes nothing
    assert again == first
    # another seed would make another split: the file is not silently reused for it
    with pytest.raises(DatalistError, match=r"made with seed=3, num_folds=None, fold=0, but this run asks for seed=99"):
        prepare_datalist("busi", root, datalist, seed=99)


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


def test_kfold_datalist_records_its_fold_and_is_the_kfold_split(tmp_path: Path) -> None:
    root = write_busi_folder(tmp_path / "busi", per_class=10)
    datalist = tmp_path / "fold1.json"
    split = prepare_datalist("busi", root, datalist, seed=2, num_folds=3, fold=1)
    record = json.loads(datalist.read_text())
    assert record["split"] == "seeded stratified k-fold" and record["seed"] == 2
    assert record["num_folds"] == 3 and record["fold"] == 1
    assert record["fractions"] == [round(0.9 - 1 / 3, 6), 0.1, round(1 / 3, 6)]
    assert record["duplicates"]["mode"] == "keep_together"
    # no duplicates in these images: exactly the plain k-fold split of the listed items
    assert split == kfold_split(busi_datalist(root), 3, 1, seed=2)
    assert {part: record[part] for part in PARTS} == split
    tested = []
    for fold in range(3):
        other = prepare_datalist("busi", root, tmp_path / f"fold{fold}_again.json", seed=2, num_folds=3, fold=fold)
        tested += [item["image"] for item in other["test"]]
        assert all({item["label"] for item in part} == {0, 1, 2} for part in other.values())
    assert sorted(tested) == sorted(item["image"] for item in busi_datalist(root))


def test_an_existing_datalist_of_another_fold_or_seed_is_refused(tmp_path: Path) -> None:
    root = write_busi_folder(tmp_path / "busi", per_class=10)
    datalist = tmp_path / "runs" / "datalist.json"
    split = prepare_datalist("busi", root, datalist, seed=2, num_folds=3, fold=1)
    assert prepare_datalist("busi", root, datalist, seed=2, num_folds=3, fold=1) == split  # the same knobs: reused
    before = datalist.read_bytes()
    for knobs, asked in (
        ({"seed": 2, "num_folds": 3, "fold": 2}, "seed=2, num_folds=3, fold=2"),
        ({"seed": 2, "num_folds": 5, "fold": 1}, "seed=2, num_folds=5, fold=1"),
        ({"seed": 2}, "seed=2, num_folds=None, fold=0"),
        ({"seed": 0, "num_folds": 3, "fold": 1}, "seed=0, num_folds=3, fold=1"),
    ):
        with pytest.raises(DatalistError) as info:
            prepare_datalist("busi", root, datalist, **knobs)
        message = str(info.value)
        assert f"datalist {datalist} holds the split made with seed=2, num_folds=3, fold=1" in message
        assert f"but this run asks for {asked}" in message
        assert "Delete it to split anew, or pass another --datalist_file (or --output_dir)" in message
    assert datalist.read_bytes() == before  # never overwritten

    # a datalist without the k-fold keys (older, or by hand) counts as num_folds None, fold 0
    by_hand = tmp_path / "by_hand.json"
    by_hand.write_text(json.dumps({part: split[part] for part in PARTS}))
    assert prepare_datalist("busi", root, by_hand, seed=7) == split  # no seed recorded: any seed
    with pytest.raises(DatalistError, match=r"made with seed=0, num_folds=None, fold=0, but this run asks for "):
        prepare_datalist("busi", root, by_hand, seed=0, num_folds=3, fold=0)


def test_bad_fold_knobs_and_official_splits_are_refused_before_hashing(tmp_path: Path) -> None:
    root = write_busi_folder(tmp_path / "busi", per_class=10)
    datalist = tmp_path / "datalist.json"
    with pytest.raises(ValueError, match=r"fold must be one of 0\.\.2 for num_folds=3, got 3"):
        prepare_datalist("busi", root, datalist, num_folds=3, fold=3)
    with pytest.raises(ValueError, match="num_folds must be an integer of at least 2, got 1"):
        prepare_datalist("busi", root, datalist, num_folds=1)
    with pytest.raises(ValueError, match=r"fold=2 needs num_folds .*--num_folds 5 --fold 2"):
        prepare_datalist("busi", root, datalist, fold=2)
    chaoyang = write_chaoyang(tmp_path / "chaoyang", train_per_class=6, test_per_class=2)
    with pytest.raises(ValueError, match=r"chaoyang in .*: num_folds=5 .* chaoyang has its official split"):
        prepare_datalist("chaoyang", chaoyang, datalist, num_folds=5)
    assert not datalist.exists()


def test_too_few_images_for_the_folds_say_how_many_are_needed(tmp_path: Path) -> None:
    root = write_busi_folder(tmp_path / "busi", per_class=10)
    with pytest.raises(DatalistError) as info:
        prepare_datalist("busi", root, tmp_path / "datalist.json", num_folds=11)
    message = str(info.value)
    assert f"busi in {root}: 30 images (benign 10, malignant 10, normal 10) are too few for a stratified " in message
    assert "11-fold split" in message and "needs at least 33 images and 11 of each class" in message
    assert "test_size" not in message and "n_splits" not in message  # not scikit-learn's wording
    assert not (tmp_path / "datalist.json").exists()
    assert prepare_datalist("busi", root, tmp_path / "datalist.json", num_folds=10, fold=9)["test"]


def test_bundle_num_folds_and_fold_knobs_give_that_fold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--num_folds 3 --fold 1`` through the BUSI bundle's real train.json, read with MONAI's ConfigParser."""
    work = copy_bundles(tmp_path)
    root = write_busi_folder(work / "busi", per_class=10)
    monkeypatch.chdir(work)

    def split_of(**knobs: object) -> dict[str, list[dict]]:
        """What ``--key value`` knobs on the command line do: update the parser, then parse the split."""
        parser = ConfigParser()
        parser.read_config("bundles/busi/configs/train.json")
        parser.update({"dataset_dir": "busi", "num_workers": 0, "device": "$torch.device('cpu')", **knobs})
        parser["bundle_root"] = "bundles/busi"  # a bare ConfigParser has no config path to find the bundle from
        return parser.get_parsed_content("split")  # the split only: no network is built

    split = split_of(num_folds=3, fold=1)
    datalist = work / "bundles" / "busi" / "runs" / "datalist.json"
    record = json.loads(datalist.read_text())
    assert record["num_folds"] == 3 and record["fold"] == 1 and record["duplicates"]["mode"] == "keep_together"
    expected = kfold_split(busi_datalist(root.resolve()), 3, 1, seed=0)
    names = {part: sorted(Path(item["image"]).name for item in split[part]) for part in PARTS}
    assert names == {part: sorted(Path(item["image"]).name for item in expected[part]) for part in PARTS}
    # another fold in the same output folder is refused, not trained on fold 1's split
    with pytest.raises(RuntimeError) as info:  # ConfigParser wraps the error of the expression
        split_of(num_folds=3, fold=2)
    cause: BaseException | None = info.value
    while cause is not None and not isinstance(cause, DatalistError):
        cause = cause.__cause__
    assert cause is not None and "asks for seed=0, num_folds=3, fold=2" in str(cause), repr(info.value)
    assert "another --datalist_file (or --output_dir)" in str(cause)
    other = split_of(num_folds=3, fold=2, datalist_file=str(work / "fold2.json"))
    tests = [{item["image"] for item in s["test"]} for s in (split, other)]
    assert not tests[0] & tests[1]


def test_a_class_without_images_is_named_as_the_cause(tmp_path: Path) -> None:
    root = write_messidor2(tmp_path / "messidor2", per_grade=6)
    grades = root / "messidor2-dr-grades" / "messidor_data.csv"
    lines = grades.read_text().splitlines()
    grades.write_text("\n".join(line for line in lines if line.split(",")[1] != "4") + "\n")  # no grade-4 image
    empty = MESSIDOR2_CLASSES[4]
    with pytest.raises(DatalistError, match=rf"class\(es\) \['{empty}'\] have no images \(.*{empty} 0\)"):
        prepare_datalist("messidor2", root, tmp_path / "datalist.json")
