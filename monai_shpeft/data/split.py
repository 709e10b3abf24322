"""Seeded, stratified train/validation/test splits of a labelled datalist, optionally keeping groups together.

:func:`stratified_split` draws one split by fractions; :func:`kfold_split` takes the test part from a stratified
k-fold, so that ``num_folds`` runs, one per fold, test every image exactly once.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Hashable, Sequence
from typing import SupportsIndex

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from monai_shpeft.errors import InputError, SettingsError

__all__ = ["GroupSplitError", "check_folds", "kfold_split", "minimum_kfold_size", "stratified_split"]

PARTS = ("training", "validation", "test")
#: validation part of a k-fold split, as a fraction of all images: with 5 folds the parts are 70 / 10 / 20 %, the
#: proportions of the default :func:`stratified_split`
DEFAULT_VALIDATION_FRACTION = 0.1


class GroupSplitError(InputError, ValueError):
    """The groups are too large to keep each in one part with every part (and, in a k-fold, every class) filled."""


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
            than ``items``; :class:`GroupSplitError` if keeping the groups together empties a part.
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
            raise GroupSplitError(f"keeping the groups together left the part(s) {empty} empty; use smaller groups.")
    return {name: [items[i] for i in part] for name, part in zip(PARTS, positions)}


def kfold_split(
    items: Sequence[dict],
    num_folds: int,
    fold: int,
    seed: int = 0,
    label_key: str = "label",
    groups: Sequence[Hashable | None] | None = None,
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
) -> dict[str, list[dict]]:
    """Fold ``fold`` of a seeded, stratified k-fold split: its test part is one fold, the other folds train.

    The test part is fold ``fold`` of scikit-learn's ``StratifiedGroupKFold(n_splits=num_folds, shuffle=True,
    random_state=seed)``: the same seed gives the same folds whatever ``fold`` is asked for, so the test parts of
    the ``num_folds`` folds are disjoint and hold every item once. The items of the other folds are split into
    training and validation by a seeded draw per class: ``validation_fraction`` of *all* items (default 0.1, so
    with 5 folds the parts are 70 / 10 / 20 %, the proportions of :func:`stratified_split`; with 10 folds
    80 / 10 / 10 %), with every class on both sides. Then, as in :func:`stratified_split`, every group that spans
    training and validation moves whole to the side holding most of it, and ungrouped items of its class move back.

    Args:
        items: ``{"image": ..., "label": int}`` dictionaries.
        num_folds: number of folds (at least 2); the test part is about ``1 / num_folds`` of the items.
        fold: which fold is the test part, ``0 .. num_folds - 1``.
        seed: random seed of the folds and of the validation draw.
        label_key: key of the class label.
        groups: one group id per item (``None``: the item is a group of its own). A group (a cluster of
            duplicate images, or one patient) never spans two parts, in any fold.
        validation_fraction: validation part as a fraction of all items, below ``1 - 1 / num_folds``.

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}``, every class in every part.

    Raises:
        ValueError: if ``num_folds`` or ``fold`` is out of range, ``validation_fraction`` leaves no training part,
            ``groups`` has another length than ``items``, a class has too few items to reach every part (the
            message says how many it needs); :class:`GroupSplitError` if the groups are too large to keep together.
    """
    num_folds, fold = check_folds(num_folds, fold, validation_fraction)
    if groups is not None and len(groups) != len(items):
        raise ValueError(f"groups must give one id per item: {len(groups)} ids for {len(items)} items.")
    labels = [item[label_key] for item in items]
    classes = sorted(set(labels))
    counts = {label: labels.count(label) for label in classes}
    total, per_class = minimum_kfold_size(len(classes), num_folds)
    if min(counts.values(), default=0) < per_class:
        raise ValueError(
            f"cannot split {len(items)} images (per class: {counts}) into {num_folds} stratified folds with every "
            f"class in every part: too few images. Each class needs at least {per_class} images (one per fold, and "
            f"two left for training and validation), {total} images in all. Add images or use fewer folds."
        )
    # integer group ids for scikit-learn: one per named group, a fresh one for each item without a group
    codes: dict[tuple[str, Hashable], int] = {}
    group_codes = [
        codes.setdefault(("item", index) if group is None else ("group", group), len(codes))
        for index, group in enumerate(groups if groups is not None else [None] * len(items))
    ]
    folds = StratifiedGroupKFold(n_splits=num_folds, shuffle=True, random_state=seed)
    try:  # with the class sizes checked above, only groups can make scikit-learn fail here
        rest, test = list(folds.split(np.zeros(len(items)), np.asarray(labels), np.asarray(group_codes)))[fold]
    except ValueError as error:
        raise GroupSplitError(
            f"cannot keep the groups together in {num_folds} folds of {len(items)} images: {error} Use smaller "
            "groups or fewer folds."
        ) from error
    rest, test = [int(i) for i in rest], [int(i) for i in test]
    # validation_fraction of the whole, rounded half up (a small tolerance: 0.15 * 90 is 13.499... in floats)
    size = math.floor(validation_fraction * len(items) + 0.5 + 1e-9)
    train, val = _stratified_draw(rest, labels, size, np.random.default_rng(seed))
    share = len(val) / len(rest)
    positions = [train, val]
    if groups is not None:  # groups lie wholly inside the other folds or wholly in the test fold
        inside = set(rest)
        rest_groups = [group if index in inside else None for index, group in enumerate(groups)]
        positions = _keep_groups_together(positions, labels, rest_groups, (1.0 - share, share), seed)
    positions.append(test)
    for name, part in zip(PARTS, positions):
        missing = [label for label in classes if label not in {labels[i] for i in part}]
        if missing:  # only groups can take a class out of a part: the draw puts every class everywhere
            raise GroupSplitError(
                f"fold {fold} of the {num_folds}-fold split of {len(items)} images (per class: {counts}) has no "
                f"{name} image of class(es) {missing}: the groups are too large to keep together. Use smaller "
                "groups or fewer folds, or add images of those classes."
            )
    return {name: [items[i] for i in part] for name, part in zip(PARTS, positions)}


def check_folds(num_folds: int, fold: int, validation_fraction: float = DEFAULT_VALIDATION_FRACTION) -> tuple[int, int]:
    """Return ``(num_folds, fold)`` as ``int`` if they name a fold of a k-fold split that leaves a training part.

    Raises:
        ValueError: if ``num_folds`` is not an integer of at least 2, ``fold`` is not one of
            ``0 .. num_folds - 1``, or ``validation_fraction`` is not between 0 and ``1 - 1 / num_folds``.
    """
    folds, index = _as_int(num_folds), _as_int(fold)
    if folds is None or folds < 2:
        raise SettingsError(f"num_folds must be an integer of at least 2, got {num_folds!r}.")
    if index is None or not 0 <= index < folds:
        raise SettingsError(f"fold must be one of 0..{folds - 1} for num_folds={folds}, got {fold!r}.")
    rest = 1.0 - 1.0 / folds
    if not 0 < validation_fraction < rest:
        raise SettingsError(
            f"the validation fraction of a {folds}-fold split must lie between 0 and {rest:.3g} (what the "
            f"test fold leaves), got {validation_fraction}."
        )
    return folds, index


def _as_int(value: object) -> int | None:
    """``value`` as an ``int`` if it is an integer (Python's or NumPy's, not a bool), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, SupportsIndex):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def minimum_kfold_size(num_classes: int, num_folds: int) -> tuple[int, int]:
    """The fewest images, in all and per class, with which :func:`kfold_split` puts every class in every part.

    Each class needs one image in every fold, and the folds other than the test fold must keep two of it (one
    for training, one for validation) although the test fold takes up to ``ceil(count / num_folds)``. Groups
    can need more.

    Returns:
        ``(images, images_per_class)``.
    """
    per_class = max(num_folds, 3)
    while per_class - math.ceil(per_class / num_folds) < 2:  # only 2 folds: half of 3 is 2, leaving 1
        per_class += 1
    return num_classes * per_class, per_class


def _stratified_draw(
    positions: Sequence[int], labels: Sequence[Hashable], size: int, rng: np.random.Generator
) -> tuple[list[int], list[int]]:
    """Split ``positions`` into kept and drawn, drawing ``size`` of them with every class on both sides.

    Each class gives its proportional share, at least one and all but one of its members; the remainder of the
    rounding goes to the classes furthest below their share, so ``size`` are drawn where these bounds allow.
    Unlike scikit-learn's draw, a class much smaller than the others is never left out.
    """
    members: dict[Hashable, list[int]] = {}
    for position in positions:
        members.setdefault(labels[position], []).append(position)
    order = list(members)  # first appearance: a fixed order for the tie-breaks
    ideal = {label: size * len(members[label]) / len(positions) for label in order}
    take = {label: min(len(members[label]) - 1, max(1, math.floor(ideal[label]))) for label in order}
    while sum(take.values()) < size:
        room = [label for label in order if take[label] < len(members[label]) - 1]
        if not room:
            break
        take[max(room, key=lambda label: ideal[label] - take[label])] += 1
    while sum(take.values()) > size:
        spare = [label for label in order if take[label] > 1]
        if not spare:
            break
        take[min(spare, key=lambda label: ideal[label] - take[label])] -= 1
    drawn: set[int] = set()
    for label in order:
        picks = rng.permutation(len(members[label]))[: take[label]]
        drawn.update(members[label][int(pick)] for pick in picks)
    return [p for p in positions if p not in drawn], [p for p in positions if p in drawn]


def _keep_groups_together(
    positions: list[list[int]],
    labels: Sequence[Hashable],
    groups: Sequence[Hashable | None],
    fractions: Sequence[float],
    seed: int,
) -> list[list[int]]:
    """Move every group that spans parts into one part, swapping ungrouped items of the same class back.

    ``positions`` holds the parts (two or three), ``fractions`` their nominal sizes (ties go to the larger part);
    every member of a group must be in one of the parts.
    """
    members: dict[Hashable, list[int]] = {}
    for index, group in enumerate(groups):
        if group is not None:
            members.setdefault(group, []).append(index)
    shared = sorted((m for m in members.values() if len(m) > 1), key=lambda m: m[0])  # in a fixed order
    if not shared:
        return positions
    grouped = {index for group_items in shared for index in group_items}
    part_of = {index: p for p, part in enumerate(positions) for index in part}
    # ungrouped items per (part, class): the pool that compensating moves draw from
    free: dict[tuple[int, Hashable], list[int]] = {}
    for p, part in enumerate(positions):
        for index in part:
            if index not in grouped:
                free.setdefault((p, labels[index]), []).append(index)
    rng = np.random.default_rng(seed)
    for group_items in shared:
        counts = [sum(1 for index in group_items if part_of[index] == p) for p in range(len(positions))]
        if max(counts) == len(group_items):
            continue
        destination = min(range(len(positions)), key=lambda p: (-counts[p], -fractions[p], p))
        for index in group_items:
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
    return [[index for index in order if part_of[index] == p] for p in range(len(positions))]
