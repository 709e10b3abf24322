"""HeadWarmupHandler in real MONAI engines: the head becomes the probe before importance estimation, the warmed
network is validated as epoch 0 and saved as the checkpoint to beat, and the linear probe stops there."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Events
from ignite.metrics import Accuracy
from monai.engines import SupervisedEvaluator
from monai.handlers import CheckpointSaver

import monai_shpeft.metrics
from monai_shpeft.backbones import build_classifier
from monai_shpeft.handlers import HeadWarmupHandler, ImportanceEstimationHandler
from monai_shpeft.importance import estimate_importance
from monai_shpeft.linear_probe import extract_features, fit_probe
from monai_shpeft.networks import build_fpt
from tests.helpers import TINY_TIMM, image_label_loader, make_trainer, tiny_classifier

ADAMW = partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.0)


def _evaluator(network: torch.nn.Module, ckpt_dir: Path) -> SupervisedEvaluator:
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=image_label_loader(num_samples=9, seed=5),
        network=network,
        key_val_metric={"val_acc": Accuracy(output_transform=monai_shpeft.metrics.probabilities_and_labels)},
        decollate=False,
    )
    CheckpointSaver(str(ckpt_dir), {"model": network}, save_key_metric=True, key_metric_filename="model.pt").attach(
        evaluator
    )
    return evaluator


def test_the_head_is_the_probe_of_the_frozen_features_before_importance_is_estimated(tmp_path: Path) -> None:
    network = tiny_classifier(seed=0)
    backbone_before = {n: p.detach().clone() for n, p in network.backbone.named_parameters()}
    loader = image_label_loader(num_samples=24)
    record = tmp_path / "head_warmup.json"
    warmup = HeadWarmupHandler(data_loader=loader, progress=False, record_file=record)
    importance = ImportanceEstimationHandler(budget=0.05, progress=False)
    trainer = make_trainer(network, loader, ADAMW, [warmup, importance])
    trainer.add_event_handler(Events.STARTED, lambda engine: engine.terminate())  # warm-up and estimation only
    trainer.run()

    reference = tiny_classifier(seed=0)
    features, labels = extract_features(reference, loader, "cpu", progress=False)
    fit = fit_probe(features, labels, num_classes=3)
    assert fit.C == warmup.fit.C
    with torch.no_grad():
        logits = network(torch.cat([b["image"] for b in loader])).numpy()
    np.testing.assert_allclose(logits, fit.logits(features), rtol=1e-3, atol=1e-3)
    assert all(torch.equal(p, backbone_before[n]) for n, p in network.backbone.named_parameters())
    # the estimation saw the warmed head: the same importance as estimated on the warmed network directly
    expected = estimate_importance(network, loader, torch.nn.CrossEntropyLoss(), num_iterations=len(loader))
    selected = importance.trainable_set
    assert selected == type(selected).from_importance(expected, 0.05, header=selected.header)
    assert record.is_file() and '"C"' in record.read_text()


def test_the_warmed_network_is_validated_as_epoch_0_and_is_the_checkpoint_to_beat(tmp_path: Path) -> None:
    network = tiny_classifier(seed=0)
    network.head.logit_scale.fill_(30.0)
    evaluator = _evaluator(network, tmp_path)
    warmup = HeadWarmupHandler(data_loader=image_label_loader(num_samples=24), validator=evaluator, progress=False)
    trainer = make_trainer(network, image_label_loader(num_samples=24), ADAMW, [warmup])
    checkpoints = []
    trainer.add_event_handler(Events.STARTED, lambda e: checkpoints.append(torch.load(tmp_path / "model.pt")))
    trainer.run()
    # the checkpoint on disk when training starts is the one the epoch-0 validation saved: the probe
    scale = float(network.head.logit_scale)
    saved_head = checkpoints[0]["head.linear.weight"]
    torch.testing.assert_close(saved_head, torch.as_tensor(warmup.fit.weight / scale, dtype=torch.float32))
    assert evaluator.state.best_metric_epoch in (0, 1)


def test_the_linear_probe_stops_after_the_fit_without_a_gradient_step(tmp_path: Path) -> None:
    network = tiny_classifier(seed=0)
    before = {n: p.detach().clone() for n, p in network.named_parameters()}
    evaluator = _evaluator(network, tmp_path)
    warmup = HeadWarmupHandler(validator=evaluator, terminate=True, progress=False)
    trainer = make_trainer(network, image_label_loader(num_samples=24), ADAMW, [warmup], max_epochs=3)
    trainer.run()
    assert trainer.state.iteration == 0
    assert evaluator.state.best_metric_epoch == 0 and (tmp_path / "model.pt").is_file()
    changed = {n for n, p in network.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"head.linear.weight", "head.linear.bias"}


def test_a_network_without_a_head_keeps_its_weights_and_gets_the_probe_record_only(tmp_path: Path) -> None:
    # FPT's head trains with its side network: the probe is fitted on the recipe's frozen backbone for the record
    network = build_fpt(TINY_TIMM, 3, None, image_size=28, side_image_size=14, tiny=True)
    before = {n: p.detach().clone() for n, p in network.state_dict().items()}
    loader = image_label_loader(num_samples=24)
    recipe = {"backbone": TINY_TIMM, "pretrained": None, "image_size": 28, "tiny": True, "num_classes": 3}
    record = tmp_path / "linear_probe.json"
    warmup = HeadWarmupHandler(data_loader=loader, progress=False, record_file=record, recipe=recipe)
    trainer = make_trainer(network, loader, ADAMW, [])
    torch.manual_seed(7)
    rng_before = torch.random.get_rng_state()
    warmup(trainer)  # what Events.STARTED calls

    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the training's random stream is untouched
    assert all(torch.equal(v, before[n]) for n, v in network.state_dict().items())
    torch.manual_seed(7)  # the same draws as the handler's forked stream: the same frozen copy
    reference = build_classifier(TINY_TIMM, 3, image_size=28, tiny=True)
    features, labels = extract_features(reference, loader, "cpu", progress=False)
    fit = fit_probe(features, labels, num_classes=3)
    assert fit.C == warmup.fit.C
    np.testing.assert_allclose(warmup.fit.weight, fit.weight, rtol=1e-5, atol=1e-6)
    saved = json.loads(record.read_text())
    assert saved["recipe"] == recipe and saved["num_images"] == 24 and "validation" not in saved


def test_none_and_skip_leave_the_head_alone_and_bad_settings_are_refused() -> None:
    for handler in (HeadWarmupHandler(mode="none"), HeadWarmupHandler(skip=True)):
        network = tiny_classifier(seed=0)
        head = network.head.linear.weight.detach().clone()
        trainer = make_trainer(network, image_label_loader(), ADAMW, [handler])
        trainer.add_event_handler(Events.STARTED, lambda engine: engine.terminate())
        trainer.run()
        assert torch.equal(network.head.linear.weight, head) and handler.fit is None
    with pytest.raises(ValueError, match="head_warmup must be one of"):
        HeadWarmupHandler(mode="sgd")
    with pytest.raises(ValueError, match="linear probe needs"):
        HeadWarmupHandler(mode="none", terminate=True)
