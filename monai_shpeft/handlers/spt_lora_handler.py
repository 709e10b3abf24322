"""Ignite handler that runs SPT-LoRA's sensitivity estimation and allocation when training starts."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
from monai.utils import min_version, optional_import

from monai_shpeft.distributed import is_main_process
from monai_shpeft.handlers.gradient_mask_handler import STATE_KEY
from monai_shpeft.handlers.importance_estimation_handler import check_estimation_batch_size
from monai_shpeft.handlers.trainer_access import calibration_loader, trainer_importance
from monai_shpeft.importance import ImportanceMode, ImportanceStrategy, unwrap
from monai_shpeft.methods import spt_lora
from monai_shpeft.sparse_set import SparseTrainableSet

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
    from monai.engines import SupervisedTrainer
else:
    Engine, _ = optional_import("ignite.engine", "0.4.11", min_version, "Engine")

__all__ = ["SPTLoRAHandler"]

#: name of the optimizer parameter group that holds the LoRA parameters
LORA_GROUP_NAME = "lora"
# per-parameter-group lists of torch's LR schedulers, extended when the LoRA group is added
_SCHEDULER_GROUP_LISTS = ("base_lrs", "_last_lr", "lr_lambdas", "min_lrs", "max_lrs", "base_momentums", "max_momentums")


class SPTLoRAHandler:
    """Estimate sensitivity, allocate SPT's budget and put LoRA into the trainer's network, on ``Events.STARTED``.

    With the trainer's network, loss function, ``prepare_batch`` and loader (or ``data_loader``), the handler

    1. accumulates squared gradients over ``num_iterations`` mini-batches (default: one epoch of the trainer), for the
       weights of the backbone's ``nn.Linear`` layers;
    2. selects the top ``budget`` of them and allocates LoRA or unstructured tuning per matrix
       (:func:`~monai_shpeft.methods.spt_lora.select_spt`);
    3. injects LoRA into ``engine.network`` (HF peft), moves the new parameters to the network's device and adds them
       to ``engine.optimizer`` as a parameter group named ``"lora"`` with the hyperparameters of the first group
       (LR schedulers attached to the trainer through a handler with an ``lr_scheduler`` attribute, such as MONAI's
       ``LrScheduleHandler``, or passed as ``lr_schedulers``, are extended to the new group);
    4. builds the :class:`~monai_shpeft.sparse_set.SparseTrainableSet` of the result, saves it to ``save_path``
       (atomically) and leaves it on ``engine.state.sparse_trainable_set``, where
       :class:`~monai_shpeft.handlers.GradientMaskHandler` picks it up.

    Attach it before ``GradientMaskHandler`` (the mask also activates lazily on the first iteration, so the order
    within ``Events.STARTED`` does not matter), and before any checkpoint loader (the checkpoint holds the LoRA
    parameters, which exist only once this handler ran). ``DistributedDataParallel`` is not supported: it fixes its
    parameters when it wraps the network.

    Args:
        budget: sensitive entries, as a ratio of the backbone's linear weights (0.01 = 1%) or an absolute count.
        rank: LoRA rank ``r``; a matrix gets LoRA when it holds at least ``r * (in + out)`` sensitive entries.
        alpha: LoRA ``alpha`` (the update is scaled by ``alpha / r``).
        num_iterations: mini-batches of the calibration pass; ``None`` is one epoch of the loader.
        data_loader: calibration batches; ``None`` uses the trainer's loader.
        save_path: where to save the set (``.safetensors``); ``None`` keeps it in memory only.
        progress: show a progress bar over the calibration batches.
        lr_schedulers: schedulers of ``engine.optimizer`` to extend to the LoRA group, besides those found on the
            trainer's handlers.
        estimation_batch_size: images per forward/backward pass of the sensitivity estimation (see
            :class:`~monai_shpeft.handlers.ImportanceEstimationHandler`); ``None``: whole mini-batches.
    """

    def __init__(
        self,
        budget: float | int = 0.01,
        rank: int = 8,
        alpha: float = 8.0,
        num_iterations: int | None = None,
        data_loader: Iterable[Any] | None = None,
        save_path: str | os.PathLike | None = None,
        progress: bool = True,
        lr_schedulers: Sequence[Any] = (),
        estimation_batch_size: int | None = None,
    ) -> None:
        self.estimation_batch_size = check_estimation_batch_size(estimation_batch_size)
        if isinstance(rank, bool) or int(rank) < 1:
            raise ValueError(f"rank must be a positive integer, got {rank!r}.")
        self.budget = budget
        self.rank = int(rank)
        self.alpha = float(alpha)
        self.num_iterations = num_iterations
        self.data_loader = data_loader
        self.save_path = Path(save_path) if save_path else None
        self.progress = progress
        self.lr_schedulers = list(lr_schedulers)
        self.logger = logging.getLogger(__name__)
        self.selection: spt_lora.SPTSelection | None = None
        self.trainable_set: SparseTrainableSet | None = None
        self.elapsed_seconds: float | None = None

    def attach(self, engine: Engine) -> None:
        """Register the handler on ``Events.STARTED`` of ``engine``.

        Args:
            engine: a MONAI ``SupervisedTrainer``.
        """
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: SupervisedTrainer) -> None:
        """Estimate, allocate, inject LoRA, extend the optimizer and hand the set to the gradient mask.

        Args:
            engine: the trainer.

        Under ``DistributedDataParallel`` the sensitivity is summed over ranks (so every rank allocates the same
        LoRA modules), and the network is wrapped again once LoRA is in: DDP fixes its parameters when it wraps.

        Raises:
            RuntimeError: when the trainer has no optimizer, or the handler already ran on this network.
        """
        optimizer = getattr(engine, "optimizer", None)
        if optimizer is None:
            raise RuntimeError("SPTLoRAHandler needs the trainer's optimizer to add the LoRA parameters to.")
        network = unwrap(engine.network)
        if any(".lora_A." in name for name, _ in network.named_parameters()):
            raise RuntimeError(
                "SPTLoRAHandler found LoRA already in the network; it allocates on a network without adapters "
                "(use monai_shpeft.methods.spt_lora.apply_from_file to rebuild a saved allocation)."
            )
        start = time.perf_counter()
        selection, iterations = self.estimate(engine)
        device = _device_of(network)
        before = {id(p) for p in network.parameters()}
        spt_lora.apply(network, selection.lora_modules, rank=self.rank, alpha=self.alpha)
        new_params = [p for p in network.parameters() if id(p) not in before]
        with torch.no_grad():
            for param in new_params:
                if param.device != device:
                    param.data = param.data.to(device)
        self._extend_optimizer(engine, optimizer, new_params)
        header = {
            "backbone": getattr(network, "backbone_name", type(network).__name__),
            "strategy": ImportanceStrategy.L2.value,
            "mode": ImportanceMode.TASK_SPECIFIC.value,
            "alpha": self.alpha,
            "estimation_iterations": iterations,
        }
        trainable_set = spt_lora.build_trainable_set(network, selection, header)
        # requires_grad as the set trains (GradientMaskHandler does the same when it activates)
        params = dict(network.named_parameters())
        for name, entries in trainable_set.indices.items():
            params[name].requires_grad_(entries.numel() > 0)
        if isinstance(engine.network, nn.parallel.DistributedDataParallel):
            engine.network = _rewrapped(engine.network)
        if self.save_path is not None and is_main_process():
            trainable_set.save(self.save_path)
            self.logger.info("Saved the SPT-LoRA trainable set to %s.", self.save_path)
        self.selection, self.trainable_set = selection, trainable_set
        self.elapsed_seconds = time.perf_counter() - start
        self.logger.info(
            "SPT-LoRA in %.1f s: %d sensitive of %d linear weights (budget %s); LoRA (r=%d, alpha=%g) on %d matrices "
            "(%d parameters), %d entries of %d other matrices tuned unstructured; %d backbone parameters train "
            "(fingerprint %s).\n%s",
            self.elapsed_seconds,
            selection.num_sensitive,
            selection.num_candidates,
            self.budget,
            self.rank,
            self.alpha,
            len(selection.lora_modules),
            selection.num_lora_parameters,
            selection.num_unstructured,
            len(selection.sparse),
            trainable_set.num_selected,
            trainable_set.fingerprint(),
            trainable_set.summary(),
        )
        setattr(engine.state, STATE_KEY, trainable_set)

    def estimate(self, engine: SupervisedTrainer) -> tuple[spt_lora.SPTSelection, int | None]:
        """Accumulate the sensitivity of the backbone's linear weights and allocate the budget.

        Args:
            engine: the trainer; its network is left unchanged.

        Returns:
            the allocation, and the number of calibration mini-batches asked for (``None``: one pass).
        """
        network = unwrap(engine.network)
        loader, num_iterations = calibration_loader(engine, self.data_loader, self.num_iterations)
        self.logger.info(
            "Estimating SPT sensitivity (squared gradients) over %s mini-batches; budget=%s rank=%d.",
            num_iterations if num_iterations is not None else "one epoch of",
            self.budget,
            self.rank,
        )
        importance = trainer_importance(
            engine,
            loader,
            num_iterations,
            strategy=ImportanceStrategy.L2,
            mode=ImportanceMode.TASK_SPECIFIC,
            scope="backbone",
            progress=self.progress,
            micro_batch_size=self.estimation_batch_size,
        )
        candidates = spt_lora.linear_weight_names(network)
        if not candidates:
            raise ValueError(f"SPT-LoRA: the backbone of {type(network).__name__} has no nn.Linear layer.")
        capable = set(spt_lora.linear_weight_names(network, lora_capable_only=True))
        selection = spt_lora.select_spt(
            {n: importance[n] for n in candidates}, self.budget, self.rank, lora_capable=capable
        )
        return selection, num_iterations

    def _extend_optimizer(
        self, engine: SupervisedTrainer, optimizer: torch.optim.Optimizer, params: list[nn.Parameter]
    ) -> None:
        """Add the LoRA parameters as a group with the first group's hyperparameters; extend LR schedulers."""
        if not params:
            return
        source = optimizer.param_groups[0]
        before = len(optimizer.param_groups)
        group = {k: v for k, v in source.items() if k not in ("params", "name")}
        optimizer.add_param_group({**group, "params": params, "name": LORA_GROUP_NAME})
        schedulers = {id(s): s for s in self.lr_schedulers}
        schedulers.update({id(s): s for s in _attached_schedulers(engine, optimizer)})
        for scheduler in schedulers.values():
            _extend_scheduler(scheduler, before)
        self.logger.info(
            "Added %d LoRA tensors (%d parameters) to the optimizer as group '%s' (lr=%s, weight_decay=%s); extended "
            "%d LR scheduler(s).",
            len(params),
            sum(p.numel() for p in params),
            LORA_GROUP_NAME,
            group.get("lr"),
            group.get("weight_decay"),
            len(schedulers),
        )


def _rewrapped(ddp: nn.parallel.DistributedDataParallel) -> nn.parallel.DistributedDataParallel:
    """A new DDP over the same module, so that it registers the LoRA parameters (every rank calls this at STARTED).

    Its construction broadcasts rank 0's parameters, so the randomly initialised LoRA factors agree on every rank.
    The old wrapper (still held by the validation evaluator) only runs forward passes without gradients.
    """
    return nn.parallel.DistributedDataParallel(
        ddp.module,
        device_ids=ddp.device_ids,
        output_device=ddp.output_device,
        broadcast_buffers=ddp.broadcast_buffers,
        find_unused_parameters=ddp.find_unused_parameters,
    )


def _device_of(network: nn.Module) -> torch.device:
    first = next(network.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _attached_schedulers(engine: Engine, optimizer: torch.optim.Optimizer) -> list[Any]:
    """LR schedulers of ``optimizer`` held by handlers of ``engine`` (e.g. MONAI's ``LrScheduleHandler``)."""
    found = []
    for entries in getattr(engine, "_event_handlers", {}).values():
        for entry in entries:
            handler = entry[0]
            owner = getattr(handler, "__self__", handler)  # bound methods: the handler object
            scheduler = getattr(owner, "lr_scheduler", None)
            if scheduler is not None and getattr(scheduler, "optimizer", None) is optimizer:
                found.append(scheduler)
    return found


def _extend_scheduler(scheduler: Any, num_groups: int) -> None:
    """Give a new parameter group (appended after ``num_groups``) the schedule of the first group."""
    for attribute in _SCHEDULER_GROUP_LISTS:
        values = getattr(scheduler, attribute, None)
        if isinstance(values, list) and len(values) == num_groups:
            values.append(values[0])
    for inner in getattr(scheduler, "_schedulers", None) or []:  # SequentialLR, ChainedScheduler
        _extend_scheduler(inner, num_groups)
