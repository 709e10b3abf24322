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
