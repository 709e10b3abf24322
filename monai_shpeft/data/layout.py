"""The published folder layout of a dataset, as one small object the bundles and the benchmark look up by name."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from monai_shpeft.errors import SettingsError

__all__ = ["DATASETS", "DatasetLayout", "get_layout", "register_layout"]

Items = list[dict]
#: a lister returns labelled items, or the dataset's official parts ("training"/"validation"/"test") when it has them
Lister = Callable[[str | os.PathLike], Items | dict[str, Items]]


@dataclass(frozen=True)
class DatasetLayout:
    """How to read one dataset as it is distributed.

    Args:
        name: short name used by bundles (``busi``, ``chaoyang``, ...).
        classes: class names in label order.
        modality: the modality preset of ``monai_shpeft.transforms`` that reads its files.
        list_items: ``dataset_dir -> items`` or ``-> {"training": items, "validation": items, "test": items}``.
        citation: the dataset's reference, for model cards.
    """

    name: str
    classes: tuple[str, ...]
    modality: str
    list_items: Lister
    citation: str = ""


DATASETS: dict[str, DatasetLayout] = {}


def register_layout(layout: DatasetLayout) -> DatasetLayout:
    """Add ``layout`` to :data:`DATASETS` (a later registration of the same name replaces it)."""
    DATASETS[layout.name] = layout
    return layout


def get_layout(name: str) -> DatasetLayout:
    """Return the registered layout called ``name``.

    Raises:
        ValueError: listing the known names if ``name`` is unknown.
    """
    if name not in DATASETS:
        raise SettingsError(f"unknown dataset '{name}'; known datasets: {sorted(DATASETS)}.")
    return DATASETS[name]
