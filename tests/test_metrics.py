from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine
from ignite.metrics import Accuracy, Fbeta
from sklearn.metrics import f1_score

from monai_shpeft.metrics import labels_of, probabilities_and_labels, probabilities_and_onehot

OUTPUT = {
    "pred": torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]),
    "label": torch.tensor([[0], [1], [1], [2]]),
}


def test_shapes_and_values() -> None:
    probabilities, labels = probabilities_and_labels(OUTPUT)
    assert torch.allclose(probabilities.sum(1), torch.ones(4)) and labels.tolist() == [0, 1, 1, 2]
    _, onehot = probabilities_and_onehot(OUTPUT)
    assert onehot.tolist()[3] == [0.0, 0.0, 1.0]
    assert labels_of({"label": torch.tensor([1, 0])}).tolist() == [1, 0]


def test_ignite_macro_f1_matches_scikit_learn() -> None:
    engine = Engine(lambda engine, batch: OUTPUT)
    Fbeta(beta=1.0, average=True, output_transform=probabilities_and_labels).attach(engine, "f1")
    Accuracy(output_transform=probabilities_and_labels).attach(engine, "accuracy")
    metrics = engine.run([0]).metrics
    predicted = OUTPUT["pred"].argmax(1)
    assert metrics["f1"] == pytest.approx(f1_score([0, 1, 1, 2], predicted, average="macro"))
    assert metrics["accuracy"] == 0.5
