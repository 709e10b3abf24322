"""WeightAveragingHandler in a real MONAI trainer: the network ends as the mean of its epoch weights."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from ignite.metrics import Accuracy
from monai.engines import SupervisedEvaluator
from monai.handlers import from_engine

from monai_shpeft.errors import SettingsError
from monai_shpeft.handlers import WeightAveragingHandler
from monai_shpeft.methods import resolve_checkpoint_rule
from tests.helpers import image_label_loader, make_trainer, tiny_classifier


def _frozen_backbone_classifier() -> torch.nn.Module:
    network = tiny_classifier()
    for parameter in network.backbone.parameters():  # only the head trains, as in a linear baseline
        parameter.requires_grad_(False)
    network.backbone.norm.weight.requires_grad_(True)  # and one backbone tensor, as a sparse method's
    return network


def _snapshots_and_trainer(handler_enabled: bool, epochs: int = 3):
    network = _frozen_backbone_classifier()
    loader = image_label_loader()
    validator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=loader,
        network=network,
        key_val_metric={"accuracy": Accuracy(output_transform=from_engine(["pred", "label"]))},
        postprocessing=lambda data: data,
    )
    handler = WeightAveragingHandler(network, validator=validator, enabled=handler_enabled)
    trainer = make_trainer(
        network, loader, lambda p: torch.optim.SGD([q for q in p if q.requires_grad], lr=0.5), [handler], epochs
    )
    snapshots: list[dict[str, torch.Tensor]] = []
    trainer.add_event_handler(
        Events.EPOCH_COMPLETED,
        lambda _: snapshots.append({n: p.detach().clone() for n, p in network.named_parameters()}),
    )
    return network, trainer, snapshots, validator


def test_the_network_ends_as_the_mean_of_its_epoch_weights_and_is_validated_once_more() -> None:
    network, trainer, snapshots, validator = _snapshots_and_trainer(handler_enabled=True)
    before = {n: p.detach().clone() for n, p in network.named_parameters()}
    trainer.run()
    assert len(snapshots) == 3
    for name, parameter in network.named_parameters():
        mean = torch.stack([s[name] for s in snapshots]).mean(0)
        torch.testing.assert_close(parameter.detach(), mean)
        if not parameter.requires_grad:  # frozen weights are not touched
            torch.testing.assert_close(parameter.detach(), before[name])
    assert not torch.allclose(snapshots[0]["head.linear.weight"], snapshots[-1]["head.linear.weight"])
    assert trainer.state.weight_average["epochs"] == 3
    assert validator.state.epoch == 4  # the average is validated as epoch max_epochs + 1
    assert set(trainer.state.weight_average["validation"]) == {"accuracy"}


def test_disabled_keeps_the_last_epoch_weights() -> None:
    network, trainer, snapshots, _ = _snapshots_and_trainer(handler_enabled=False)
    trainer.run()
    for name, parameter in network.named_parameters():
        torch.testing.assert_close(parameter.detach(), snapshots[-1][name])
    assert not hasattr(trainer.state, "weight_average")


def test_the_state_dict_carries_the_running_average_across_a_restart() -> None:
    network = _frozen_backbone_classifier()
    first = WeightAveragingHandler(network)
    first.update()
    with torch.no_grad():
        network.head.linear.weight.add_(1.0)
    first.update()
    second = WeightAveragingHandler(network)
    second.load_state_dict(first.state_dict())
    with torch.no_grad():
        network.head.linear.weight.add_(1.0)
    second.update()  # the third epoch after the restart: mean of w, w + 1, w + 2 = w + 1
    torch.testing.assert_close(second.average["head.linear.weight"], network.head.linear.weight.detach() - 1.0)
    assert second.count == 3


def test_the_checkpoint_rule_defaults_per_method_and_refuses_unknown_rules() -> None:
    assert resolve_checkpoint_rule("shpeft") == "average" and resolve_checkpoint_rule("gps") == "average"
    assert resolve_checkpoint_rule("full") == "best" and resolve_checkpoint_rule("fpt") == "best"
    assert resolve_checkpoint_rule("shpeft", "best") == "best"
    with pytest.raises(SettingsError, match="checkpoint_rule must be one of"):
        resolve_checkpoint_rule("shpeft", "swa")
