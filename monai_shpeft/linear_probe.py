"""A logistic-regression probe on frozen features, and the head it becomes.

The probe is the floor every fine-tuning run must beat: scikit-learn's L-BFGS logistic regression on the pooled
backbone features, fitted in seconds on a CPU. The same fit warms up the classification head before fine-tuning
(LP-FT: Kumar A., Raghunathan A., Jones R., Ma T., Liang P. "Fine-Tuning can Distort Pretrained Features and
Underperform Out-of-Distribution", ICLR 2022): a trained head makes the first gradients, and so SH-PEFT's
task-specific importance, about the task instead of about a random head.

The fit is made on L2-normalised features, which is what :class:`~monai_shpeft.backbones.L2NormLinearHead` sees,
so the fitted weights load into the head exactly (divided by its logit scale). The inverse regularisation ``C`` is
chosen by stratified cross-validation on the training features (log-loss), never on the validation part.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from monai_shpeft.backbones import L2NormLinearHead, build_classifier
from monai_shpeft.utils import unwrap

__all__ = ["DEFAULT_CS", "ProbeFit", "extract_features", "fit_probe", "load_probe_into_head", "recipe_classifier"]

logger = logging.getLogger(__name__)

#: the inverse L2 penalties cross-validated; unit-length features need weak penalties to reach confident logits
DEFAULT_CS = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)


@dataclass(frozen=True)
class ProbeFit:
    """A fitted probe, as softmax weights over L2-normalised features.

    Args:
        weight: ``[num_classes, feature_dim]``.
        bias: ``[num_classes]``.
        C: the chosen inverse regularisation strength.
        cv_log_loss: mean cross-validated log-loss at ``C`` (``nan`` when no cross-validation was possible).
        train_accuracy: accuracy on the features it was fitted on.
    """

    weight: np.ndarray
    bias: np.ndarray
    C: float
    cv_log_loss: float
    train_accuracy: float

    def logits(self, features: np.ndarray) -> np.ndarray:
        """Logits of raw (not yet normalised) ``features`` ``[N, feature_dim]``."""
        return _l2_normalise(features) @ self.weight.T + self.bias


def _l2_normalise(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def extract_features(
    network: nn.Module,
    data_loader: Iterable[Any],
    device: torch.device | str,
    prepare_batch: Callable[..., Any] | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features and labels of every batch, with the network in eval mode and no gradients.

    Args:
        network: a :class:`~monai_shpeft.backbones.BackboneClassifier` (or a method's wrapper of one) with
            ``forward_features``; DDP wrappers are unwrapped.
        data_loader: batches of ``{"image", "label"}``.
        device: where the batches go.
        prepare_batch: MONAI-style ``prepare_batch(batch, device, non_blocking)``; default MONAI's.
        autocast_dtype: run under ``torch.autocast`` to this dtype (see :mod:`monai_shpeft.amp`).
        progress: show a progress bar.

    Returns:
        ``(features [N, D] float32, labels [N] int64)``.
    """
    from monai.engines.utils import default_prepare_batch

    module = unwrap(network)
    forward_features = cast(Callable[[torch.Tensor], torch.Tensor], module.forward_features)
    prepare = prepare_batch or default_prepare_batch
    device = torch.device(device)
    was_training = module.training
    features, labels = [], []
    batches: Iterable[Any] = data_loader
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(data_loader, desc="frozen features", unit="batch")
    module.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                prepared = prepare(batch, device, False)
                # autocast around the forward only: around the loop it would also reach the loader's transforms
                # (and, inherited at fork, its workers'), resizing the images in bfloat16 unlike every other pass
                with torch.autocast(
                    device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None
                ):
                    pooled = forward_features(prepared[0])
                features.append(pooled.float().cpu())
                labels.append(torch.as_tensor(prepared[1]).reshape(-1).long().cpu())
    finally:
        module.train(was_training)
    if not features:
        raise ValueError("the data loader gave no batch: no features to fit the probe on.")
    return torch.cat(features).numpy(), torch.cat(labels).numpy()


def fit_probe(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    Cs: Sequence[float] = DEFAULT_CS,
    folds: int = 5,
    seed: int = 0,
) -> ProbeFit:
    """Fit a multinomial logistic regression (L-BFGS) on L2-normalised features, ``C`` chosen by cross-validation.

    Args:
        features: ``[N, D]`` raw pooled features.
        labels: ``[N]`` class indices in ``0..num_classes-1``.
        num_classes: number of classes of the head (a class absent from ``labels`` gets logits of -inf-like bias).
        Cs: candidate inverse L2 penalties.
        folds: stratified cross-validation folds (fewer when a class has fewer images).
        seed: seed of the fold assignment.

    Returns:
        the fit, as ``[num_classes, D]`` softmax weights.

    Raises:
        ValueError: fewer than two classes among the labels.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    x = _l2_normalise(np.asarray(features, dtype=np.float64))
    y = np.asarray(labels, dtype=np.int64)
    present = np.unique(y)
    if present.size < 2:
        raise ValueError(f"the probe needs images of at least two classes; the training part has only {present}.")
    smallest = int(np.bincount(y)[present].min())
    n_splits = min(int(folds), smallest)

    def model(c: float) -> Any:
        return LogisticRegression(C=c, max_iter=5000)

    best_c, best_loss = float(Cs[-1]), float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter at the weakest penalties; the CV score judges them
        if n_splits >= 2 and len(Cs) > 1:
            cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
            losses = {c: -float(np.mean(cross_val_score(model(c), x, y, cv=cv, scoring="neg_log_loss"))) for c in Cs}
            best_c = min(losses, key=lambda c: (losses[c], -c))
            best_loss = losses[best_c]
        final = model(best_c).fit(x, y)
    weight = np.zeros((num_classes, x.shape[1]))
    # unrepresented classes never win: a large negative bias
    bias = np.full(num_classes, -1e4 if present.size < num_classes else 0.0)
    coef, intercept = final.coef_, final.intercept_
    if coef.shape[0] == 1:  # scikit-learn's binary model: one logit for the second class, the softmax pair is +-1/2
        coef = np.concatenate([-coef / 2, coef / 2])
        intercept = np.concatenate([-intercept / 2, intercept / 2])
    weight[final.classes_] = coef
    bias[final.classes_] = intercept
    train_accuracy = float(np.mean(final.predict(x) == y))
    logger.info(
        "Linear probe: logistic regression on %d L2-normalised features of width %d, C=%g (cross-validated log-loss "
        "%.3f over %d folds), training accuracy %.3f.",
        x.shape[0],
        x.shape[1],
        best_c,
        best_loss,
        n_splits,
        train_accuracy,
    )
    return ProbeFit(weight, bias, best_c, best_loss, train_accuracy)


def load_probe_into_head(head: nn.Module, fit: ProbeFit) -> None:
    """Write a fitted probe into an :class:`~monai_shpeft.backbones.L2NormLinearHead` (its logits become the probe's).

    Args:
        head: the head.
        fit: the probe.

    Raises:
        TypeError: when ``head`` is not an L2-norm linear head.
        ValueError: when the shapes differ.
    """
    if not isinstance(head, L2NormLinearHead):
        raise TypeError(f"the probe loads into an L2NormLinearHead, not {type(head).__name__}.")
    linear = head.linear
    if tuple(linear.weight.shape) != fit.weight.shape:
        raise ValueError(f"probe weight {fit.weight.shape} does not fit the head's {tuple(linear.weight.shape)}.")
    scale = float(cast(torch.Tensor, head.logit_scale))
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(fit.weight / scale, dtype=linear.weight.dtype))
        linear.bias.copy_(torch.as_tensor(fit.bias / scale, dtype=linear.bias.dtype))


def recipe_classifier(
    recipe: Mapping[str, Any], num_classes: int | None = None, pretrained: str | os.PathLike | None = None
) -> nn.Module:
    """The frozen backbone a probe record's recipe describes, with a head: the network the probe was fitted on.

    FPT has no head of its own, so its probe is fitted, and later scored, on this classifier instead.

    Args:
        recipe: ``backbone``, ``image_size`` and optionally ``num_classes``, ``pretrained``, ``tiny``.
        num_classes: classes of the head; ``None``: the recipe's.
        pretrained: a weights file to use instead of the recipe's (the same weights, found elsewhere).

    Returns:
        the classifier, in training mode on the CPU.
    """
    return build_classifier(
        recipe["backbone"],
        int(num_classes if num_classes is not None else recipe["num_classes"]),
        pretrained=pretrained if pretrained is not None else recipe.get("pretrained"),
        image_size=int(recipe["image_size"]),
        tiny=bool(recipe.get("tiny", False)),
    )
