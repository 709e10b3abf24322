"""``python -m monai_shpeft.zoo new_bundle``: a user's folder or CSV becomes a bundle that trains and infers.

Real subprocesses throughout: the command line makes the bundle, then ``python -m monai.bundle run`` trains it for
one tiny epoch and predicts from inside the new folder. Bad data stop the command with the problem on the last line.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
from monai.bundle import verify_metadata

from tests.helpers import REPO_ROOT, TINY_BUNDLE_ARGS, monai_bundle, run_command, run_process, write_png

pytestmark = pytest.mark.filterwarnings("ignore:No hash value provided:UserWarning")

SCHEMA = REPO_ROOT / "monai_shpeft" / "zoo" / "metadata_schema.json"


def zoo(*args: str) -> list[str]:
    return [sys.executable, "-m", "monai_shpeft.zoo", *args]


def write_two_classes(root: Path, per_class: int = 10) -> Path:
    for index, name in enumerate(("healthy", "lesion")):
        for image in range(per_class):
            write_png(root / name / f"{name}_{image:02d}.png", 32, 50 + 120 * index + image)
    return root


def train_and_predict(bundle: Path, images: Path) -> list[dict[str, str]]:
    run_command(
        monai_bundle("run", "--config_file", "configs/train.json", "--max_epochs", "1", *TINY_BUNDLE_ARGS), bundle
    )
    infer = ["run", "--config_file", "configs/inference.json", "--input_dir", str(images), *TINY_BUNDLE_ARGS]
    run_command(monai_bundle(*infer), bundle)
    with open(bundle / "runs" / "predictions.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_an_image_folder_becomes_a_bundle_that_trains_and_infers(tmp_path: Path) -> None:
    data = write_two_classes(tmp_path / "my data")
    output = run_command(
        zoo("new_bundle", "skin_check", "--image_folder", str(data), "--modality", "dermoscopy"), tmp_path
    )
    bundle = tmp_path / "skin_check"
    assert "train it with" in output and (bundle / "LICENSE").is_file() and (bundle / "docs" / "README.md").is_file()
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    verify_metadata(meta_file=str(bundle / "configs" / "metadata.json"), filepath=str(SCHEMA))
    assert metadata["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "healthy", "1": "lesion"}
    train = json.loads((bundle / "configs" / "train.json").read_text())
    assert train["dataset"] == "image_folder" and train["classes"] == ["healthy", "lesion"]
    assert train["dataset_dir"] == str(data.resolve())
    assert len(train["modality_transforms"]["augmentation"]) == 3  # dermoscopy flips both ways
    assert "| 1 | lesion | 10 |" in (bundle / "docs" / "README.md").read_text()

    rows = train_and_predict(bundle, data / "lesion")
    assert len(rows) == 10 and set(rows[0]) == {"image", "predicted_class", "p_healthy", "p_lesion"}
    split = json.loads((bundle / "runs" / "datalist.json").read_text())
    assert split["classes"] == ["healthy", "lesion"] and split["split"] == "seeded stratified"


def test_a_csv_with_a_split_column_becomes_a_bundle_that_trains_and_infers(tmp_path: Path) -> None:
    data = write_two_classes(tmp_path / "data", per_class=8)
    rows = []
    for name in ("healthy", "lesion"):
        for image in range(8):
            part = "train" if image < 5 else ("val" if image < 6 else "test")
            rows.append(f"{name}/{name}_{image:02d}.png,{name.upper()},{part}")
    table = data / "labels.csv"
    table.write_text("image,label,split\n" + "\n".join(rows) + "\n")
    run_command(zoo("new_bundle", "chest", "--csv", str(table), "--modality", "xray", "--output_dir", "out"), tmp_path)
    bundle = tmp_path / "out" / "chest"
    predictions = train_and_predict(bundle, data / "healthy")
    assert len(predictions) == 8 and {r["predicted_class"] for r in predictions} <= {"HEALTHY", "LESION"}
    split = json.loads((bundle / "runs" / "datalist.json").read_text())
    assert split["split"] == "official" and [len(split[p]) for p in ("training", "validation", "test")] == [10, 2, 4]


def _last_line_of_failure(args: list[str], cwd: Path) -> str:
    done = run_process(zoo(*args), cwd, timeout=300)
    assert done.returncode == 2, done.stdout + done.stderr
    return (done.stdout + done.stderr).strip().splitlines()[-1]


def test_bad_data_stop_with_the_problem_on_the_last_line(tmp_path: Path) -> None:
    data = write_two_classes(tmp_path / "data", per_class=3)
    (data / "empty_class").mkdir()
    assert "class folder" in (line := _last_line_of_failure(["new_bundle", "a", "--image_folder", "data"], tmp_path))
    assert "empty_class holds no image" in line
    one = write_two_classes(tmp_path / "one", per_class=2)
    (one / "lesion" / "lesion_00.png").unlink()
    (one / "lesion" / "lesion_01.png").unlink()
    (one / "lesion").rmdir()
    assert "one class folder (healthy)" in _last_line_of_failure(["new_bundle", "a", "--image_folder", "one"], tmp_path)
    broken = write_two_classes(tmp_path / "broken", per_class=2)
    (broken / "lesion" / "lesion_01.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    line = _last_line_of_failure(["new_bundle", "a", "--image_folder", "broken"], tmp_path)
    assert "lesion_01.png" in line
    table = tmp_path / "data" / "labels.csv"
    table.write_text(
        "image,label\nhealthy/healthy_00.png,healthy\nlesion/lesion_00.png,lesion\nlesion/lesion_01.png,other\n"
    )
    line = _last_line_of_failure(["new_bundle", "a", "--csv", str(table), "--classes", "healthy,lesion"], tmp_path)
    assert "line 4: label 'other' is not one of this bundle's classes ['healthy', 'lesion']" in line
    table.write_text(
        "image,label\nhealthy/healthy_00.png,healthy\nlesion/lesion_00.png,lesion\nhealthy/healthy_00.png,lesion\n"
    )
    assert "line 4: image healthy/healthy_00.png is listed twice (first on line 2)" in _last_line_of_failure(
        ["new_bundle", "a", "--csv", str(table)], tmp_path
    )
    assert "is not empty" in _last_line_of_failure(["new_bundle", "data", "--image_folder", "broken"], tmp_path)
