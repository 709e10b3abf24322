"""The whole-run memory benchmark end to end: real bundle runs of tiny backbones on a tiny BUSI folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO_ROOT, write_busi_folder

SCRIPT = REPO_ROOT / "benchmarks" / "bundle_memory.py"


def test_bundle_memory_benchmark_tiny(tmp_path: Path) -> None:
    write_busi_folder(tmp_path / "busi", per_class=10)
    output = tmp_path / "record" / "bundle_memory.json"
    command = [
        sys.executable, str(SCRIPT), "--dataset_dir", str(tmp_path / "busi"), "--tiny", "--sizes", "28",
        "--methods", "full", "shpeft", "--batch_size", "4", "--train_images", "8", "--val_images", "4",
        "--output_dir", str(tmp_path / "runs"), "--output", str(output),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads(output.read_text())
    runs = record["results"]["28"]
    assert list(runs) == ["full", "shpeft"]
    assert list(runs["shpeft"]["profile"]["phases"]) == ["setup", "head_warmup", "importance", "training"]
    assert "importance" not in runs["full"]["profile"]["phases"]
    assert record["ratios_to_full"]["28"]["full"] == 1.0
    for run in runs.values():  # the process's peak is its largest phase, which counts from the process's start
        phases = run["profile"]["phases"].values()
        assert run["process_peak_rss_bytes"] == max(p["peak_rss_bytes"] for p in phases) > 0
    assert "| 28 | SH-PEFT 1% |" in output.with_suffix(".md").read_text()
    assert output.with_suffix(".png").stat().st_size > 0
    # resumable: a second call reads the finished runs instead of training again
    again = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert again.returncode == 0 and "running" in again.stdout
    assert json.loads(output.read_text())["results"] == record["results"]
