"""A user's own data: an image folder (one subfolder per class) or a CSV table, read as a bundle's dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from monai_shpeft.data import (
    DatalistError,
    csv_classes,
    csv_items,
    image_folder_classes,
    image_folder_items,
    prepare_datalist,
    resolve_layout,
)
from monai_shpeft.errors import DatasetFolderError, DatasetLayoutError, SettingsError
from tests.helpers import write_png


def write_folder(root: Path, per_class: dict[str, int]) -> Path:
    for index, (name, count) in enumerate(per_class.items()):
        for image in range(count):
            write_png(root / name / f"{name}_{image}.png", 24, 40 + 80 * index + image)
    return root


def write_table(path: Path, rows: list[str], header: str = "image,label") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_an_image_folder_lists_its_classes_and_labelled_images(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "data", {"normal": 3, "abnormal": 2})
    write_png(root / "abnormal" / "nested" / "deep.png", 24, 7)  # any depth inside a class folder
    write_png(root / "abnormal" / "deep_mask.png", 24, 255)  # masks are skipped
    (root / ".cache").mkdir()
    assert image_folder_classes(root) == ("abnormal", "normal")
    items = image_folder_items(root, ("abnormal", "normal"))
    assert [Path(i["image"]).name for i in items if i["label"] == 0] == ["abnormal_0.png", "abnormal_1.png", "deep.png"]
    assert sum(i["label"] == 1 for i in items) == 3


def test_bad_image_folders_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(DatasetFolderError, match=r"image folder not found: .*nowhere"):
        image_folder_classes(tmp_path / "nowhere")
    (tmp_path / "flat").mkdir()
    write_png(tmp_path / "flat" / "a.png")
    with pytest.raises(DatasetLayoutError, match=r"has no subfolder"):
        image_folder_classes(tmp_path / "flat")
    one = write_folder(tmp_path / "one", {"only": 3})
    with pytest.raises(DatasetLayoutError, match=r"one class folder \(only\)"):
        image_folder_classes(one)
    empty = write_folder(tmp_path / "empty", {"a": 2, "b": 2})
    (empty / "c").mkdir()
    with pytest.raises(DatasetLayoutError, match=r"class folder .*/c holds no image"):
        image_folder_classes(empty)
    with pytest.raises(DatasetLayoutError, match=r"\['c'\] that are not image folder classes"):
        image_folder_items(empty, ("a", "b"))


def test_a_csv_lists_labels_relative_paths_and_an_optional_split(tmp_path: Path) -> None:
    images = write_folder(tmp_path / "data" / "images", {"x": 2, "y": 2})
    table = write_table(
        tmp_path / "data" / "labels.csv",
        [f"images/x/x_{i}.png,x" for i in range(2)] + [f"{images}/y/y_{i}.png,y" for i in range(2)],
    )
    assert csv_classes(table) == ("x", "y")
    items = csv_items(table, ("x", "y"))
    assert isinstance(items, list) and [i["label"] for i in items] == [0, 0, 1, 1]
    assert all(Path(i["image"]).is_file() for i in items)
    split = write_table(
        tmp_path / "data" / "split.csv",
        [
            "images/x/x_0.png,x,train",
            "images/x/x_1.png,x,test",
            "images/y/y_0.png,y,training",
            "images/y/y_1.png,y,val",
        ],
        header="image,label,split",
    )
    parts = csv_items(split, ("x", "y"))
    assert isinstance(parts, dict) and [len(parts[p]) for p in ("training", "validation", "test")] == [2, 1, 1]


@pytest.mark.parametrize(
    ("rows", "header", "message"),
    [
        (["a.png,x"], "path,label", r"lacks the column\(s\) \['image'\]"),
        (["images/x/x_0.png,"], "image,label", r"line 2: the 'label' cell is empty"),
        (["images/x/x_0.png,x", "images/./x/x_0.png,y"], "image,label", r"line 3: image .* is listed twice .*line 2"),
        (["images/x/x_0.png,x", "images/x/x_1.png,z"], "image,label", r"line 3: label 'z' is not one of"),
        (["images/x/x_0.png,x,train", "images/x/x_1.png,y,holdout"], "image,label,split", r"line 3: split 'holdout'"),
        (["images/x/missing.png,x"], "image,label", r"line 2: image not found: .*missing.png"),
    ],
)
def test_bad_csv_rows_are_named(tmp_path: Path, rows: list[str], header: str, message: str) -> None:
    write_folder(tmp_path / "data" / "images", {"x": 2, "y": 2})
    table = write_table(tmp_path / "data" / "labels.csv", rows, header)
    with pytest.raises((DatasetLayoutError, DatasetFolderError), match=message):
        csv_items(table, ("x", "y"))


def test_one_label_only_is_refused(tmp_path: Path) -> None:
    write_folder(tmp_path / "images", {"x": 2})
    table = write_table(tmp_path / "labels.csv", ["images/x/x_0.png,x", "images/x/x_1.png,x"])
    with pytest.raises(DatasetLayoutError, match=r"one label \(x\)"):
        csv_classes(table)


def test_generic_layouts_take_the_bundle_classes_and_split_like_any_dataset(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "data", {"a": 10, "b": 10})
    with pytest.raises(SettingsError, match=r"takes its class names from the bundle's classes knob"):
        resolve_layout("image_folder", [])
    with pytest.raises(SettingsError, match=r"labels its images as \['benign', 'malignant', 'normal'\]"):
        resolve_layout("busi", ["a", "b"])
    split = prepare_datalist("image_folder", root, tmp_path / "datalist.json", classes=["a", "b"], duplicates="ignore")
    assert sum(len(split[p]) for p in ("training", "validation", "test")) == 20
    record = json.loads((tmp_path / "datalist.json").read_text())
    assert record["dataset"] == "image_folder" and record["classes"] == ["a", "b"]
    assert {item["label"] for item in split["test"]} == {0, 1}
    # a reused split whose recorded classes differ from the knob would name other classes: refused
    with pytest.raises(DatalistError, match=r"labels its images as \['a', 'b'\], but the bundle's classes knob"):
        prepare_datalist("image_folder", root, tmp_path / "datalist.json", classes=["b", "a"], duplicates="ignore")
