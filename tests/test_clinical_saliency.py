"""Saliency maps on tiny real networks: they find the evidence a trained model uses, and rollout is the paper's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from monai_shpeft.backbones import build_classifier
from monai_shpeft.clinical import (
    attention_rollout,
    check_saliency,
    denormalize,
    grad_cam,
    overlay_file_name,
    saliency_overlay,
    saliency_target,
    scale_maps,
)
from monai_shpeft.errors import SettingsError
from monai_shpeft.methods import prepare_network
from monai_shpeft.networks import build_fpt
from tests.helpers import TINY_OPEN_CLIP, TINY_TIMM, tiny_classifier

SIZE = 56  # 4 x 4 patches of 14 pixels
HALF = SIZE // 2
SQUARE = 14


def squares(count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images with a bright square in the bottom-right quadrant (every image: no evidence) and, for class 1
    only, a second one in the top-left quadrant (the evidence)."""
    images = torch.rand(count, 3, SIZE, SIZE, generator=generator) * 0.5
    labels = torch.arange(count) % 2
    for index in range(count):
        row, column = torch.randint(HALF, SIZE - SQUARE + 1, (2,), generator=generator).tolist()
        images[index, :, row : row + SQUARE, column : column + SQUARE] = 1.0
        if labels[index]:
            row, column = torch.randint(0, HALF - SQUARE + 1, (2,), generator=generator).tolist()
            images[index, :, row : row + SQUARE, column : column + SQUARE] = 1.0
    return images, labels


def top_left_wins(maps: torch.Tensor) -> float:
    """The share of maps whose mass is largest in the top-left quadrant."""
    halves = (slice(0, HALF), slice(HALF, SIZE))
    quadrants = torch.stack([maps[:, 0, rows, columns].sum(dim=(1, 2)) for rows in halves for columns in halves], 1)
    return float((quadrants.argmax(dim=1) == 0).float().mean())


def test_the_knob_takes_the_two_methods_or_nothing() -> None:
    assert [check_saliency(v) for v in ("", None, "gradcam", "rollout")] == ["", "", "gradcam", "rollout"]
    with pytest.raises(
        SettingsError, match=r"saliency 'gradcm' is not a saliency method; use one of: gradcam, rollout"
    ):
        check_saliency("gradcm")


def test_maps_of_a_trained_vit_peak_on_the_square_that_decides_the_class() -> None:
    """A tiny ViT learns "a square top-left means class 1" while every image has a decoy square bottom-right; on
    positives both maps put most mass top-left after training, and not before (the control)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same numbers on any machine, and fast: the model is tiny
    try:
        torch.manual_seed(0)
        generator = torch.Generator().manual_seed(0)
        # LayerScale 1 instead of DINOv2's 1e-5: at random init the blocks then pass the image to the class token
        model = build_classifier(TINY_TIMM, 2, image_size=SIZE, tiny=True, logit_scale=30.0, init_values=1.0)
        test_images, test_labels = squares(64, torch.Generator().manual_seed(1))
        positives = test_images[test_labels == 1][:16]
        before = (top_left_wins(grad_cam(model, positives, 1)), top_left_wins(attention_rollout(model, positives)))

        optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4)
        model.train()
        for _ in range(300):
            images, labels = squares(32, generator)
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            accuracy = float((model(test_images).argmax(dim=1) == test_labels).float().mean())
        cam, rollout = grad_cam(model, positives, 1), attention_rollout(model, positives)
    finally:
        torch.set_num_threads(threads)
    assert accuracy >= 0.95
    assert before[0] <= 0.5 and before[1] <= 0.5, before
    assert top_left_wins(cam) >= 0.75 and top_left_wins(rollout) >= 0.9
    for maps in (cam, rollout):
        mean = maps.mean(dim=0)[0]
        row, column = divmod(int(mean.argmax()), SIZE)
        assert row < HALF and column < HALF  # the average map peaks on the evidence
        assert float(mean[:HALF, :HALF].sum()) > float(mean[HALF:, HALF:].sum())  # not on the decoy


def _reference_rollout(attentions: list[torch.Tensor], grid: int, size: int) -> torch.Tensor:
    """Abnar & Zuidema's rollout of head-averaged attention maps ``[B, N, N]``, read on the class token, upsampled
    bilinearly to ``size`` and scaled to ``[0, 1]``."""
    flow = torch.eye(attentions[0].shape[-1]).expand_as(attentions[0])
    for attention in attentions:
        flow = (0.5 * attention + 0.5 * torch.eye(attention.shape[-1])) @ flow
    maps = flow[:, 0, 1:].reshape(-1, 1, grid, grid)
    maps = F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False)
    low = maps.amin(dim=(2, 3), keepdim=True)
    return (maps - low) / (maps.amax(dim=(2, 3), keepdim=True) - low)


def test_rollout_of_timm_blocks_matches_their_unfused_attention() -> None:
    """timm's own unfused path computes the attention probabilities in front of ``attn_drop``: the hooks recompute
    the same from ``qkv`` while the blocks run fused."""
    model = tiny_classifier(TINY_TIMM, image_size=SIZE).eval()
    images = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    maps = attention_rollout(model, images, outlier_percent=0)  # plain min-max scaling, as the reference
    attentions: list[torch.Tensor] = []
    for block in model.backbone.blocks:
        block.attn.fused_attn = False
        block.attn.attn_drop.register_forward_hook(lambda m, args, out: attentions.append(out.mean(dim=1)))
    with torch.no_grad():
        model(images)
    assert torch.allclose(maps, _reference_rollout(attentions, SIZE // 14, SIZE), atol=1e-5)


def test_rollout_of_open_clip_blocks_matches_their_multihead_attention() -> None:
    size = 64  # 4 x 4 patches of 16 pixels
    model = tiny_classifier(TINY_OPEN_CLIP, image_size=size).eval()
    attentions: list[torch.Tensor] = []

    def reference(module: torch.nn.MultiheadAttention, args: tuple[torch.Tensor, ...]) -> None:
        heads, width = module.num_heads, module.embed_dim
        query, key, _ = F.linear(args[0], module.in_proj_weight, module.in_proj_bias).chunk(3, dim=-1)
        query, key = (t.reshape(*t.shape[:2], heads, width // heads).transpose(1, 2) for t in (query, key))
        attentions.append(torch.softmax(query @ key.transpose(-1, -2) / (width // heads) ** 0.5, dim=-1).mean(1))

    for block in model.backbone.transformer.resblocks:
        block.attn.register_forward_pre_hook(reference)
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    maps = attention_rollout(model, images, outlier_percent=0)  # plain min-max scaling, as the reference
    assert torch.allclose(maps, _reference_rollout(attentions, 4, size), atol=1e-5)


def test_grad_cam_of_a_batch_maps_each_image_for_its_own_class() -> None:
    """MONAI's ``logits[:, idx]`` would mix the classes of a batch; each image's map is that of its class alone."""
    model = tiny_classifier(TINY_TIMM, image_size=SIZE).eval()
    images = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    classes = torch.tensor([0, 2, 1])
    together = grad_cam(model, images, classes)
    alone = torch.cat([grad_cam(model, images[i : i + 1], int(classes[i])) for i in range(3)])
    assert torch.allclose(together, alone, atol=1e-5)
    assert not torch.allclose(grad_cam(model, images[:1], 0), grad_cam(model, images[:1], 2), atol=1e-3)


@pytest.mark.parametrize("backbone", [TINY_TIMM, TINY_OPEN_CLIP])
@pytest.mark.parametrize("method", ["shpeft", "linear_probe", "lora", "ssf", "ln", "vpt_deep", "adapter"])
def test_every_method_gives_maps_and_leaves_its_weights_as_they_were(backbone: str, method: str) -> None:
    size = SIZE if backbone == TINY_TIMM else SIZE + 8
    model = prepare_network(tiny_classifier(backbone, image_size=size), method)
    flags = [p.requires_grad for p in model.parameters()]
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # as an evaluator calls it
        maps = [grad_cam(model, images), attention_rollout(model, images)]
    for found in maps:
        assert found.shape == (2, 1, size, size) and float(found.min()) == 0.0 and float(found.max()) == 1.0
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())  # the maps cost no weight gradients


def test_fpt_maps_are_those_of_the_side_network_on_the_low_resolution_patches() -> None:
    network = build_fpt(TINY_TIMM, 3, image_size=SIZE, side_image_size=28, tiny=True).eval()
    target = saliency_target(network)
    assert target.gradcam_layer == "side.blocks.1.norm1" and target.layout is not None
    assert target.layout.grid == (2, 2) and not target.layout.patches_last  # FPT appends its prompts
    generator = torch.Generator().manual_seed(0)
    image, image_lr = torch.randn(2, 3, SIZE, SIZE, generator=generator), torch.randn(2, 3, 28, 28, generator=generator)
    for maps in (
        grad_cam(network, image, None, image_lr=image_lr),
        attention_rollout(network, image, None, image_lr=image_lr),
    ):
        assert maps.shape == (2, 1, SIZE, SIZE) and float(maps.max()) == 1.0  # drawn over the high-resolution image
    # the map follows the side network's own input: the same high-resolution image with another low-resolution copy
    # gives another map
    other = grad_cam(network, image, None, image_lr=image_lr.flip(-1))
    assert not torch.allclose(other, grad_cam(network, image, None, image_lr=image_lr))


def test_a_cnn_gets_grad_cam_on_its_last_stage_and_no_rollout() -> None:
    torch.manual_seed(0)
    model = build_classifier("timm:resnet18", 2, image_size=64).eval()
    target = saliency_target(model)
    assert target.gradcam_layer == "backbone.layer4" and target.layout is None
    maps = grad_cam(model, torch.randn(2, 3, 64, 64))
    assert maps.shape == (2, 1, 64, 64)
    with pytest.raises(SettingsError, match="saliency 'rollout' needs a vision transformer's attention"):
        saliency_target(model, "rollout")
    with pytest.raises(SettingsError, match="use --saliency gradcam"):
        attention_rollout(model, torch.randn(1, 3, 64, 64))


def test_scaling_clips_a_few_extreme_pixels_so_they_do_not_wash_out_the_map() -> None:
    maps = torch.linspace(0, 1, 100).reshape(1, 1, 10, 10).clone()
    maps[0, 0, 0, 0] = 40.0  # one token far above the rest, as DINOv2's high-norm background tokens are
    plain, clipped = scale_maps(maps, outlier_percent=0), scale_maps(maps)
    assert float(plain[0, 0, 9, 9]) < 0.03  # unclipped, the brightest ordinary pixel is nearly black
    assert float(clipped[0, 0, 9, 9]) == 1.0 and float(clipped[0, 0, 0, 0]) == 1.0
    assert float(clipped[0, 0, 5, 0]) == pytest.approx(50 / 97, abs=0.02)  # the rest spread over [0, 1]
    assert torch.equal(scale_maps(torch.ones(2, 1, 4, 4)), torch.zeros(2, 1, 4, 4))  # a flat map shows nothing


def test_overlay_shows_the_image_where_the_map_is_low_and_colour_where_it_is_high() -> None:
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    pixels = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    normalised = (pixels - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    shown = denormalize(normalised, mean, std)
    assert torch.allclose(shown, pixels, atol=1e-6)
    saliency = torch.zeros(1, 8, 8)
    saliency[0, :4, :4] = 1.0
    rgb = saliency_overlay(shown, saliency, alpha=0.6, cmap="jet")
    assert rgb.shape == (8, 8, 3) and rgb.dtype == np.uint8
    image_rgb = (shown.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(rgb[4:, 4:], image_rgb[4:, 4:])  # map 0: the image untouched
    assert np.abs(rgb[:4, :4].astype(int) - image_rgb[:4, :4]).mean() > 20  # map 1: jet's dark red over it
    assert overlay_file_name("busi/benign/benign (12).png", "benign") == "benign_12_benign.png"
