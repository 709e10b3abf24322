"""Tests for monai_shpeft.distributed in real two-process gloo groups."""

from __future__ import annotations

import time
from pathlib import Path

import torch.distributed as dist
import torch.multiprocessing as mp

from monai_shpeft.distributed import is_distributed, shut_down


def _finish_late_or_early(rank: int, store_file: str, times_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=2)
    if rank == 1:
        time.sleep(1.0)  # the slow rank, still busy (a last checkpoint, the evaluator's metrics)
    arrived = time.monotonic()
    shut_down()
    left = time.monotonic()
    assert not is_distributed()
    Path(f"{times_file}.{rank}").write_text(f"{arrived} {left}")


def test_shut_down_waits_for_every_rank_before_destroying_the_group(tmp_path: Path) -> None:
    times = tmp_path / "times"
    mp.start_processes(
        _finish_late_or_early, args=(str(tmp_path / "store"), str(times)), nprocs=2, start_method="spawn"
    )
    (arrived_early, left_early), (arrived_late, _) = (
        map(float, Path(f"{times}.{rank}").read_text().split()) for rank in (0, 1)
    )
    assert arrived_late - arrived_early > 0.5
    # rank 0 arrived first and left only once the slow rank had arrived
    assert left_early >= arrived_late


def test_shut_down_is_a_no_op_in_a_single_process() -> None:
    shut_down()
    assert not is_distributed()
