"""A bundle copied out of the repository runs from its own folder, as a model-zoo user runs it.

``bundles/busi`` is copied alone into an empty temporary folder (no ``bundles/``, no repository around it); training,
evaluation and inference are real ``python -m monai.bundle run --config_file configs/<file>.json`` subprocesses
started inside the copy, and MONAI's own property checks (``ConfigWorkflow(...).check_properties()``, which the
model zoo's CI runs) find every train and infer property.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import pytest

from monai_shpeft.zoo import check_bundle
from tests.helpers import REPO_ROOT, TINY_BUNDLE_ARGS, monai_bundle, run_command, write_busi_folder

pytestmark = pytest.mark.filterwarnings("ignore:No hash value provided:UserWarning")

#: run inside the bundle folder: initialise a workflow of one type and print the properties it lacks
PROPERTIES_SCRIPT = """
import json, sys
from monai.bundle import ConfigWorkflow
config_file, workflow_type, overrides = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
workflow = ConfigWorkflow(config_file=config_file, workflow_type=workflow_type, **overrides)
workflow.initialize()
print("missing:", json.dumps(workflow.check_properties()))
"""
#: the tiny backbone at the metadata's 224 px, so that the model-zoo network checks feed it the declared input
TINY_OVERRIDES = {
    "backbone": "timm:vit_small_patch14_dinov2",
    "tiny_backbone": True,
    "pretrained": None,
    "image_size": 224,
    "batch_size": 4,
    "num_workers": 0,
    "device": "cpu",
}
TINY_224 = [f"--{key}={'$None' if value is None else value}" for key, value in TINY_OVERRIDES.items()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of bundles/busi alone in an empty folder, trained for one epoch from inside it (tiny backbone, 224 px)."""
    root = tmp_path_factory.mktemp("standalone")
    ignore = shutil.ignore_patterns("runs", "models")
    bundle = Path(shutil.copytree(REPO_ROOT / "bundles" / "busi", root / "busi", ignore=ignore))
    write_busi_folder(root / "data", per_class=8)
    run_command(
        monai_bundle("run", "--config_file", "configs/train.json", "--dataset_dir", "../data", "--max_epochs", "1")
        + TINY_224,
        cwd=bundle,
    )
    return bundle


def test_the_copy_trains_evaluates_and_infers_from_its_own_folder(trained: Path) -> None:
    assert (trained / "models" / "model.pt").is_file() and (trained / "runs" / "datalist.json").is_file()
    assert not (trained / "configs" / "runs").exists() and not (trained.parent / "runs").exists()
    evaluate = "['configs/train.json','configs/evaluate.json']"
    run_command(monai_bundle("run", "--config_file", evaluate, "--dataset_dir", "../data") + TINY_224, trained)
    metrics = (trained / "runs" / "eval" / "metrics.csv").read_text()
    assert "test_f1" in metrics and "test_auc" in metrics
    run_command(
        monai_bundle("run", "--config_file", "configs/inference.json", "--input_dir", "../data/malignant") + TINY_224,
        trained,
    )
    with open(trained / "runs" / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 8 and {row["predicted_class"] for row in rows} <= {"benign", "malignant", "normal"}


@pytest.mark.parametrize(("config_file", "workflow_type"), [("train.json", "train"), ("inference.json", "infer")])
def test_monai_finds_every_property_of_the_workflow(trained: Path, config_file: str, workflow_type: str) -> None:
    import subprocess

    overrides = {**TINY_OVERRIDES, "output_dir": f"runs_{workflow_type}_properties"}
    overrides.update({"dataset_dir": "../data"} if workflow_type == "train" else {"input_dir": "../data/normal"})
    done = subprocess.run(
        [sys.executable, "-c", PROPERTIES_SCRIPT, f"configs/{config_file}", workflow_type, json.dumps(overrides)],
        cwd=trained,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "missing: []" in done.stdout


def test_the_trained_folder_passes_the_model_zoo_checks(trained: Path) -> None:
    """Every check of ``python -m monai_shpeft.zoo check``, run on the trained copy's folder: the static ones and
    verify_net_in_out, ckpt_export (TorchScript equal to the network), MONAI's inference properties and a real
    ``monai.bundle run`` of inference.json, each a subprocess started in the copy."""
    # the check passes --device itself; the other knobs build the tiny network the copy was trained with
    overrides = [
        part for argument in TINY_224 if not argument.startswith("--device") for part in argument.split("=", 1)
    ]
    results = check_bundle(trained, overrides, run_commands=True)
    assert [r.name for r in results if not r.passed] == [], "\n".join(r.line() for r in results)
    assert {r.name for r in results} >= {"verify_net_in_out", "ckpt_export", "properties", "inference", "metadata"}


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_run_from_the_repository_root_leaves_git_status_clean(tmp_path: Path) -> None:
    """The repository's tracked bundle files and .gitignore in a fresh git repository; train there from its root."""
    import subprocess

    tracked = subprocess.run(
        ["git", "ls-files", "bundles", ".gitignore"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    repository = tmp_path / "repository"
    for name in tracked:
        (repository / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, repository / name)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.org"]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "bundles"]):
        subprocess.run([*git, *command], cwd=repository, check=True, capture_output=True)
    write_busi_folder(tmp_path / "data", per_class=8)
    train = ["--config_file", "bundles/busi/configs/train.json", "--dataset_dir", str(tmp_path / "data")]
    run_command(monai_bundle("run", *train, "--max_epochs", "1") + TINY_BUNDLE_ARGS, repository)
    assert (repository / "bundles" / "busi" / "models" / "model.pt").is_file()
    assert (repository / "bundles" / "busi" / "models" / "metadata.json").is_file()
    status = subprocess.run(["git", "status", "--porcelain"], cwd=repository, capture_output=True, text=True)
    assert status.stdout == ""
