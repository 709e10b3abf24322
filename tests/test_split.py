from __future__ import annotations

import math

import pytest

from monai_shpeft.data import stratified_split
from monai_shpeft.data.split import GroupSplitError, kfold_split, minimum_kfold_size

ITEMS = [{"image": f"img{i}.png", "label": i % 3} for i in range(60)] + [
    {"image": f"extra{i}.png", "label": 0} for i in range(30)
]


def test_split_is_disjoint_complete_and_stratified() -> None:
    split = stratified_split(ITEMS, (0.7, 0.1, 0.2), seed=3)
    names = {part: {item["image"] for item in items} for part, items in split.items()}
    assert sum(len(v) for v in names.values()) == len(ITEMS)
    assert not names["training"] & names["test"] and not names["validation"] & names["test"]
    assert not names["training"] & names["validation"]
    assert len(split["test"]) == 18
    test_labels = [item["label"] for item in split["test"]]
    assert test_labels.count(0) == 10 and test_labels.count(1) == 4 and test_labels.count(2) == 4


def test_split_is_seeded() -> None:
    assert stratified_split(ITEMS, seed=1) == stratified_split(ITEMS, seed=1)
    assert stratified_split(ITEMS, seed=1)["test"] != stratified_split(ITEMS, seed=2)["test"]


def test_bad_fractions() -> None:
    with pytest.raises(ValueError, match="summing to 1"):
        stratified_split(ITEMS, (0.5, 0.2, 0.2))


def test_too_small_a_dataset_is_explained() -> None:
    tiny = [{"image": f"{i}.png", "label": i % 3} for i in range(9)]
    with pytest.raises(ValueError, match=r"cannot split 9 images \(per class: \{0: 3, 1: 3, 2: 3\}\)"):
        stratified_split(tiny)


def part_of(split: dict[str, list[dict]]) -> dict[str, str]:
    return {item["image"]: part for part, items in split.items() for item in items}


def class_counts(split: dict[str, list[dict]]) -> dict[str, dict[int, int]]:
    return {part: {c: [i["label"] for i in items].count(c) for c in range(3)} for part, items in split.items()}


# pairs and triples of items, as duplicate clusters would group them (one triple mixes labels 0 and 1)
GROUPS = [None] * len(ITEMS)
for group, members in enumerate([(0, 3), (1, 4), (2, 5, 8), (10, 60), (11, 14), (20, 23, 26), (30, 33), (61, 62)]):
    for member in members:
        GROUPS[member] = f"cluster{group}"


def test_groups_stay_together_with_the_class_counts_of_the_plain_split() -> None:
    plain = stratified_split(ITEMS, seed=0)
    grouped = stratified_split(ITEMS, seed=0, groups=GROUPS)
    where = part_of(grouped)
    for group in set(GROUPS) - {None}:
        parts = {where[ITEMS[i]["image"]] for i, g in enumerate(GROUPS) if g == group}
        assert len(parts) == 1, group
    assert class_counts(grouped) == class_counts(plain)
    assert sorted(where) == sorted(item["image"] for item in ITEMS)
    # the plain split scatters some of these groups: the test would prove nothing otherwise
    plain_where = part_of(plain)
    assert any(len({plain_where[ITEMS[i]["image"]] for i, g in enumerate(GROUPS) if g == x}) > 1 for x in GROUPS if x)
    moved = sum(plain_where[name] != part for name, part in where.items())
    assert 0 < moved <= 2 * sum(1 for g in GROUPS if g)  # each move of a member swaps at most one item back


def test_grouped_split_is_seeded() -> None:
    assert stratified_split(ITEMS, seed=5, groups=GROUPS) == stratified_split(ITEMS, seed=5, groups=GROUPS)
    assert stratified_split(ITEMS, seed=5, groups=GROUPS) != stratified_split(ITEMS, seed=6, groups=GROUPS)


def test_groups_of_one_leave_the_split_unchanged() -> None:
    singletons = [None if i % 2 else f"own{i}" for i in range(len(ITEMS))]
    assert stratified_split(ITEMS, seed=4, groups=singletons) == stratified_split(ITEMS, seed=4)
    with pytest.raises(ValueError, match="one id per item: 3 ids for 90 items"):
        stratified_split(ITEMS, groups=[None, None, None])


def test_a_group_goes_where_most_of_its_members_are() -> None:
    plain = part_of(stratified_split(ITEMS, seed=2))
    by_part: dict[str, list[int]] = {}
    for index, item in enumerate(ITEMS):
        if item["label"] == 0:
            by_part.setdefault(plain[item["image"]], []).append(index)
    # two training items and one test item of class 0 form a group: it must end in training
    members = [*by_part["training"][:2], by_part["test"][0]]
    groups = ["trio" if i in members else None for i in range(len(ITEMS))]
    where = part_of(stratified_split(ITEMS, seed=2, groups=groups))
    assert {where[ITEMS[i]["image"]] for i in members} == {"training"}


# ------------------------------------------------------------------------------------------------ k-fold splits


def images_of(items: list[dict]) -> list[str]:
    return [item["image"] for item in items]


def label_counts(items: list[dict]) -> dict[int, int]:
    return {c: [i["label"] for i in items].count(c) for c in sorted({i["label"] for i in ITEMS})}


@pytest.mark.parametrize("num_folds", [2, 3, 5, 10])
def test_kfold_test_parts_cover_every_item_once(num_folds: int) -> None:
    every = sorted(images_of(ITEMS))
    tested: list[str] = []
    for fold in range(num_folds):
        split = kfold_split(ITEMS, num_folds, fold, seed=7)
        parts = [images_of(split[part]) for part in ("training", "validation", "test")]
        assert sorted(sum(parts, [])) == every  # each fold's parts are disjoint and hold every item
        tested += parts[2]
    assert sorted(tested) == every  # the folds' test parts: disjoint, and every item tested once


@pytest.mark.parametrize("num_folds", [3, 5, 10])
def test_kfold_parts_are_stratified(num_folds: int) -> None:
    overall = label_counts(ITEMS)  # {0: 50, 1: 20, 2: 20}
    for fold in range(num_folds):
        split = kfold_split(ITEMS, num_folds, fold, seed=1)
        for part, items in split.items():
            counts = label_counts(items)
            assert min(counts.values()) >= 1, f"fold {fold}: {part} lacks a class"
            for label, count in counts.items():  # each class keeps its share of the part
                assert abs(count / len(items) - overall[label] / len(ITEMS)) < 0.1, (fold, part, counts)
        for label, count in label_counts(split["test"]).items():  # the fold takes 1/k of each class
            assert math.floor(overall[label] / num_folds) <= count <= math.ceil(overall[label] / num_folds)
        assert abs(len(split["validation"]) - 0.1 * len(ITEMS)) <= 1  # the default validation fraction


def test_five_folds_give_70_10_20_and_the_validation_fraction_is_of_the_whole() -> None:
    split = kfold_split(ITEMS, 5, 0)
    assert {part: len(items) for part, items in split.items()} == {"training": 63, "validation": 9, "test": 18}
    bigger = kfold_split(ITEMS, 5, 0, validation_fraction=0.15)
    assert len(bigger["validation"]) == 14 and len(bigger["test"]) == 18


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("num_folds", [3, 5])
def test_kfold_keeps_every_group_in_one_part_of_every_fold(num_folds: int, seed: int) -> None:
    members = {g: [ITEMS[i]["image"] for i, x in enumerate(GROUPS) if x == g] for g in set(GROUPS) - {None}}
    tested: list[str] = []
    for fold in range(num_folds):
        split = kfold_split(ITEMS, num_folds, fold, seed=seed, groups=GROUPS)
        where = part_of(split)
        assert sorted(where) == sorted(images_of(ITEMS))
        for group, images in members.items():
            assert len({where[image] for image in images}) == 1, (fold, group)
        assert all(min(label_counts(items).values()) >= 1 for items in split.values())
        tested += images_of(split["test"])
    assert sorted(tested) == sorted(images_of(ITEMS))
    # without the groups some of them straddle parts: the test would prove nothing otherwise
    plain = [part_of(kfold_split(ITEMS, num_folds, fold, seed=seed)) for fold in range(num_folds)]
    assert any(len({w[image] for image in images}) > 1 for w in plain for images in members.values())


def test_groups_of_one_leave_the_kfold_split_unchanged() -> None:
    singletons = [None if i % 2 else f"own{i}" for i in range(len(ITEMS))]
    assert kfold_split(ITEMS, 4, 2, seed=4, groups=singletons) == kfold_split(ITEMS, 4, 2, seed=4)


def test_kfold_split_is_seeded() -> None:
    assert kfold_split(ITEMS, 5, 2, seed=1) == kfold_split(ITEMS, 5, 2, seed=1)
    assert kfold_split(ITEMS, 5, 2, seed=1, groups=GROUPS) == kfold_split(ITEMS, 5, 2, seed=1, groups=GROUPS)
    assert kfold_split(ITEMS, 5, 2, seed=1)["test"] != kfold_split(ITEMS, 5, 2, seed=2)["test"]
    assert kfold_split(ITEMS, 5, 2, seed=1)["validation"] != kfold_split(ITEMS, 5, 2, seed=2)["validation"]
    assert kfold_split(ITEMS, 5, 2, seed=1)["test"] != kfold_split(ITEMS, 5, 3, seed=1)["test"]


def test_bad_folds_are_named() -> None:
    with pytest.raises(ValueError, match=r"fold must be one of 0\.\.4 for num_folds=5, got 5"):
        kfold_split(ITEMS, 5, 5)
    with pytest.raises(ValueError, match=r"fold must be one of 0\.\.2 for num_folds=3, got -1"):
        kfold_split(ITEMS, 3, -1)
    with pytest.raises(ValueError, match=r"fold must be one of 0\.\.2 for num_folds=3, got 1\.0"):
        kfold_split(ITEMS, 3, 1.0)  # type: ignore[arg-type]
    for bad in (1, 0, -2, True, 2.5, None):
        with pytest.raises(ValueError, match=f"num_folds must be an integer of at least 2, got {bad!r}"):
            kfold_split(ITEMS, bad, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"validation fraction of a 2-fold split must lie between 0 and 0\.5"):
        kfold_split(ITEMS, 2, 0, validation_fraction=0.5)
    with pytest.raises(ValueError, match="one id per item: 3 ids for 90 items"):
        kfold_split(ITEMS, 5, 0, groups=[None, None, None])


@pytest.mark.parametrize("num_folds, per_class", [(2, 4), (3, 3), (5, 5), (10, 10)])
def test_too_few_images_for_the_folds_are_explained_and_the_bound_is_exact(num_folds: int, per_class: int) -> None:
    assert minimum_kfold_size(3, num_folds) == (3 * per_class, per_class)
    enough = [{"image": f"{i}.png", "label": i % 3} for i in range(3 * per_class)]
    for fold in range(num_folds):
        split = kfold_split(enough, num_folds, fold)
        assert all(min(label_counts(items).values()) >= 1 for items in split.values()), fold
    short = enough[:-1]  # class 2 one image short
    counts = {0: per_class, 1: per_class, 2: per_class - 1}
    with pytest.raises(ValueError) as info:
        kfold_split(short, num_folds, 0)
    message = str(info.value)
    assert f"cannot split {len(short)} images (per class: {counts}) into {num_folds} stratified folds" in message
    assert f"Each class needs at least {per_class} images" in message and "Add images or use fewer folds" in message


def test_a_small_class_reaches_every_part_however_unbalanced() -> None:
    """scikit-learn's stratified draw may leave a small class out of a small part; the k-fold draw does not."""
    items = [{"image": f"big{i}.png", "label": 0} for i in range(60)] + [
        {"image": f"small{i}.png", "label": 1} for i in range(5)
    ]
    for seed in range(5):
        for fold in range(5):
            split = kfold_split(items, 5, fold, seed=seed)
            assert all({item["label"] for item in part} == {0, 1} for part in split.values()), (seed, fold)


def test_a_group_too_large_to_keep_in_one_fold_is_explained() -> None:
    whole_class = ["class2" if item["label"] == 2 else None for item in ITEMS]  # one group holds all of class 2
    with pytest.raises(GroupSplitError, match=r"has no (training|validation|test) image of class\(es\) \[2\]"):
        for fold in range(3):
            kfold_split(ITEMS, 3, fold, groups=whole_class)
    with pytest.raises(GroupSplitError, match="cannot keep the groups together in 5 folds"):
        kfold_split(ITEMS, 5, 0, groups=["a" if i < 88 else None for i in range(len(ITEMS))])
