"""Sharing a bundle end to end with real subprocesses: train, export the sparse delta, package the zip, run the
model-zoo checks, unpack it elsewhere and get the trained model's outputs from public backbone + delta."""

from __future__ import annotations

import csv
import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from monai_shpeft.delta import SparseDelta
from monai_shpeft.sparse_set import SparseTrainableSet
from monai_shpeft.utils import sha256_of_file
from monai_shpeft.zoo import (
    DELTA_RECORD_KEY,
    bundle_parser,
    check_bundle,
    load_checkpoint,
    package_bundle,
    parse_overrides,
)
from tests.helpers import REPO_ROOT, copy_bundles, monai_bundle, run_command, write_busi_folder
from tests.test_delta import write_backbone_weights

pytestmark = pytest.mark.filterwarnings("ignore:No hash value provided:UserWarning")

BUNDLE = "bundles/busi"
BACKBONE = "timm:vit_small_patch14_dinov2"


def knobs(weights: Path) -> list[str]:
    return (
        f"--backbone {BACKBONE} --tiny_backbone True --pretrained {weights} --image_size 28 "
        "--batch_size 4 --num_workers 0 --device cpu"
    ).split()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Train the BUSI bundle (tiny backbone with local "public" weights), export its delta and package it."""
    work = copy_bundles(tmp_path_factory.mktemp("zoo"))
    write_busi_folder(work / "busi", per_class=10)
    weights = write_backbone_weights(work / "public_backbone.safetensors", BACKBONE, seed=5)
    train = [
        "--config_file",
        f"{BUNDLE}/configs/train.json",
        "--dataset_dir",
        "busi",
        "--max_epochs",
        "2",
        "--validate_warmup",
        "false",
    ]
    run_command(monai_bundle("run", *train, "--learning_rate", "0.05", *knobs(weights)), cwd=work)
    export = run_command(
        [monai_bundle("run")[0], "-m", "monai_shpeft.zoo", "export_delta", BUNDLE, *knobs(weights)], cwd=work
    )
    models = work / BUNDLE / "models"
    url = (models / "model.pt").as_uri()  # a file:// URL stands for the public host of the full checkpoint
    run_command(
        [monai_bundle("run")[0], "-m", "monai_shpeft.zoo", "package", BUNDLE, "--output_dir", "dist"]
        + ["--checkpoint_url", url],
        cwd=work,
    )
    return {"work": work, "weights": weights, "zip": next((work / "dist").glob("*.zip")), "export": export}


def unpack(archive: Path, destination: Path) -> Path:
    with zipfile.ZipFile(archive) as handle:
        handle.extractall(destination)
    return destination / "busi"


def test_export_writes_a_small_delta_and_records_it(shared: dict[str, Path]) -> None:
    models = shared["work"] / BUNDLE / "models"
    delta_file, checkpoint = models / "delta.safetensors", models / "model.pt"
    # recorded in the run's metadata beside the checkpoint, not in the bundle's tracked configs/metadata.json
    assert DELTA_RECORD_KEY not in json.loads((shared["work"] / BUNDLE / "configs" / "metadata.json").read_text())
    metadata = json.loads((models / "metadata.json").read_text())
    record = metadata[DELTA_RECORD_KEY]
    assert record["sha256"] == sha256_of_file(delta_file)
    assert record["bytes"] == delta_file.stat().st_size < 0.1 * checkpoint.stat().st_size
    assert record["recipe"]["backbone"] == BACKBONE and record["recipe"]["image_size"] == 28
    assert record["recipe"]["pretrained_sha256"] == sha256_of_file(shared["weights"])
    # every changed backbone entry stored by index lies inside the sparse trainable set
    trainable_set = SparseTrainableSet.load(models / "sparse_trainable_set.safetensors")
    delta = SparseDelta.load(delta_file)
    for name, (indices, _) in delta.sparse.items():
        assert trainable_set.mask(name).reshape(-1)[indices.long()].all(), name
    assert 0 < delta.num_sparse_entries <= trainable_set.num_selected
    assert f"{record['bytes']:,} bytes" in shared["export"]


def test_the_package_passes_the_model_zoo_checks(shared: dict[str, Path]) -> None:
    output = run_command(
        [monai_bundle("run")[0], "-m", "monai_shpeft.zoo", "check", str(shared["zip"])], cwd=shared["work"]
    )
    for check in ("archive", "files", "standalone", "metadata", "version", "sizes", "weights"):
        assert f"PASS  {check}" in output
    assert "PASS  verify_net_in_out" in output and "PASS  ckpt_export" in output
    assert "PASS  properties" in output and "PASS  inference" in output
    assert "11 of 11 checks passed" in output


def test_the_zip_is_self_contained_and_ships_the_delta_not_the_checkpoint(
    shared: dict[str, Path], tmp_path: Path
) -> None:
    version = json.loads((REPO_ROOT / "bundles" / "busi" / "configs" / "metadata.json").read_text())["version"]
    assert shared["zip"].name == f"busi_v{version}.zip"
    bundle = unpack(shared["zip"], tmp_path)
    assert (bundle / "models" / "delta.safetensors").is_file() and not (bundle / "models" / "model.pt").exists()
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    assert inference["bundle_root"] == "$monai_shpeft.utils.config_bundle_root()"
    assert inference["backbone"] == BACKBONE and inference["image_size"] == 28
    assert "%" not in json.dumps(inference)
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert metadata["network_data_format"]["inputs"]["image"]["spatial_shape"] == [28, 28]
    # the shared metadata carries the run's records (sparse set, delta) from models/metadata.json
    run_metadata = json.loads((shared["work"] / BUNDLE / "models" / "metadata.json").read_text())
    for key in ("sparse_trainable_set", DELTA_RECORD_KEY):
        assert metadata[key] == run_metadata[key], key
    again = package_bundle(shared["work"] / BUNDLE, tmp_path / "again")
    assert again.read_bytes() == shared["zip"].read_bytes() or _same_entries(again, shared["zip"])


def _same_entries(first: Path, second: Path) -> bool:
    # the first package also lists the checkpoint in large_files.yml; everything else is byte-identical
    with zipfile.ZipFile(first) as a, zipfile.ZipFile(second) as b:
        names = set(a.namelist()) & set(b.namelist())
        return names == set(a.namelist()) and all(a.read(n) == b.read(n) for n in names)


def test_unpacked_elsewhere_it_predicts_exactly_like_the_trained_checkpoint(
    shared: dict[str, Path], tmp_path: Path
) -> None:
    bundle = unpack(shared["zip"], tmp_path / "elsewhere")
    images = shared["work"] / "busi" / "malignant"
    run = ["run", "--config_file", "configs/inference.json", "--input_dir", str(images)]
    run_command(monai_bundle(*run, "--device", "cpu", "--num_workers", "0"), cwd=bundle)
    repo_run = ["run", "--config_file", f"{BUNDLE}/configs/inference.json", "--input_dir", str(images)]
    run_command(monai_bundle(*repo_run, *knobs("$None")), cwd=shared["work"])  # model.pt, random backbone start
    shared_rows = _probabilities(bundle / "runs" / "predictions.csv")
    original_rows = _probabilities(shared["work"] / BUNDLE / "runs" / "predictions.csv")
    assert shared_rows == original_rows and len(shared_rows) == 10

    # and the networks themselves: public backbone + delta equals the checkpoint bit for bit
    from_delta = bundle_parser(bundle, ("inference.json",)).get_parsed_content("network_def").eval()
    repo = bundle_parser(shared["work"] / BUNDLE, ("inference.json",), parse_overrides(knobs("$None")))
    from_checkpoint = load_checkpoint(
        repo.get_parsed_content("network_def"), shared["work"] / BUNDLE / "models" / "model.pt"
    )
    image = torch.rand(4, 3, 28, 28)
    assert torch.equal(from_delta(image), from_checkpoint.eval()(image))


def _probabilities(path: Path) -> dict[str, list[str]]:
    with open(path, newline="") as handle:
        return {Path(row["image"]).name: [row[k] for k in row if k.startswith("p_")] for row in csv.DictReader(handle)}


def test_other_backbone_weights_or_a_missing_file_fail_with_what_to_pass(
    shared: dict[str, Path], tmp_path: Path
) -> None:
    bundle = unpack(shared["zip"], tmp_path)
    other = write_backbone_weights(tmp_path / "other_backbone.safetensors", BACKBONE, seed=6)
    images = str(shared["work"] / "busi" / "normal")
    run = monai_bundle("run", "--config_file", "configs/inference.json", "--input_dir", images, "--device", "cpu")
    with pytest.raises(AssertionError, match=r"not the ones the sparse delta"):
        run_command([*run, "--pretrained", str(other)], cwd=bundle)
    moved = shutil.copy(shared["weights"], tmp_path / "copy.safetensors")
    parser = bundle_parser(bundle, ("inference.json",), {"pretrained": str(moved)})  # same bytes, another path
    assert parser.get_parsed_content("network_def") is not None  # the same bytes anywhere are accepted


def test_download_large_files_fetches_the_full_checkpoint_with_its_hash(
    shared: dict[str, Path], tmp_path: Path
) -> None:
    bundle = unpack(shared["zip"], tmp_path)
    listing = (bundle / "large_files.yml").read_text()
    assert "models/model.pt" in listing and "sha256" in listing
    run_command(monai_bundle("download_large_files", "--bundle_path", str(bundle)), cwd=tmp_path)
    checkpoint = shared["work"] / BUNDLE / "models" / "model.pt"
    assert sha256_of_file(bundle / "models" / "model.pt") == sha256_of_file(checkpoint)


def _failures(path: Path) -> dict[str, str]:
    return {r.name: r.detail for r in check_bundle(path, run_commands=False) if not r.passed}


def test_check_names_what_a_model_zoo_would_refuse(shared: dict[str, Path], tmp_path: Path) -> None:
    bundle = unpack(shared["zip"], tmp_path / "ok")
    assert _failures(bundle) == {}
    # a config that reaches outside the bundle folder is refused
    inference_file = bundle / "configs" / "inference.json"
    inference = json.loads(inference_file.read_text())
    inference_file.write_text(json.dumps(dict(inference, backbone="%../other/configs/train.json#backbone")))
    assert "refers to another file" in _failures(bundle)["standalone"]
    inference_file.write_text(json.dumps(inference))

    metadata_file = bundle / "configs" / "metadata.json"
    metadata = json.loads(metadata_file.read_text())
    metadata["version"] = "0.3.1"
    metadata_file.write_text(json.dumps(metadata))
    assert "no changelog entry" in _failures(bundle)["version"]
    metadata["changelog"]["0.3.1"] = "x"
    metadata["changelog"]["0.9.0"] = "y"
    metadata_file.write_text(json.dumps(metadata))
    assert "not the newest" in _failures(bundle)["version"]
    metadata["changelog"].pop("0.9.0")
    metadata[DELTA_RECORD_KEY]["sha256"] = "not-a-digest"
    metadata_file.write_text(json.dumps(metadata))
    assert "bundle schema" in _failures(bundle)["metadata"]  # the delta record is validated too
    del metadata["network_data_format"]
    metadata_file.write_text(json.dumps(metadata))
    assert "bundle schema" in _failures(bundle)["metadata"]

    (bundle / "LICENSE").unlink()
    (bundle / "models" / "huge.pt").write_bytes(b"\0" * (25 * 2**20 + 1))
    failures = _failures(bundle)
    assert "LICENSE" in failures["files"] and "huge.pt is 25.0 MB, over the 25 MB limit" in failures["sizes"]

    (bundle / "models" / "huge.pt").unlink()
    (bundle / "large_files.yml").write_text('large_files:\n  - path: "../outside.pt"\n    url: "https://x/y.pt"\n')
    assert "must stay inside the bundle" in _failures(bundle)["sizes"]
    (bundle / "large_files.yml").write_text('large_files:\n  - path: "models/model.pt"\n    url: "not a url"\n')
    assert "is not a URL" in _failures(bundle)["sizes"]
    (bundle / "large_files.yml").unlink()
    (bundle / "models" / "delta.safetensors").unlink()
    assert "no models/delta.safetensors" in _failures(bundle)["weights"]

    renamed = tmp_path / "busi_latest.zip"
    shutil.copy(shared["zip"], renamed)
    assert "should be named busi_v<version>.zip" in _failures(renamed)["archive"]


def test_parse_overrides_reads_literals_like_monai_bundle() -> None:
    parsed = parse_overrides(["--image_size", "112", "--tiny_backbone", "True", "--pretrained", "$None", "--b", "x:y"])
    assert parsed == {"image_size": 112, "tiny_backbone": True, "pretrained": "$None", "b": "x:y"}
    with pytest.raises(ValueError, match=r"pairs"):
        parse_overrides(["--image_size"])
    with pytest.raises(ValueError, match=r"start with '--'"):
        parse_overrides(["image_size", "1"])
