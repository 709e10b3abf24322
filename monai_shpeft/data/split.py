"""Seeded, stratified train/validation/test splits of a labelled datalist, optionally keeping groups together."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
from sklearn.model_selection import train_test_split

__all__ = ["stratified_split"]

PARTS = ("training", "validation", "test")


def stratified_split(
    items: Sequence[dict],
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    label_key: str = "label",
    groups: Sequence[Hashable | None] | None = None,
) -> dict[str, list[dict]]:
    """Split ``items`` into training, validation and test parts with the class proportions kept in each.

    With ``groups``, items of one group (e.g. a cluster of duplicate images, or one patient) all end in the same
    part. The split is made as without groups; then each group that spans parts moves to the part holding most of
    its members (ties: the larger part), and for every item moved an ungrouped item of the same class moves the
    other way, picked with the seed, so every part keeps its size and class counts wherever such an item exists.

    Args:
        items: ``{"image": ..., "label": int}`` dictionaries.
        fractions: training, validation and test fractions (summing to 1).
        seed: random seed; the same seed, items and groups give the same split.
        label_key: key of the class label.
        groups: one group id per item (``None``: the item is on its own). Without groups, or when no group has
            two items, the split is exactly the ungrouped one.

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}``.

    Raises:
        ValueError: if the fractions do not sum to 1, a part would be empty, or ``groups`` has another length
            than ``items``.
    """
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) <= 0:
        raise ValueError(f"fractions must be three positive numbers summing to 1, got {list(fractions)}.")
    if groups is not None and len(groups) != len(items):
        raise ValueError(f"groups must give one id per item: {len(groups)} ids for {len(items)} items.")
    train_fraction, val_fraction, test_fraction = fractions
    labels = [item[label_key] for item in items]
    # the split is drawn on positions (sklearn's draw depends only on the count and the labels, so it is the same
    # split as on the items themselves), which lets groups be looked up by position
    try:
        rest, test = train_test_split(
            list(range(len(items))), test_size=test_fraction, stratify=labels, random_state=seed
        )
        rest_labels = [labels[i] for i in rest]
        train, val = train_test_split(
            rest, test_size=val_fraction / (train_fraction + val_fraction), stratify=rest_labels, random_state=seed
        )
    except ValueError as error:  # scikit-learn's message speaks of test_size, not of the user's data
        counts = {label: labels.count(label) for label in sorted(set(labels))}
        raise ValueError(
            f"cannot split {len(items)} images (per class: {counts}) into training / validation / test parts of "
            f"{list(fractions)} with every class in every part: too few images. Add images or pass an "
            f"official split. ({error})"
        ) from error
    positions = [list(train), list(val), list(test)]
    if groups is not None:
        positions = _keep_groups_together(positions, labels, groups, fractions, seed)
        empty = [PARTS[p] for p, part in enumerate(positions) if not part]
        if empty:
            raise ValueError(f"keeping the groups together left the part(s) {empty} empty; use smaller groups.")
    return {name: [items[i] for i in part] for name, part in zip(PARTS, positions)}


def _keep_groups_together(
    positions: list[list[int]],
    labels: Sequence[Hashable],
    groups: Sequence[Hashable | None],
    fractions: Sequence[float],
    seed: int,
) -> list[list[int]]:
    """Move every group that spans parts into one part, swapping ungrouped items of the same class back."""
    members: dict[Hashable, list[int]] = {}
    for index, group in enumerate(groups):
        if group is not None:
            members.setdefault(group, []).append(index)
    shared = sorted((m for m in members.values() if len(m) > 1), key=lambda m: m[0])  # in a fixed order
    if not shared:
        return positions
    grouped = {index for group in shared for index in group}
    part_of = {index: p for p, part in enumerate(positions) for index in part}
    # ungrouped items per (part, class): the pool that compensating moves draw from
    free: dict[tuple[int, Hashable], list[int]] = {}
    for p, part in enumerate(positions):
        for index in part:
            if index not in grouped:
                free.setdefault((p, labels[index]), []).append(index)
    rng = np.random.default_rng(seed)
    for group in shared:
        counts = [sum(1 for index in group if part_of[index] == p) for p in range(len(PARTS))]
        if max(counts) == len(group):
            continue
        destination = min(range(len(PARTS)), key=lambda p: (-counts[p], -fractions[p], p))
        for index in group:
            source = part_of[index]
            if source == destination:
                continue
            part_of[index] = destination
            pool = free.get((destination, labels[index]), [])
            if pool:  # one ungrouped item of the class goes the other way: sizes and class counts stay
                pick = int(rng.integers(len(pool)))
                swapped = pool[pick]
                pool[pick] = pool[-1]
                pool.pop()
                part_of[swapped] = source
                free.setdefault((source, labels[index]), []).append(swapped)
    # the ungrouped split's order, so that items that did not move keep their places
    order = [index for part in positions for index in part]
    return [[index for index in order if part_of[index] == p] for p in range(len(PARTS))]
