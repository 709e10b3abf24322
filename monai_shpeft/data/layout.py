"""The published folder layout of a dataset, as one small object the bundles and the benchmark look up by name."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from monai_shpeft.errors import SettingsError

__all__ = ["DATASETS", "DatasetLayout", "check_layout_classes", "get_layout", "register_layout"]

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


def check_layout_classes(dataset: str, classes: Sequence[str]) -> list[str]:
    """Check a bundle's ``classes`` knob against the labels its dataset layout gives, and return the classes.

    The layout numbers its labels in its own class order; a bundle whose ``classes`` differ (another count, or
    another order) would train a head whose outputs mean other classes than its metadata says.

    Args:
        dataset: a registered layout name.
        classes: the bundle's class names, in label order.

    Raises:
        SettingsError: naming both class lists and the knob that fixes it.
    """
    expected = list(get_layout(dataset).classes)
    if [str(name) for name in classes] != expected:
        raise SettingsError(
            f"dataset '{dataset}' labels its images as {expected} (in that order), but the bundle's classes knob "
            f'is {list(classes)}; pass --classes "{expected}" with --dataset {dataset}, so the trained head, the '
            "metadata and the predictions name the same classes."
        )
    return expected
