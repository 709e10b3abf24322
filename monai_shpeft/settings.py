"""Checks of a run's settings that need no data: done first, so a bad knob stops a run before any image is read.

The bundles call :func:`check_settings` as their first ``initialize`` step (after the failure report is installed,
:func:`monai_shpeft.failure_report.install_failure_report`); each problem is a
:class:`~monai_shpeft.errors.SettingsError` that names the knob, its value and a value that works.
"""

from __future__ import annotations

import logging

import torch

from monai_shpeft.amp import resolve_amp
from monai_shpeft.backbones import check_image_size, patch_size_of
from monai_shpeft.clinical import check_saliency
from monai_shpeft.data.split import check_folds
from monai_shpeft.errors import SettingsError
from monai_shpeft.handlers.tracking_handler import check_tracking
from monai_shpeft.importance import scoped_parameters
from monai_shpeft.methods import check_method, check_optimizer, resolve_checkpoint_rule, resolve_learning_rates
from monai_shpeft.sparse_set import resolve_budget
from monai_shpeft.transforms.frames import FRAME_NAMES, VOLUME_POLICIES

__all__ = ["check_settings"]

# the budget only needs a count to compare with; the real number of weights is checked when the set is chosen
_ANY_COUNT = 10**12

logger = logging.getLogger(__name__)


def check_settings(
    method: str,
    backbone: str,
    image_size: int,
    optimizer_name: str = "adamw",
    budget: float | int | None = None,
    fpt_image_size: int | None = None,
    fpt_side_image_size: int | None = None,
    learning_rate: float | str | None = None,
    head_learning_rate: float | str | None = None,
    amp: bool | str | None = "auto",
    num_folds: int | None = None,
    fold: int = 0,
    slice_policy: int | str = "middle",
    batch_size: int | None = None,
    checkpoint_rule: str | None = None,
    max_epochs: int | None = None,
    fpt_max_epochs: int | None = None,
    tracking: str | None = None,
    tracking_uri: str | None = None,
    saliency: str | None = None,
) -> None:
    """Check the knobs of a run that can be checked without data, before anything is built or read.

    Args:
        method: the ``method`` knob.
        backbone: the ``backbone`` knob.
        image_size: the classifier methods' input size.
        optimizer_name: the ``optimizer_name`` knob.
        budget: SH-PEFT's and GPS's budget (a ratio in (0, 1] or a count >= 1).
        fpt_image_size: FPT's high-resolution size (the frozen backbone's input).
        fpt_side_image_size: FPT's low-resolution size (the side network's input).
        learning_rate: the ``learning_rate`` knob.
        head_learning_rate: the ``head_learning_rate`` knob.
        amp: the ``amp`` knob.
        num_folds: the ``num_folds`` knob (``None``: no k-fold split).
        fold: the ``fold`` knob.
        slice_policy: how a volume becomes 2-D (:class:`~monai_shpeft.transforms.VolumeToImage`).
        batch_size: the ``batch_size`` knob (checked against the training part later, once the split exists).
        checkpoint_rule: the ``checkpoint_rule`` knob (``None``: the method's default).
        max_epochs: the classifier methods' epochs (the ``max_epochs`` knob).
        fpt_max_epochs: FPT's epochs (the ``fpt_max_epochs`` knob).
        tracking: the ``tracking`` knob (``""``/``"none"``, or ``"mlflow"``: MLflow must be installed).
        tracking_uri: the ``tracking_uri`` knob (checked when tracking).
        saliency: inference's ``saliency`` knob (``""``/``None``: no maps; else ``gradcam`` or ``rollout``).

    Raises:
        SettingsError: naming the first knob whose value cannot work, and a value that does.
    """
    method = check_method(method)
    check_optimizer(optimizer_name)
    check_slice_policy(slice_policy)
    check_tracking(tracking, tracking_uri)
    check_saliency(saliency)
    resolve_checkpoint_rule(method, checkpoint_rule)
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise SettingsError(f"batch_size must be a whole number >= 1, got {batch_size!r} (e.g. --batch_size 32).")
    resolve_amp(amp, "cpu")  # the value only: which precision it gives depends on the device, resolved later
    if num_folds is not None:
        check_folds(num_folds, fold)
    resolve_learning_rates(method, learning_rate, head_learning_rate)
    for name, value in (("max_epochs", max_epochs), ("fpt_max_epochs", fpt_max_epochs)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise SettingsError(f"{name} must be a whole number >= 1, got {value!r} (e.g. --{name} 20).")
    patch = patch_size_of(backbone)
    if method == "fpt":
        if fpt_max_epochs is not None and max_epochs is not None and fpt_max_epochs != max_epochs:
            # said up front: a --max_epochs from a classifier's command line does not shorten FPT's schedule
            logger.info(
                "FPT trains for fpt_max_epochs=%d epochs (max_epochs=%d is the classifier methods' knob).",
                fpt_max_epochs,
                max_epochs,
            )
        high = check_image_size(fpt_image_size, patch, "fpt_image_size", backbone)
        low = check_image_size(fpt_side_image_size, patch, "fpt_side_image_size", backbone)
        if low > high:
            raise SettingsError(
                f"fpt_side_image_size {fpt_side_image_size} is larger than fpt_image_size {fpt_image_size}: the side "
                "network reads the low-resolution copy. Swap them, or lower fpt_side_image_size."
            )
        return
    check_image_size(image_size, patch, "image_size", backbone)
    if method in ("shpeft", "gps") and budget is not None:
        resolve_budget(budget, _ANY_COUNT)


def check_budget_fits(method: str, budget: float | int | None, network: torch.nn.Module) -> None:
    """Check SH-PEFT's and GPS's budget against the backbone's weights, once the network is built, before any data.

    Args:
        method: the ``method`` knob.
        budget: the ``budget`` knob.
        network: the classifier the run trains.

    Raises:
        SettingsError: for a count larger than the backbone's weights (a ratio always fits).
    """
    if check_method(method) not in ("shpeft", "gps") or budget is None:
        return
    resolve_budget(budget, sum(p.numel() for p in scoped_parameters(network).values()))


def check_slice_policy(slice_policy: int | str) -> None:
    """Check the ``slice_policy`` knob: a slice index or one of the named policies.

    Args:
        slice_policy: the knob's value.

    Raises:
        SettingsError: for anything else.
    """
    named = (*FRAME_NAMES, *VOLUME_POLICIES)
    if isinstance(slice_policy, bool) or not isinstance(slice_policy, int | str):
        raise SettingsError(f"slice_policy must be a slice index or one of {list(named)}, got {slice_policy!r}.")
    if isinstance(slice_policy, str) and slice_policy not in named:
        raise SettingsError(
            f"slice_policy '{slice_policy}' is not a policy: use a slice index or one of {list(named)} "
            "(e.g. --slice_policy middle)."
        )
