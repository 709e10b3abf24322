"""Glue between a classification engine's output and ignite / MONAI metrics (macro-F1, accuracy, AUC).

The metrics themselves are ignite's ``Fbeta`` and ``Accuracy`` and MONAI's ``ROCAUC``; these functions only turn
an evaluator's batch output (``{"pred": logits [B, C], "label": [B] or [B, 1]}``) into the form each expects,
so bundle configs can name them as ``output_transform``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["labels_of", "probabilities_and_labels", "probabilities_and_onehot"]


def labels_of(output: Mapping[str, Any]) -> torch.Tensor:
    """Integer class labels ``[B]`` from an engine output's ``"label"``.

    Args:
        output: engine output with a ``"label"`` entry of shape ``[B]`` or ``[B, 1]``.

    Returns:
        ``torch.long`` labels of shape ``[B]``.
    """
    label = torch.as_tensor(output["label"])
    return label.reshape(label.shape[0]).long()


def probabilities_and_labels(output: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(softmax probabilities [B, C], labels [B])`` for ignite's ``Fbeta`` / ``Accuracy``.

    Args:
        output: engine output with ``"pred"`` logits and ``"label"``.

    Returns:
        probabilities and integer labels.
    """
    probabilities = torch.softmax(torch.as_tensor(output["pred"]).float(), dim=1)
    return probabilities, labels_of(output).to(probabilities.device)


def probabilities_and_onehot(output: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(softmax probabilities [B, C], one-hot labels [B, C])`` for MONAI's ``ROCAUC`` (one-vs-rest, macro).

    Args:
        output: engine output with ``"pred"`` logits and ``"label"``.

    Returns:
        probabilities and one-hot labels.
    """
    probabilities, labels = probabilities_and_labels(output)
    onehot = torch.nn.functional.one_hot(labels, num_classes=probabilities.shape[1]).to(probabilities.dtype)
    return probabilities, onehot
