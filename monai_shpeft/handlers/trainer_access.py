"""What several handlers read from the MONAI trainer they are attached to, written once.

The importance-style handlers (SH-PEFT and GPS importance, SPT sensitivity) and the head warm-up all run a pass of
their own over a loader with the trainer's network, loss, batch preparation, device and precision.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from monai.utils import min_version, optional_import

from monai_shpeft.importance import ImportanceMode, ImportanceStrategy, estimate_importance
from monai_shpeft.metrics import labels_of, probabilities_and_labels
from monai_shpeft.utils import unwrap

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
    from monai.engines import SupervisedEvaluator, SupervisedTrainer, Workflow
else:
    Engine, _ = optional_import("ignite.engine", "0.4.11", min_version, "Engine")

__all__ = [
    "EvaluatorOutputs",
    "calibration_loader",
    "engine_outputs",
    "engine_prepare_batch",
    "trainer_autocast_dtype",
    "trainer_importance",
]


def engine_prepare_batch(engine: Workflow) -> Any:
    """The trainer's ``prepare_batch`` bound to its ``non_blocking`` and ``to_kwargs`` settings."""
    prepare = engine.prepare_batch
    to_kwargs = getattr(engine, "to_kwargs", {}) or {}

    def prepare_for_estimation(batch: Any, device: Any, non_blocking: bool = False) -> Any:
        return prepare(batch, device, getattr(engine, "non_blocking", non_blocking), **to_kwargs)

    return prepare_for_estimation


def engine_outputs(
    engine: SupervisedTrainer | SupervisedEvaluator, data_loader: Iterable
) -> tuple[np.ndarray, np.ndarray]:
    """``(outputs [N, C], labels [N])`` of an engine's network on a loader, as the engine would compute them.

    The engine's batch preparation (FPT's low-resolution image included) and inferer (its precision and temperature),
    on the unwrapped network (only this process runs the pass, so not through DDP), in evaluation mode and without
    gradients; the network's mode is restored afterwards.

    Args:
        engine: a MONAI trainer or evaluator.
        data_loader: the cases, unshuffled.

    Returns:
        float32 outputs (logits) and integer labels, in the loader's order; empty arrays without cases.
    """
    network = unwrap(engine.network)
    prepare = engine_prepare_batch(engine)
    outputs: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad():
            for batch in data_loader:
                prepared = prepare(batch, engine.state.device, False)
                inputs, targets = prepared[0], prepared[1]
                args, kwargs = (prepared[2], prepared[3]) if len(prepared) == 4 else ((), {})
                logits = engine.inferer(inputs, network, *args, **kwargs)
                outputs.append(torch.as_tensor(logits).float().cpu().numpy())
                labels.append(labels_of({"label": targets}).cpu().numpy())
    finally:
        network.train(was_training)
    if not outputs:
        return np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=np.int64)
    return np.concatenate(outputs), np.concatenate(labels)


def trainer_autocast_dtype(engine: Engine) -> torch.dtype | None:
    """The autocast dtype of the trainer's inferer (the bundles' CPU bfloat16), ``None`` without one."""
    return getattr(getattr(engine, "inferer", None), "autocast_dtype", None)


def calibration_loader(
    engine: Workflow, data_loader: Iterable | None, num_iterations: int | None
) -> tuple[Iterable, int | None]:
    """The loader a handler's own pass reads, and how many mini-batches it takes.

    Args:
        engine: the trainer.
        data_loader: the handler's own loader; ``None``: the trainer's.
        num_iterations: mini-batches asked for; ``None`` with the trainer's loader: one epoch of the trainer, even
            for an endless loader; ``None`` with the handler's loader: one pass over it.

    Returns:
        the loader and the number of mini-batches (``None``: one pass).
    """
    if data_loader is not None:
        return data_loader, num_iterations
    return engine.data_loader, num_iterations if num_iterations is not None else engine.state.epoch_length


def trainer_importance(
    engine: SupervisedTrainer,
    data_loader: Iterable,
    num_iterations: int | None,
    strategy: ImportanceStrategy,
    mode: ImportanceMode,
    scope: str | None,
    lambda_: float = 1.0,
    progress: bool = True,
    micro_batch_size: int | None = None,
) -> dict[str, torch.Tensor]:
    """The importance of the trainer's network, with the trainer's loss, batch preparation, device and precision.

    :func:`~monai_shpeft.importance.estimate_importance` run as the trainer would run a step.

    Args:
        engine: the trainer.
        data_loader: the calibration loader (see :func:`calibration_loader`).
        num_iterations: mini-batches to use (``None``: one pass).
        strategy: ``l1`` or ``l2`` terms.
        mode: hybrid, task-specific or task-agnostic.
        scope: the submodule whose parameters are scored.
        lambda_: the task-agnostic weight.
        progress: show a progress bar.
        micro_batch_size: images per forward/backward pass of the estimation (``None``: whole mini-batches).

    Returns:
        importance per parameter name.
    """
    return estimate_importance(
        unwrap(engine.network),
        data_loader,
        engine.loss_function,
        strategy=strategy,
        lambda_=lambda_,
        mode=mode,
        num_iterations=num_iterations,
        scope=scope,
        prepare_batch=engine_prepare_batch(engine),
        device=engine.state.device,
        amp=bool(getattr(engine, "amp", False)),
        autocast_dtype=trainer_autocast_dtype(engine),
        progress=progress,
        micro_batch_size=micro_batch_size,
    )


class EvaluatorOutputs:
    """The class probabilities and labels of every case an evaluator's run saw, in its order.

    Attach it to an evaluator whose outputs are not decollated (``decollate=False``, as the bundles' are); the
    lists restart with every run.
    """

    def __init__(self) -> None:
        self._probabilities: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []

    def attach(self, engine: Engine) -> None:
        """Clear on ``STARTED`` and gather on every ``ITERATION_COMPLETED`` of ``engine``.

        Args:
            engine: the evaluator.
        """
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._gather)

    def _reset(self, engine: Engine) -> None:
        self._probabilities, self._labels = [], []

    def _gather(self, engine: Engine) -> None:
        probabilities, labels = probabilities_and_labels(cast(Mapping[str, Any], engine.state.output))
        self._probabilities.append(probabilities.detach().cpu().numpy())
        self._labels.append(labels.detach().cpu().numpy())

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(probabilities [N, C], labels [N])`` gathered so far.

        Raises:
            RuntimeError: when the evaluator produced no output.
        """
        if not self._labels:
            raise RuntimeError("the evaluator produced no output to report on (an empty test part?).")
        return np.concatenate(self._probabilities), np.concatenate(self._labels)
