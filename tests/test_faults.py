"""Faults a trusted system survives, in real processes: kill -9 while the FPT feature cache fills, and a disk that
fills up while a checkpoint or a record is written. Nothing is lost and nothing is silently wrong afterwards.

(kill -9 during a checkpoint save and mid-epoch: tests/test_resume_handler.py; two runs on one output folder:
tests/test_run_lock.py; a damaged cache entry: tests/test_feature_cache.py.)
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from monai_shpeft.feature_cache import feature_cache_for
from tests.test_feature_cache import png_items, preprocessing, tiny_fpt

_FILL = """
import sys, time
import torch
sys.path.insert(0, {repo!r})
from tests.test_feature_cache import preprocessing, tiny_fpt
from monai_shpeft.feature_cache import feature_cache_for
import json
items = json.loads(open({items!r}).read())
network = tiny_fpt()
cache = feature_cache_for(network, {cache!r})
original = cache._store
def slow_store(key, features):  # slow enough to be killed between two entries, or in the middle of one
    time.sleep(0.3)
    return original(key, features)
cache._store = slow_store
cache.fill(items, preprocessing(), network, batch_size=1, progress=False)
"""


def test_kill_9_while_the_feature_cache_fills_leaves_only_sound_entries(tmp_path: Path) -> None:
    items = png_items(tmp_path / "images", count=12)
    (tmp_path / "items.json").write_text(json.dumps(items))
    cache_dir = tmp_path / "cache"
    script = _FILL.format(repo=str(Path(__file__).resolve().parents[1]), items=str(tmp_path / "items.json"),
                          cache=str(cache_dir))  # fmt: skip
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)])
    cache = feature_cache_for(tiny_fpt(), cache_dir)
    deadline = time.monotonic() + 240
    while cache.num_entries() < 3 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL, "the fill ended before it could be killed"

    written = cache.num_entries()
    assert 3 <= written < len(items)
    for entry in cache.root.glob("*/*.safetensors"):
        assert cache.damage(entry) is None  # atomic writes: no half-written entry under a real key
    counts = cache.fill(items, preprocessing(), tiny_fpt(), progress=False)
    assert (counts["cached"], counts["computed"]) == (written, len(items) - written)  # resumed, not redone


_FULL_DISK = """
import resource, signal, sys
import torch
sys.path.insert(0, {repo!r})
from monai_shpeft.utils import atomic_path, atomic_write_json
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with an error, like a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
try:
    with atomic_path({checkpoint!r}) as tmp:
        torch.save({{"weights": torch.zeros(1_000_000)}}, tmp)  # 4 MB: does not fit
except Exception as error:
    print("checkpoint:", type(error).__name__)
try:
    atomic_write_json({record!r}, {{"values": list(range(100_000))}})
except Exception as error:
    print("record:", type(error).__name__)
"""


def test_a_full_disk_while_writing_keeps_the_previous_files_whole(tmp_path: Path) -> None:
    import torch

    checkpoint, record = tmp_path / "model.pt", tmp_path / "metadata.json"
    torch.save({"weights": torch.ones(10)}, checkpoint)
    record.write_text(json.dumps({"version": "0.5.1"}))
    before = checkpoint.read_bytes(), record.read_text()
    script = _FULL_DISK.format(repo=str(Path(__file__).resolve().parents[1]), checkpoint=str(checkpoint),
                               record=str(record))  # fmt: skip
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "checkpoint: " in done.stdout and "record: " in done.stdout  # both writes failed loudly
    assert (checkpoint.read_bytes(), record.read_text()) == before  # the previous files are untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metadata.json", "model.pt"]  # no temporary left behind
    assert torch.load(checkpoint)["weights"].sum() == 10
