"""Benchmark protocols: the training budget every method shares, and each method's own settings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from monai_shpeft.methods import DEFAULT_HEAD_LEARNING_RATES, DEFAULT_LEARNING_RATES, METHODS, check_method

__all__ = ["Protocol", "RunSpec", "PROTOCOLS", "DEFAULT_PROTOCOL", "SHPEFT_BUDGETS", "expand_runs", "with_overrides"]

#: the SH-PEFT budgets of the paper's Fig. 4 (0.01%, 0.1%, 1% of the backbone)
SHPEFT_BUDGETS = (0.0001, 0.001, 0.01)


@dataclass(frozen=True)
class Protocol:
    """One training budget shared by every method, plus per-method learning rates.

    Every method trains for the same epochs, batch size, image size, optimizer (AdamW with a warm-up and cosine
    schedule), head warm-up (LP-FT) and seed; only the learning rate differs, as each method's own paper tunes it,
    and FPT's epochs may (``fpt_epochs``: its side network starts from random weights, and with preloaded features
    its epochs cost a fraction of the others'). The classification head uses ``head_learning_rate`` in every method
    but FPT (whose head is inside the side network). The checkpoint kept is the one with the best validation
    macro-F1, validated
    every ``val_interval`` epochs and, with ``validate_warmup``, once after the head warm-up ("epoch 0", the
    checkpoint fine-tuning must beat); the test split is used once, at the end.

    Args:
        name: the protocol's name (a key of :data:`PROTOCOLS`).
        image_size: input size of every classifier method.
        fpt_image_size: the frozen backbone's (high-resolution) input size in FPT.
        fpt_side_image_size: the side network's input size in FPT.
        epochs: training epochs of every method (FPT: ``fpt_epochs`` when set).
        batch_size: mini-batch size of every method.
        val_interval: validate every this many epochs.
        estimation_iterations: mini-batches of the SH-PEFT / SPT / GPS estimation (``None``: one epoch, the paper's).
        learning_rates: per-method learning rate; a method missing here takes
            :data:`monai_shpeft.methods.DEFAULT_LEARNING_RATES`.
        head_learning_rate: learning rate of the head in every method; ``None``: ``head_learning_rates``.
        head_learning_rates: per-method head rate where it differs from the method's backbone rate (the bundles'
            :data:`monai_shpeft.methods.DEFAULT_HEAD_LEARNING_RATES` in ``cpu``); a method missing here trains its
            head at its backbone rate.
        weight_decay: AdamW weight decay of every method (FPT included).
        description: the reason for these settings.
        amp: the bundles' ``amp`` knob, passed as given: ``"auto"`` (CUDA mixed precision on a GPU, bfloat16 on a
            CPU that computes it natively), ``"true"``, ``"false"``, ``"bf16"`` or a boolean; ``None`` counts as
            ``"auto"``.
        head_warmup: ``"lbfgs"`` (the head starts as a logistic-regression probe on frozen features) or ``"none"``.
        validate_warmup: validate the warmed model as epoch 0, so that it is the checkpoint to beat.
        head_logit_scale: the head's logit scale (its features are L2-normalised).
        lr_warmup_fraction: fraction of the iterations with a linear learning-rate warm-up before the cosine decay.
        checkpoint_rule: ``"best"`` or ``"average"`` weights kept (``None``: each method's default,
            :data:`monai_shpeft.methods.DEFAULT_CHECKPOINT_RULES`).
        fpt_epochs: FPT's training epochs (the bundles' ``fpt_max_epochs``); ``None``: ``epochs``.
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
    head_learning_rate: float | None = None
    head_learning_rates: dict[str, float] = field(default_factory=dict)
    weight_decay: float = 0.05
    description: str = ""
    amp: bool | str | None = "auto"
    head_warmup: str = "lbfgs"
    validate_warmup: bool = True
    head_logit_scale: float = 100.0
    lr_warmup_fraction: float = 0.1
    checkpoint_rule: str | None = None
    fpt_epochs: int | None = None

    def learning_rate(self, method: str) -> float:
        """The learning rate of ``method``: the protocol's, else the bundles' default (``DEFAULT_LEARNING_RATES``)."""
        method = check_method(method)
        rate = self.learning_rates.get(method)
        return float(DEFAULT_LEARNING_RATES[method] if rate is None else rate)


# Learning rates: full and attention-only tuning move pretrained weights densely, so they take a small rate;
# the methods that train new or few parameters take a larger one (the FPT paper grid-searches per method).
# SH-PEFT also moves pretrained weights, and AdamW moves every selected entry by about the rate per step, whatever
# its gradient (unlike the paper's SGD): at 5e-4 a 1% set moved the patch embedding by 18% in one epoch and the
# model collapsed to the majority class. Its rate is the best validation macro-F1 of 2e-5, 5e-5, 1e-4 and 5e-4 on
# BUSI (quick protocol, 1% budget; docs/benchmarks.md, "The benchmark").
# The `quick` and `full` protocols keep these rates and the recipe they were measured with (random head with a logit
# scale of 1, no learning-rate warm-up; docs/benchmarks.md, "Measured: the quick protocol"); `cpu` takes the bundles'
# own recipe and defaults (monai_shpeft.methods.DEFAULT_LEARNING_RATES), tuned for LP-FT.
_LEARNING_RATES = {
    "linear_probe": 1e-3,  # unused: the probe is fitted by L-BFGS, it takes no gradient step
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

# the recipe `quick` and `full` were measured with, before the head warm-up (LP-FT): the linear_probe method still
# fits its probe (the bundles force it), every other method starts from a random head
_PRE_LPFT_RECIPE: dict[str, Any] = {
    "head_warmup": "none",
    "validate_warmup": False,
    "head_logit_scale": 1.0,
    "lr_warmup_fraction": 0.0,
    "checkpoint_rule": "best",
}

PROTOCOLS: dict[str, Protocol] = {
    "cpu": Protocol(
        name="cpu",
        image_size=112,
        fpt_image_size=224,
        fpt_side_image_size=112,
        epochs=5,
        batch_size=32,
        val_interval=1,
        estimation_iterations=None,
        learning_rates=dict(DEFAULT_LEARNING_RATES),
        head_learning_rate=None,
        head_learning_rates=dict(DEFAULT_HEAD_LEARNING_RATES),
        weight_decay=0.0,
        amp="auto",
        fpt_epochs=20,
        description=(
            "The bundles' recipe on a 2-core CPU: 112 px (FPT: 224 px frozen, 112 px side), 5 epochs (FPT: 20, the "
            "bundles' fpt_max_epochs, its side network starting from random weights), batch 32, the "
            "head first fitted as a logistic-regression probe on frozen features (LP-FT) and validated as epoch 0, "
            "so fine-tuning must beat it; then AdamW (no weight decay) with a 10% linear warm-up and a cosine "
            "schedule at each method's default learning rates (monai_shpeft.methods.DEFAULT_LEARNING_RATES; the "
            "head at the same rate except SH-PEFT and GPS: DEFAULT_HEAD_LEARNING_RATES), SH-PEFT/SPT/GPS "
            "estimation over one epoch, mixed precision 'auto' (bfloat16 only on CPUs that compute it natively)."
        ),
    ),
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
        **_PRE_LPFT_RECIPE,
        description=(
            "Every method on a 2-core CPU within about an hour on BUSI with ViT-S/14: 112 px (FPT: 224 px frozen, "
            "112 px side), 3 epochs, batch 32, AdamW (weight decay 0.05) with a cosine schedule, head learning rate "
            "0.1 (random head, logit scale 1, no warm-up), SH-PEFT/SPT estimation over 8 mini-batches (a third of "
            "an epoch)."
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
        **_PRE_LPFT_RECIPE,
        description=(
            "For a GPU, at the papers' settings: 224 px (FPT: 512 px frozen, 224 px side, as in the FPT paper), "
            "20 epochs and batch 16 (the FPT paper's schedule), AdamW (weight decay 0.05) with a cosine schedule, head "
            "learning rate 0.1 (random head, logit scale 1, no warm-up), SH-PEFT/SPT estimation over one epoch (the "
            "SH-PEFT paper's)."
        ),
    ),
}


@dataclass(frozen=True)
class RunSpec:
    """One training run of the benchmark: a method (with options), a seed and, with folds, a fold.

    Args:
        method: a name of :data:`monai_shpeft.methods.METHODS`.
        seed: seed of the split and of training.
        budget: SH-PEFT / SPT / GPS budget (ratio of the backbone), ``None`` for the other methods.
        options: the method's options (``method_options`` of the bundles).
        fold: the test fold of a k-fold split (``0 .. k - 1``), ``None`` for the plain split.
    """

    method: str
    seed: int = 0
    budget: float | None = None
    options: dict[str, Any] = field(default_factory=dict)
    fold: int | None = None

    @property
    def label(self) -> str:
        """Name in tables and plots, e.g. ``"shpeft 0.1%"`` (the same for every seed and fold, which it averages)."""
        return f"{self.method} {self.budget * 100:g}%" if self.method == "shpeft" and self.budget else self.method

    @property
    def key(self) -> str:
        """File-system name, unique per method, budget, seed and fold, e.g. ``"shpeft_b0.01_seed0_fold3"``."""
        budget = f"_b{self.budget:g}" if self.method == "shpeft" and self.budget is not None else ""
        fold = f"_fold{self.fold}" if self.fold is not None else ""
        return f"{self.method}{budget}_seed{self.seed}{fold}"


def expand_runs(
    methods: Sequence[str],
    seeds: Sequence[int],
    budgets: tuple[float, ...] = SHPEFT_BUDGETS,
    folds: Sequence[int] | None = None,
) -> list[RunSpec]:
    """The runs of a benchmark: every method for every seed and fold, SH-PEFT once per budget, SPT and GPS at 1%.

    Args:
        methods: method names, or ``["all"]``.
        seeds: seeds.
        budgets: SH-PEFT budgets.
        folds: test folds of a k-fold split; ``None``: the plain split (runs without a fold).

    Returns:
        the runs, seeds outermost, then folds (so every method of a fold finishes before the next fold starts,
        and an interrupted benchmark already has complete paired comparisons), methods in :data:`METHODS` order.
    """
    names = list(METHODS) if list(methods) == ["all"] else [check_method(m) for m in methods]
    names = [m for m in METHODS if m in names]
    runs: list[RunSpec] = []
    for seed in seeds:
        for fold in [None] if folds is None else list(folds):
            for method in names:
                if method == "shpeft":
                    runs.extend(RunSpec(method, seed, budget, fold=fold) for budget in budgets)
                elif method in ("spt_lora", "gps"):
                    runs.append(RunSpec(method, seed, 0.01, fold=fold))
                else:
                    runs.append(RunSpec(method, seed, fold=fold))
    return runs


#: the command line's default protocol
DEFAULT_PROTOCOL = "cpu"


def with_overrides(protocol: Protocol, **changes: Any) -> Protocol:
    """A copy of ``protocol`` with some settings changed (``None`` values are ignored).

    The copy's description ends with the settings that differ from the protocol's, so that a report never describes
    the protocol's defaults for a run that overrode them.
    """
    given = {k: v for k, v in changes.items() if v is not None}
    changed = {k: v for k, v in given.items() if k != "description" and getattr(protocol, k) != v}
    if changed and "description" not in given:
        listed = ", ".join(f"{k}={v!r}" for k, v in changed.items())
        given["description"] = f"{protocol.description} Changed on the command line: {listed}."
    return replace(protocol, **given)
