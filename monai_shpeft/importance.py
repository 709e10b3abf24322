"""Hybrid weight importance of SH-PEFT (Liu et al., Sec. 2.2).

The importance of weight ``w`` is ``I = I_td + lambda * s * I_ta`` where

* ``I_td`` is task-specific, from the gradients of the training loss over ``B`` mini-batches:
  ``L1``: ``|sum_b dE_b/dw|`` (the accumulated gradient says where the weight would move);
  ``L2``: ``sum_b (dE_b/dw)^2`` (first-order Taylor estimate with the update approximated by the gradient);
* ``I_ta`` is task-agnostic, from the weight itself: ``|w|`` for L1 and ``w^2`` for L2;
* ``s = sum(I_td) / sum(I_ta)`` balances the scales of the two terms before ``lambda`` is applied. The paper
  prints the factor as ``sum I_td / sum I_td``, which is 1 and cannot be meant; we read it as
  ``sum I_td / sum I_ta``, with both sums over every weight in scope, so that both terms carry the same total
  mass and ``lambda = 1`` weighs them equally.

The ablations of the paper's Table 4 are the modes ``task_specific`` (``I = I_td``), ``task_agnostic``
(``I = I_ta``) and ``hybrid`` (the default).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from enum import Enum
from functools import partial
from typing import Any

import torch
from torch import nn

from monai_shpeft.distributed import synchronize_sum
from monai_shpeft.errors import ShpeftError
from monai_shpeft.utils import unwrap

__all__ = [
    "ImportanceMode",
    "ImportanceStrategy",
    "NonFiniteGradientError",
    "combine_importance",
    "estimate_importance",
    "scoped_parameters",
    "task_agnostic_importance",
]

logger = logging.getLogger(__name__)


class ImportanceStrategy(str, Enum):
    """How the task-specific and task-agnostic terms are computed (the paper's ``I^L1`` and ``I^L2``)."""

    L1 = "l1"
    L2 = "l2"


class ImportanceMode(str, Enum):
    """Which terms enter the importance (the ablation of the paper's Table 4)."""

    HYBRID = "hybrid"
    TASK_SPECIFIC = "task_specific"
    TASK_AGNOSTIC = "task_agnostic"


class NonFiniteGradientError(ShpeftError, FloatingPointError):
    """A gradient met during importance estimation is NaN or infinite."""


PrepareBatch = Callable[..., Sequence[Any]]


def scoped_parameters(network: nn.Module, scope: str | None = "backbone") -> dict[str, nn.Parameter]:
    """Return the parameters importance is estimated for, by full name, in model order.

    Args:
        network: the classifier (unwrapped from DDP / DataParallel automatically).
        scope: name of the submodule in scope (``"backbone"``: every backbone weight, the head excluded);
            ``None`` takes every parameter of ``network``.

    Returns:
        name -> parameter.

    Raises:
        ValueError: if ``network`` has no submodule called ``scope``.
    """
    network = unwrap(network)
    if scope is None:
        return dict(network.named_parameters())
    if not hasattr(network, scope):
        raise ValueError(
            f"{type(network).__name__} has no submodule '{scope}'; pass scope=None to rank every parameter, "
            "or build the network with monai_shpeft.backbones.build_classifier."
        )
    return {f"{scope}.{n}": p for n, p in getattr(network, scope).named_parameters()}


def task_agnostic_importance(
    parameters: Mapping[str, torch.Tensor], strategy: ImportanceStrategy | str = ImportanceStrategy.L2
) -> dict[str, torch.Tensor]:
    """``|w|`` (L1) or ``w^2`` (L2) for each parameter, in float32.

    Args:
        parameters: name -> weight tensor.
        strategy: ``"l1"`` or ``"l2"``.

    Returns:
        name -> task-agnostic importance.
    """
    strategy = ImportanceStrategy(strategy)
    result = {}
    for name, weight in parameters.items():
        w = weight.detach().float()
        result[name] = w.abs() if strategy is ImportanceStrategy.L1 else w.square()
    return result


def combine_importance(
    task_specific: Mapping[str, torch.Tensor] | None,
    task_agnostic: Mapping[str, torch.Tensor] | None,
    lambda_: float = 1.0,
    mode: ImportanceMode | str = ImportanceMode.HYBRID,
) -> dict[str, torch.Tensor]:
    """Combine the two terms: ``I = I_td + lambda * (sum I_td / sum I_ta) * I_ta`` (or one term alone).

    Args:
        task_specific: name -> ``I_td`` (needed unless ``mode`` is task-agnostic).
        task_agnostic: name -> ``I_ta`` (needed unless ``mode`` is task-specific).
        lambda_: weight of the balanced task-agnostic term.
        mode: ``hybrid``, ``task_specific`` or ``task_agnostic``.

    Returns:
        name -> importance.

    Raises:
        ValueError: if a term the mode needs is missing or lambda is negative.
    """
    mode = ImportanceMode(mode)
    if lambda_ < 0:
        raise ValueError(f"lambda_ must be >= 0, got {lambda_}.")
    if mode is not ImportanceMode.TASK_AGNOSTIC and task_specific is None:
        raise ValueError(f"mode '{mode.value}' needs the task-specific term (gradients).")
    if mode is not ImportanceMode.TASK_SPECIFIC and task_agnostic is None:
        raise ValueError(f"mode '{mode.value}' needs the task-agnostic term (weights).")
    if mode is ImportanceMode.TASK_SPECIFIC:
        return {n: t.clone() for n, t in task_specific.items()}  # type: ignore[union-attr]
    if mode is ImportanceMode.TASK_AGNOSTIC:
        return {n: t.clone() for n, t in task_agnostic.items()}  # type: ignore[union-attr]
    assert task_specific is not None and task_agnostic is not None
    if list(task_specific) != list(task_agnostic):
        raise ValueError("the task-specific and task-agnostic terms cover different parameters.")
    sum_td = sum(float(t.double().sum()) for t in task_specific.values())
    sum_ta = sum(float(t.double().sum()) for t in task_agnostic.values())
    factor = _balanced_factor(sum_td, sum_ta, lambda_)
    return {n: task_specific[n] + factor * task_agnostic[n] for n in task_specific}


def _balanced_factor(sum_td: float, sum_ta: float, lambda_: float) -> float:
    """``lambda * sum I_td / sum I_ta``, logged (0 when the task-agnostic term is all zero)."""
    if sum_td == 0.0:
        logger.warning("All task-specific importances are zero (no gradient reached the backbone?).")
    balance = sum_td / sum_ta if sum_ta > 0 else 0.0
    logger.info(
        "Hybrid importance: sum(I_td)=%.4g sum(I_ta)=%.4g balance=%.4g lambda=%g", sum_td, sum_ta, balance, lambda_
    )
    return lambda_ * balance


def estimate_importance(
    network: nn.Module,
    data_loader: Iterable[Any],
    loss_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    strategy: ImportanceStrategy | str = ImportanceStrategy.L2,
    lambda_: float = 1.0,
    mode: ImportanceMode | str = ImportanceMode.HYBRID,
    num_iterations: int | None = None,
    scope: str | None = "backbone",
    prepare_batch: PrepareBatch | None = None,
    device: torch.device | str | None = None,
    amp: bool = False,
    progress: bool = False,
    autocast_dtype: torch.dtype | None = None,
    micro_batch_size: int | None = None,
) -> dict[str, torch.Tensor]:
    """Estimate the hybrid importance of every parameter in scope.

    The network is left exactly as it was: no optimizer step, gradients and ``requires_grad`` flags restored,
    buffers (e.g. batch-norm statistics) restored, train/eval mode restored.

    Memory: the task-specific term lives in one float32 buffer per tensor, which becomes the importance in place.
    Each tensor's gradient is folded into its buffer as soon as backward has produced it and then dropped, so the
    pass holds about one weight-sized buffer besides the forward's activations (a training step with AdamW holds
    three). ``micro_batch_size`` splits each mini-batch into smaller forward/backward passes whose gradients add up
    to the mini-batch's before they are folded (so the L2 term is still the square of each mini-batch's gradient):
    the activations shrink, the result does not change beyond float rounding.

    Args:
        network: the classifier.
        data_loader: yields batches; ``prepare_batch`` turns each into ``(inputs, targets)``.
        loss_function: ``loss(pred, target)``, reduced to a scalar with ``.mean()``.
        strategy: ``"l2"`` (default, squared gradients and ``w^2``) or ``"l1"`` (``|sum of gradients|``, ``|w|``).
        lambda_: weight of the task-agnostic term (default 1.0).
        mode: ``"hybrid"`` (default), ``"task_specific"`` or ``"task_agnostic"`` (no data pass needed).
        num_iterations: mini-batches ``B``; ``None`` is one pass over ``data_loader`` (the paper's one epoch).
        scope: submodule whose parameters are ranked (see :func:`scoped_parameters`).
        prepare_batch: MONAI-style ``prepare_batch(batch, device, non_blocking)`` returning ``(inputs, targets)``;
            the default accepts ``{"image", "label"}`` dictionaries and ``(inputs, targets)`` pairs.
        device: where the batches go; defaults to the network's device.
        amp: run the forward pass under bfloat16 autocast on CUDA (gradients are accumulated in float32).
        progress: show a tqdm progress bar.
        autocast_dtype: run the forward pass under ``torch.autocast`` to this dtype on the batches' device
            (e.g. bfloat16 on a CPU that computes it natively, see :mod:`monai_shpeft.amp`); overrides ``amp``.
        micro_batch_size: images per forward/backward pass (``None``: the whole mini-batch at once).

    Returns:
        name -> importance (float32, on the network's device).

    Raises:
        NonFiniteGradientError: naming the parameter and mini-batch where a gradient is NaN or infinite.
        ValueError: if the loader yields no batch, or ``micro_batch_size`` is not a positive integer.
    """
    strategy, mode = ImportanceStrategy(strategy), ImportanceMode(mode)
    if lambda_ < 0:
        raise ValueError(f"lambda_ must be >= 0, got {lambda_}.")
    if micro_batch_size is not None and (isinstance(micro_batch_size, bool) or int(micro_batch_size) < 1):
        raise ValueError(f"micro_batch_size must be a positive integer or None, got {micro_batch_size!r}.")
    params = scoped_parameters(network, scope)
    if mode is ImportanceMode.TASK_AGNOSTIC:
        return task_agnostic_importance(params, strategy)
    importance = _accumulate_gradients(
        network,
        params,
        data_loader,
        loss_function,
        strategy,
        num_iterations,
        prepare_batch,
        device,
        amp,
        progress,
        autocast_dtype,
        micro_batch_size,
    )
    if mode is ImportanceMode.HYBRID:
        _add_balanced_task_agnostic(importance, params, strategy, lambda_)
    return importance


def _add_balanced_task_agnostic(
    importance: dict[str, torch.Tensor],
    params: Mapping[str, torch.Tensor],
    strategy: ImportanceStrategy,
    lambda_: float,
) -> None:
    """``I_td += lambda * (sum I_td / sum I_ta) * I_ta`` in place, one tensor's ``I_ta`` at a time.

    The same arithmetic as :func:`combine_importance`, without holding the task-agnostic term of every tensor.
    """
    sum_td = sum(float(t.double().sum()) for t in importance.values())
    sum_ta = sum(float(task_agnostic_importance({n: p}, strategy)[n].double().sum()) for n, p in params.items())
    factor = _balanced_factor(sum_td, sum_ta, lambda_)
    for name, param in params.items():
        importance[name].add_(task_agnostic_importance({name: param}, strategy)[name].mul_(factor))


def _default_prepare_batch(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
    from monai.engines.utils import default_prepare_batch

    return default_prepare_batch(batch, device, non_blocking)


@contextlib.contextmanager
def _preserved_state(network: nn.Module, params: Mapping[str, nn.Parameter]) -> Any:
    """Put back gradients, requires_grad flags, buffers and the train/eval mode after the block."""
    module = unwrap(network)
    all_params = list(module.parameters())
    saved_grads = [p.grad for p in all_params]
    saved_flags = [p.requires_grad for p in all_params]
    saved_buffers = {n: b.detach().clone() for n, b in module.named_buffers()}
    was_training = module.training
    try:
        for p in all_params:
            p.grad = None
            p.requires_grad_(False)
        for p in params.values():
            p.requires_grad_(True)
        yield
    finally:
        for p, grad, flag in zip(all_params, saved_grads, saved_flags):
            p.grad = grad
            p.requires_grad_(flag)
        with torch.no_grad():
            for name, buffer in module.named_buffers():
                buffer.copy_(saved_buffers[name])
        module.train(was_training)


def _accumulate_gradients(
    network: nn.Module,
    params: Mapping[str, nn.Parameter],
    data_loader: Iterable[Any],
    loss_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    strategy: ImportanceStrategy,
    num_iterations: int | None,
    prepare_batch: PrepareBatch | None,
    device: torch.device | str | None,
    amp: bool,
    progress: bool,
    autocast_dtype: torch.dtype | None = None,
    micro_batch_size: int | None = None,
) -> dict[str, torch.Tensor]:
    first = next(iter(params.values()))
    device = torch.device(device) if device is not None else first.device
    prepare = prepare_batch or _default_prepare_batch
    folding = _GradientFolding(params, strategy)
    total = num_iterations
    if total is None:
        with contextlib.suppress(TypeError):
            total = len(data_loader)  # type: ignore[arg-type]
    use_autocast = autocast_dtype is not None or (amp and device.type == "cuda")
    autocast_dtype = autocast_dtype or torch.bfloat16
    # backward on the bare module: DDP's reducer only acts on a backward that follows its own forward, and the
    # ranks are combined explicitly below instead
    module = unwrap(network)
    start = time.perf_counter()
    seen = 0
    with _preserved_state(network, params), folding:
        module.train()
        for batch in _progress(_batches(data_loader, num_iterations), total, progress):
            prepared = prepare(batch, device, False)
            inputs, targets = prepared[0], prepared[1]
            # MONAI's PrepareBatchExtraInput returns (inputs, targets, args, kwargs) for networks with extra inputs
            args, kwargs = (prepared[2], prepared[3]) if len(prepared) == 4 else ((), {})
            size = int(inputs.shape[0])
            step = size if micro_batch_size is None else int(micro_batch_size)
            for offset in range(0, size, step):
                part = slice(offset, min(offset + step, size))
                part_args = [_rows(a, part, size) for a in args]
                part_kwargs = {k: _rows(v, part, size) for k, v in kwargs.items()}
                with torch.autocast(device.type, dtype=autocast_dtype, enabled=use_autocast):
                    logits = module(inputs[part], *part_args, **part_kwargs)
                # the loss in float32, as in training; weighted so that the parts' gradients add up to the batch's
                loss = loss_function(logits.float(), targets[part]).mean()
                if step < size:
                    loss = loss * ((part.stop - part.start) / size)
                folding.final = part.stop >= size  # fold into the buffers once the mini-batch's gradient is whole
                loss.backward()
            folding.check_finite(seen)
            seen += 1
    if seen == 0:
        raise ValueError("importance estimation got no mini-batch: the data loader is empty.")
    accumulators = folding.buffers
    # in a distributed run each rank saw its own shard: sum the terms so every rank ranks the same epoch
    synchronize_sum(list(accumulators.values()))
    if strategy is ImportanceStrategy.L1:
        for acc in accumulators.values():
            acc.abs_()
    logger.info(
        "Task-specific importance (%s) from %d mini-batches in %.1f s.",
        strategy.value,
        seen,
        time.perf_counter() - start,
    )
    return accumulators


class _GradientFolding:
    """Fold each parameter's gradient into its float32 buffer when backward has produced it, then drop it.

    A post-accumulate-grad hook per parameter adds ``g`` (L1) or ``g * g`` (L2) to the buffer and frees ``.grad``,
    so at most the gradients of the tensors autograd is working on are alive besides the buffers. While ``final``
    is false (the first parts of a split mini-batch) the gradients stay and accumulate in ``.grad`` as usual.
    """

    def __init__(self, params: Mapping[str, nn.Parameter], strategy: ImportanceStrategy) -> None:
        self.params = params
        self.strategy = strategy
        self.buffers = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
        self.final = True
        self._finite: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> _GradientFolding:
        for name, param in self.params.items():
            self._handles.append(param.register_post_accumulate_grad_hook(partial(self._fold, name)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _fold(self, name: str, param: torch.Tensor) -> None:
        if not self.final or param.grad is None:
            return
        grad = param.grad.float()
        self._finite[name] = torch.isfinite(grad).all()  # a 0-d tensor: no device sync in the hot path
        if self.strategy is ImportanceStrategy.L1:
            self.buffers[name].add_(grad)
        else:
            self.buffers[name].addcmul_(grad, grad)
        param.grad = None

    def check_finite(self, batch_index: int) -> None:
        """Raise :class:`NonFiniteGradientError` naming the first tensor whose gradient was NaN or infinite."""
        if not self._finite:
            return
        names = list(self._finite)
        flags = torch.stack([self._finite[n] for n in names])
        self._finite.clear()
        if bool(flags.all()):
            return
        name = next(n for n, ok in zip(names, flags.tolist()) if not ok)
        buffer = self.buffers[name]
        kind = "NaN" if bool(torch.isnan(buffer).any()) else "infinite"
        raise NonFiniteGradientError(
            f"Gradient of '{name}' is {kind} at mini-batch {batch_index} of importance estimation. Check the "
            "inputs of that batch (NaN pixels, wrong intensity scaling), the labels, and the loss; with AMP "
            "try float32."
        )


def _rows(value: Any, part: slice, size: int) -> Any:
    """The rows ``part`` of a batched tensor argument (other arguments as they are)."""
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == size:
        return value[part]
    return value


def _batches(data_loader: Iterable[Any], num_iterations: int | None) -> Iterable[Any]:
    """One pass over the loader, or exactly ``num_iterations`` batches, starting over when the loader ends."""
    if num_iterations is None:
        yield from data_loader
        return
    produced = 0
    while produced < num_iterations:
        empty = True
        for batch in data_loader:
            empty = False
            yield batch
            produced += 1
            if produced >= num_iterations:
                return
        if empty:
            return


def _progress(iterable: Iterable[Any], total: int | None, enabled: bool) -> Iterable[Any]:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc="importance estimation", unit="batch")
