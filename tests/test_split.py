from __future__ import annotations

import pytest

from monai_shpeft.data import stratified_split

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
