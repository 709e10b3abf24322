"""Mixed precision that also works on a CPU: one ``amp`` knob, resolved per device, and an autocasting inferer.

MONAI's trainers and evaluators know one kind of mixed precision: ``torch.autocast("cuda")`` with a gradient
scaler. On a CPU that does nothing useful, yet CPUs with native bfloat16 arithmetic (AVX512-BF16, AMX) run a ViT
training step 1.4-1.7x faster under ``torch.autocast("cpu", dtype=torch.bfloat16)``. CPUs without it emulate
bfloat16 and run several times *slower* (measured: ``benchmarks/amp_cpu.py``), so ``"auto"`` only turns it on where
the CPU has it.

:func:`resolve_amp` turns the knob into an :class:`AmpPolicy`; the trainer's own ``amp`` flag takes
``policy.trainer_amp`` (CUDA), and :class:`AutocastInferer` runs the network under the CPU autocast and hands
float32 logits to the loss and the metrics, which therefore stay in float32.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from monai.inferers import Inferer

from monai_shpeft.errors import SettingsError

__all__ = ["AMP_CHOICES", "AmpPolicy", "AutocastInferer", "cpu_supports_bf16", "resolve_amp"]

logger = logging.getLogger(__name__)

#: the values of the bundles' ``amp`` knob
AMP_CHOICES = ("auto", "true", "false", "bf16")


def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), where autocast pays off.

    Returns:
        ``True`` when PyTorch reports AVX512-BF16 or AMX tiles on this CPU.
    """
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(bool(check()) for check in checks if check is not None)


@dataclass(frozen=True)
class AmpPolicy:
    """What mixed precision a run uses.

    Args:
        trainer_amp: MONAI's own ``amp`` (CUDA autocast with a gradient scaler).
        autocast_dtype: dtype :class:`AutocastInferer` autocasts the network to, ``None`` for none.
        device_type: ``"cpu"`` or ``"cuda"``, the autocast device.
        description: one line for the log.
    """

    trainer_amp: bool
    autocast_dtype: torch.dtype | None
    device_type: str
    description: str

    @property
    def enabled(self) -> bool:
        """Whether any mixed precision is used."""
        return self.trainer_amp or self.autocast_dtype is not None


def _knob(amp: bool | str | None) -> str:
    if amp is None or isinstance(amp, bool):
        return {None: "auto", True: "true", False: "false"}[amp]
    value = str(amp).strip().lower()
    if value not in AMP_CHOICES:
        raise SettingsError(f"amp must be one of {list(AMP_CHOICES)} (or a boolean), got {amp!r}.")
    return value


def resolve_amp(amp: bool | str | None, device: torch.device | str) -> AmpPolicy:
    """Resolve the ``amp`` knob for ``device``.

    Args:
        amp: ``"auto"`` (or ``None``): CUDA mixed precision on a GPU, bfloat16 autocast on a CPU that computes
            bfloat16 natively, float32 otherwise; ``"true"`` (or ``True``): mixed precision whatever the CPU
            (bfloat16 on a CPU); ``"bf16"``: bfloat16 autocast on either device, without a gradient scaler;
            ``"false"`` (or ``False``): float32.
        device: the training device.

    Returns:
        the policy.

    Raises:
        ValueError: for another value.
    """
    policy = _resolve(_knob(amp), torch.device(device).type)
    logger.info("Mixed precision (amp=%s): %s.", amp, policy.description)
    return policy


def _resolve(value: str, device_type: str) -> AmpPolicy:
    if value == "false":
        return AmpPolicy(False, None, device_type, "float32 (amp off)")
    if value == "bf16":
        return AmpPolicy(False, torch.bfloat16, device_type, f"bfloat16 autocast on {device_type}")
    if device_type == "cuda":
        return AmpPolicy(True, None, device_type, "CUDA mixed precision (MONAI amp)")
    if device_type != "cpu":
        return AmpPolicy(False, None, device_type, f"float32 (no mixed precision on {device_type})")
    native = cpu_supports_bf16()
    if value == "auto" and not native:
        return AmpPolicy(False, None, "cpu", "float32 (this CPU has no native bfloat16: autocast would be slower)")
    if not native:
        logger.warning("amp=true on a CPU without native bfloat16 (AVX512-BF16/AMX): autocast is emulated and slow.")
    return AmpPolicy(False, torch.bfloat16, "cpu", "bfloat16 autocast on the CPU")


class AutocastInferer(Inferer):
    """``network(inputs)`` under ``torch.autocast`` when the policy asks for it, returning float32 outputs.

    Args:
        policy: an :class:`AmpPolicy`, ``None`` or one without ``autocast_dtype`` for a plain call.
        temperature: a positive divisor of the output logits (temperature scaling fitted on validation data,
            :mod:`monai_shpeft.clinical.temperature`); 1 leaves them as they are.
    """

    def __init__(self, policy: AmpPolicy | None = None, temperature: float = 1.0) -> None:
        super().__init__()
        if not float(temperature) > 0:
            raise ValueError(f"temperature must be a positive number, got {temperature!r}.")
        self.policy = policy
        self.temperature = float(temperature)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype, ``None`` when the network runs as it is."""
        return self.policy.autocast_dtype if self.policy is not None else None

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:
        """Run ``network(inputs, *args, **kwargs)``.

        Args:
            inputs: the batch.
            network: the model.
            args: extra positional inputs (FPT's low-resolution image).
            kwargs: extra keyword inputs.

        Returns:
            the network's output, floating tensors cast to float32 and divided by the temperature.
        """
        policy = self.policy
        autocast = policy is not None and policy.autocast_dtype is not None
        if policy is None or policy.autocast_dtype is None:
            output = network(inputs, *args, **kwargs)
        else:
            with torch.autocast(policy.device_type, dtype=policy.autocast_dtype):
                output = network(inputs, *args, **kwargs)
        if not (isinstance(output, torch.Tensor) and output.is_floating_point()):
            return output
        if autocast:
            output = output.float()
        if self.temperature != 1.0:
            output = output.float() / self.temperature
        return output
