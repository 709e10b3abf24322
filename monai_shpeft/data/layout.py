"""The published folder layout of a dataset, as one small object the bundles and the benchmark look up by name."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from monai_shpeft.errors import SettingsError

__all__ = [
    "DATASETS",
    "GENERIC_LAYOUTS",
    "DatasetLayout",
    "check_layout_classes",
    "get_layout",
    "register_generic_layout",
    "register_layout",
    "resolve_layout",
]

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
#: layouts of a user's own data, whose classes are the bundle's ``classes`` knob: name -> classes -> layout
GENERIC_LAYOUTS: dict[str, Callable[[tuple[str, ...]], DatasetLayout]] = {}


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
        generic = f"; with the classes knob: {sorted(GENERIC_LAYOUTS)}" if GENERIC_LAYOUTS else ""
        raise SettingsError(f"unknown dataset '{name}'; known datasets: {sorted(DATASETS)}{generic}.")
    return DATASETS[name]


def register_generic_layout(name: str, factory: Callable[[tuple[str, ...]], DatasetLayout]) -> None:
    """Add a layout whose classes are given by the bundle (``factory(classes)`` builds it)."""
    GENERIC_LAYOUTS[name] = factory


def resolve_layout(dataset: str, classes: Sequence[str] | None = None) -> DatasetLayout:
    """The layout a bundle reads: a registered dataset (its classes checked against ``classes`` when given), or a
    generic layout (``image_folder``, ``csv``) built with ``classes``.

    Raises:
        SettingsError: for an unknown name, a generic layout without classes, or classes the dataset does not have.
    """
    if dataset in GENERIC_LAYOUTS:
        if not classes:
            raise SettingsError(
                f"dataset '{dataset}' takes its class names from the bundle's classes knob, which is empty; pass "
                "--classes \"['first', 'second']\" in label order."
            )
        return GENERIC_LAYOUTS[dataset](tuple(str(name) for name in classes))
    layout = get_layout(dataset)
    if classes is not None:
        check_layout_classes(dataset, classes)
    return layout


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
    if dataset in GENERIC_LAYOUTS:  # the knob is the definition
        return [str(name) for name in classes]
    expected = list(get_layout(dataset).classes)
    if [str(name) for name in classes] != expected:
        raise SettingsError(
            f"dataset '{dataset}' labels its images as {expected} (in that order), but the bundle's classes knob "
            f'is {list(classes)}; pass --classes "{expected}" with --dataset {dataset}, so the trained head, the '
            "metadata and the predictions name the same classes."
        )
    return expected
