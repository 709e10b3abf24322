"""Ignite handler that estimates SH-PEFT importance before training and builds the sparse trainable set.

With ``method="gps"`` (``strategy="l1"``, ``mode="task_specific"``, ``selection="per_neuron"``) it selects GPS's set
instead: see :mod:`monai_shpeft.methods.gps`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monai.utils import min_version, optional_import

from monai_shpeft.distributed import is_main_process
from monai_shpeft.errors import SettingsError
from monai_shpeft.handlers.gradient_mask_handler import STATE_KEY
from monai_shpeft.handlers.trainer_access import calibration_loader, trainer_importance
from monai_shpeft.importance import ImportanceMode, ImportanceStrategy, scoped_parameters, unwrap
from monai_shpeft.methods import gps
from monai_shpeft.sparse_set import SparseTrainableSet

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
    from monai.engines import SupervisedTrainer
else:
    Engine, _ = optional_import("ignite.engine", "0.4.11", min_version, "Engine")

__all__ = ["SELECTIONS", "ImportanceEstimationHandler", "check_estimation_batch_size"]

#: how the set is chosen from the importance: the top ``budget`` over the whole scope (SH-PEFT), or the same number
#: of top entries in every row of every weight matrix (GPS)
SELECTIONS = ("global", "per_neuron")


def check_estimation_batch_size(value: Any) -> int | None:
    """The ``estimation_batch_size`` knob as an int, or ``None``.

    Raises:
        SettingsError: naming the knob, when the value is not a positive integer or null.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SettingsError(
            f"estimation_batch_size must be a positive integer (images per importance forward/backward pass) or "
            f"null for whole mini-batches; got {value!r}."
        )
    return value


class ImportanceEstimationHandler:
    """Run hybrid importance estimation when training starts and select the top ``budget`` weights.

    The estimation uses the trainer's own network, loss function and ``prepare_batch``, over ``data_loader``
    (default: the trainer's loader) for ``num_iterations`` mini-batches (default: one epoch, as in the paper).
    The resulting :class:`~monai_shpeft.sparse_set.SparseTrainableSet` is saved to ``save_path`` (atomically)
    and left on ``engine.state.sparse_trainable_set``, where :class:`GradientMaskHandler` picks it up.

    Args:
        budget: trainable entries, as a ratio of the backbone (0.01 = 1%) or an absolute count.
        strategy: ``"l2"`` (default) or ``"l1"``.
        lambda_: weight of the balanced task-agnostic term (default 1.0).
        mode: ``"hybrid"`` (default), ``"task_specific"`` or ``"task_agnostic"``.
        data_loader: batches for the task-specific term; ``None`` uses the trainer's loader.
        num_iterations: mini-batches to accumulate; ``None`` is one epoch of the loader.
        scope: submodule of the network whose weights are ranked (the head is outside it and trains fully).
        save_path: where to save the set (``.safetensors``); ``None`` keeps it in memory only.
        load_path: an existing set to use instead of estimating (checked against the network).
        reuse_saved: when ``save_path`` already holds a set (e.g. a resumed run), load it instead of estimating.
        backbone_name: recorded in the set's header; defaults to the network's ``backbone_name`` attribute.
        progress: show a progress bar over the estimation batches.
        selection: ``"global"`` (default, SH-PEFT): the top ``budget`` entries over the whole scope;
            ``"per_neuron"`` (GPS): the top ``K`` entries of every row of every weight matrix of the scope
            (:func:`~monai_shpeft.methods.gps.neuron_weight_names`), ``K`` chosen so that the total is about
            ``budget`` (:meth:`~monai_shpeft.sparse_set.SparseTrainableSet.from_importance_per_row`).
        method: the bundle's ``method`` knob. ``"gps"`` applies GPS's recipe (:data:`monai_shpeft.methods.gps.RECIPE`:
            ``strategy="l1"``, ``mode="task_specific"``, ``selection="per_neuron"``) in place of those three
            arguments and records ``method`` in the set's header; any other value, or ``None``, leaves them as given.
            (A bundle cannot choose the mode with an expression on ``@importance_mode``: MONAI's config parser takes
            any expression containing the word "import" for an import statement.)
        estimation_batch_size: images per forward/backward pass of the estimation; each mini-batch is split into
            parts of this size whose gradients add up before they enter the importance, so the result is the same
            and the activations shrink. ``None`` (default): whole mini-batches.

    Raises:
        SettingsError: for a ``selection`` not in :data:`SELECTIONS`, or an ``estimation_batch_size`` that is not a
            positive integer.
    """

    def __init__(
        self,
        budget: float | int = 0.01,
        strategy: ImportanceStrategy | str = ImportanceStrategy.L2,
        lambda_: float = 1.0,
        mode: ImportanceMode | str = ImportanceMode.HYBRID,
        data_loader: Iterable[Any] | None = None,
        num_iterations: int | None = None,
        scope: str | None = "backbone",
        save_path: str | os.PathLike | None = None,
        load_path: str | os.PathLike | None = None,
        reuse_saved: bool = False,
        backbone_name: str | None = None,
        progress: bool = True,
        selection: str = "global",
        method: str | None = None,
        estimation_batch_size: int | None = None,
    ) -> None:
        self.method = method
        self.estimation_batch_size = check_estimation_batch_size(estimation_batch_size)
        if method == gps.METHOD_NAME:
            strategy, mode, selection = gps.RECIPE["strategy"], gps.RECIPE["mode"], gps.RECIPE["selection"]
        if selection not in SELECTIONS:
            raise SettingsError(f"selection must be one of {', '.join(SELECTIONS)}; got {selection!r}.")
        self.budget = budget
        self.strategy = ImportanceStrategy(strategy)
        self.lambda_ = float(lambda_)
        self.mode = ImportanceMode(mode)
        self.data_loader = data_loader
        self.num_iterations = num_iterations
        self.scope = scope
        self.save_path = Path(save_path) if save_path else None
        self.load_path = Path(load_path) if load_path else None
        self.reuse_saved = reuse_saved
        self.backbone_name = backbone_name
        self.progress = progress
        self.selection = selection
        self.logger = logging.getLogger(__name__)
        self.trainable_set: SparseTrainableSet | None = None
        self.elapsed_seconds: float | None = None

    def attach(self, engine: Engine) -> None:
        """Register the estimation on ``Events.STARTED`` of ``engine``.

        Args:
            engine: a MONAI ``SupervisedTrainer``.
        """
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: SupervisedTrainer) -> None:
        """Estimate (or load) the sparse trainable set and hand it to the gradient mask.

        Args:
            engine: the trainer.
        """
        network = unwrap(engine.network)
        existing = self.load_path
        if existing is None and self.reuse_saved and self.save_path is not None and self.save_path.is_file():
            existing = self.save_path
        if existing is not None:
            trainable_set = SparseTrainableSet.load(existing)
            trainable_set.check_compatible(network.named_parameters(), source=str(existing))
            self.logger.info("Loaded sparse trainable set from %s (%d weights).", existing, trainable_set.num_selected)
        else:
            trainable_set = self.estimate(engine)
            if self.save_path is not None and is_main_process():
                trainable_set.save(self.save_path)
                self.logger.info("Saved sparse trainable set to %s.", self.save_path)
        self.trainable_set = trainable_set
        # logged on every rank of a distributed run: equal fingerprints prove every rank trains the same entries
        self.logger.info(
            "Sparse trainable set fingerprint %s (%d weights).", trainable_set.fingerprint(), trainable_set.num_selected
        )
        setattr(engine.state, STATE_KEY, trainable_set)

    def estimate(self, engine: SupervisedTrainer) -> SparseTrainableSet:
        """Run the estimation with the trainer's components and select the set.

        Args:
            engine: the trainer.

        Returns:
            the new sparse trainable set.
        """
        network = unwrap(engine.network)
        loader, num_iterations = calibration_loader(engine, self.data_loader, self.num_iterations)
        self.logger.info(
            "Estimating SH-PEFT importance: strategy=%s mode=%s lambda=%g budget=%s selection=%s over %s mini-batches.",
            self.strategy.value,
            self.mode.value,
            self.lambda_,
            self.budget,
            self.selection,
            num_iterations if num_iterations is not None else "one epoch of",
        )
        start = time.perf_counter()
        importance = trainer_importance(
            engine,
            loader,
            num_iterations,
            strategy=self.strategy,
            mode=self.mode,
            scope=self.scope,
            lambda_=self.lambda_,
            progress=self.progress,
            micro_batch_size=self.estimation_batch_size,
        )
        header = {
            "backbone": self.backbone_name or getattr(network, "backbone_name", type(network).__name__),
            "strategy": self.strategy.value,
            "mode": self.mode.value,
            "lambda": self.lambda_,
            "budget": self.budget,
            "estimation_iterations": num_iterations,
            "estimation_batch_size": self.estimation_batch_size,
        }
        if self.method == gps.METHOD_NAME:
            header["method"] = self.method
        if self.selection == "per_neuron":
            header["selection"] = self.selection
            trainable_set = SparseTrainableSet.from_importance_per_row(
                importance, self.budget, gps.neuron_weight_names(network, self.scope), header=header, scope=self.scope
            )
        else:
            trainable_set = SparseTrainableSet.from_importance(importance, self.budget, header=header, scope=self.scope)
        self.elapsed_seconds = time.perf_counter() - start
        in_scope = len(scoped_parameters(network, self.scope))
        self.logger.info(
            "Importance estimation took %.1f s; selected %d weights in %d of %d tensors.\n%s",
            self.elapsed_seconds,
            trainable_set.num_selected,
            len(trainable_set.trainable_names()),
            in_scope,
            trainable_set.summary(),
        )
        return trainable_set
