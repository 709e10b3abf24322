"""Seeded, stratified train/validation/test splits of a labelled datalist."""

from __future__ import annotations

from collections.abc import Sequence

from sklearn.model_selection import train_test_split

__all__ = ["stratified_split"]


def stratified_split(
    items: Sequence[dict], fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0, label_key: str = "label"
) -> dict[str, list[dict]]:
    """Split ``items`` into training, validation and test parts with the class proportions kept in each.

    Args:
        items: ``{"image": ..., "label": int}`` dictionaries.
        fractions: training, validation and test fractions (summing to 1).
        seed: random seed; the same seed and items give the same split.
        label_key: key of the class label.

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}``.

    Raises:
        ValueError: if the fractions do not sum to 1 or a part would be empty.
    """
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) <= 0:
        raise ValueError(f"fractions must be three positive numbers summing to 1, got {list(fractions)}.")
    train_fraction, val_fraction, test_fraction = fractions
    labels = [item[label_key] for item in items]
    try:
        rest, test = train_test_split(list(items), test_size=test_fraction, stratify=labels, random_state=seed)
        rest_labels = [item[label_key] for item in rest]
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
    return {"training": list(train), "validation": list(val), "test": list(test)}
