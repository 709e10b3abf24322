"""The shared bundle template: every committed bundle is its rendering, stands alone, and finds its own folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from monai_shpeft.transforms import MODALITIES, modality_transforms
from monai_shpeft.utils import _config_file_argument
from monai_shpeft.zoo import REPOSITORY_BUNDLES, BundleSpec, modality_sections, render_configs, stale_configs
from monai_shpeft.zoo.__main__ import main as zoo_main
from tests.helpers import REPO_ROOT, monai_bundle, run_command, write_png

BUNDLES_DIR = REPO_ROOT / "bundles"


def test_every_committed_bundle_is_the_rendering_of_the_template(capsys: pytest.CaptureFixture[str]) -> None:
    assert stale_configs(BUNDLES_DIR) == []
    assert zoo_main(["sync_bundles", "--check", "--bundles_dir", str(BUNDLES_DIR)]) == 0
    assert "every bundle is up to date" in capsys.readouterr().out
    on_disk = sorted(p.name for p in BUNDLES_DIR.iterdir() if (p / "configs" / "metadata.json").is_file())
    assert on_disk == sorted(REPOSITORY_BUNDLES)
    assert not (BUNDLES_DIR / "_base").exists()


@pytest.mark.parametrize("name", sorted(REPOSITORY_BUNDLES))
def test_no_bundle_config_refers_outside_its_folder(name: str) -> None:
    for path in sorted((BUNDLES_DIR / name / "configs").glob("*.json")):
        text = path.read_text()
        config = json.loads(text)
        assert '"%' not in text, f"{path} has a config macro"
        if path.name != "metadata.json":  # the metadata quotes commands; configs must not point outside
            assert "../" not in json.dumps({k: v for k, v in config.items() if k != "dataset_dir"}), path
        if "bundle_root" in config:
            assert config["bundle_root"] == "$monai_shpeft.utils.config_bundle_root()", path


def test_an_edited_bundle_is_found_stale_and_sync_restores_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "bundles"
    shutil.copytree(BUNDLES_DIR, copy, ignore=shutil.ignore_patterns("runs", "models"))
    train = copy / "busi" / "configs" / "train.json"
    config = json.loads(train.read_text())
    train.write_text(json.dumps(dict(config, max_epochs=3), indent=4) + "\n")
    assert stale_configs(copy) == [train]
    assert zoo_main(["sync_bundles", "--check", "--bundles_dir", str(copy)]) == 1
    assert f"out of date: {train}" in capsys.readouterr().out
    assert zoo_main(["sync_bundles", "--bundles_dir", str(copy)]) == 0
    assert "busi: 1 file(s) rewritten (train.json)" in capsys.readouterr().out
    assert json.loads(train.read_text())["max_epochs"] == config["max_epochs"] and stale_configs(copy) == []


def test_a_spec_sets_the_dataset_facts_and_knob_defaults() -> None:
    spec = BundleSpec("mine", "my ultrasound", "busi", "/data/mine", "ultrasound", ("benign", "malignant", "normal"))
    spec = BundleSpec(**{**spec.__dict__, "knobs": {"image_size": 112}, "cache_rate": 0.0})
    configs = {name: json.loads(text) for name, text in render_configs(spec).items() if name.endswith(".json")}
    train, inference = configs["train.json"], configs["inference.json"]
    assert train["dataset"] == "busi" and train["dataset_dir"] == "/data/mine" and train["cache_rate"] == 0.0
    assert train["classes"] == inference["classes"] == ["benign", "malignant", "normal"]
    assert train["image_size"] == inference["image_size"] == 112
    assert train["modality_transforms"] == inference["modality_transforms"] == modality_sections("ultrasound")
    assert "my ultrasound" in train["_desc_"] and "my ultrasound" in inference["_desc_"]
    with pytest.raises(KeyError, match=r"no knob \['image_sise'\]"):
        render_configs(BundleSpec(**{**spec.__dict__, "knobs": {"image_sise": 112}}))
    with pytest.raises(ValueError, match=r"at least two classes"):
        render_configs(BundleSpec(**{**spec.__dict__, "classes": ("only",)}))
    with pytest.raises(ValueError, match=r"unknown modality 'sonar'"):
        render_configs(BundleSpec(**{**spec.__dict__, "modality": "sonar"}))


@pytest.mark.parametrize("modality", MODALITIES)
def test_a_modality_section_reads_an_image_like_the_preset(modality: str, tmp_path: Path) -> None:
    """The bundle's load + normalize chain gives the preset's evaluation tensor on a real file."""
    path = str(write_png(tmp_path / "image.png", size=40, value=90))
    sections = modality_sections(modality)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    parser = ConfigParser(
        {
            "slice_policy": "middle",
            "input_size": 32,
            "image_keys": ["image"],
            "augment_keys": ["image"],
            "normalization": [list(mean), list(std)],
            "modality_transforms": sections,
            "chain": "$@modality_transforms#load + @modality_transforms#normalize",
            "eval": {"_target_": "Compose", "transforms": "@chain"},
        }
    )
    from_bundle = parser.get_parsed_content("eval")({"image": path})["image"]
    preset = modality_transforms(modality, image_size=32, mean=mean, std=std)({"image": path})["image"]
    assert from_bundle.shape == (3, 32, 32)
    assert torch.allclose(torch.as_tensor(from_bundle), torch.as_tensor(preset), atol=1e-6)
    flips = [t["spatial_axis"] for t in sections["augmentation"] if t["_target_"].endswith("RandFlipd")]
    assert flips == ([1, 0] if modality in ("pathology", "dermoscopy") else [1])


def test_the_bundle_root_is_the_folder_of_the_configs_being_run(tmp_path: Path) -> None:
    configs = tmp_path / "somewhere" / "mine" / "configs"
    configs.mkdir(parents=True)
    (configs / "show.json").write_text(
        json.dumps(
            {
                "imports": ["$import monai_shpeft", "$import monai_shpeft.utils"],
                "bundle_root": "$monai_shpeft.utils.config_bundle_root()",
                "run": ["$print('bundle_root=' + @bundle_root)"],
            }
        )
    )
    inside = run_command(monai_bundle("run", "--config_file", "configs/show.json"), cwd=configs.parent)
    assert "bundle_root=.\n" in inside
    above = run_command(monai_bundle("run", "--config_file", "somewhere/mine/configs/show.json"), cwd=tmp_path)
    assert "bundle_root=somewhere/mine\n" in above
    forced = run_command(
        monai_bundle("run", "--config_file", "configs/show.json", "--bundle_root", "/elsewhere"), cwd=configs.parent
    )
    assert "bundle_root=/elsewhere\n" in forced
    # commands that read configs without a workflow (ckpt_export, verify_net_in_out) fall back to --config_file
    assert _config_file_argument(["x", "--config_file", "b/configs/train.json"]) == "b/configs/train.json"
    assert _config_file_argument(["x", "--config_file", "['b/configs/t.json','b/configs/e.json']"]) == (
        "b/configs/t.json"
    )
    assert _config_file_argument(["x", "--config_file=a/configs/i.json"]) == "a/configs/i.json"
    assert _config_file_argument(["x", "--meta_file", "m.json"]) is None
