"""Ignite handler that records the peak memory of each phase of a training run: set-up, cache filling, importance."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monai.utils import min_version, optional_import

from monai_shpeft.memory import PhaseMemoryRecorder
from monai_shpeft.utils import atomic_write_json

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", "0.4.11", min_version, "Engine")

__all__ = ["PHASES", "MemoryProfileHandler"]

#: the ``STARTED`` handlers measured as phases of their own, by class name (subclasses included)
PHASES: Mapping[str, str] = {
    "FeaturePreloadHandler": "cache_fill",
    "HeadWarmupHandler": "head_warmup",
    "ImportanceEstimationHandler": "importance",
    "SPTLoRAHandler": "importance",
}

MB = 1024.0**2


class MemoryProfileHandler:
    """Write the peak memory of each phase of the run to ``output_file`` when training completes.

    Phases (:class:`~monai_shpeft.memory.PhaseMemoryRecorder`): ``setup`` (from the process's start: imports, the
    network, the cached datasets, and any ``STARTED`` hook not listed below), ``cache_fill`` (FPT's feature
    preloading), ``head_warmup`` (the LP-FT probe), ``importance`` (SH-PEFT's, GPS's or SPT's estimation pass), then
    ``training`` (the iterations, validation and the completion handlers before this one). The run's peak is the
    largest. Attach it after the handlers it measures: it wraps the trainer's ``STARTED`` hooks present at that time.

    Args:
        output_file: the JSON record (written atomically).
        device: the device the run trains on (CUDA peaks are recorded there as well).
    """

    def __init__(self, output_file: str | os.PathLike, device: Any = "cpu") -> None:
        self.output_file = Path(output_file)
        self.recorder = PhaseMemoryRecorder(device=device)
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        """Start the ``setup`` phase, wrap the listed ``STARTED`` hooks, and record training until ``COMPLETED``.

        Args:
            engine: the trainer.
        """
        self.recorder.begin("setup", reset=False)
        # ignite has no public way to wrap a registered hook: re-register each, in order, around a phase
        for handler, args, kwargs in list(engine._event_handlers[Events.STARTED]):
            engine.remove_event_handler(handler, Events.STARTED)
            engine.add_event_handler(Events.STARTED, self._measured(handler), *args, **kwargs)
        engine.add_event_handler(Events.ITERATION_STARTED(once=1), lambda _: self.recorder.begin("training"))
        engine.add_event_handler(Events.COMPLETED, self)

    def _measured(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        owner = getattr(handler, "__self__", handler)
        phase = next((PHASES[c.__name__] for c in type(owner).__mro__ if c.__name__ in PHASES), None)
        if phase is None:
            return handler

        @wraps(handler)
        def measured(*args: Any, **kwargs: Any) -> Any:
            self.recorder.begin(phase)
            try:
                return handler(*args, **kwargs)
            finally:
                self.recorder.begin("setup")

        return measured

    def __call__(self, engine: Engine) -> None:
        """Close the last phase and write the record.

        Args:
            engine: the trainer.
        """
        self.recorder.end()
        record = self.recorder.to_record()
        record["iterations"] = engine.state.iteration
        atomic_write_json(self.output_file, record)
        self.logger.info(
            "Peak memory (RSS) per phase: %s; the run's peak %.0f MB. Written to %s.",
            ", ".join(f"{n} {p['peak_rss_bytes'] / MB:.0f} MB" for n, p in record["phases"].items()),
            record["peak_rss_bytes"] / MB,
            self.output_file,
        )
