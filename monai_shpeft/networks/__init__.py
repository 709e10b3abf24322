"""Networks: FPT's frozen branch, fusion modules, side network and the assembled classifier."""

from __future__ import annotations

from monai_shpeft.networks.fpt import FPTNetwork, build_fpt
from monai_shpeft.networks.frozen_features import FrozenFeatureExtractor, UnsupportedBackboneError
from monai_shpeft.networks.frozen_release import FrozenSnapshotError
from monai_shpeft.networks.fusion import FineGrainedFusion
from monai_shpeft.networks.side_vit import SideViT
from monai_shpeft.networks.token_selection import (
    attention_received,
    num_selected_tokens,
    select_important_tokens,
)

__all__ = [
    "FPTNetwork",
    "FineGrainedFusion",
    "FrozenFeatureExtractor",
    "FrozenSnapshotError",
    "SideViT",
    "UnsupportedBackboneError",
    "attention_received",
    "build_fpt",
    "num_selected_tokens",
    "select_important_tokens",
]
