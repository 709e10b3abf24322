"""Every dataset bundle trains end to end, through a real `python -m monai.bundle run` subprocess on a tiny fake
copy of its dataset written in the published layout; and every bundle's metadata passes the bundle schema.

Each dataset is just large enough that its split (official parts, a validation part carved from an official
training part, or the seeded stratified 70/10/20 split) has every class in every part, which the validation AUC
needs. Each run is one epoch of the tiny 2-layer backbone at 28 px on the CPU.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from monai.bundle import verify_metadata

from monai_shpeft.data import get_layout
from monai_shpeft.sparse_set import SparseTrainableSet
from monai_shpeft.utils import sha256_of_file
from tests.dataset_writers import (
    write_chaoyang,
    write_chest_xray,
    write_covid_ct,
    write_covid_cxr,
    write_ddsm,
    write_isic2018,
    write_limuc,
    write_messidor2,
    write_oct,
)
from tests.helpers import REPO_ROOT, TINY_BUNDLE_ARGS, copy_bundles, monai_bundle, run_command

# verify_metadata warns that the local schema copy has no hash to check against; that is expected here
pytestmark = pytest.mark.filterwarnings("ignore:No hash value provided:UserWarning")

PARTS = ("training", "validation", "test")
SCHEMA = REPO_ROOT / "monai_shpeft" / "zoo" / "metadata_schema.json"
#: every bundle of the repository (BUSI included), by the folder holding its configs/metadata.json
ALL_BUNDLES = sorted(p.parent.parent.name for p in (REPO_ROOT / "bundles").glob("*/configs/metadata.json"))


def _chest_xray(root: Path) -> Path:
    # the Mendeley release (no val/): the validation part is carved from training, stratified by the 3 classes
    write_chest_xray(root / "ZhangLabData" / "CellData", with_val=False, train_count=20, test_count=4)
    return root


#: bundle -> (registered layout it reads, how its split is made, writer of a tiny dataset returning --dataset_dir)
BUNDLES: dict[str, tuple[str, str, Callable[[Path], Path]]] = {
    "chaoyang": ("chaoyang", "official", lambda root: write_chaoyang(root, train_per_class=10, test_per_class=2)),
    "covid19_ct": ("covid19_ct", "official", lambda root: write_covid_ct(root, {"train": 4, "val": 2, "test": 2})),
    "pediatric_cxr": ("pediatric_cxr3", "official", _chest_xray),
    "oct": ("oct", "official", lambda root: write_oct(root, train_per_class=10, test_per_class=2)),
    "limuc": (
        "limuc",
        "official",
        lambda root: write_limuc(root, patients=False, train_per_class=10, test_per_class=2),
    ),
    "messidor2": ("messidor2", "seeded stratified", lambda root: write_messidor2(root, per_grade=10)),
    "isic2018": (
        "isic2018",
        "official",
        lambda root: write_isic2018(root, {"Training": 2, "Validation": 1, "Test": 1}),
    ),
    "ddsm": ("ddsm", "official", lambda root: write_ddsm(root, train_patients=5, test_patients=2)),
    "covid_cxr": ("covid_cxr", "seeded stratified", lambda root: write_covid_cxr(root, per_class=10)),
}


def test_every_generated_bundle_is_covered() -> None:
    assert set(ALL_BUNDLES) - {"busi"} == set(BUNDLES)


@pytest.mark.parametrize("name", ALL_BUNDLES)
def test_metadata_passes_the_bundle_schema(name: str) -> None:
    """`monai.bundle verify_metadata`, called in-process (the schema is the local copy: no download)."""
    verify_metadata(meta_file=str(REPO_ROOT / "bundles" / name / "configs" / "metadata.json"), filepath=str(SCHEMA))


@pytest.mark.parametrize("name", sorted(BUNDLES))
def test_bundle_trains_on_a_tiny_copy_of_its_dataset(name: str, tmp_path: Path) -> None:
    layout_name, origin, write = BUNDLES[name]
    layout = get_layout(layout_name)
    work = copy_bundles(tmp_path, names=(name,))
    dataset_dir = write(work / "data" / name)
    bundle = work / "bundles" / name
    run_command(
        monai_bundle(
            "run",
            "--config_file",
            f"bundles/{name}/configs/train.json",
            "--dataset_dir",
            str(dataset_dir.relative_to(work)),
            "--max_epochs",
            "1",
            *TINY_BUNDLE_ARGS,
        ),
        cwd=work,
    )

    assert (bundle / "models" / "model.pt").is_file()
    set_file = bundle / "models" / "sparse_trainable_set.safetensors"
    trainable_set = SparseTrainableSet.load(set_file)
    assert trainable_set.num_selected == round(0.01 * trainable_set.num_total)
    assert trainable_set.header["backbone"] == "timm:vit_small_patch14_dinov2"

    assert "sparse_trainable_set" not in json.loads((bundle / "configs" / "metadata.json").read_text())
    metadata_file = bundle / "models" / "metadata.json"  # the run's metadata: the bundle's plus the record
    record = json.loads(metadata_file.read_text())["sparse_trainable_set"]
    assert record["selected"] == trainable_set.num_selected and record["total"] == trainable_set.num_total
    assert record["file"] == set_file.name and record["sha256"] == sha256_of_file(set_file)
    assert record["strategy"] == "l2" and record["budget"] == 0.01
    assert sum(record["counts_per_block"].values()) == record["selected"]
    verify_metadata(meta_file=str(metadata_file), filepath=str(SCHEMA))  # the record keeps the schema valid

    split = json.loads((bundle / "runs" / "datalist.json").read_text())
    assert split["dataset"] == layout_name and split["classes"] == list(layout.classes)
    assert split["split"] == origin
    images = {part: {item["image"] for item in split[part]} for part in PARTS}
    assert all(len(images[part]) == len(split[part]) for part in PARTS)
    assert not images["training"] & images["validation"]
    assert not images["training"] & images["test"] and not images["validation"] & images["test"]
    every_class = set(range(len(layout.classes)))
    for part in PARTS:
        assert {item["label"] for item in split[part]} == every_class, f"{part} lacks a class"


@pytest.mark.parametrize("name", ALL_BUNDLES)
def test_eval_metrics_are_unmeasured_or_those_of_a_committed_record(name: str) -> None:
    """``eval_metrics`` is null where no evaluation was run here, else the figures of a committed record, which the
    model card quotes too."""
    metrics = json.loads((REPO_ROOT / "bundles" / name / "configs" / "metadata.json").read_text())["eval_metrics"]
    card = (REPO_ROOT / "bundles" / name / "docs" / "README.md").read_text()
    if metrics["macro_f1"] is None:
        assert metrics["accuracy"] is None and metrics["auc_ovr"] is None
        return
    record = json.loads((REPO_ROOT / metrics["record"].split(" ")[0]).read_text())
    assert metrics["command"] == record["command"]
    measured = record["test_f1"]["best_f1"]  # the rule the README's main command uses
    for key, figure in (("macro_f1", "f1"), ("accuracy", "accuracy"), ("auc_ovr", "auc")):
        assert metrics[key] == round(measured[figure]["mean"], 3)
        assert metrics[f"{key}_std"] == round(measured[figure]["std"], 3)
        mean, std = 100 * measured[figure]["mean"], 100 * measured[figure]["std"]
        assert f"{mean:.1f} +- {std:.1f}" in " ".join(card.split()), (key, mean, std)
