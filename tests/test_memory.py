"""Tests of monai_shpeft.memory: the peak-memory meter sees a real allocation made after its baseline."""

from __future__ import annotations

import numpy as np

from monai_shpeft.memory import PeakMemoryMeter, current_rss_bytes


def test_the_cpu_meter_sees_a_transient_allocation_after_the_baseline() -> None:
    meter = PeakMemoryMeter("cpu")
    meter.start()
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, written so that it is resident
    block.sum()
    del block  # freed again: only the peak remembers it
    peak = meter.peak_bytes()
    assert peak >= 60 * 2**20
    if meter.reset_ok:  # the kernel reset the high-water mark: nothing much beyond the block is counted
        assert peak < 200 * 2**20
    assert "ru_maxrss" in meter.source


def test_current_rss_is_positive_and_grows_with_resident_memory() -> None:
    before = current_rss_bytes()
    block = np.ones(32 * 2**20 // 8)
    after = current_rss_bytes()
    assert before > 0 and after - before >= 30 * 2**20
    del block
