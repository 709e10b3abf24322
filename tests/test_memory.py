"""Tests of monai_shpeft.memory: the peak-memory meter sees a real allocation made after its baseline."""

from __future__ import annotations

import mmap

from monai_shpeft.memory import PeakMemoryMeter, current_rss_bytes


def _fresh_resident_block(num_bytes: int) -> mmap.mmap:
    """Anonymous pages written once: always new resident memory.

    A NumPy array may reuse heap pages an earlier test in the same worker left resident, and then the RSS
    does not move (seen in CI).
    """
    block = mmap.mmap(-1, num_bytes)
    page = mmap.PAGESIZE
    for offset in range(0, num_bytes, page):
        block[offset] = 1
    return block


def test_the_cpu_meter_sees_a_transient_allocation_after_the_baseline() -> None:
    meter = PeakMemoryMeter("cpu")
    meter.start()
    block = _fresh_resident_block(64 * 2**20)
    block.close()  # freed again: only the peak remembers it
    peak = meter.peak_bytes()
    assert peak >= 60 * 2**20
    if meter.reset_ok:  # the kernel reset the high-water mark: nothing much beyond the block is counted
        assert peak < 200 * 2**20
    assert "ru_maxrss" in meter.source


def test_current_rss_is_positive_and_grows_with_resident_memory() -> None:
    before = current_rss_bytes()
    block = _fresh_resident_block(32 * 2**20)
    after = current_rss_bytes()
    block.close()
    assert before > 0 and after - before >= 30 * 2**20


def test_the_record_holds_the_peak_and_the_figures_behind_it() -> None:
    meter = PeakMemoryMeter("cpu")
    meter.start()
    block = _fresh_resident_block(48 * 2**20)
    block.close()
    record = meter.record()
    assert set(record) == {"peak_bytes", "peak_source", "baseline_bytes", "high_water_mark_reset", "peak_rss_bytes"}
    assert record["peak_bytes"] >= 44 * 2**20 and record["peak_source"] == meter.source
    assert record["baseline_bytes"] == meter.baseline > 0 and record["high_water_mark_reset"] == meter.reset_ok
    # the high-water mark only grows: read after the peak, it covers the baseline plus the peak
    assert record["peak_rss_bytes"] >= record["baseline_bytes"] + record["peak_bytes"]
