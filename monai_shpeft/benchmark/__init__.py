"""The accuracy benchmark: every fine-tuning method on one dataset, same budget, one command.

``python -m monai_shpeft.benchmark --dataset_dir DIR --backbone B --pretrained W --num_folds 5`` trains and tests
each method through the dataset's bundle (a fresh process per run and fold), then writes ``results.json``,
``results.md`` and plots, with paired per-fold differences against the linear probe. See
:mod:`~monai_shpeft.benchmark.protocols` for the protocols (``cpu``, the default; ``quick``; ``full``).
"""

from __future__ import annotations

from monai_shpeft.benchmark.protocols import (
    DEFAULT_PROTOCOL,
    PROTOCOLS,
    SHPEFT_BUDGETS,
    Protocol,
    RunSpec,
    expand_runs,
)
from monai_shpeft.benchmark.report import efficiency_score, paired_differences, summarize, write_report
from monai_shpeft.benchmark.runner import BenchmarkRunner

__all__ = [
    "DEFAULT_PROTOCOL",
    "PROTOCOLS",
    "SHPEFT_BUDGETS",
    "Protocol",
    "RunSpec",
    "expand_runs",
    "efficiency_score",
    "summarize",
    "paired_differences",
    "write_report",
    "BenchmarkRunner",
]
