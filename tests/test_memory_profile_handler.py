from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import torch

from monai_shpeft.handlers import GradientMaskHandler, ImportanceEstimationHandler, MemoryProfileHandler
from monai_shpeft.memory import PhaseMemoryRecorder, current_rss_bytes
from tests.helpers import image_label_loader, make_trainer, tiny_classifier

MB = 1024**2
SPIKE = 300 * MB


class GreedyEstimation(ImportanceEstimationHandler):
    """The real estimation, plus a 300 MB buffer touched and freed inside it: a peak only this phase has."""

    def __call__(self, engine) -> None:  # type: ignore[no-untyped-def]
        buffer = torch.ones(SPIKE // 4)
        del buffer
        super().__call__(engine)


def test_each_phase_has_its_own_peak_and_the_run_the_largest(tmp_path: Path) -> None:
    output = tmp_path / "memory_profile.json"
    handlers = [GreedyEstimation(budget=0.02, progress=False), GradientMaskHandler(), MemoryProfileHandler(output)]
    adamw = partial(torch.optim.AdamW, lr=1e-3)
    trainer = make_trainer(tiny_classifier(), image_label_loader(num_samples=8), adamw, handlers)
    trainer.run()
    record = json.loads(output.read_text())
    phases = record["phases"]
    assert list(phases) == ["setup", "importance", "training"]
    assert record["high_water_mark_reset"] is True
    importance, training = phases["importance"], phases["training"]
    assert importance["peak_rss_bytes"] - importance["start_rss_bytes"] >= 0.9 * SPIKE
    # the high-water mark was reset after the estimation: the spike is not counted again in training
    assert training["peak_rss_bytes"] - training["start_rss_bytes"] < 0.5 * SPIKE
    assert record["peak_rss_bytes"] == max(p["peak_rss_bytes"] for p in phases.values())
    assert phases["setup"]["entries"] == 2  # before and after the estimation
    assert record["iterations"] == 2


def test_a_phase_begun_again_keeps_its_larger_peak() -> None:
    recorder = PhaseMemoryRecorder()
    recorder.begin("setup")
    buffer = torch.ones(SPIKE // 4)
    del buffer
    recorder.begin("importance")
    recorder.begin("setup")
    recorder.end()
    setup = recorder.to_record()["phases"]["setup"]
    assert setup["entries"] == 2
    assert setup["peak_rss_bytes"] >= setup["start_rss_bytes"] + 0.9 * SPIKE
    assert setup["end_rss_bytes"] <= current_rss_bytes() + 50 * MB
