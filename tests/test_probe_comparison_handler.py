"""ProbeComparisonHandler: the probe rebuilt from its record is scored on the evaluator's images, with the same
function and in the same precision as the model, so that a model that *is* the probe ties it exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ignite.metrics import Accuracy, Fbeta
from monai.engines import SupervisedEvaluator
from monai.handlers import ROCAUC
from safetensors.torch import save_file

import monai_shpeft.metrics
from monai_shpeft.amp import AutocastInferer, resolve_amp
from monai_shpeft.backbones import build_classifier
from monai_shpeft.handlers import ProbeComparisonHandler
from monai_shpeft.linear_probe import extract_features, fit_probe, load_probe_into_head
from tests.helpers import TINY_TIMM, image_label_loader


def _probe_and_record(tmp_path: Path, autocast_dtype: torch.dtype | None) -> tuple[torch.nn.Module, Path]:
    """A tiny pretrained-like backbone whose head is the probe fitted on its features, and the probe's record."""
    torch.manual_seed(3)
    network = build_classifier(TINY_TIMM, 3, image_size=28, tiny=True)
    with torch.no_grad():  # LayerScale at 1 instead of 1e-5: features that depend on the image
        for name, param in network.backbone.named_parameters():
            if name.endswith("gamma"):
                param.fill_(1.0)
    weights = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in network.backbone.state_dict().items()}, str(weights))
    features, labels = extract_features(
        network, image_label_loader(num_samples=30, seed=1), "cpu", autocast_dtype=autocast_dtype, progress=False
    )
    fit = fit_probe(features, labels, num_classes=3)
    load_probe_into_head(network.head, fit)
    record = tmp_path / "linear_probe.json"
    recipe = {"backbone": TINY_TIMM, "pretrained": str(weights), "image_size": 28, "tiny": True}
    record.write_text(
        json.dumps(
            {
                "weight": fit.weight.tolist(),
                "bias": fit.bias.tolist(),
                "C": fit.C,
                "cv_log_loss": fit.cv_log_loss,
                "train_accuracy": fit.train_accuracy,
                "recipe": recipe,
            }
        )
    )
    return network, record


@pytest.mark.parametrize("amp", ["false", "bf16"])
def test_a_model_that_is_the_probe_ties_it_exactly_in_either_precision(tmp_path: Path, amp: str) -> None:
    policy = resolve_amp(amp, "cpu")
    network, record = _probe_and_record(tmp_path, policy.autocast_dtype)
    to_probabilities = monai_shpeft.metrics.probabilities_and_labels
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=image_label_loader(num_samples=60, seed=9),  # noisy images: many near-ties to flip
        network=network,
        inferer=AutocastInferer(policy),
        key_val_metric={"test_f1": Fbeta(beta=1.0, output_transform=to_probabilities)},
        additional_metrics={
            "test_accuracy": Accuracy(output_transform=to_probabilities),
            # ranks every probability: one that moves past another changes it
            "test_auc": ROCAUC(average="macro", output_transform=monai_shpeft.metrics.probabilities_and_onehot),
        },
        decollate=False,
    )
    output = tmp_path / "comparison.json"
    handler = ProbeComparisonHandler(record, output)
    handler.attach(evaluator)
    evaluator.run()

    comparison = json.loads(output.read_text())
    assert comparison["num_images"] == 60 and set(comparison["model"]) == {"f1", "accuracy", "auc"}
    assert comparison["model"] == comparison["linear_probe"], comparison
    assert all(value == 0.0 for value in comparison["difference"].values())


def test_without_a_record_it_says_so_and_writes_nothing(tmp_path: Path) -> None:
    network = build_classifier(TINY_TIMM, 3, image_size=28, tiny=True)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=image_label_loader(num_samples=8), network=network, decollate=False
    )
    handler = ProbeComparisonHandler(tmp_path / "missing.json", tmp_path / "comparison.json")
    handler.attach(evaluator)
    evaluator.run()
    assert handler.comparison is None and not (tmp_path / "comparison.json").exists()
