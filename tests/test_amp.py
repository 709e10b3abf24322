"""The ``amp`` knob: resolution per device, CPU bfloat16 autocast in a real MONAI trainer, float32 loss."""

from __future__ import annotations

import pytest
import torch
from monai.engines import SupervisedTrainer

from monai_shpeft.amp import AmpPolicy, AutocastInferer, cpu_supports_bf16, resolve_amp
from monai_shpeft.importance import estimate_importance
from tests.helpers import image_label_loader, tiny_classifier

BF16 = AmpPolicy(False, torch.bfloat16, "cpu", "bfloat16 autocast on the CPU")


@pytest.mark.parametrize("value", ["false", False])
def test_off_means_float32_everywhere(value: object) -> None:
    for device in ("cpu", "cuda"):
        policy = resolve_amp(value, device)
        assert not policy.enabled and policy.autocast_dtype is None and not policy.trainer_amp


def test_auto_follows_the_device_and_the_cpu() -> None:
    gpu = resolve_amp("auto", "cuda")  # a torch.device, no GPU needed to resolve
    assert gpu.trainer_amp and gpu.autocast_dtype is None
    cpu = resolve_amp("auto", "cpu")
    assert not cpu.trainer_amp
    assert (cpu.autocast_dtype == torch.bfloat16) == cpu_supports_bf16()
    assert resolve_amp(None, "cpu") == cpu


def test_forced_values_and_a_bad_value() -> None:
    assert resolve_amp("bf16", "cpu").autocast_dtype == torch.bfloat16
    assert resolve_amp("bf16", "cuda").autocast_dtype == torch.bfloat16 and not resolve_amp("bf16", "cuda").trainer_amp
    assert resolve_amp(True, "cpu").autocast_dtype == torch.bfloat16
    assert resolve_amp("TRUE", "cuda").trainer_amp
    with pytest.raises(ValueError, match="amp must be one of"):
        resolve_amp("fp8", "cpu")


def _linear_output_dtypes(network: torch.nn.Module) -> list[torch.dtype]:
    seen: list[torch.dtype] = []
    for module in network.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    return seen


def test_the_inferer_runs_the_network_in_bfloat16_and_returns_float32() -> None:
    network = tiny_classifier(seed=0).eval()
    images = next(iter(image_label_loader()))["image"]
    with torch.no_grad():
        reference = network(images)
        seen = _linear_output_dtypes(network.backbone)
        head_seen = _linear_output_dtypes(network.head)
        logits = AutocastInferer(BF16)(images, network)
    assert logits.dtype == torch.float32
    assert seen and set(seen) == {torch.bfloat16}  # the backbone's matmuls ran in bfloat16
    assert head_seen == [torch.float32]  # the head's did not: bfloat16 logits would flip near-tied classes
    torch.testing.assert_close(logits, reference, atol=0.1, rtol=0.05)
    with torch.no_grad():
        assert torch.equal(AutocastInferer(None)(images, network), reference)


class RecordingLoss(torch.nn.CrossEntropyLoss):
    """Cross-entropy that records the dtype of the logits and of the loss it computes."""

    def __init__(self) -> None:
        super().__init__()
        self.dtypes: list[tuple[torch.dtype, torch.dtype]] = []

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = super().forward(logits, target)
        self.dtypes.append((logits.dtype, loss.dtype))
        return loss


def test_a_monai_trainer_trains_under_cpu_autocast_with_a_float32_loss() -> None:
    network = tiny_classifier(seed=0)
    before = {n: p.detach().clone() for n, p in network.named_parameters()}
    seen = _linear_output_dtypes(network.backbone)  # the head computes in float32 (test_backbones)
    loss = RecordingLoss()
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=image_label_loader(),
        network=network,
        optimizer=torch.optim.AdamW(network.parameters(), lr=1e-3),
        loss_function=loss,
        inferer=AutocastInferer(BF16),
        amp=BF16.trainer_amp,
    )
    trainer.run()
    assert set(seen) == {torch.bfloat16}
    assert loss.dtypes == [(torch.float32, torch.float32)] * 4
    assert all(p.dtype == torch.float32 for p in network.parameters())  # master weights stay float32
    assert any(not torch.equal(p, before[n]) for n, p in network.named_parameters())


def test_importance_under_autocast_ranks_like_float32() -> None:
    loss = torch.nn.CrossEntropyLoss()
    loader = image_label_loader()
    exact = estimate_importance(tiny_classifier(seed=0), loader, loss, mode="task_specific")
    network = tiny_classifier(seed=0)
    seen = _linear_output_dtypes(network)
    mixed = estimate_importance(network, loader, loss, mode="task_specific", autocast_dtype=torch.bfloat16)
    assert seen and torch.bfloat16 in seen
    flat_exact = torch.cat([v.flatten() for v in exact.values()])
    flat_mixed = torch.cat([mixed[n].flatten() for n in exact])
    assert flat_mixed.dtype == torch.float32
    # the same weights rank on top: most of the exact top 1% is in the mixed-precision top 1%
    k = max(1, flat_exact.numel() // 100)
    top_exact = set(torch.topk(flat_exact, k).indices.tolist())
    top_mixed = set(torch.topk(flat_mixed, k).indices.tolist())
    assert len(top_exact & top_mixed) / k > 0.6
