"""TemperatureScalingHandler on a real MONAI trainer: it fits the saved model's temperature on validation data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from monai_shpeft.backbones import build_classifier
from monai_shpeft.clinical import fit_temperature
from monai_shpeft.handlers import TemperatureScalingHandler
from tests.helpers import TINY_TIMM, image_label_loader, make_trainer


def tiny_network(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_classifier(TINY_TIMM, 3, image_size=28, tiny=True)


def test_the_temperature_is_fitted_for_the_saved_model_on_the_validation_loader(tmp_path: Path) -> None:
    saved = tiny_network(seed=7)
    torch.save(saved.state_dict(), tmp_path / "model.pt")  # what CheckpointSaver writes for one network
    validation = image_label_loader(num_samples=30, seed=3)
    network = tiny_network(seed=0)
    handler = TemperatureScalingHandler(validation, tmp_path / "temperature.json", load_path=tmp_path / "model.pt")
    trainer = make_trainer(network, image_label_loader(num_samples=8), lambda p: torch.optim.SGD(p, lr=0.01), [handler])
    trainer.run()

    # the trainer's network now holds the saved weights, and the temperature is theirs
    for name, value in saved.state_dict().items():
        torch.testing.assert_close(network.state_dict()[name], value)
    saved.eval()
    with torch.no_grad():
        batches = list(validation)
        logits = torch.cat([saved(batch["image"]) for batch in batches]).numpy()
        labels = torch.cat([batch["label"].reshape(-1) for batch in batches]).numpy()
    record = json.loads((tmp_path / "temperature.json").read_text())
    assert record["temperature"] == handler.temperature
    assert record["temperature"] == pytest.approx(fit_temperature(logits, labels), rel=1e-4)
    assert record["num_cases"] == 30 and record["nll"]["after"] <= record["nll"]["before"] + 1e-9
    assert set(record["ece"]) == {"before", "after"} and set(record["brier"]) == {"before", "after"}
    assert network.training  # the mode the trainer left it in is restored


def test_off_fits_nothing_and_a_stale_record_never_outlives_a_new_training(tmp_path: Path) -> None:
    stale = tmp_path / "temperature.json"
    stale.write_text('{"format": "monai_shpeft.temperature", "temperature": 3.0}')
    handler = TemperatureScalingHandler(image_label_loader(num_samples=6), stale, enabled=False)
    trainer = make_trainer(
        tiny_network(0), image_label_loader(num_samples=8), lambda p: torch.optim.SGD(p, lr=0.01), [handler]
    )
    trainer.run()
    assert not stale.exists() and handler.temperature is None
