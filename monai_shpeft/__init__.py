"""monai-shpeft: sparse, importance-chosen fine-tuning (SH-PEFT) and fine-grained prompt tuning (FPT) for MONAI."""

from __future__ import annotations

__version__ = "0.1.0"
