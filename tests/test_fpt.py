from __future__ import annotations

import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.data import DataLoader, Dataset
from monai.engines import PrepareBatchExtraInput, SupervisedTrainer

from monai_shpeft.networks import FPTNetwork, build_fpt
from tests.helpers import TINY_OPEN_CLIP, TINY_TIMM

TINY_VIT_B = "timm:vit_base_patch16_224"
# (backbone, high-resolution size, side size)
BACKBONES = [(TINY_TIMM, 56, 28), (TINY_OPEN_CLIP, 64, 32), (TINY_VIT_B, 64, 32)]


def tiny_fpt(backbone: str = TINY_TIMM, size: int = 56, side_size: int = 28, **kwargs: object) -> FPTNetwork:
    torch.manual_seed(0)
    return build_fpt(backbone, 3, None, image_size=size, side_image_size=side_size, tiny=True, **kwargs)


def batch(size: int, side_size: int, count: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(count, 3, size, size, generator=generator)
    image_lr = torch.randn(count, 3, side_size, side_size, generator=generator)
    label = torch.arange(count) % 3
    return image, image_lr, label


def trainable_parts(network: FPTNetwork) -> dict[str, nn.Parameter]:
    """Every parameter of the side network, the fusion modules and the head, by name."""
    return {
        f"{part}.{name}": param
        for part in ("side", "fusion", "head")
        for name, param in getattr(network, part).named_parameters()
    }


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(("backbone", "size", "side_size"), BACKBONES)
def test_three_kinds_of_input(backbone: str, size: int, side_size: int) -> None:
    """Image only, image plus low-resolution copy, and preloaded features plus copy all give the same logits."""
    network = tiny_fpt(backbone, size, side_size).eval()
    image, image_lr, _ = batch(size, side_size, count=3)
    with torch.no_grad():
        from_pair = network(image, image_lr)
        features = network.frozen_features(image)
        from_features = network(features, image_lr)
        from_image = network(image)
        resized = F.interpolate(image, size=(side_size, side_size), mode="bilinear", antialias=True)
        from_resized = network(image, resized)
    assert from_pair.shape == from_image.shape == from_features.shape == (3, 3)
    assert features.shape == (3, *network.extractor.feature_shape)
    torch.testing.assert_close(from_features, from_pair, atol=1e-6, rtol=0)
    torch.testing.assert_close(from_image, from_resized, atol=1e-6, rtol=0)
    assert not torch.allclose(from_image, from_pair)  # the low-resolution input really reaches the side network


@pytest.mark.parametrize(("backbone", "size", "side_size"), BACKBONES)
def test_gradients_reach_only_the_trainable_parts(backbone: str, size: int, side_size: int) -> None:
    """After backward the frozen branch has no gradient; every side, fusion and head parameter has a non-zero one."""
    network = tiny_fpt(backbone, size, side_size).train()
    image, image_lr, label = batch(size, side_size, count=3)
    F.cross_entropy(network(image, image_lr), label).backward()
    assert all(p.grad is None for p in network.extractor.parameters())
    trainable = trainable_parts(network)
    assert {"fusion.prompts", "fusion.f_in.0.weight", "fusion.f_out.0.weight", "head.weight"} <= set(trainable)
    for name, param in trainable.items():
        assert param.requires_grad, name
        assert param.grad is not None and param.grad.abs().sum() > 0, f"{name} got no gradient"
    assert network.fusion.prompts.grad.abs().sum(dim=(1, 2)).gt(0).all()  # every layer's prompts


@pytest.mark.parametrize(("backbone", "size", "side_size"), BACKBONES)
def test_trainable_parameters_are_side_fusion_and_head(backbone: str, size: int, side_size: int) -> None:
    network = tiny_fpt(backbone, size, side_size)
    trainable = sum(p.numel() for p in network.parameters() if p.requires_grad)
    assert trainable == count(network.side) + count(network.fusion) + count(network.head)
    assert count(network) - trainable == count(network.extractor)
    assert network.side.width == network.extractor.width // 8
    assert len(network.side.blocks) == network.extractor.num_layers


def test_per_layer_projections() -> None:
    """``shared_projections=False`` gives one ``f_in``/``f_out`` per frozen layer, hence more parameters."""
    shared = tiny_fpt()
    separate = tiny_fpt(shared_projections=False)
    layers = separate.extractor.num_layers
    assert len(shared.fusion.f_in) == len(shared.fusion.f_out) == 1
    assert len(separate.fusion.f_in) == len(separate.fusion.f_out) == layers == 2
    projections = count(shared.fusion.f_in) + count(shared.fusion.f_out)
    assert count(separate.fusion) - count(shared.fusion) == (layers - 1) * projections
    image, image_lr, label = batch(56, 28)
    F.cross_entropy(separate(image, image_lr), label).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in separate.fusion.parameters())


def test_input_errors() -> None:
    network = tiny_fpt()
    image, image_lr, _ = batch(56, 28)
    features = network.frozen_features(image)
    wrong = torch.zeros(2, 2, 2, 5, 64)  # 5 tokens instead of 4
    with pytest.raises(
        ValueError, match=re.escape("have shape (2, 2, 5, 64) per image, this network expects (2, 2, 4, 64)")
    ):
        network(wrong, image_lr)
    with pytest.raises(ValueError, match="need the low-resolution image 'image_lr'"):
        network(features)
    with pytest.raises(ValueError, match=re.escape("expects images [B, C, 56, 56], got (2, 3, 64, 64)")):
        network(torch.zeros(2, 3, 64, 64), image_lr)
    with pytest.raises(ValueError, match=re.escape("low-resolution images [B, C, 28, 28], got (2, 3, 32, 32)")):
        network(image, torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match="not divisible by the reduction factor"):
        tiny_fpt(reduction=7)


def test_optimizer_steps_move_only_the_trainable_parts() -> None:
    """A few AdamW steps (with weight decay) change side/fusion/head and leave the frozen branch bit-identical."""
    network = tiny_fpt().train()
    frozen_before = {n: t.clone() for n, t in network.extractor.state_dict().items()}
    trainable_before = {n: p.detach().clone() for n, p in trainable_parts(network).items()}
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-2, weight_decay=0.05)
    image, image_lr, label = batch(56, 28, count=4)
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(network(image, image_lr), label).backward()
        optimizer.step()
    for name, tensor in network.extractor.state_dict().items():
        assert torch.equal(tensor, frozen_before[name]), f"frozen {name} moved"
    for name, param in trainable_parts(network).items():
        assert not torch.equal(param.detach(), trainable_before[name]), f"{name} did not train"
    assert not any(p in optimizer.state for p in network.extractor.parameters())


def test_monai_supervised_trainer_with_low_resolution_extra_input() -> None:
    """MONAI's SupervisedTrainer passes ``image_lr`` through PrepareBatchExtraInput and trains the network."""
    network = tiny_fpt()
    image, image_lr, label = batch(56, 28, count=4)
    items = [{"image": image[i], "image_lr": image_lr[i], "label": label[i]} for i in range(4)]
    seen: list[torch.Tensor] = []
    network.side.patch_embed.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    head_before = network.head.weight.detach().clone()
    frozen_before = {n: t.clone() for n, t in network.extractor.state_dict().items()}
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=DataLoader(Dataset(items), batch_size=2, shuffle=False, num_workers=0),
        network=network,
        optimizer=torch.optim.AdamW(network.parameters(), lr=1e-2),
        loss_function=nn.CrossEntropyLoss(),
        prepare_batch=PrepareBatchExtraInput(extra_keys={"image_lr": "image_lr"}),
    )
    trainer.run()
    assert trainer.state.iteration == 2
    assert torch.isfinite(torch.as_tensor(trainer.state.output[0]["loss"]))
    assert len(seen) == 2 and torch.equal(seen[0], image_lr[:2]) and torch.equal(seen[1], image_lr[2:])
    assert not torch.equal(network.head.weight.detach(), head_before)
    assert all(torch.equal(t, frozen_before[n]) for n, t in network.extractor.state_dict().items())


@pytest.mark.parametrize("autocast", [False, True])
def test_preloaded_features_keep_no_full_precision_copy_for_backward(autocast: bool) -> None:
    """float16 features: the fusion is recomputed in backward, so autograd keeps only the float16 batch.

    Gradients and logits are bit-identical to keeping each layer's float32 copy of the keys and values, also under
    the bundles' CPU bfloat16 autocast.
    """
    network = tiny_fpt().train()
    image, image_lr, label = batch(56, 28, count=4)
    features = network.frozen_features(image).half()
    results = {}
    for recompute in (False, True):
        network.recompute_feature_casts = recompute
        saved: list[int] = []

        def pack(tensor: torch.Tensor, saved: list[int] = saved) -> torch.Tensor:
            saved.append(tensor.numel() * tensor.element_size() if tensor.dtype == torch.float32 else 0)
            return tensor

        network.zero_grad()
        with (
            torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor),
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast),
        ):
            logits = network(features, image_lr)
            loss = F.cross_entropy(logits, label)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in network.named_parameters() if p.grad is not None}
        results[recompute] = (logits.detach(), grads, sum(saved))
    (kept_logits, kept_grads, kept_bytes), (logits, grads, recomputed_bytes) = results[False], results[True]
    assert torch.equal(logits, kept_logits)
    assert grads.keys() == kept_grads.keys() and all(torch.equal(grads[n], kept_grads[n]) for n in grads)
    if not autocast:  # (under autocast the copies kept would be bfloat16 ones)
        copies = features.numel() * 4  # every layer's float32 keys and values
        assert kept_bytes - recomputed_bytes >= copies
