"""Ignite handler that keeps the average of the trained weights over epochs (stochastic weight averaging)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from monai.utils import min_version, optional_import

from monai_shpeft.utils import unwrap

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", "0.4.11", min_version, "Engine")

__all__ = ["WeightAveragingHandler"]

logger = logging.getLogger(__name__)

# the attribute of the trainer's ``state`` that holds the record of the average (ignite's State takes new ones)
_RECORD_ATTRIBUTE = "weight_average"


class WeightAveragingHandler:
    """Average the trainable weights after every epoch; at the end, put the average in the network and validate it.

    A short run on a small validation part makes "the epoch with the best validation score" a noisy choice: on BUSI
    the average of the weights of epochs 1..E (Izmailov et al., "Averaging Weights Leads to Wider Optima and Better
    Generalization", UAI 2018) validated better than the best epoch when each rule was judged on data it had not
    selected on (``docs/benchmarks/checkpoint_selection.json``). Only parameters that train are averaged, so a
    sparse method's average differs from the pretrained weights in its sparse set only.

    Attach it to the trainer before a ``CheckpointSaver(save_final=True)``, which then saves the average. It keeps
    its running average in :meth:`state_dict`, so a resumed run (:class:`ResumeHandler` ``objects``) averages every
    epoch. The record is ``engine.state.weight_average``: the epochs averaged and the validation of the average.

    Args:
        network: the trained network.
        validator: an evaluator run once on the average at the end (its metrics go to the logs and TensorBoard as
            epoch ``max_epochs + 1``); ``None`` skips it.
        enabled: ``False`` makes the handler do nothing (the ``best`` checkpoint rule).
    """

    def __init__(self, network: torch.nn.Module, validator: Any | None = None, enabled: bool = True) -> None:
        self.network = network
        self.validator = validator
        self.enabled = bool(enabled)
        self.count = 0
        self.average: dict[str, torch.Tensor] = {}

    def attach(self, engine: Engine) -> None:
        """Update the average after every epoch and use it when training completes.

        Args:
            engine: the trainer.
        """
        if not self.enabled:
            return
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.update)
        engine.add_event_handler(Events.COMPLETED, self)

    def _trained(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in unwrap(self.network).named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, engine: Engine | None = None) -> None:
        """Add the current weights to the running average."""
        self.count += 1
        for name, parameter in self._trained().items():
            if name not in self.average:
                self.average[name] = parameter.detach().clone()
            else:
                self.average[name] += (parameter.detach() - self.average[name]) / self.count

    @torch.no_grad()
    def __call__(self, engine: Engine) -> None:
        """Copy the average into the network and validate it.

        Args:
            engine: the trainer, at ``COMPLETED``.
        """
        record: dict[str, Any] = {"epochs": self.count, "validation": None}
        if self.count == 0:  # stopped before the first epoch (the linear_probe method): the weights stay
            setattr(engine.state, _RECORD_ATTRIBUTE, record)
            return
        parameters = self._trained()
        for name, value in self.average.items():
            parameters[name].copy_(value)
        logger.info("Averaged the trained weights of %d epoch(s) (checkpoint_rule average).", self.count)
        if self.validator is not None:
            self.validator.run(int(engine.state.max_epochs or engine.state.epoch) + 1)
            record["validation"] = {k: float(v) for k, v in self.validator.state.metrics.items()}
        setattr(engine.state, _RECORD_ATTRIBUTE, record)

    def state_dict(self) -> dict[str, Any]:
        """The running average and the number of epochs in it."""
        return {"count": self.count, "average": {k: v.detach().cpu() for k, v in self.average.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (a resumed run)."""
        self.count = int(state["count"])
        parameters = self._trained()
        self.average = {k: v.to(parameters[k].device) if k in parameters else v for k, v in state["average"].items()}
