"""Ignite handler that trains only the entries of a sparse trainable set (SH-PEFT Eq. 2)."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import torch
from monai.engines.utils import IterationEvents
from monai.utils import min_version, optional_import

from monai_shpeft.sparse_set import CompactSparseUpdate, SparseTrainableSet
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
    """Train only the set's entries of the backbone (the head, outside the set's scope, trains fully).

    On activation (before the first iteration), backbone parameters with no trainable entry get
    ``requires_grad=False``: autograd computes no gradient for them and the optimizer keeps no state for them.
    The partly trainable ones are handled in one of two ways:

    * ``compact`` (the default on a single process): a :class:`~monai_shpeft.sparse_set.CompactSparseUpdate`
      hands the optimizer one vector of the selected entries per tensor in place of the dense tensor, gathers the
      selected entries of each dense gradient as soon as backward produces it (and drops the dense gradient), and
      writes the updated entries back after each optimizer step. Optimizer state and gradients exist only for the
      selected entries; frozen entries are never written, so they stay bit-identical without any copy.
    * dense (``compact=False``, and always under ``DistributedDataParallel``, whose reducer all-reduces the dense
      gradients): after every ``backward`` the gradient of non-selected entries is set to zero (``masked_fill``, so
      a NaN there cannot leak). Weight decay and decoupled weight decay change a weight even when its gradient is
      zero: when the optimizer applies any (or is not one whose zero-gradient update is provably zero), the handler
      keeps a copy of the partly trainable tensors and writes the frozen entries back after each step.
      ``restore_frozen`` forces this on or off.

    Both give the same trained weights (tested bit for bit on SGD and AdamW); the network's parameters and state dict
    are the same either way. In compact mode the optimizer's state dict holds the compact state (a resume checkpoint
    stores it); when the run completes the hooks are removed and the optimizer gets its dense tensors back, without
    state.

    Args:
        trainable_set: the set, a path to a saved set, or ``None`` to take it from
            ``engine.state.sparse_trainable_set`` (put there by :class:`ImportanceEstimationHandler`).
        restore_frozen: dense mode only: ``None`` decides from the optimizer (see above); ``True``/``False`` force it.
        optimizer: the optimizer to adapt (compact) or inspect for weight decay (dense); defaults to
            ``engine.optimizer``.
        compact: ``None`` (default): compact unless the network is wrapped for data parallelism; ``True``/``False``
            force the choice (``True`` with a data-parallel wrapper is refused).

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
        compact: bool | None = None,
    ) -> None:
        self.trainable_set = trainable_set
        self.restore_frozen = restore_frozen
        self.optimizer = optimizer
        self.compact = compact
        self._compact_update: CompactSparseUpdate | None = None
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
        engine.add_event_handler(Events.COMPLETED, self._on_completed)

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
            if self._compact_update is not None:
                self._compact_update.pull()  # take up whatever changed the weights since the last step
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
        compact = self._use_compact(engine)
        restore = self.restore_frozen if self.restore_frozen is not None else _needs_restore(optimizer)
        restore = restore and not compact
        self._release()
        for name in trainable_set.frozen_names():
            params[name].requires_grad_(False)
            params[name].grad = None
        for name in trainable_set.trainable_names():
            param = params[name]
            param.requires_grad_(True)
            if compact:
                continue
            mask = trainable_set.mask(name, device=param.device)
            self._masks[name] = (param, ~mask)  # keep the frozen side: it is what the hot path uses
            if restore:
                self._references[name] = param.detach().clone()
        if compact:
            self._compact_update = CompactSparseUpdate(params, trainable_set, optimizer)
        self._active = trainable_set
        setattr(engine.state, STATE_KEY, trainable_set)
        self.logger.info(
            "Gradient mask active: %d of %d backbone weights trainable (%.4f%%) in %d tensors; %d tensors frozen "
            "entirely; update: %s.",
            trainable_set.num_selected,
            trainable_set.num_total,
            100 * trainable_set.ratio,
            len(trainable_set.trainable_names()),
            len(trainable_set.frozen_names()),
            "compact (optimizer state and gradients for the selected entries only)"
            if compact
            else f"dense gradients masked, frozen entries restored after each step: {restore}",
        )

    def _use_compact(self, engine: Engine) -> bool:
        data_parallel = isinstance(
            getattr(engine, "network", None), (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)
        )
        if self.compact is None:
            return not data_parallel
        if self.compact and data_parallel:
            raise ValueError(
                "GradientMaskHandler(compact=True) cannot train a data-parallel network: its reducer all-reduces "
                "the dense gradients that the compact update drops. Use compact=None or False."
            )
        return self.compact

    @property
    def compact_update(self) -> CompactSparseUpdate | None:
        """The compact update in use, or ``None`` in dense mode or before activation."""
        return self._compact_update

    def _release(self) -> None:
        self._masks.clear()
        self._references.clear()
        if self._compact_update is not None:
            self._compact_update.remove()
            self._compact_update = None

    def _on_completed(self, engine: Engine) -> None:
        # the weights already hold the last step's values; left in place, the gradient hooks would divert any later
        # backward pass on this network (another estimation, a notebook experiment)
        if self._compact_update is not None:
            self._compact_update.remove()
            self._compact_update = None

    def __call__(self, engine: Engine) -> None:
        """Zero the gradients of the frozen entries (runs after backward, before the optimizer step).

        Args:
            engine: the trainer.
        """
        if self._active is None:
            raise RuntimeError("GradientMaskHandler reached backward before it was activated.")
        if self._compact_update is not None:
            return  # the gradient hooks already kept the selected entries only
        with torch.no_grad():
            for param, frozen in self._masks.values():
                if param.grad is not None:
                    param.grad.masked_fill_(frozen, 0.0)

    @property
    def restores_frozen_entries(self) -> bool:
        """Whether frozen entries are written back after each step (the optimizer applies weight decay)."""
        return bool(self._references)

    def restore_frozen_entries(self, engine: Engine) -> None:
        """After the optimizer step (``MODEL_COMPLETED``): write the trained values in, or the frozen entries back.

        Compact mode scatters the updated values into the dense weights. Dense mode undoes decoupled weight decay,
        which moves a weight even when its gradient is zero, on the frozen entries.

        Args:
            engine: the trainer.
        """
        if self._compact_update is not None:
            self._compact_update.push()
            return
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
