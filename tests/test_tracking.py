"""Experiment tracking: a bundle's training and evaluation in one MLflow run of a local SQLite store, read back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from ignite.engine import Engine
from monai.handlers import MLFlowHandler

from monai_shpeft.clinical import REPORT_FIGURES
from monai_shpeft.errors import SettingsError
from monai_shpeft.handlers import TrackingHandler, check_tracking, default_tracking_uri
from monai_shpeft.handlers.tracking_handler import RUN_RECORD, report_metrics
from monai_shpeft.utils import config_tracking
from tests.helpers import (
    REPO_ROOT,
    TINY_BUNDLE_ARGS,
    copy_bundles,
    monai_bundle,
    run_command,
    run_process,
    write_busi_folder,
)

BUNDLE = "bundles/busi"
TRAIN = f"{BUNDLE}/configs/train.json"
EVALUATE = f"['{TRAIN}','{BUNDLE}/configs/evaluate.json']"
EPOCHS = 2


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BUSI training of two epochs and its evaluation, both with ``--tracking mlflow``."""
    work = copy_bundles(tmp_path_factory.mktemp("tracked"))
    write_busi_folder(work / "busi", per_class=10)
    common = ["--dataset_dir", "busi", "--max_epochs", str(EPOCHS), *TINY_BUNDLE_ARGS, "--tracking", "mlflow"]
    run_command(monai_bundle("run", "--config_file", TRAIN, "--learning_rate", "0.05", *common), cwd=work)
    run_command(monai_bundle("run", "--config_file", EVALUATE, "--report_resamples", "20", *common), cwd=work)
    return work


def the_run(work: Path) -> tuple[mlflow.MlflowClient, mlflow.entities.Run]:
    """The store of the bundle's default output folder and its only run of the experiment ``busi``."""
    client = mlflow.MlflowClient(default_tracking_uri(work / BUNDLE / "runs"))
    experiment = client.get_experiment_by_name("busi")
    assert experiment is not None, "the experiment is named after the bundle"
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return client, runs[0]


def test_training_and_evaluation_log_one_run_into_the_output_folder(tracked: Path) -> None:
    runs = tracked / BUNDLE / "runs"
    assert (runs / "mlruns.db").is_file() and (runs / "mlruns").is_dir()
    # nothing beside the bundle's output folder: no store in the working directory, the tracked configs unchanged
    assert sorted(p.name for p in tracked.iterdir()) == ["bundles", "busi"]
    assert (tracked / TRAIN).read_bytes() == (REPO_ROOT / TRAIN).read_bytes()
    client, run = the_run(tracked)
    assert run.info.run_name == "shpeft-seed0-fold0" and run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith((runs / "mlruns").as_uri())
    assert json.loads((runs / RUN_RECORD).read_text())["run_id"] == run.info.run_id
    assert run.data.tags["monai_shpeft.train"] == run.data.tags["monai_shpeft.evaluate"] == "true"

    params = run.data.params
    expected = {"method": "shpeft", "budget": "0.01", "image_size": "28", "batch_size": "4", "seed": "0", "fold": "0"}
    assert {key: params[key] for key in expected} == expected
    assert params["backbone"] == "timm:vit_small_patch14_dinov2" and params["learning_rate"] == "0.05"
    assert params["max_epochs"] == params["epochs"] == str(EPOCHS)  # the trainer's, not the validator's
    assert params["report_resamples"] == "20"  # the evaluation's own knobs join the training's


def test_metrics_per_iteration_per_epoch_and_of_the_report(tracked: Path) -> None:
    client, run = the_run(tracked)

    def steps(name: str) -> list[int]:
        return sorted(m.step for m in client.get_metric_history(run.info.run_id, name))

    epoch_length = int(run.data.params["epoch_length"])
    assert steps("train_loss") == list(range(1, EPOCHS * epoch_length + 1))  # MONAI's MLFlowHandler, per iteration
    assert steps("train_loss_epoch") == list(range(1, EPOCHS + 1))
    for name in ("val_f1", "val_accuracy", "val_auc"):
        # one value per epoch; epoch 0 is the validated head warm-up, EPOCHS + 1 the weights' average
        assert [steps(name).count(epoch) for epoch in range(1, EPOCHS + 1)] == [1] * EPOCHS, name
    report = json.loads((tracked / BUNDLE / "runs" / "eval" / "report.json").read_text())
    metrics = run.data.metrics
    assert metrics["report.macro_f1"] == pytest.approx(report["overall"]["macro_f1"]["value"])
    assert metrics["report.macro_f1.low"] == pytest.approx(report["overall"]["macro_f1"]["low"])
    assert metrics["report.malignant.sensitivity"] == pytest.approx(
        report["per_class"]["malignant"]["sensitivity"]["value"]
    )
    assert metrics["test_f1"] == pytest.approx(report["overall"]["macro_f1"]["value"], abs=1e-6)


def test_the_report_and_figures_of_training_and_evaluation_are_artifacts(tracked: Path, tmp_path: Path) -> None:
    client, run = the_run(tracked)
    evaluation = {a.path for a in client.list_artifacts(run.info.run_id, "eval")}
    training = {a.path for a in client.list_artifacts(run.info.run_id, "train")}
    assert {f"eval/{name}" for name in ("report.json", *REPORT_FIGURES, "test_predictions.csv")} <= evaluation
    assert len([path for path in evaluation if path.endswith(".png")]) >= 3
    assert {"train/metadata.json", "train/datalist.json", "train/sparse_trainable_set_ratio.png"} <= training
    assert not any(path.endswith((".pt", ".safetensors")) for path in training)
    copy = client.download_artifacts(run.info.run_id, "eval/report.json", str(tmp_path))
    assert Path(copy).read_bytes() == (tracked / BUNDLE / "runs" / "eval" / "report.json").read_bytes()


def test_without_tracking_a_run_writes_no_store(tracked: Path) -> None:
    """The default: no MLflow handler, no store, no run record (here an evaluation into another output folder)."""
    args = ["--config_file", EVALUATE, "--dataset_dir", "busi", *TINY_BUNDLE_ARGS, "--report_resamples", "0"]
    run_command(monai_bundle("run", *args, "--output_dir", "runs_untracked"), cwd=tracked)
    written = {p.name for p in (tracked / "runs_untracked").rglob("*")}
    assert "report.json" in written
    assert not written & {"mlruns.db", "mlruns", RUN_RECORD}
    assert config_tracking() == ""  # outside a bundle workflow


def test_a_tracking_uri_mlflow_cannot_use_is_named_on_the_last_line(tracked: Path) -> None:
    args = ["--config_file", TRAIN, "--dataset_dir", "busi", *TINY_BUNDLE_ARGS, "--output_dir", "runs_bad_uri"]
    failed = run_process(monai_bundle("run", *args, "--tracking", "mlflow", "--tracking_uri", "runs/store"), tracked)
    assert failed.returncode != 0
    last = (failed.stdout + failed.stderr).strip().splitlines()[-1]
    assert last.startswith("SettingsError: tracking_uri 'runs/store' is not a store MLflow can log to"), last
    assert "sqlite:///" in last


def test_check_tracking_names_the_knob_and_its_values() -> None:
    assert check_tracking(None) is False and check_tracking("") is False and check_tracking("none") is False
    with pytest.raises(SettingsError, match=r"tracking 'wandb' is not a tracking backend; choose one of: '', 'none'"):
        check_tracking("wandb")
    with pytest.raises(SettingsError, match="tracking_uri 'file:///tmp/mlruns'"):
        check_tracking("mlflow", "file:///tmp/mlruns")
    assert check_tracking("mlflow", default_tracking_uri("runs")) is True


def test_without_mlflow_installed_tracking_says_what_to_install() -> None:
    """In a process where ``mlflow`` cannot be imported (as without the package), the check says which extra."""
    code = (
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'mlflow':\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Hide())\n"
        "from monai_shpeft.handlers import check_tracking\n"
        "check_tracking('mlflow', 'sqlite:////tmp/mlruns.db')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert "SettingsError: tracking 'mlflow' needs mlflow-skinny" in last, last
    assert 'pip install "monai-shpeft[tracking]"' in last


def test_the_handler_binds_monai_mlflow_handlers_to_its_run(tmp_path: Path) -> None:
    """A training opens a new run (a stale unfinished one of its name is killed) that MONAI's MLFlowHandler then
    continues; its evaluation reopens that run; a knob logged before keeps its value."""
    uri = default_tracking_uri(tmp_path)
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("demo", artifact_location=(tmp_path / "mlruns").as_uri())
    stale = client.create_run(experiment, run_name="r")  # a training that crashed
    (tmp_path / "notes.json").write_text("{}")

    def engine() -> Engine:
        return Engine(lambda engine, batch: {"loss": torch.tensor(float(batch))})

    trainer = engine()
    loss = lambda output: output["loss"]  # noqa: E731
    notes = [tmp_path / "notes.json"]
    tracking = TrackingHandler(tmp_path, uri, "demo", "r", {"lr": 0.1}, artifacts=notes, output_transform=loss)
    tracking.attach(trainer)
    MLFlowHandler(
        tracking_uri=uri, experiment_name="demo", run_name="r", output_transform=loss, tag_name="loss"
    ).attach(trainer)
    trainer.run([1.0, 3.0], max_epochs=2)
    run = client.get_run(tracking.run_id)
    assert run.info.status == "FINISHED" and run.info.artifact_uri.startswith(tmp_path.as_uri())
    stale_info = client.get_run(stale.info.run_id).info
    assert (stale_info.status, stale_info.run_name) == ("KILLED", "r (stopped)")
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 4  # MONAI's handler logged into our run
    assert [m.value for m in client.get_metric_history(run.info.run_id, "train_loss_epoch")] == [2.0, 2.0]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "train")] == ["train/notes.json"]

    report = {"overall": {"macro_f1": {"value": 0.5, "low": 0.25, "high": None}}, "per_class": {"a b(1)": {"f1": 1}}}
    (tmp_path / "report.json").write_text(json.dumps(report))
    evaluator = engine()
    evaluation = TrackingHandler(
        tmp_path, uri, "demo", "r", params={"lr": 0.2}, stage="evaluate", report_file=tmp_path / "report.json"
    )
    evaluation.attach(evaluator)
    assert client.get_run(run.info.run_id).info.status == "RUNNING"
    evaluator.run([1.0])
    assert evaluation.run_id == run.info.run_id
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED" and run.data.params["lr"] == "0.1"
    assert run.data.metrics["report.macro_f1.low"] == 0.25 and "report.macro_f1.high" not in run.data.metrics
    assert report_metrics(report)["report.a b_1_.f1"] == 1.0
