"""Benchmark protocols: the training budget every method shares, and each method's own settings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from monai_shpeft.methods import METHODS, check_method

__all__ = ["Protocol", "RunSpec", "PROTOCOLS", "SHPEFT_BUDGETS", "expand_runs"]

#: the SH-PEFT budgets of the paper's Fig. 4 (0.01%, 0.1%, 1% of the backbone)
SHPEFT_BUDGETS = (0.0001, 0.001, 0.01)


@dataclass(frozen=True)
class Protocol:
    """One training budget shared by every method, plus per-method learning rates.

    Every method trains for the same epochs, batch size, image size, optimizer (AdamW, cosine schedule) and
    seed; only the learning rate differs, as each method's own paper tunes it. The classification head uses
    ``head_learning_rate`` in every method but FPT (whose head is inside the side network). The checkpoint kept
    is the one with the best validation key metric (macro-F1; AUC for FPT), validated every ``val_interval``
    epochs; the test split is used once, at the end.

    Args:
        name: ``"quick"`` or ``"full"``.
        image_size: input size of every classifier method.
        fpt_image_size: the frozen backbone's (high-resolution) input size in FPT.
        fpt_side_image_size: the side network's input size in FPT.
        epochs: training epochs of every method.
        batch_size: mini-batch size of every method.
        val_interval: validate every this many epochs.
        estimation_iterations: mini-batches of the SH-PEFT / SPT / GPS estimation (``None``: one epoch, the paper's).
        learning_rates: per-method learning rate.
        head_learning_rate: learning rate of the new head.
        weight_decay: AdamW weight decay of every method.
        description: the reason for these settings.
    """

    name: str
    image_size: int
    fpt_image_size: int
    fpt_side_image_size: int
    epochs: int
    batch_size: int
    val_interval: int
    estimation_iterations: int | None
    learning_rates: dict[str, float]
    head_learning_rate: float
    weight_decay: float = 0.05
    description: str = ""
    amp: bool | None = None

    def learning_rate(self, method: str) -> float:
        """The learning rate of ``method``."""
        return self.learning_rates[check_method(method)]


# Learning rates: full and attention-only tuning move pretrained weights densely, so they take a small rate;
# the methods that train new or few parameters take a larger one (the FPT paper grid-searches per method).
# SH-PEFT also moves pretrained weights, and AdamW moves every selected entry by about the rate per step, whatever
# its gradient (unlike the paper's SGD): at 5e-4 a 1% set moved the patch embedding by 18% in one epoch and the
# model collapsed to the majority class. Its rate is the best validation macro-F1 of 2e-5, 5e-5, 1e-4 and 5e-4 on
# BUSI (quick protocol, 1% budget; README, "The benchmark").
_LEARNING_RATES = {
    "full": 2e-5,
    "attn": 5e-5,
    "linear": 1e-3,
    "bitfit": 1e-3,
    "ln": 1e-3,
    "lora": 1e-3,
    "adapter": 1e-3,
    "ssf": 1e-3,
    "vpt_shallow": 1e-3,
    "vpt_deep": 1e-3,
    "spt_lora": 5e-4,
    "gps": 5e-5,  # SH-PEFT's: it too moves a sparse set of pretrained weights with AdamW
    "shpeft": 5e-5,
    "fpt": 5e-4,
}

PROTOCOLS: dict[str, Protocol] = {
    "quick": Protocol(
        name="quick",
        image_size=112,
        fpt_image_size=224,
        fpt_side_image_size=112,
        epochs=3,
        batch_size=32,
        val_interval=1,
        estimation_iterations=8,
        learning_rates=dict(_LEARNING_RATES),
        head_learning_rate=0.1,
        description=(
            "Every method on a 2-core CPU within about an hour on BUSI with ViT-S/14: 112 px (FPT: 224 px frozen, "
            "112 px side), 3 epochs, batch 32, AdamW (weight decay 0.05) with a cosine schedule, head learning rate "
            "0.1, SH-PEFT/SPT estimation over 8 mini-batches (a third of an epoch)."
        ),
    ),
    "full": Protocol(
        name="full",
        image_size=224,
        fpt_image_size=512,
        fpt_side_image_size=224,
        epochs=20,
        batch_size=16,
        val_interval=1,
        estimation_iterations=None,
        learning_rates=dict(_LEARNING_RATES),
        head_learning_rate=0.1,
        description=(
            "For a GPU, at the papers' settings: 224 px (FPT: 512 px frozen, 224 px side, as in the FPT paper), "
            "20 epochs and batch 16 (the FPT paper's schedule), AdamW (weight decay 0.05) with a cosine schedule, head "
            "learning rate 0.1, SH-PEFT/SPT estimation over one epoch (the SH-PEFT paper's)."
        ),
    ),
}


@dataclass(frozen=True)
class RunSpec:
    """One training run of the benchmark: a method (with options) and a seed.

    Args:
        method: a name of :data:`monai_shpeft.methods.METHODS`.
        seed: seed of the split and of training.
        budget: SH-PEFT / SPT / GPS budget (ratio of the backbone), ``None`` for the other methods.
        options: the method's options (``method_options`` of the bundles).
    """

    method: str
    seed: int = 0
    budget: float | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Name in tables and plots, e.g. ``"shpeft 0.1%"``."""
        return f"{self.method} {self.budget * 100:g}%" if self.method == "shpeft" and self.budget else self.method

    @property
    def key(self) -> str:
        """File-system name, unique per method, budget and seed."""
        budget = f"_b{self.budget:g}" if self.method == "shpeft" and self.budget is not None else ""
        return f"{self.method}{budget}_seed{self.seed}"


def expand_runs(
    methods: Sequence[str], seeds: Sequence[int], budgets: tuple[float, ...] = SHPEFT_BUDGETS
) -> list[RunSpec]:
    """The runs of a benchmark: every method for every seed, SH-PEFT once per budget, SPT and GPS at 1%.

    Args:
        methods: method names, or ``["all"]``.
        seeds: seeds.
        budgets: SH-PEFT budgets.

    Returns:
        the runs, seeds outermost, methods in :data:`METHODS` order.
    """
    names = list(METHODS) if list(methods) == ["all"] else [check_method(m) for m in methods]
    names = [m for m in METHODS if m in names]
    runs = []
    for seed in seeds:
        for method in names:
            if method == "shpeft":
                runs.extend(RunSpec(method, seed, budget) for budget in budgets)
            elif method in ("spt_lora", "gps"):
                runs.append(RunSpec(method, seed, 0.01))
            else:
                runs.append(RunSpec(method, seed))
    return runs


def with_overrides(protocol: Protocol, **changes: Any) -> Protocol:
    """A copy of ``protocol`` with some settings changed (``None`` values are ignored)."""
    return replace(protocol, **{k: v for k, v in changes.items() if v is not None})
