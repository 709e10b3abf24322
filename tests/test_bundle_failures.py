"""The failure contract through real ``python -m monai.bundle run`` processes: the last line is our message.

Each case is a bad input or a bad knob a user meets; the run must stop with our error naming the file or the knob and
the cause as the last line on the terminal, no traceback above it, and the full traceback in ``failure.log``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from monai_shpeft.failure_report import FAILURE_LOG
from tests.helpers import TINY_BUNDLE_ARGS, copy_bundles, monai_bundle, run_process, write_busi_folder

TRAIN = "bundles/busi/configs/train.json"
EVALUATE = f"['{TRAIN}','bundles/busi/configs/evaluate.json']"


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the bundle and one BUSI-layout folder per bad input."""
    work = copy_bundles(tmp_path_factory.mktemp("failures"))
    root = write_busi_folder(work / "busi", per_class=10)
    truncated = shutil.copytree(root, work / "truncated") / "malignant" / "malignant (4).png"
    truncated.write_bytes(truncated.read_bytes()[:200])
    (shutil.copytree(root, work / "text") / "benign" / "benign (2).png").write_text("<html>not an image</html>")
    for image in (shutil.copytree(root, work / "empty_class") / "normal").iterdir():
        image.unlink()
    return work


def _run(work: Path, name: str, *args: str, config: str = TRAIN, data: str = "busi") -> tuple[int, str, str]:
    output_dir = f"runs_{name}"
    command = monai_bundle(
        "run", "--config_file", config, "--dataset_dir", data, "--output_dir", output_dir, "--max_epochs", "1",
        *TINY_BUNDLE_ARGS, *args,
    )  # fmt: skip
    done = run_process(command, work)
    return done.returncode, done.stdout + done.stderr, output_dir


CASES = {
    "truncated_png": (
        {"data": "truncated"},
        "ImageReadError: cannot read image 'truncated/malignant/malignant (4).png': truncated or corrupt image data",
    ),
    "non_image": (
        {"data": "text"},
        "ImageReadError: cannot read image 'text/benign/benign (2).png': not an image",
    ),
    "empty_class": ({"data": "empty_class"}, "DatasetLayoutError: BUSI class folder empty_class/normal holds no image"),
    "missing_dataset": ({"data": "nowhere"}, "DatasetFolderError: BUSI dataset folder not found: nowhere"),
    "unknown_method": ({"args": ("--method", "sheft")}, "SettingsError: Unknown method 'sheft'; supported methods:"),
    "image_size": (
        {"args": ("--image_size", "30")},
        "SettingsError: image_size 30 is not a multiple of the patch size 14 of timm:vit_small_patch14_dinov2",
    ),
    "budget": (
        {"args": ("--budget", "2.0")},
        "SettingsError: budget ratio must be in (0, 1] (0.01 means 1%), got 2.0.",
    ),
    "fold": ({"args": ("--num_folds", "5", "--fold", "7")}, "SettingsError: fold must be one of 0..4 for num_folds=5"),
    "amp": ({"args": ("--amp", "fast")}, "SettingsError: amp must be one of ['auto', 'true', 'false', 'bf16']"),
    "budget_count": (
        {"args": ("--budget", "$10**9")},
        "SettingsError: budget count must be between 1 and the",
    ),
    "slice_policy": (
        {"args": ("--slice_policy", "thickest")},
        "SettingsError: slice_policy 'thickest' is not a policy: use a slice index or one of",
    ),
    "batch_larger_than_training": (
        {"args": ("--batch_size", "512")},
        "SettingsError: batch_size 512 is larger than the training part of datalist",
    ),
    "fpt_size": (
        {"args": ("--method", "fpt", "--fpt_image_size", "50", "--fpt_side_image_size", "28")},
        "SettingsError: fpt_image_size 50 is not a multiple of the patch size 14",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_input_or_knob_ends_the_run_with_our_message(work: Path, case: str) -> None:
    where, expected = CASES[case]
    returncode, output, output_dir = _run(work, case, *where.get("args", ()), data=where.get("data", "busi"))
    assert returncode == 1
    assert output.strip().splitlines()[-1].startswith(expected), output[-3000:]
    assert "Traceback (most recent call last)" not in output  # the trace is kept, not shown
    log = (work / output_dir / FAILURE_LOG).read_text()
    assert "Traceback (most recent call last)" in log and expected.split(": ", 1)[1][:40] in log
    assert "Epoch[1]" not in output  # nothing trained


def test_a_checkpoint_of_another_architecture_is_named_at_evaluation(work: Path) -> None:
    checkpoint = work / "bundles" / "busi" / "models" / "model.pt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"foo.weight": torch.zeros(3)}, checkpoint)  # e.g. another project's model file
    try:
        returncode, output, _ = _run(work, "checkpoint", config=EVALUATE)
    finally:
        checkpoint.unlink()
    last = output.strip().splitlines()[-1]
    assert returncode == 1
    assert last.startswith("CheckpointMismatchError: the checkpoint bundles/busi/models/model.pt does not fit"), last
    assert "--backbone, --image_size, --method" in last


def test_debug_prints_the_whole_traceback_above_the_message(work: Path) -> None:
    returncode, output, _ = _run(work, "debug", "--method", "sheft", "--debug", "true")
    assert returncode == 1 and "Traceback (most recent call last)" in output
    assert "Failed to evaluate ConfigExpression" in output  # MONAI's wrapper, shown on demand
    assert output.strip().splitlines()[-1].startswith("SettingsError: Unknown method 'sheft'")
