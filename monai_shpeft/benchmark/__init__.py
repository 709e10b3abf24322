"""The accuracy benchmark: every fine-tuning method on one dataset, same budget, one command.

``python -m monai_shpeft.benchmark --dataset_dir DIR --backbone B --pretrained W --protocol quick`` trains and tests
each method through the dataset's bundle (a fresh process per run), then writes ``results.json``, ``results.md``
and plots. See :mod:`~monai_shpeft.benchmark.protocols` for the protocols.
"""

from __future__ import annotations

from monai_shpeft.benchmark.protocols import PROTOCOLS, SHPEFT_BUDGETS, Protocol, RunSpec, expand_runs
from monai_shpeft.benchmark.report import efficiency_score, summarize, write_report
from monai_shpeft.benchmark.runner import BenchmarkRunner

__all__ = [
    "PROTOCOLS",
    "SHPEFT_BUDGETS",
    "Protocol",
    "RunSpec",
    "expand_runs",
    "efficiency_score",
    "summarize",
    "write_report",
    "BenchmarkRunner",
]
