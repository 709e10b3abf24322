"""Ignite handler that trains only the entries of a sparse trainable set (SH-PEFT Eq. 2)."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import torch
from monai.engines.utils import IterationEvents
from monai.utils import min_version, optional_import

from monai_shpeft.sparse_set import SparseTrainableSet
from monai_shpeft.utils import unwrap

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
    from monai.engines import SupervisedTrainer
else:
    Engine, _ = optional_import("ignite.engine", "0.4.11", min_version, "Engine")

__all__ = ["GradientMaskHandler", "STATE_KEY"]

#: attribute of ``engine.state`` where the importance handler leaves the set for this handler
STATE_KEY = "sparse_trainable_set"

# optimisers whose update of an entry with an always-zero gradient and no weight decay is exactly zero
_ZERO_GRAD_SAFE = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)


class GradientMaskHandler:
    """Mask gradients after backward and before the optimizer step, so that only the set's entries change.

    On activation (before the first iteration), backbone parameters with no trainable entry get
    ``requires_grad=False``: autograd computes no gradient for them and the optimizer keeps no state for them.
    For the others, after every ``backward`` the gradient of non-selected entries is set to zero
    (``masked_fill``, so a NaN there cannot leak). Parameters outside the set's scope (the classification
    head) are left untouched and train fully.

    Weight decay and decoupled weight decay change a weight even when its gradient is zero. When the optimizer
    applies any (or is not one whose zero-gradient update is provably zero), the handler keeps a copy of the
    partially trainable tensors and writes the frozen entries back after each step, so that they stay
    bit-identical. ``restore_frozen`` forces this on or off.

    Args:
        trainable_set: the set, a path to a saved set, or ``None`` to take it from
            ``engine.state.sparse_trainable_set`` (put there by :class:`ImportanceEstimationHandler`).
        restore_frozen: ``None`` decides from the optimizer (see above); ``True``/``False`` force it.
        optimizer: optimizer to inspect for weight decay; defaults to ``engine.optimizer``.

    Example::

        trainer = SupervisedTrainer(..., train_handlers=[
            ImportanceEstimationHandler(budget=0.01, save_path="models/sparse_set.safetensors"),
            GradientMaskHandler(),
        ])
    """

    def __init__(
        self,
        trainable_set: SparseTrainableSet | str | os.PathLike | None = None,
        restore_frozen: bool | None = None,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        self.trainable_set = trainable_set
        self.restore_frozen = restore_frozen
        self.optimizer = optimizer
        self.logger = logging.getLogger(__name__)
        self._masks: dict[str, tuple[torch.nn.Parameter, torch.Tensor]] = {}
        self._references: dict[str, torch.Tensor] = {}
        self._active: SparseTrainableSet | None = None

    def attach(self, engine: Engine) -> None:
        """Register the handler with ``engine``.

        Args:
            engine: a MONAI ``SupervisedTrainer`` (it fires ``IterationEvents.BACKWARD_COMPLETED``).
        """
        engine.register_events(*IterationEvents)  # no-op on MONAI trainers, needed on bare ignite engines
        engine.add_event_handler(Events.STARTED, self._on_started)
        engine.add_event_handler(Events.ITERATION_STARTED, self._on_iteration_started)
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)
        engine.add_event_handler(IterationEvents.MODEL_COMPLETED, self.restore_frozen_entries)

    @property
    def active_set(self) -> SparseTrainableSet | None:
        """The set in use once the handler is active."""
        return self._active

    def _available_set(self, engine: Engine) -> SparseTrainableSet | str | os.PathLike | None:
        return self.trainable_set if self.trainable_set is not None else getattr(engine.state, STATE_KEY, None)

    def _on_started(self, engine: SupervisedTrainer) -> None:
        # the estimation handler may come later in the STARTED event; then activation waits for the first iteration
        trainable_set = self._available_set(engine)
        if trainable_set is not None:
            self.activate(engine, trainable_set)

    def _on_iteration_started(self, engine: SupervisedTrainer) -> None:
        if self._active is not None:
            return
        trainable_set = self._available_set(engine)
        if trainable_set is None:
            raise RuntimeError(
                "GradientMaskHandler has no sparse trainable set: pass one (or its file), or attach an "
                "ImportanceEstimationHandler to the same trainer."
            )
        self.activate(engine, trainable_set)

    def activate(self, engine: SupervisedTrainer, trainable_set: SparseTrainableSet | str | os.PathLike) -> None:
        """Apply ``trainable_set`` to the engine's network now.

        Args:
            engine: the trainer.
            trainable_set: the set or its file.

        Raises:
            SparseSetMismatchError: if the set does not fit the network.
        """
        source = ""
        if not isinstance(trainable_set, SparseTrainableSet):
            source = str(trainable_set)
            trainable_set = SparseTrainableSet.load(trainable_set)
        network = unwrap(engine.network)
        params = dict(network.named_parameters())
        trainable_set.check_compatible(params.items(), source=source)
        optimizer = self.optimizer or getattr(engine, "optimizer", None)
        restore = self.restore_frozen if self.restore_frozen is not None else _needs_restore(optimizer)
        self._masks.clear()
        self._references.clear()
        for name in trainable_set.frozen_names():
            params[name].requires_grad_(False)
            params[name].grad = None
        for name in trainable_set.trainable_names():
            param = params[name]
            param.requires_grad_(True)
            mask = trainable_set.mask(name, device=param.device)
            self._masks[name] = (param, ~mask)  # keep the frozen side: it is what the hot path uses
            if restore:
                self._references[name] = param.detach().clone()
        self._active = trainable_set
        setattr(engine.state, STATE_KEY, trainable_set)
        self.logger.info(
            "Gradient mask active: %d of %d backbone weights trainable (%.4f%%) in %d tensors; %d tensors frozen "
            "entirely; frozen entries restored after each step: %s.",
            trainable_set.num_selected,
            trainable_set.num_total,
            100 * trainable_set.ratio,
            len(trainable_set.trainable_names()),
            len(trainable_set.frozen_names()),
            restore,
        )

    def __call__(self, engine: Engine) -> None:
        """Zero the gradients of the frozen entries (runs after backward, before the optimizer step).

        Args:
            engine: the trainer.
        """
        if self._active is None:
            raise RuntimeError("GradientMaskHandler reached backward before it was activated.")
        with torch.no_grad():
            for param, frozen in self._masks.values():
                if param.grad is not None:
                    param.grad.masked_fill_(frozen, 0.0)

    @property
    def restores_frozen_entries(self) -> bool:
        """Whether frozen entries are written back after each step (the optimizer applies weight decay)."""
        return bool(self._references)

    def restore_frozen_entries(self, engine: Engine) -> None:
        """Write the frozen entries back after the optimizer step (runs on ``MODEL_COMPLETED``).

        Decoupled weight decay moves a weight even when its gradient is zero; this undoes it for frozen entries.

        Args:
            engine: the trainer.
        """
        if not self._references:
            return
        with torch.no_grad():
            for name, reference in self._references.items():
                param, frozen = self._masks[name]
                param.copy_(torch.where(frozen, reference, param))


def _needs_restore(optimizer: Any) -> bool:
    """Whether the optimizer can move an entry whose gradient is always zero."""
    if optimizer is None:
        return True
    if not isinstance(optimizer, _ZERO_GRAD_SAFE):
        return True
    return any(float(group.get("weight_decay", 0.0)) != 0.0 for group in optimizer.param_groups)
