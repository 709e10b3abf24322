"""Ignite handler that completes MONAI's MLflow tracking of a bundle run: one run per training, knobs, report, figures.

``python -m monai.bundle run ... --tracking mlflow`` is MONAI's own option: MONAI appends an
:class:`~monai.handlers.MLFlowHandler` to the trainer's and the evaluator's handlers, configured by the bundle's
``tracking_uri``, ``experiment_name`` and ``run_name`` keys. Those log the training loss and learning rates per
iteration and the evaluator's metrics per epoch into the active run of that name. :class:`TrackingHandler` runs
beside them and decides which run that is (a new one for a training, the training's own for its evaluation), and
logs what MONAI's handlers do not: the knobs, the mean loss per epoch, the clinical report's figures and the files
and figures a run writes.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from monai.handlers import from_engine
from monai.utils import min_version, optional_import

from monai_shpeft.errors import SettingsError
from monai_shpeft.handlers.gradient_mask_handler import STATE_KEY
from monai_shpeft.utils import atomic_write_json

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", "0.4.11", min_version, "Engine")

__all__ = [
    "INSTALL_HINT",
    "RUN_RECORD",
    "TRACKING_CHOICES",
    "TrackingHandler",
    "check_tracking",
    "default_tracking_uri",
    "report_metrics",
]

logger = logging.getLogger(__name__)

#: values of the bundles' ``tracking`` key ("" and "none": no tracking)
TRACKING_CHOICES = ("", "none", "mlflow")
#: the file in ``output_dir`` that names the MLflow run of the last training (its evaluation logs into it)
RUN_RECORD = "mlflow_run.json"
INSTALL_HINT = 'pip install "monai-shpeft[tracking]"'
# MLflow's client, and for the SQLite store SQLAlchemy and Alembic (mlflow-skinny lacks them)
_REQUIRED_MODULES = {"mlflow": "mlflow-skinny", "sqlalchemy": "sqlalchemy", "alembic": "alembic"}
# files of a run's folders worth keeping with the run (not checkpoints, event logs or locks)
_ARTIFACT_SUFFIXES = (".json", ".png", ".csv")
_ARTIFACT_FOLDERS = {"train": "train", "evaluate": "eval"}
_METRIC_NAME = re.compile(r"[^A-Za-z0-9_\-. /]")
_FINISHED = "FINISHED"


def default_tracking_uri(output_dir: str | os.PathLike) -> str:
    """The bundles' default MLflow store: an SQLite database ``<output_dir>/mlruns.db`` (artifacts: ``mlruns/``).

    Args:
        output_dir: the run's output folder.

    Returns:
        ``sqlite:////ABSOLUTE/output_dir/mlruns.db``.
    """
    return f"sqlite:///{quote((Path(output_dir).absolute() / 'mlruns.db').as_posix(), safe='/:')}"


def check_tracking(tracking: str | None, tracking_uri: str | None = None) -> bool:
    """Check the tracking keys of a run; when tracking, switch MLflow's usage telemetry off for this process.

    Args:
        tracking: ``""``/``"none"``/``None`` (no tracking) or ``"mlflow"`` (what ``--tracking`` gave MONAI).
        tracking_uri: MLflow's store: ``sqlite:///PATH`` (the default, :func:`default_tracking_uri`) or a server
            (``http://HOST:PORT``); checked only when tracking.

    Returns:
        whether the run logs to MLflow.

    Raises:
        SettingsError: for another ``tracking`` (the message lists the valid ones), for a ``tracking_uri`` that is a
            plain path or MLflow's deprecated file store, or when MLflow is not installed (the message says what
            to install).
    """
    if tracking is None or tracking in ("", "none"):
        return False
    if tracking != "mlflow":
        raise SettingsError(
            f"tracking {tracking!r} is not a tracking backend; choose one of: "
            f"{', '.join(repr(c) for c in TRACKING_CHOICES)} (e.g. --tracking mlflow; '' or 'none': no tracking)."
        )
    missing = [package for module, package in _REQUIRED_MODULES.items() if not _installed(module)]
    if missing:
        raise SettingsError(
            f"tracking 'mlflow' needs {', '.join(missing)}, not installed here: {INSTALL_HINT} (or drop --tracking)."
        )
    uri = str(tracking_uri or "")
    if "://" not in uri or uri.startswith("file:"):
        raise SettingsError(
            f"tracking_uri {uri!r} is not a store MLflow can log to: give an SQLite database as "
            "sqlite:///ABSOLUTE/PATH/mlruns.db, or a server as http://HOST:PORT (MLflow's file store, a folder or "
            "file:// URI, is deprecated; the default is <output_dir>/mlruns.db)."
        )
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # a local store stays offline
    try:
        from mlflow.telemetry.client import set_telemetry_client

        set_telemetry_client()  # MONAI imports mlflow before any bundle code runs: re-read the setting
    except ImportError:  # an MLflow without telemetry
        pass
    return True


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a finder that refuses the module, or a module without a spec
        return False


def _artifact_location(tracking_uri: str) -> str | None:
    """Artifacts of an SQLite store go to ``mlruns/`` beside the database (as MONAI's ``MLFlowHandler`` puts them)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None  # a server keeps its own
    return (Path(unquote(tracking_uri[len("sqlite:///") :])).parent / "mlruns").as_uri()


def _param_text(value: Any) -> str:
    """A parameter as MLflow stores it: text (mappings and sequences as JSON)."""
    return json.dumps(value, sort_keys=True, default=str) if isinstance(value, Mapping | list | tuple) else str(value)


class TrackingHandler:
    """Choose the MLflow run MONAI's ``MLFlowHandler`` logs into, and log the knobs, report and figures beside it.

    Attached to the trainer (``stage="train"``) or the test evaluator (``stage="evaluate"``) of a bundle run with
    ``--tracking mlflow``. On attaching (before any engine starts) it opens the run: a training creates a new run
    (resuming: reopens the one it started), an evaluation reopens the run of the training that wrote
    ``<output_dir>/mlflow_run.json`` when its name is ``run_name`` (else the active run of that name, else a new
    one). Other unfinished runs of that name (runs that stopped without finishing) are marked ``KILLED`` and renamed
    ``"<run_name> (stopped)"``, so that MONAI's handlers, which continue a run named ``run_name`` that is not
    ``FINISHED``, log into the same run. It then logs the knobs (``params``; a knob already logged with another
    value keeps the first) and, for a training, the trainer's ``max_epochs`` and ``epoch_length`` (MONAI's handlers
    would take the validator's).

    While the trainer runs it logs the mean loss of each epoch (``train_loss_epoch``). When the engine completes,
    after the handlers attached before it started (the clinical report, the predictions), it logs the figures of
    ``report_file`` as metrics (``report.macro_f1``, ``report.macro_f1.low``, ``report.<class>.sensitivity``, ...),
    the ``.json``, ``.png`` and ``.csv`` files of ``artifacts`` (files, or the files directly inside folders) under
    ``train/`` or ``eval/``, the sparse trainable set's heatmaps of a training, and marks the run finished.

    Args:
        output_dir: the run's output folder (the run record is written there).
        tracking_uri: the store (the bundles' ``tracking_uri``; ``MLFLOW_TRACKING_URI`` overrides it, as it does
            for MONAI's ``MLFlowHandler``).
        experiment_name: the MLflow experiment (created when missing, its artifacts beside an SQLite store).
        run_name: the run's name (the bundles' ``run_name``).
        params: the run's knobs, logged as MLflow parameters.
        stage: ``"train"`` or ``"evaluate"``.
        resume: a training that resumes reopens the recorded run.
        artifacts: files and folders logged when the engine completes (missing ones are skipped).
        report_file: the clinical report (``report.json``) whose figures are logged as metrics.
        output_transform: the trainer's output -> the loss (default: its ``"loss"``).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        tracking_uri: str,
        experiment_name: str,
        run_name: str,
        params: Mapping[str, Any] | None = None,
        stage: str = "train",
        resume: bool = False,
        artifacts: Sequence[str | os.PathLike] = (),
        report_file: str | os.PathLike | None = None,
        output_transform: Callable[[Any], Any] | None = None,
    ) -> None:
        if stage not in _ARTIFACT_FOLDERS:
            raise ValueError(f"stage must be one of {list(_ARTIFACT_FOLDERS)}, got {stage!r}.")
        self.tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking_uri
        check_tracking("mlflow", self.tracking_uri)
        self.output_dir = Path(output_dir)
        self.experiment_name = str(experiment_name)
        self.run_name = str(run_name)
        self.params = {str(key): _param_text(value) for key, value in (params or {}).items()}
        self.stage = stage
        self.resume = bool(resume)
        self.artifacts = [Path(path) for path in artifacts]
        self.report_file = Path(report_file) if report_file else None
        self.output_transform = output_transform or from_engine(["loss"], first=True)
        self.run_id: str | None = None
        self._client: Any = None
        self._losses: list[float] = []
        self._done = False

    @property
    def record_file(self) -> Path:
        """The record of the run (``<output_dir>/mlflow_run.json``)."""
        return self.output_dir / RUN_RECORD

    def attach(self, engine: Engine) -> None:
        """Open the run, log the knobs, and register the epoch and completion logging on ``engine``.

        Args:
            engine: the trainer (``stage="train"``) or the evaluator (``stage="evaluate"``).
        """
        import mlflow

        self._client = mlflow.MlflowClient(tracking_uri=self.tracking_uri)
        self.run_id = self._open_run()
        params = dict(self.params)
        if self.stage == "train":
            params.update(max_epochs=str(engine.state.max_epochs), epoch_length=str(engine.state.epoch_length))
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._gather_loss)
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._log_epoch_loss)
        self._log_params(params)
        # registered once the engine starts, so that it runs after the COMPLETED handlers of every handler attached
        # at construction, whatever their place in the list (the clinical report, the predictions, a temperature)
        engine.add_event_handler(Events.STARTED, self._register_completion)

    def _open_run(self) -> str:
        """Open the run of this training or evaluation; the id of the only unfinished run named :attr:`run_name`."""
        client = self._client
        experiment = client.get_experiment_by_name(self.experiment_name)
        if experiment is None:
            client.create_experiment(self.experiment_name, artifact_location=_artifact_location(self.tracking_uri))
            experiment = client.get_experiment_by_name(self.experiment_name)
        elif experiment.lifecycle_stage != "active":
            raise SettingsError(
                f"experiment_name {self.experiment_name!r} is deleted in {self.tracking_uri}: restore it (mlflow "
                "experiments restore) or choose another --experiment_name."
            )
        # the same listing MONAI's MLFlowHandler searches for the active run of its name
        unfinished = [
            run
            for run in client.search_runs(experiment.experiment_id)
            if run.info.run_name == self.run_name and run.info.status != _FINISHED
        ]
        run = self._recorded_run(experiment.experiment_id) if self.stage == "evaluate" or self.resume else None
        if run is None and self.stage == "evaluate" and unfinished:
            run = unfinished[-1]  # the run MONAI's handler would continue
        if run is None:
            run = client.create_run(
                experiment.experiment_id, run_name=self.run_name, tags={"monai_shpeft.stage": self.stage}
            )
            atomic_write_json(
                self.record_file,
                {
                    "tracking_uri": self.tracking_uri,
                    "experiment_name": self.experiment_name,
                    "experiment_id": experiment.experiment_id,
                    "run_id": run.info.run_id,
                    "run_name": run.info.run_name,
                },
            )
        elif run.info.status != "RUNNING":
            client.update_run(run.info.run_id, status="RUNNING")
        for stale in unfinished:
            if stale.info.run_id != run.info.run_id:
                # MONAI's handler would continue it (it continues any run of its name that is not FINISHED)
                name = f"{self.run_name} (stopped)"
                logger.info("MLflow run %s never finished: renamed %r, marked KILLED.", stale.info.run_id, name)
                client.update_run(stale.info.run_id, status="KILLED", name=name)
        client.set_tag(run.info.run_id, f"monai_shpeft.{self.stage}", "true")
        logger.info(
            "Tracking with MLflow: experiment %r, run %r (%s); to look at it: mlflow ui --backend-store-uri %s",
            self.experiment_name,
            self.run_name,
            run.info.run_id,
            self.tracking_uri,
        )
        return run.info.run_id

    def _recorded_run(self, experiment_id: str) -> Any | None:
        """The run of the record, if it is of this store, experiment and name, and not deleted."""
        if not self.record_file.is_file():
            return None
        try:
            record = json.loads(self.record_file.read_text())
            if (record.get("tracking_uri"), record.get("experiment_id")) != (self.tracking_uri, experiment_id):
                return None
            run = self._client.get_run(record["run_id"])
        except Exception as error:  # an unreadable record, or a run the store does not have: a new run starts
            logger.info("The MLflow run recorded in %s is not usable (%s).", self.record_file, error)
            return None
        usable = run.info.lifecycle_stage == "active" and run.info.run_name == self.run_name
        return run if usable else None

    def _log_params(self, params: Mapping[str, str]) -> None:
        """Log the parameters the run does not have yet (MLflow refuses to change a parameter's value)."""
        from mlflow.entities import Param

        logged = self._client.get_run(self.run_id).data.params
        for key, value in params.items():
            if key in logged and logged[key] != value:
                logger.info("MLflow parameter %s stays %r (this %s has %r).", key, logged[key], self.stage, value)
        new = [Param(key, value) for key, value in params.items() if key not in logged]
        for start in range(0, len(new), 100):  # MLflow takes at most 100 parameters a call
            self._client.log_batch(self.run_id, params=new[start : start + 100])

    def _gather_loss(self, engine: Engine) -> None:
        """Keep the iteration's loss for the epoch's mean."""
        loss = self.output_transform(engine.state.output)
        if loss is not None:
            self._losses.append(float(loss.item() if hasattr(loss, "item") else loss))

    def _log_epoch_loss(self, engine: Engine) -> None:
        """Log the epoch's mean training loss (``train_loss_epoch``) at the epoch's step."""
        if self._losses:
            mean = sum(self._losses) / len(self._losses)
            self._client.log_metric(self.run_id, "train_loss_epoch", mean, step=engine.state.epoch)
        self._losses = []

    def _register_completion(self, engine: Engine) -> None:
        """Add :meth:`__call__` on ``Events.COMPLETED``, after the handlers already there."""
        if not engine.has_event_handler(self, Events.COMPLETED):
            engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """Log the report's figures, the files and figures of the run, and mark the run finished.

        Args:
            engine: the trainer or evaluator, completed.
        """
        if self._done or self.run_id is None:
            return
        self._done = True
        client, folder = self._client, _ARTIFACT_FOLDERS[self.stage]
        if self.report_file is not None and self.report_file.is_file():
            for name, value in report_metrics(json.loads(self.report_file.read_text())).items():
                client.log_metric(self.run_id, name, value, step=0)
        logged = []
        for path in self._artifact_files():
            client.log_artifact(self.run_id, str(path), artifact_path=folder)
            logged.append(path.name)
        trainable_set = getattr(engine.state, STATE_KEY, None)
        if trainable_set is not None:
            logged.extend(self._log_heatmaps(trainable_set, folder))
        client.set_terminated(self.run_id, status=_FINISHED)
        logger.info("Logged to MLflow run %s under %s/: %s.", self.run_id, folder, ", ".join(logged) or "no files")

    def _artifact_files(self) -> list[Path]:
        """The files of :attr:`artifacts` (files, and the files directly inside folders) worth keeping."""
        files: list[Path] = []
        for path in self.artifacts:
            found = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
            files.extend(p for p in found if p.is_file() and p.suffix in _ARTIFACT_SUFFIXES and p.name != RUN_RECORD)
        return files

    def _log_heatmaps(self, trainable_set: Any, folder: str) -> list[str]:
        """Log where the sparse trainable set sits (the heatmaps TensorBoard shows) as PNG artifacts."""
        from monai_shpeft.plots import save_figure, trainable_count_heatmap_figure, trainable_heatmap_figure

        names = []
        with tempfile.TemporaryDirectory() as scratch:
            for name, draw in (
                ("sparse_trainable_set_ratio.png", trainable_heatmap_figure),
                ("sparse_trainable_set_count.png", trainable_count_heatmap_figure),
            ):
                path = save_figure(draw(trainable_set), Path(scratch) / name)
                self._client.log_artifact(self.run_id, str(path), artifact_path=folder)
                names.append(name)
        return names


def report_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """The figures of a clinical report as MLflow metrics.

    Args:
        report: ``report.json`` (:func:`monai_shpeft.clinical.clinical_report`).

    Returns:
        ``report.<figure>`` with ``.low`` and ``.high`` for the overall figures, ``report.<class>.<figure>`` for the
        per-class ones; a figure without a value (``null``: a class without cases) is left out.
    """
    metrics: dict[str, float] = {}

    def put(name: str, value: Any) -> None:
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            metrics[_METRIC_NAME.sub("_", name)] = float(value)

    for figure, entry in (report.get("overall") or {}).items():
        put(f"report.{figure}", entry.get("value"))
        put(f"report.{figure}.low", entry.get("low"))
        put(f"report.{figure}.high", entry.get("high"))
    for name, figures in (report.get("per_class") or {}).items():
        for figure, entry in figures.items():
            put(f"report.{name}.{figure}", entry.get("value") if isinstance(entry, Mapping) else entry)
    return metrics
