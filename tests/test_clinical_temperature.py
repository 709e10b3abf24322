"""Temperature scaling: the fit finds a known temperature, improves calibration, and its record reads back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from monai_shpeft.amp import AutocastInferer
from monai_shpeft.clinical import (
    expected_calibration_error,
    fit_temperature,
    fitted_temperature,
    load_temperature,
    rescale_probabilities,
    save_temperature,
    softmax,
    temperature_mode,
    temperature_record,
)
from monai_shpeft.clinical.temperature import negative_log_likelihood
from monai_shpeft.errors import InputError, SettingsError


def sampled_cases(temperature: float, num_cases: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from ``softmax(logits / temperature)``: that temperature calibrates them."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=4.0, size=(num_cases, 3))
    probabilities = softmax(logits, temperature)
    labels = np.array([rng.choice(3, p=row) for row in probabilities])
    return logits, labels


@pytest.mark.parametrize("true_temperature", [0.5, 2.5])
def test_the_fit_finds_the_temperature_the_labels_were_drawn_with(true_temperature: float) -> None:
    logits, labels = sampled_cases(true_temperature, 20000)
    assert fit_temperature(logits, labels) == pytest.approx(true_temperature, rel=0.05)


def test_scaling_an_overconfident_model_lowers_nll_and_ece_and_keeps_every_prediction() -> None:
    logits, labels = sampled_cases(3.0, 2000, seed=1)  # the network's logits are 3x too large
    temperature = fit_temperature(logits, labels)
    record = temperature_record(logits, labels, temperature)
    assert record["temperature"] == temperature > 2
    assert record["nll"]["after"] < record["nll"]["before"]
    assert record["ece"]["after"] < record["ece"]["before"] / 2
    assert record["brier"]["after"] < record["brier"]["before"]
    assert record["num_cases"] == 2000 and record["fitted_on"] == "validation"
    np.testing.assert_array_equal(softmax(logits, temperature).argmax(1), logits.argmax(1))
    # the minimum: a step either way is worse
    for factor in (0.9, 1.1):
        assert negative_log_likelihood(logits, labels, temperature * factor) > record["nll"]["after"]


def test_rescaling_calibrated_probabilities_gives_back_the_networks_own() -> None:
    logits, labels = sampled_cases(1.0, 50, seed=2)
    calibrated = softmax(logits, 1.7)
    np.testing.assert_allclose(rescale_probabilities(calibrated, 1.7), softmax(logits), atol=1e-10)
    # ECE before scaling computed from the calibrated probabilities alone equals the one of the raw logits
    assert expected_calibration_error(labels, rescale_probabilities(calibrated, 1.7)) == pytest.approx(
        expected_calibration_error(labels, softmax(logits))
    )


def test_the_record_reads_back_and_missing_or_disabled_means_no_scaling(tmp_path: Path) -> None:
    logits, labels = sampled_cases(2.0, 300)
    path = save_temperature(tmp_path / "models" / "temperature.json", temperature_record(logits, labels, 1.9))
    record = json.loads(path.read_text())
    assert record["format"] == "monai_shpeft.temperature" and isinstance(record["lowers_validation_ece"], bool)
    assert load_temperature(path, "true") == 1.9 and fitted_temperature(path) == 1.9
    assert load_temperature(path, False) == 1.0 and load_temperature(path, "false") == 1.0
    assert load_temperature(tmp_path / "missing.json") == 1.0 and fitted_temperature(tmp_path / "missing.json") is None


def test_auto_applies_the_temperature_only_when_it_lowered_the_validation_ece(tmp_path: Path) -> None:
    overconfident = temperature_record(*sampled_cases(3.0, 2000, seed=1), 2.9)  # scaling helps
    calibrated = temperature_record(*sampled_cases(1.0, 2000, seed=1), 2.9)  # scaling a calibrated model hurts
    assert overconfident["lowers_validation_ece"] and not calibrated["lowers_validation_ece"]
    helps = save_temperature(tmp_path / "helps.json", overconfident)
    hurts = save_temperature(tmp_path / "hurts.json", calibrated)
    assert load_temperature(helps) == load_temperature(helps, "auto") == 2.9
    assert (
        load_temperature(hurts) == 1.0 and load_temperature(hurts, "true") == 2.9 and fitted_temperature(hurts) == 2.9
    )


@pytest.mark.parametrize("value, mode", [("auto", "auto"), (True, "true"), ("false", "false"), ("off", "false")])
def test_the_knob_reads_auto_true_false(value: object, mode: str) -> None:
    assert temperature_mode(value) == mode  # type: ignore[arg-type]


def test_a_bad_knob_value_is_named() -> None:
    with pytest.raises(SettingsError, match="temperature_scaling 'sometimes' is not one of: auto, true, false"):
        temperature_mode("sometimes")


@pytest.mark.parametrize(
    "content, cause",
    [
        ("not json", "Expecting value"),
        ('{"format": "other"}', "not 'monai_shpeft.temperature'"),
        ('{"format": "monai_shpeft.temperature", "temperature": -1}', "not a positive number"),
    ],
)
def test_a_broken_record_is_named_with_its_cause(tmp_path: Path, content: str, cause: str) -> None:
    path = tmp_path / "temperature.json"
    path.write_text(content)
    with pytest.raises(InputError, match="temperature.json is not a temperature-scaling record") as raised:
        load_temperature(path)
    assert cause in str(raised.value)


def test_the_inferer_divides_the_logits_by_the_temperature() -> None:
    network = torch.nn.Linear(4, 3)
    inputs = torch.randn(5, 4)
    plain, scaled = AutocastInferer()(inputs, network), AutocastInferer(temperature=2.0)(inputs, network)
    torch.testing.assert_close(scaled, plain / 2.0)
    assert torch.equal(scaled.argmax(1), plain.argmax(1))
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        AutocastInferer(temperature=0.0)
