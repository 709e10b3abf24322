"""ClinicalReportHandler on a real MONAI evaluator: the report is the one of the network's own probabilities."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.engines import SupervisedEvaluator
from PIL import Image

from monai_shpeft.backbones import build_classifier
from monai_shpeft.clinical import REPORT_FIGURES, clinical_report
from monai_shpeft.errors import SettingsError
from monai_shpeft.handlers import ClinicalReportHandler
from tests.helpers import TINY_TIMM, image_label_loader

NAMES = ["benign", "malignant", "normal"]


def test_the_report_holds_the_figures_of_the_evaluated_network_with_intervals_and_plots(tmp_path: Path) -> None:
    torch.manual_seed(0)
    network = build_classifier(TINY_TIMM, 3, image_size=28, tiny=True).eval()
    loader = image_label_loader(num_samples=24, seed=4)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=loader, network=network, decollate=False
    )
    handler = ClinicalReportHandler(tmp_path / "eval", NAMES, num_resamples=50, seed=1)
    handler.attach(evaluator)
    evaluator.run()
    evaluator.run()  # a second run reports on its own outputs only

    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    with torch.no_grad():
        batches = list(loader)
        probabilities = torch.cat([torch.softmax(network(b["image"]), 1) for b in batches]).numpy()
        labels = torch.cat([torch.as_tensor(b["label"]).reshape(-1) for b in batches]).numpy()
    # report.json is strict JSON: a figure without cases (here a class never predicted: no PPV) is null, not NaN
    expected = json.loads(
        json.dumps(clinical_report(labels, probabilities, NAMES, num_resamples=50, seed=1)).replace("NaN", "null")
    )
    assert report["num_cases"] == 24 and report["classes"] == NAMES
    assert report.pop("temperature_scaling")["applied"] is False  # no temperature: the network's own probabilities
    assert report == expected
    assert np.sum(report["confusion_matrix"]["counts"]) == 24
    for name in NAMES:
        figures = report["per_class"][name]
        assert set(figures) == {"sensitivity", "specificity", "ppv", "npv", "f1", "auc", "support"}
        assert figures["support"] == int((labels == NAMES.index(name)).sum())
    macro_f1 = report["overall"]["macro_f1"]
    assert macro_f1["low"] <= macro_f1["value"] <= macro_f1["high"]
    for figure in REPORT_FIGURES:
        with Image.open(tmp_path / "eval" / figure) as image:
            assert image.format == "PNG" and min(image.size) > 200


def test_a_positive_class_adds_operating_points_chosen_on_validation(tmp_path: Path) -> None:
    torch.manual_seed(0)
    network = build_classifier(TINY_TIMM, 3, image_size=28, tiny=True).eval()
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=image_label_loader(num_samples=24, seed=4), network=network,
        decollate=False,
    )  # fmt: skip
    handler = ClinicalReportHandler(
        tmp_path, NAMES, num_resamples=0, positive_class="malignant",
        validation_loader=image_label_loader(num_samples=24, seed=7),
    )  # fmt: skip
    handler.attach(evaluator)
    evaluator.run()
    points = handler.report["operating_points"]
    assert points["positive_class"] == "malignant" and len(points["at_specificity"]) == 2
    assert points["validation_threshold"]["validation"]["sensitivity"] >= 0.95
    assert set(points["validation_threshold"]["test"]) >= {"sensitivity", "specificity", "ppv", "npv"}
    assert json.loads((tmp_path / "report.json").read_text())["operating_points"]["positive_class"] == "malignant"


def test_a_positive_class_that_is_not_a_class_is_named_with_the_classes() -> None:
    with pytest.raises(SettingsError, match=r"positive_class 'cancer' is not a class.*benign, malignant, normal"):
        ClinicalReportHandler("unused", NAMES, positive_class="cancer")


def test_with_a_temperature_the_report_gives_calibration_before_and_after_scaling(tmp_path: Path) -> None:
    from monai_shpeft.amp import AutocastInferer
    from monai_shpeft.clinical import brier_score, expected_calibration_error

    torch.manual_seed(0)
    network = build_classifier(TINY_TIMM, 3, image_size=28, tiny=True).eval()
    loader = image_label_loader(num_samples=24, seed=4)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=loader,
        network=network,
        inferer=AutocastInferer(temperature=2.5),
        decollate=False,
    )
    handler = ClinicalReportHandler(tmp_path / "eval", NAMES, num_resamples=0, temperature=2.5)
    handler.attach(evaluator)
    evaluator.run()

    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    with torch.no_grad():
        batches = list(loader)
        logits = torch.cat([network(b["image"]) for b in batches]).double()
        labels = torch.cat([torch.as_tensor(b["label"]).reshape(-1) for b in batches]).numpy()
    own, scaled = torch.softmax(logits, 1).numpy(), torch.softmax(logits / 2.5, 1).numpy()
    scaling = report["temperature_scaling"]
    assert scaling["applied"] and scaling["temperature"] == 2.5
    assert scaling["ece"]["before"] == pytest.approx(expected_calibration_error(labels, own), abs=1e-5)
    assert scaling["ece"]["after"] == pytest.approx(expected_calibration_error(labels, scaled), abs=1e-5)
    assert scaling["brier"]["before"] == pytest.approx(brier_score(labels, own), abs=1e-5)
    assert report["overall"]["ece"]["value"] == pytest.approx(scaling["ece"]["after"], abs=1e-9)
    assert scaling["ece"]["before"] != pytest.approx(scaling["ece"]["after"])


def test_a_fitted_temperature_not_applied_is_reported_with_what_it_would_give(tmp_path: Path) -> None:
    from monai_shpeft.clinical import expected_calibration_error

    torch.manual_seed(0)
    network = build_classifier(TINY_TIMM, 3, image_size=28, tiny=True).eval()
    loader = image_label_loader(num_samples=24, seed=4)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=loader, network=network, decollate=False
    )
    handler = ClinicalReportHandler(tmp_path / "eval", NAMES, num_resamples=0, fitted_temperature=2.5)
    handler.attach(evaluator)
    evaluator.run()

    scaling = json.loads((tmp_path / "eval" / "report.json").read_text())["temperature_scaling"]
    with torch.no_grad():
        batches = list(loader)
        logits = torch.cat([network(b["image"]) for b in batches]).double()
        labels = torch.cat([torch.as_tensor(b["label"]).reshape(-1) for b in batches]).numpy()
    assert not scaling["applied"] and scaling["temperature"] == 2.5
    own, scaled = torch.softmax(logits, 1).numpy(), torch.softmax(logits / 2.5, 1).numpy()
    assert scaling["ece"]["before"] == pytest.approx(expected_calibration_error(labels, own), abs=1e-5)
    assert scaling["ece"]["after"] == pytest.approx(expected_calibration_error(labels, scaled), abs=1e-5)
