"""Run a benchmark: every run in its own worker process, with progress, an ETA, and resume.

Each finished run leaves ``results/<key>.json`` (written atomically by the worker). Starting the same command again
skips those runs, so an interrupted benchmark resumes where it stopped; a failed run is recorded under ``failed/``
with the end of its log, the other runs go on, and it is tried again on the next start.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from monai_shpeft.benchmark.protocols import Protocol, RunSpec
from monai_shpeft.utils import atomic_write_json

__all__ = ["BenchmarkRunner", "format_duration"]

logger = logging.getLogger("monai_shpeft.benchmark")

# console lines of a worker worth echoing as progress
_PROGRESS_MARKERS = ("Metrics --", "Estimating", "Importance estimation took", "SPT", "Preloaded", "Traceback", "Error")


def format_duration(seconds: float) -> str:
    """``3725`` -> ``"1 h 02 min"``; ``95`` -> ``"1 min 35 s"``."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds} s"


def _check_folds(runs: Sequence[RunSpec], num_folds: int | None) -> None:
    """Refuse folds without ``num_folds`` or outside ``0 .. num_folds - 1`` before any run starts."""
    folds = sorted({run.fold for run in runs if run.fold is not None})
    if not folds:
        return
    if num_folds is None or num_folds < 2:
        raise ValueError(f"runs with folds {folds} need num_folds (at least 2), got {num_folds!r}.")
    outside = [fold for fold in folds if not 0 <= fold < num_folds]
    if outside:
        raise ValueError(f"folds {outside} are not folds of a {num_folds}-fold split (0..{num_folds - 1}).")


class BenchmarkRunner:
    """Run the given runs of one protocol on one dataset and backbone.

    Args:
        runs: the runs (see :func:`~monai_shpeft.benchmark.protocols.expand_runs`).
        protocol: the shared training budget.
        dataset: dataset layout name (e.g. ``"busi"``).
        dataset_dir: the dataset folder.
        backbone: ``"timm:<model>"`` or ``"open_clip:<model>"``.
        pretrained: local weights file or pretrained tag (``None``: random weights, for tests only).
        output_dir: where results, logs, the splits and the feature cache go.
        bundle: the bundle whose configs train and test each run; default ``bundles/<dataset>``.
        repo_root: the folder the bundles' ``%`` macros are relative to; default the bundle's grandparent.
        device: ``"cpu"``, ``"cuda"`` or ``None`` (CUDA when available).
        num_workers: data-loading workers of each run.
        tiny_backbone: the tiny test configuration of the backbone.
        echo: print progress to the console.
        num_folds: ``k`` of the k-fold split the runs' folds belong to (``None``: the runs have no fold).

    Raises:
        FileNotFoundError: without a bundle or a dataset folder.
        ValueError: when runs have folds but ``num_folds`` is not given, or a fold is not one of ``0 .. k - 1``.
    """

    def __init__(
        self,
        runs: Sequence[RunSpec],
        protocol: Protocol,
        dataset: str,
        dataset_dir: str | os.PathLike,
        backbone: str,
        pretrained: str | None,
        output_dir: str | os.PathLike,
        bundle: str | os.PathLike | None = None,
        repo_root: str | os.PathLike | None = None,
        device: str | None = None,
        num_workers: int = 2,
        tiny_backbone: bool = False,
        echo: bool = True,
        num_folds: int | None = None,
    ) -> None:
        self.runs = list(runs)
        self.protocol = protocol
        self.dataset = dataset
        self.dataset_dir = Path(dataset_dir).resolve()
        self.backbone = backbone
        self.pretrained = str(Path(pretrained).resolve()) if pretrained and Path(pretrained).exists() else pretrained
        self.output_dir = Path(output_dir).resolve()
        self.bundle = Path(bundle or Path("bundles") / dataset).resolve()
        self.repo_root = Path(repo_root).resolve() if repo_root else self.bundle.parent.parent
        self.device = device
        self.num_workers = num_workers
        self.tiny_backbone = tiny_backbone
        self.echo = echo
        self.num_folds = num_folds
        _check_folds(self.runs, num_folds)
        if not (self.bundle / "configs" / "train.json").is_file():
            raise FileNotFoundError(f"{self.bundle}: not a bundle (no configs/train.json); pass --bundle.")
        if not self.dataset_dir.is_dir():
            raise FileNotFoundError(f"Dataset folder {self.dataset_dir} does not exist.")

    # ------------------------------------------------------------------ paths
    def result_file(self, run: RunSpec) -> Path:
        """Where the result of ``run`` is (or will be) written."""
        return self.output_dir / "results" / f"{run.key}.json"

    def datalist_file(self, run: RunSpec) -> Path:
        """The split of ``run``: one per seed (and fold), shared by every method so that they are compared on it."""
        if run.fold is None:
            return self.output_dir / "splits" / f"seed{run.seed}.json"
        return self.output_dir / "splits" / f"seed{run.seed}_fold{run.fold}of{self.num_folds}.json"

    def log_file(self, run: RunSpec) -> Path:
        """The full console output of ``run``'s worker."""
        return self.output_dir / "logs" / f"{run.key}.log"

    def completed(self) -> dict[str, dict[str, Any]]:
        """Results already on disk, by run key (unreadable files are ignored and re-run).

        Raises:
            ValueError: when a fold's result on disk belongs to a split with another number of folds.
        """
        done = {}
        for run in self.runs:
            path = self.result_file(run)
            if path.is_file():
                try:
                    record = json.loads(path.read_text())
                except (OSError, json.JSONDecodeError):
                    logger.warning("%s is unreadable; the run will be repeated.", path)
                    continue
                if run.fold is not None and record.get("num_folds") != self.num_folds:
                    # fold 3 of a 5-fold split is another test set than fold 3 of a 10-fold one: never mix them
                    raise ValueError(
                        f"{path} is fold {run.fold} of a {record.get('num_folds')}-fold split, not of a "
                        f"{self.num_folds}-fold one: use another --output_dir for another number of folds."
                    )
                done[run.key] = record
        return done

    # ------------------------------------------------------------------ running
    def _job(self, run: RunSpec) -> dict[str, Any]:
        return {
            "key": run.key,
            "label": run.label,
            "run": asdict(run),
            "protocol": asdict(self.protocol),
            "bundle": str(self.bundle),
            "repo_root": str(self.repo_root),
            "work_dir": str(self.output_dir / "work" / run.key),
            "dataset_dir": str(self.dataset_dir),
            "datalist_file": str(self.datalist_file(run)),
            "num_folds": self.num_folds if run.fold is not None else None,
            "feature_cache_dir": str(self.output_dir / "feature_cache"),
            "backbone": self.backbone,
            "pretrained": self.pretrained,
            "tiny_backbone": self.tiny_backbone,
            "device": self.device,
            "num_workers": self.num_workers,
        }

    def _say(self, message: str) -> None:
        logger.info(message)
        if self.echo:
            print(message, flush=True)

    def run(self) -> dict[str, Any]:
        """Run every run without a result yet.

        Returns:
            ``{"results": [...], "failed": [keys]}``, results in run order.
        """
        done = self.completed()
        pending = [r for r in self.runs if r.key not in done]
        self._say(
            f"Benchmark '{self.protocol.name}' on {self.dataset} with {self.backbone}: {len(self.runs)} runs, "
            f"{len(done)} already done (resumed), {len(pending)} to run. Output: {self.output_dir}"
        )
        durations = [r["train_seconds"] + r["eval_seconds"] for r in done.values() if "train_seconds" in r]
        failed = []
        for index, run in enumerate(pending, start=1):
            where = f"seed {run.seed}" + (f", fold {run.fold}/{self.num_folds}" if run.fold is not None else "")
            self._say(f"[{index}/{len(pending)}] {run.label} ({where}) ... log: {self.log_file(run)}")
            started = time.perf_counter()
            result = self._run_one(run)
            elapsed = time.perf_counter() - started
            if result is None:
                failed.append(run.key)
                continue
            done[run.key] = result
            durations.append(elapsed)
            remaining = len(pending) - index
            eta = format_duration(sum(durations) / len(durations) * remaining) if remaining else "done"
            self._say(
                f"[{index}/{len(pending)}] {run.label}: test F1 {result['test_f1']:.3f}, AUC {result['test_auc']:.3f}, "
                f"{result['trainable']:,} trainable ({100 * result['ratio']:.3f}%), peak "
                f"{result['peak_memory_mb']:,.0f} MB, {format_duration(elapsed)}; ETA {eta}"
            )
        results = [done[r.key] for r in self.runs if r.key in done]
        return {"results": results, "failed": failed}

    def _run_one(self, run: RunSpec) -> dict[str, Any] | None:
        job_file = self.output_dir / "work" / run.key / "job.json"
        atomic_write_json(job_file, self._job(run))
        log_file = self.log_file(run)
        log_file.parent.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "monai_shpeft.benchmark.worker",
            "--job",
            str(job_file),
            "--result",
            str(self.result_file(run)),
        ]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(log_file, "w", encoding="utf-8") as log:
            process = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=self.repo_root
            )
            assert process.stdout is not None
            for line in process.stdout:
                log.write(line)
                log.flush()
                if self.echo and any(marker in line for marker in _PROGRESS_MARKERS):
                    print(f"    {run.label}: {line.rstrip()[-160:]}", flush=True)
            status = process.wait()
        failure_file = self.output_dir / "failed" / f"{run.key}.json"
        if status == 0 and self.result_file(run).is_file():
            failure_file.unlink(missing_ok=True)
            return json.loads(self.result_file(run).read_text())
        tail = log_file.read_text(encoding="utf-8", errors="replace")[-3000:]
        atomic_write_json(failure_file, {"key": run.key, "exit_status": status, "log": str(log_file), "tail": tail})
        self._say(
            f"[failed] {run.label} exited with status {status}; the other runs go on and it will be retried on the "
            f"next start. Log: {log_file}\n{tail[-1200:]}"
        )
        return None
