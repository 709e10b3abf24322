"""Tests of the knob checks done before any data is read (monai_shpeft.settings)."""

from __future__ import annotations

import pytest

from monai_shpeft.backbones import patch_size_of
from monai_shpeft.errors import SettingsError
from monai_shpeft.settings import check_settings

DINO = "timm:vit_small_patch14_dinov2"


def test_patch_sizes_come_from_the_libraries_configurations() -> None:
    assert patch_size_of(DINO) == 14
    assert patch_size_of("open_clip:ViT-B-16") == 16 and patch_size_of("open_clip:ViT-L-14") == 14
    assert patch_size_of("timm:resnet50") is None  # no patches: nothing to check


def test_good_settings_pass() -> None:
    check_settings("shpeft", DINO, 112, budget=0.01, num_folds=5, fold=4)
    check_settings("fpt", DINO, 30, fpt_image_size=448, fpt_side_image_size=224)  # image_size unused by FPT
    check_settings("lora", "open_clip:ViT-B-16", 224, learning_rate="1e-4", amp="false")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"method": "sheft"}, "Unknown method 'sheft'"),
        ({"optimizer_name": "adam"}, "Unknown optimizer_name 'adam'"),
        ({"image_size": 100}, "image_size 100 is not a multiple of the patch size 14 .* Use 98 or 112"),
        ({"image_size": 0}, "image_size must be a positive whole number"),
        ({"budget": 1.5}, r"budget ratio must be in \(0, 1\]"),
        ({"budget": 0}, "budget count must be between 1"),
        ({"learning_rate": -1}, "learning_rate must be a positive number"),
        ({"amp": "fast"}, "amp must be one of"),
        ({"num_folds": 5, "fold": 5}, "fold must be one of 0..4"),
        ({"method": "fpt", "fpt_image_size": 512, "fpt_side_image_size": 224}, "Use 504 or 518"),
        ({"method": "fpt", "fpt_image_size": 224, "fpt_side_image_size": 448}, "is larger than fpt_image_size"),
    ],
)
def test_each_bad_knob_is_named_with_a_value_that_works(changes: dict, message: str) -> None:
    settings = {"method": "shpeft", "backbone": DINO, "image_size": 112, "budget": 0.01} | changes
    with pytest.raises(SettingsError, match=message):
        check_settings(**settings)
