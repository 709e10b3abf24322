from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monai_shpeft.data import BUSI_CLASSES, busi_datalist


def write_busi(root: Path, per_class: int = 3) -> Path:
    """A BUSI-shaped folder: class folders with images and the release's mask files beside them."""
    for name in BUSI_CLASSES:
        folder = root / name
        folder.mkdir(parents=True)
        for index in range(1, per_class + 1):
            pixels = np.full((8, 8, 3), index * 20, dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{name} ({index}).png")
            Image.fromarray(pixels[..., 0]).save(folder / f"{name} ({index})_mask.png")
        Image.fromarray(pixels[..., 0]).save(folder / f"{name} (1)_mask_1.png")
    return root


def test_datalist_skips_masks_and_labels_by_folder(tmp_path: Path) -> None:
    items = busi_datalist(write_busi(tmp_path))
    assert len(items) == 9
    assert all("_mask" not in Path(item["image"]).name for item in items)
    assert [item["label"] for item in items] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert Path(items[3]["image"]).parent.name == "malignant"


def test_layout_errors_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        busi_datalist(tmp_path / "nowhere")
    root = write_busi(tmp_path / "busi")
    (root / "unknown_class").mkdir()
    with pytest.raises(ValueError, match=r"\['unknown_class'\]"):
        busi_datalist(root)
    (root / "unknown_class").rmdir()
    for mask in (root / "normal").glob("*).png"):
        mask.unlink()
    with pytest.raises(ValueError, match="normal holds no image"):
        busi_datalist(root)


@pytest.mark.slow
def test_real_busi_counts() -> None:
    root = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "busi"
    if not root.is_dir():
        pytest.skip("../shared/data/busi is not present")
    labels = [item["label"] for item in busi_datalist(root)]
    assert [labels.count(k) for k in range(3)] == [437, 210, 133]
