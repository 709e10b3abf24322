from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator

from monai_shpeft.handlers import PredictionWriter


class FixedLogits(torch.nn.Module):
    """Logits that depend on the image mean, so each row is known in advance."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2, 3))
        return torch.stack([mean, -mean, torch.zeros_like(mean)], dim=1)


def run(tmp_path: Path, decollate: bool = False) -> Path:
    items = [{"image": torch.full((3, 4, 4), float(v)), "image_path": f"img{v}.png"} for v in (-2, 0, 3)]
    output = tmp_path / "out" / "predictions.csv"
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(Dataset(items), batch_size=2),
        network=FixedLogits(),
        val_handlers=[PredictionWriter(output, classes=["a", "b", "c"])],
        decollate=decollate,
    )
    evaluator.run()
    return output


def test_one_row_per_image_with_class_and_probabilities(tmp_path: Path) -> None:
    rows = list(csv.DictReader(run(tmp_path).open()))
    assert [r["image"] for r in rows] == ["img-2.png", "img0.png", "img3.png"]
    assert [r["predicted_class"] for r in rows] == ["b", "a", "a"]
    expected = torch.softmax(torch.tensor([3.0, -3.0, 0.0]), dim=0)
    assert [float(rows[2][f"p_{c}"]) for c in "abc"] == pytest.approx(expected.tolist(), abs=1e-6)


def test_decollated_output_is_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="decollate=False"):
        run(tmp_path, decollate=True)
