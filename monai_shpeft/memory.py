"""Peak training memory, measured the same way for every method: GPU allocator peak, or CPU resident-set peak."""

from __future__ import annotations

import ctypes
import gc
import os
import resource
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = [
    "PeakMemoryMeter",
    "PhaseMemoryRecorder",
    "current_rss_bytes",
    "max_rss_bytes",
    "release_freed_heap",
    "reset_peak_rss",
]


def current_rss_bytes() -> int:
    """Resident set size of this process now (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def release_freed_heap() -> None:
    """Collect garbage and hand freed heap pages back to the system (glibc's ``malloc_trim``; a no-op elsewhere).

    Freed tensors below glibc's mmap threshold stay in the heap and keep counting as resident; trimming makes the
    resident size that follows reflect what is alive.
    """
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak_rss() -> bool:
    """Reset the kernel's resident high-water mark to the current size (Linux >= 4.0).

    Returns:
        ``False`` when the kernel does not allow it (the peak then includes what came before).
    """
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def max_rss_bytes() -> int:
    """Peak resident set size of this process since it started or since :func:`reset_peak_rss` (``getrusage``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


@dataclass
class PeakMemoryMeter:
    """Measure the memory a phase adds at its peak, from a baseline taken by :meth:`start`.

    On a CUDA device: ``torch.cuda.max_memory_allocated`` after a reset, minus what was allocated at the baseline.
    On the CPU: the peak resident set size (high-water mark reset at the baseline where the kernel allows it)
    minus the resident size at the baseline. Data cached before the baseline (e.g. a ``CacheDataset``) is excluded.

    Args:
        device: the device the phase runs on.
    """

    device: torch.device | str = "cpu"
    baseline: int = 0
    reset_ok: bool = False

    @property
    def source(self) -> str:
        """How the peak is measured, for reports."""
        if self._cuda:
            return "torch.cuda.max_memory_allocated minus the allocation at the baseline"
        reset = "reset at the baseline" if self.reset_ok else "not resettable here: includes earlier peaks"
        return f"peak resident set size (getrusage ru_maxrss, high-water mark {reset}) minus the RSS at the baseline"

    @property
    def _cuda(self) -> bool:
        return torch.device(self.device).type == "cuda"

    def start(self) -> None:
        """Take the baseline now."""
        gc.collect()
        if self._cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
            self.reset_ok = True
        else:
            self.reset_ok = reset_peak_rss()
            self.baseline = current_rss_bytes()

    def peak_bytes(self) -> int:
        """Peak memory added since :meth:`start`."""
        if self._cuda:
            torch.cuda.synchronize(self.device)
            return max(torch.cuda.max_memory_allocated(self.device) - self.baseline, 0)
        return max(max_rss_bytes() - self.baseline, 0)

    def record(self) -> dict[str, Any]:
        """The peak added since :meth:`start` with the figures behind it, for a benchmark's report.

        Returns:
            ``peak_bytes`` (:meth:`peak_bytes`), ``peak_source`` (:attr:`source`), ``baseline_bytes`` and
            ``high_water_mark_reset``; on a CUDA device also ``max_memory_reserved_bytes`` (the allocator's cache at
            its peak, which ``peak_bytes`` leaves out), on the CPU ``peak_rss_bytes`` (the resident high-water mark).
        """
        record: dict[str, Any] = {
            "peak_bytes": self.peak_bytes(),
            "peak_source": self.source,
            "baseline_bytes": self.baseline,
            "high_water_mark_reset": self.reset_ok,
        }
        if self._cuda:
            record["max_memory_reserved_bytes"] = torch.cuda.max_memory_reserved(self.device)
        else:
            record["peak_rss_bytes"] = max_rss_bytes()
        return record


@dataclass
class PhaseMemoryRecorder:
    """Peak memory of consecutive phases of one process (e.g. a bundle run), each measured apart.

    Each :meth:`begin` closes the phase before it, hands freed heap pages back (:func:`release_freed_heap`, so a
    phase starts from what is alive rather than from what the allocator kept of the phase before) and resets the
    high-water mark, so a phase's peak is its own: the peak resident set size of the process during the phase
    (absolute, so the first phase includes the imports), and on CUDA the allocator's peak
    (``torch.cuda.max_memory_allocated``). The whole run's peak is the largest of them.

    Args:
        device: the device the run trains on.
    """

    device: torch.device | str = "cpu"
    phases: dict[str, dict[str, Any]] = field(default_factory=dict)
    current: str | None = None
    reset_ok: bool = True

    @property
    def _cuda(self) -> bool:
        return torch.device(self.device).type == "cuda" and torch.cuda.is_available()

    def begin(self, phase: str, reset: bool = True) -> None:
        """End the current phase (if any) and start ``phase``.

        A phase begun again later (e.g. the set-up between two handlers) keeps the larger of its peaks.

        Args:
            phase: the phase's name.
            reset: reset the high-water marks first; ``False`` lets the phase include everything since the process
                started (the first phase of a run).
        """
        self.end()
        if reset:
            release_freed_heap()
            self.reset_ok = reset_peak_rss() and self.reset_ok
            if self._cuda:
                torch.cuda.reset_peak_memory_stats(self.device)
        record = self.phases.setdefault(phase, {"start_rss_bytes": current_rss_bytes()})
        record["entries"] = record.get("entries", 0) + 1
        self.current = phase

    def end(self) -> None:
        """Close the current phase and record its peaks (no-op without one)."""
        if self.current is None:
            return
        record = self.phases[self.current]
        record["peak_rss_bytes"] = max(max_rss_bytes(), record.get("peak_rss_bytes", 0), record["start_rss_bytes"])
        record["end_rss_bytes"] = current_rss_bytes()
        if self._cuda:
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            record["cuda_peak_allocated_bytes"] = max(peak, record.get("cuda_peak_allocated_bytes", 0))
        self.current = None

    def to_record(self) -> dict[str, Any]:
        """Each phase's figures, the whole run's peaks, and how they were measured."""
        peaks = [p["peak_rss_bytes"] for p in self.phases.values() if "peak_rss_bytes" in p]
        record: dict[str, Any] = {
            "phases": self.phases,
            "peak_rss_bytes": max(peaks, default=0),
            "source": "peak resident set size of the process per phase (getrusage ru_maxrss, high-water mark reset "
            "at each phase's start"
            + ("" if self.reset_ok else "; the kernel refused the reset, so later phases include earlier peaks")
            + ")",
            "high_water_mark_reset": self.reset_ok,
        }
        if self._cuda:
            cuda = [p["cuda_peak_allocated_bytes"] for p in self.phases.values() if "cuda_peak_allocated_bytes" in p]
            record["cuda_peak_allocated_bytes"] = max(cuda, default=0)
        return record
