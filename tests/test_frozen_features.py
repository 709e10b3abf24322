from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from monai_shpeft.backbones import build_classifier
from monai_shpeft.networks import FrozenFeatureExtractor, UnsupportedBackboneError, build_fpt, frozen_features
from monai_shpeft.networks.token_selection import attention_received
from tests.helpers import TINY_OPEN_CLIP, TINY_TIMM

TINY_VIT_B = "timm:vit_base_patch16_224"
# (backbone, high-resolution size, side size): 4 x 4 patches plus the class token = 17 tokens each
BACKBONES = [(TINY_TIMM, 56, 28), (TINY_OPEN_CLIP, 64, 32), (TINY_VIT_B, 64, 32)]


def tiny_extractor(backbone: str, image_size: int, token_ratio: float = 0.2, seed: int = 0) -> FrozenFeatureExtractor:
    torch.manual_seed(seed)
    classifier = build_classifier(backbone, 3, None, image_size=image_size, tiny=True)
    return FrozenFeatureExtractor(classifier.backbone, backbone, image_size, token_ratio)


def images(image_size: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))


def blocks_of(backbone: nn.Module) -> list[nn.Module]:
    return list(backbone.blocks) if hasattr(backbone, "blocks") else list(backbone.transformer.resblocks)


def reference_features(block: nn.Module, block_input: torch.Tensor, ratio: float) -> torch.Tensor:
    """Keys/values ``[B, 2, n, D]`` of the important tokens of one block, from its weights alone."""
    if hasattr(block, "norm1"):  # timm Block
        attn = block.attn
        assert isinstance(attn.q_norm, nn.Identity) and isinstance(attn.k_norm, nn.Identity)
        normed = block.norm1(block_input)
        weight, bias, heads = attn.qkv.weight, attn.qkv.bias, attn.num_heads
    else:  # open_clip ResidualAttentionBlock
        attn = block.attn
        assert attn.batch_first
        normed = block.ln_1(block_input)
        weight, bias, heads = attn.in_proj_weight, attn.in_proj_bias, attn.num_heads
    batch, tokens, width = normed.shape
    head_dim = width // heads
    query, key, value = F.linear(normed, weight, bias).split(width, dim=-1)  # [B, N, D] each

    def per_head(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(batch, tokens, heads, head_dim).transpose(1, 2)

    attention = torch.softmax(per_head(query) @ per_head(key).transpose(-2, -1) * head_dim**-0.5, dim=-1)
    scores = attention.mean(dim=(1, 2))  # [B, N]: mean over heads and queries
    count = math.ceil(round(ratio * tokens, 6))
    index = torch.topk(scores, count, dim=1).indices.sort(dim=1).values
    gather = index[..., None].expand(-1, -1, width)
    return torch.stack([torch.gather(key, 1, gather), torch.gather(value, 1, gather)], dim=1)


@pytest.mark.parametrize(("backbone", "size", "side_size"), BACKBONES)
def test_shape_and_frozen_without_gradient(backbone: str, size: int, side_size: int) -> None:
    """Features are ``(B,) + feature_shape``; nothing in the backbone can be trained or keeps a graph."""
    network = build_fpt(backbone, 3, None, image_size=size, side_image_size=side_size, tiny=True)
    extractor = network.extractor
    assert extractor.feature_shape == (2, 2, 4, 64)  # 2 layers, keys/values, ceil(0.2 * 17) tokens, width 64
    assert all(not p.requires_grad for p in extractor.parameters())
    x = images(size).requires_grad_(True)
    with torch.enable_grad():
        features = extractor(x)
    assert features.shape == (2, *extractor.feature_shape)
    assert not features.requires_grad and features.grad_fn is None
    assert torch.isfinite(features).all()


@pytest.mark.parametrize(("backbone", "size", "side_size"), BACKBONES)
def test_stays_in_eval_mode(backbone: str, size: int, side_size: int) -> None:
    """``train()`` on the extractor or on the whole network leaves every backbone module in eval mode."""
    network = build_fpt(backbone, 3, None, image_size=size, side_image_size=side_size, tiny=True)
    network.extractor.train()
    assert not any(m.training for m in network.extractor.backbone.modules())
    network.train()
    assert network.side.training and network.fusion.training
    assert not any(m.training for m in network.extractor.backbone.modules())


@pytest.mark.parametrize("ratio", [0.2, 0.5])
@pytest.mark.parametrize(("backbone", "size"), [(b, s) for b, s, _ in BACKBONES])
def test_keys_and_values_match_an_independent_computation(backbone: str, size: int, ratio: float) -> None:
    """Each layer's features are the keys/values (from the block's own norm and weights) of its top-attended tokens."""
    extractor = tiny_extractor(backbone, size, ratio)
    blocks = blocks_of(extractor.backbone)
    captured: dict[int, torch.Tensor] = {}
    handles = [
        block.register_forward_pre_hook(lambda _m, args, i=i: captured.__setitem__(i, args[0].detach().clone()))
        for i, block in enumerate(blocks)
    ]
    try:
        features = extractor(images(size, batch=3))
    finally:
        for handle in handles:
            handle.remove()
    assert sorted(captured) == list(range(len(blocks))) == list(range(extractor.num_layers))
    for layer, block in enumerate(blocks):
        with torch.no_grad():
            expected = reference_features(block, captured[layer], ratio)
        assert expected.shape == features[:, layer].shape
        torch.testing.assert_close(features[:, layer], expected, atol=1e-5, rtol=1e-5)


def test_fingerprint_tracks_weights_and_name() -> None:
    """The fingerprint is stable for identical weights and changes with one weight or with the backbone name."""
    first = tiny_extractor(TINY_TIMM, 56)
    assert first.fingerprint() == first.fingerprint() == tiny_extractor(TINY_TIMM, 56).fingerprint()
    assert len(first.fingerprint()) == 64

    changed = tiny_extractor(TINY_TIMM, 56)
    assert changed.fingerprint() == first.fingerprint()
    with torch.no_grad():  # after a first call too: weights loaded later (a checkpoint) must change the identity
        changed.backbone.blocks[1].attn.qkv.weight[0, 0] += 1e-3
    assert changed.fingerprint() != first.fingerprint()

    renamed = tiny_extractor(TINY_TIMM, 56)
    renamed.backbone_name = "timm:another_name"
    assert renamed.fingerprint() != first.fingerprint()
    assert tiny_extractor(TINY_TIMM, 56, seed=1).fingerprint() != first.fingerprint()


@pytest.mark.parametrize(("backbone", "size"), [(b, s) for b, s, _ in BACKBONES])
def test_backbone_alone_is_unchanged_and_not_collected(
    backbone: str, size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hooks neither change the backbone's own output nor score any token when it runs by itself."""
    torch.manual_seed(0)
    classifier = build_classifier(backbone, 3, None, image_size=size, tiny=True)
    unhooked = build_classifier(backbone, 3, None, image_size=size, tiny=True)
    unhooked.load_state_dict(classifier.state_dict())
    unhooked.eval()
    extractor = FrozenFeatureExtractor(classifier.backbone, backbone, size)
    scored: list[int] = []

    def counting(query: torch.Tensor, key: torch.Tensor, scale: float | None = None) -> torch.Tensor:
        scored.append(query.shape[0])
        return attention_received(query, key, scale)

    monkeypatch.setattr(frozen_features, "attention_received", counting)
    x = images(size)
    with torch.no_grad():
        alone = extractor.backbone(x)
        assert torch.equal(alone, unhooked.backbone(x))
    assert scored == []
    first = extractor(x)
    assert scored == [2] * extractor.num_layers
    with torch.no_grad():
        extractor.backbone(x)
    assert len(scored) == extractor.num_layers
    assert torch.equal(extractor(x), first)  # nothing left over from the standalone run


@pytest.mark.parametrize(("backbone", "size", "side_size"), BACKBONES)
def test_a_deep_copy_collects_its_own_features(backbone: str, size: int, side_size: int) -> None:
    """A deep copy of the network (as EMA / SWA models make) runs, and its hooks read the copy's weights."""
    network = build_fpt(backbone, 3, None, image_size=size, side_image_size=side_size, tiny=True).eval()
    copied = copy.deepcopy(network)
    x = images(size)
    with torch.no_grad():
        assert torch.equal(copied(x), network(x))
        assert torch.equal(copied.frozen_features(x), network.frozen_features(x))
        for param in copied.extractor.parameters():
            param.mul_(1.5)
        assert not torch.allclose(copied.frozen_features(x), network.frozen_features(x))
        assert network.frozen_features(x).shape == (2, *network.extractor.feature_shape)


def test_wrong_image_size_and_unsupported_backbones() -> None:
    extractor = tiny_extractor(TINY_TIMM, 56)
    with pytest.raises(ValueError, match=r"expects images \[B, C, 56, 56\], got \(2, 3, 42, 42\)"):
        extractor(images(42))
    with pytest.raises(UnsupportedBackboneError, match="no self-attention layer"):
        FrozenFeatureExtractor(nn.Linear(4, 4), "none:linear", 56)
