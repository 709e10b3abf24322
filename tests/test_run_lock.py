"""Two runs on one output folder: the second stops naming the first; a killed run leaves no stale lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from monai_shpeft.run_lock import LOCK_FILE, OutputFolderInUseError, lock_output_dir
from tests.helpers import TINY_BUNDLE_ARGS, copy_bundles, monai_bundle, write_busi_folder

TRAIN = "bundles/busi/configs/train.json"

_HOLD = """
import sys, time
from monai_shpeft.run_lock import lock_output_dir
lock_output_dir(sys.argv[1], "training")
print("locked", flush=True)
time.sleep(120)
"""


def _holder(folder: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_process_is_refused_and_a_killed_holder_frees_the_folder(tmp_path: Path) -> None:
    holder = _holder(tmp_path / "runs")
    try:
        with pytest.raises(
            OutputFolderInUseError, match=rf"another run is writing .*runs \(training, process {holder.pid}"
        ):
            lock_output_dir(tmp_path / "runs")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert (tmp_path / "runs" / LOCK_FILE).is_file()  # the file stays; its lock went with the process
    assert lock_output_dir(tmp_path / "runs", "evaluation") == tmp_path / "runs" / LOCK_FILE
    assert lock_output_dir(tmp_path / "runs") == tmp_path / "runs" / LOCK_FILE  # this process may take it again


def test_a_bundle_run_on_a_busy_output_folder_stops_before_training(tmp_path: Path) -> None:
    work = copy_bundles(tmp_path)
    write_busi_folder(work / "busi", per_class=10)
    holder = _holder(work / "shared_runs")
    try:
        command = monai_bundle(
            "run", "--config_file", TRAIN, "--dataset_dir", "busi", "--output_dir", "shared_runs", *TINY_BUNDLE_ARGS
        )
        done = subprocess.run(
            command, cwd=work, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600
        )
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 1
    assert last.startswith("OutputFolderInUseError: another run is writing shared_runs (training, process "), last
    assert "--output_dir DIR" in last
    assert not (work / "shared_runs" / "datalist.json").exists()  # stopped before the split was written
    # the holder is gone: the folder is free again
    assert lock_output_dir(work / "shared_runs").is_file()
