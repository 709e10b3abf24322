"""Resumable training: a run killed with SIGKILL mid-epoch, resumed, ends equal to an uninterrupted run."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
import torch

from monai_shpeft.handlers import (
    EpochSeedHandler,
    GradientMaskHandler,
    ImportanceEstimationHandler,
    ResumeError,
    ResumeHandler,
)
from monai_shpeft.sparse_set import SparseTrainableSet
from tests.helpers import (
    TINY_BUNDLE_ARGS,
    copy_bundles,
    image_label_loader,
    make_trainer,
    monai_bundle,
    run_command,
    tiny_classifier,
    write_busi_folder,
)

ADAMW = partial(torch.optim.AdamW, lr=1e-2, weight_decay=0.05)


def sparse_run(
    tmp_path: Path, max_epochs: int, resume: bool, budget: float = 0.05
) -> tuple[torch.nn.Module, ResumeHandler]:
    """A tiny SH-PEFT run with a shuffling loader, an LR schedule, the epoch seeding and the resume handler."""
    torch.manual_seed(0)
    network = tiny_classifier()
    loader = torch.utils.data.DataLoader(image_label_loader(num_samples=24).dataset, batch_size=4, shuffle=True)
    set_file = tmp_path / "set.safetensors"
    estimation = ImportanceEstimationHandler(budget=budget, save_path=set_file, reuse_saved=resume, progress=False)
    trainer = make_trainer(network, loader, ADAMW, [estimation, GradientMaskHandler()], max_epochs=max_epochs)
    scheduler = torch.optim.lr_scheduler.StepLR(trainer.optimizer, step_size=1, gamma=0.5)
    from ignite.engine import Events

    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: scheduler.step())
    EpochSeedHandler(seed=3).attach(trainer)
    objects = {"network": network, "optimizer": trainer.optimizer, "lr_scheduler": scheduler}
    resume_handler = ResumeHandler(tmp_path / "resume" / "checkpoint.pt", objects, resume=resume)
    resume_handler.attach(trainer)
    trainer.run()
    return network, resume_handler


def test_resumed_run_equals_the_uninterrupted_one(tmp_path: Path) -> None:
    straight, _ = sparse_run(tmp_path / "a", max_epochs=3, resume=False)
    sparse_run(tmp_path / "b", max_epochs=1, resume=False)  # "killed" after epoch 1
    resumed, handler = sparse_run(tmp_path / "b", max_epochs=3, resume=True)
    assert handler.resumed_from_epoch == 1
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=1e-6, msg=name)
    state = torch.load(tmp_path / "b" / "resume" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 3 and state["lr_scheduler"]["last_epoch"] == 3
    assert state["sparse_set_fingerprint"] == SparseTrainableSet.load(tmp_path / "b" / "set.safetensors").fingerprint()


def epoch_two_labels(history_seed: int, seeded: bool) -> list[list[int]]:
    """The label order of epoch 2 of a shuffling run, after a given random history."""
    from ignite.engine import Events

    loader = torch.utils.data.DataLoader(image_label_loader(num_samples=24).dataset, batch_size=4, shuffle=True)
    trainer = make_trainer(tiny_classifier(), loader, ADAMW, [], max_epochs=2)
    seen: list[list[int]] = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED,
        lambda e: seen.append([int(item["label"]) for item in e.state.batch]) if e.state.epoch == 2 else None,
    )
    if seeded:
        EpochSeedHandler(seed=3).attach(trainer)
    torch.manual_seed(history_seed)
    trainer.run()
    return seen


def test_epoch_seeding_makes_an_epoch_independent_of_the_history() -> None:
    assert epoch_two_labels(0, seeded=True) == epoch_two_labels(99, seeded=True)
    # the control: without it, epoch 2 depends on every draw made before
    assert epoch_two_labels(0, seeded=False) != epoch_two_labels(99, seeded=False)


def test_a_broken_or_foreign_checkpoint_says_what_to_do(tmp_path: Path) -> None:
    sparse_run(tmp_path, max_epochs=1, resume=False)
    checkpoint = tmp_path / "resume" / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])  # as if the disk filled up while copying it
    with pytest.raises(ResumeError, match=r"cannot be read .* delete it to start again"):
        sparse_run(tmp_path, max_epochs=2, resume=True)
    sparse_run(tmp_path / "other", max_epochs=1, resume=False)
    (tmp_path / "other" / "set.safetensors").unlink()
    with pytest.raises(ResumeError, match=r"another sparse trainable set"):
        sparse_run(tmp_path / "other", max_epochs=2, resume=True, budget=0.1)  # the set file lost, re-estimated
    with pytest.raises(ValueError, match=r"--resume is not supported for --method spt_lora"):
        ResumeHandler(checkpoint, {}, resume=True, method="spt_lora")


def test_a_finished_run_needs_more_epochs_to_continue(tmp_path: Path) -> None:
    sparse_run(tmp_path, max_epochs=2, resume=False)
    with pytest.raises(ResumeError, match=r"past --max_epochs 1"):
        sparse_run(tmp_path, max_epochs=1, resume=True)


def _bundle_command(work: Path, *extra: str) -> list[str]:
    args = ["--config_file", "bundles/busi/configs/train.json", "--dataset_dir", str(work.parent / "busi")]
    return monai_bundle("run", *args, "--max_epochs", "4", "--learning_rate", "0.05", *TINY_BUNDLE_ARGS, *extra)


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_bundle_run(tmp_path: Path) -> None:
    write_busi_folder(tmp_path / "busi", per_class=16)
    straight = copy_bundles(tmp_path / "straight")
    run_command(_bundle_command(straight), cwd=straight)

    killed = copy_bundles(tmp_path / "killed")
    checkpoint = killed / "bundles" / "busi" / "models" / "resume" / "checkpoint.pt"
    process = subprocess.Popen(
        _bundle_command(killed), cwd=killed, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while not checkpoint.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)  # the first epoch is saved; the second is under way
    assert process.wait(timeout=60) == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = torch.load(checkpoint, weights_only=True)["epoch"]
    assert killed_at < 4
    output = run_command(_bundle_command(killed, "--resume", "true"), cwd=killed)
    assert f"Resumed from {checkpoint.relative_to(killed)}: epoch {killed_at} of 4 done" in output

    straight_models = straight / "bundles" / "busi" / "models"
    killed_models = killed / "bundles" / "busi" / "models"
    assert (
        SparseTrainableSet.load(killed_models / "sparse_trainable_set.safetensors").fingerprint()
        == SparseTrainableSet.load(straight_models / "sparse_trainable_set.safetensors").fingerprint()
    )
    for name in ("resume/checkpoint.pt", "model.pt"):  # the last epoch's state and the best model
        expected = torch.load(straight_models / name, weights_only=True)
        found = torch.load(killed_models / name, weights_only=True)
        expected, found = expected.get("network", expected), found.get("network", found)
        for key, value in expected.items():
            torch.testing.assert_close(found[key], value, rtol=0, atol=1e-6, msg=f"{name}: {key}")


def test_interrupted_saves_leave_the_previous_checkpoint(tmp_path: Path) -> None:
    """The resume checkpoint is replaced by a rename: a copy that is still being written is never read."""
    sparse_run(tmp_path, max_epochs=1, resume=False)
    checkpoint = tmp_path / "resume" / "checkpoint.pt"
    before = checkpoint.read_bytes()
    code = (
        "import os, signal, torch, sys\n"
        "from monai_shpeft.utils import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    open(tmp, 'wb').write(b'partial')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(checkpoint)], capture_output=True)
    assert done.returncode == -signal.SIGKILL
    assert checkpoint.read_bytes() == before
