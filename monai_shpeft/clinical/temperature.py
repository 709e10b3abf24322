"""Temperature scaling (Guo et al., ICML 2017): one scalar that divides the logits so probabilities can be trusted.

The temperature is fitted on the validation split by minimising the negative log-likelihood, written beside the
model (``models/temperature.json``) and applied by evaluation and inference. Dividing every logit by the same
positive number keeps each case's predicted class, so accuracy and F1 do not change; only confidence does.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from monai_shpeft.clinical.calibration import brier_score, expected_calibration_error
from monai_shpeft.errors import InputError, SettingsError
from monai_shpeft.utils import atomic_write_json

__all__ = [
    "TEMPERATURE_FORMAT",
    "TEMPERATURE_MODES",
    "fit_temperature",
    "fitted_temperature",
    "load_temperature",
    "negative_log_likelihood",
    "rescale_probabilities",
    "save_temperature",
    "softmax",
    "temperature_mode",
    "temperature_record",
]

TEMPERATURE_FORMAT = "monai_shpeft.temperature"
#: values of the bundles' ``temperature_scaling`` knob: ``auto`` applies the fitted temperature only when it lowered
#: the validation ECE, ``true`` always, ``false`` never (and training fits nothing)
TEMPERATURE_MODES = ("auto", "true", "false")
#: the search range of the temperature; beyond it the validation split says too little to trust the fit
TEMPERATURE_BOUNDS = (0.05, 20.0)

logger = logging.getLogger(__name__)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Class probabilities of ``logits / temperature``, computed stably in float64.

    Args:
        logits: ``[N, C]``.
        temperature: a positive divisor.

    Returns:
        ``[N, C]`` probabilities.
    """
    scaled = np.asarray(logits, dtype=np.float64) / float(temperature)
    scaled -= scaled.max(axis=1, keepdims=True)
    exponentials = np.exp(scaled)
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean cross-entropy of ``logits / temperature`` against ``labels``."""
    scaled = np.asarray(logits, dtype=np.float64) / float(temperature)
    shifted = scaled - scaled.max(axis=1, keepdims=True)
    log_probabilities = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-np.mean(log_probabilities[np.arange(len(labels)), np.asarray(labels, dtype=np.int64)]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of ``labels`` (a bounded search on its log).

    Args:
        logits: ``[N, C]`` validation logits (any per-case shift, e.g. log-probabilities, gives the same result).
        labels: ``[N]`` class indices.

    Returns:
        the temperature, within ``TEMPERATURE_BOUNDS``.

    Raises:
        ValueError: without cases, or when logits and labels disagree in length.
    """
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or len(logits) == 0 or len(logits) != len(labels):
        raise ValueError(
            f"temperature scaling needs [N, C] logits and N labels, got {logits.shape} and {labels.shape}."
        )
    low, high = np.log(TEMPERATURE_BOUNDS)
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(logits, labels, float(np.exp(log_t))),
        bounds=(low, high),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(np.exp(result.x))


def rescale_probabilities(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """The probabilities the same network gives at ``temperature`` times the temperature of ``probabilities``.

    Calibrated probabilities are ``softmax(z / T)``; ``rescale_probabilities(p, T)`` gives back ``softmax(z)``
    (``p ** T``, normalised), so the report can show calibration before and after without a second pass.
    """
    probabilities = np.clip(np.asarray(probabilities, dtype=np.float64), 0.0, None)
    with np.errstate(divide="ignore"):
        log_probabilities = np.log(probabilities)
    return softmax(log_probabilities, 1.0 / float(temperature))


def temperature_record(logits: np.ndarray, labels: np.ndarray, temperature: float) -> dict[str, Any]:
    """What the fit did on the cases it saw: negative log-likelihood, ECE and Brier score before and after."""
    before, after = softmax(logits), softmax(logits, temperature)
    ece = {"before": expected_calibration_error(labels, before), "after": expected_calibration_error(labels, after)}
    return {
        "format": TEMPERATURE_FORMAT,
        "version": 1,
        "temperature": float(temperature),
        "fitted_on": "validation",
        "num_cases": int(len(labels)),
        "nll": {
            "before": negative_log_likelihood(logits, labels),
            "after": negative_log_likelihood(logits, labels, temperature),
        },
        "ece": ece,
        "brier": {"before": brier_score(labels, before), "after": brier_score(labels, after)},
        # what the default mode ("auto") reads: a temperature that minimises the validation NLL can still make the
        # top-class confidences less calibrated (a few confident errors against many under-confident cases)
        "lowers_validation_ece": bool(ece["after"] < ece["before"]),
    }


def save_temperature(path: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Write a :func:`temperature_record` atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, record)
    return path


def temperature_mode(value: str | bool | None) -> str:
    """The ``temperature_scaling`` knob as one of :data:`TEMPERATURE_MODES` (booleans and their spellings accepted).

    Raises:
        SettingsError: for another value (the message names the knob and lists the valid values).
    """
    text = str(value).strip().lower() if value is not None else "auto"
    text = {"1": "true", "yes": "true", "on": "true", "0": "false", "no": "false", "off": "false", "": "auto"}.get(
        text, text
    )
    if text not in TEMPERATURE_MODES:
        raise SettingsError(
            f"temperature_scaling {value!r} is not one of: {', '.join(TEMPERATURE_MODES)} (auto: applied only when "
            "it lowered the validation ECE)."
        )
    return text


def _read_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if record.get("format") != TEMPERATURE_FORMAT:
            raise ValueError(f"format is {record.get('format')!r}, not {TEMPERATURE_FORMAT!r}")
        temperature = float(record["temperature"])
        if not np.isfinite(temperature) or temperature <= 0:
            raise ValueError(f"temperature {temperature} is not a positive number")
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise InputError(f"{path} is not a temperature-scaling record: {error}.") from error
    return record


def fitted_temperature(path: str | os.PathLike | None) -> float | None:
    """The temperature training fitted (``models/temperature.json``), applied or not; ``None`` without a record."""
    if path is None or not Path(path).is_file():
        return None
    return float(_read_record(Path(path))["temperature"])


def load_temperature(path: str | os.PathLike | None, mode: str | bool = "auto") -> float:
    """The temperature evaluation and inference apply: the fitted one, or 1 (the network's own probabilities).

    Args:
        path: ``models/temperature.json`` of the trained model.
        mode: the ``temperature_scaling`` knob: ``auto`` (the fitted temperature when it lowered the validation ECE),
            ``true`` (always) or ``false`` (never).

    Returns:
        the temperature; 1.0 when off, declined by ``auto``, or when the model has none (trained before scaling
        existed, or with it off), which the log says.

    Raises:
        InputError: when the file exists but is not a temperature record (the message names the file).
        SettingsError: for a bad ``mode``.
    """
    mode = temperature_mode(mode)
    if mode == "false" or path is None:
        return 1.0
    path = Path(path)
    if not path.is_file():
        logger.info("No %s: probabilities are the network's own (no temperature scaling).", path)
        return 1.0
    record = _read_record(path)
    temperature = float(record["temperature"])
    if mode == "auto" and not record.get("lowers_validation_ece", True):
        logger.info(
            "Temperature scaling not applied: T = %.3f did not lower the validation ECE (%.3f -> %.3f); "
            "--temperature_scaling true applies it anyway (%s).",
            temperature,
            record["ece"]["before"],
            record["ece"]["after"],
            path,
        )
        return 1.0
    logger.info("Temperature scaling: logits divided by %.3f (fitted on validation, %s).", temperature, path)
    return temperature
