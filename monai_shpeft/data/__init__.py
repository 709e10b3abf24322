"""Dataset layouts turned into MONAI datalists, and seeded stratified splits."""

from __future__ import annotations

from monai_shpeft.data.busi import BUSI_CLASSES, busi_datalist
from monai_shpeft.data.split import stratified_split

__all__ = ["BUSI_CLASSES", "busi_datalist", "stratified_split"]
