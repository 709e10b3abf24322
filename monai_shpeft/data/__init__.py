"""Dataset layouts turned into MONAI datalists, and seeded stratified splits."""

from __future__ import annotations

from monai_shpeft.data.busi import BUSI_CLASSES, BUSI_LAYOUT, busi_datalist
from monai_shpeft.data.chaoyang import CHAOYANG_CLASSES, CHAOYANG_LAYOUT, chaoyang_datalist
from monai_shpeft.data.covid19_ct import COVID19_CT_CLASSES, COVID19_CT_LAYOUT, covid19_ct_datalist
from monai_shpeft.data.covid19_radiography import (
    COVID19_RADIOGRAPHY_CLASSES,
    COVID19_RADIOGRAPHY_LAYOUT,
    covid19_radiography_datalist,
)
from monai_shpeft.data.covid_cxr import COVID_CXR_CLASSES, COVID_CXR_LAYOUT, covid_cxr_datalist
from monai_shpeft.data.datalist import DatalistError, inference_items, load_datalist, prepare_datalist
from monai_shpeft.data.ddsm import DDSM_CLASSES, DDSM_LAYOUT, ddsm_datalist
from monai_shpeft.data.duplicates import (
    DUPLICATE_MODES,
    DuplicateIndex,
    DuplicateReport,
    find_cross_split_duplicates,
    find_duplicates,
)
from monai_shpeft.data.isic2018 import ISIC2018_CLASSES, ISIC2018_LAYOUT, isic2018_datalist
from monai_shpeft.data.layout import (
    DATASETS,
    GENERIC_LAYOUTS,
    DatasetLayout,
    check_layout_classes,
    get_layout,
    register_generic_layout,
    register_layout,
    resolve_layout,
)
from monai_shpeft.data.limuc import LIMUC_CLASSES, LIMUC_LAYOUT, limuc_datalist
from monai_shpeft.data.messidor2 import MESSIDOR2_CLASSES, MESSIDOR2_LAYOUT, messidor2_datalist
from monai_shpeft.data.oct import OCT_CLASSES, OCT_LAYOUT, oct_datalist
from monai_shpeft.data.pediatric_cxr import (
    PEDIATRIC_CXR3_CLASSES,
    PEDIATRIC_CXR3_LAYOUT,
    PEDIATRIC_CXR_CLASSES,
    PEDIATRIC_CXR_LAYOUT,
    kermany_datalist,
    pediatric_cxr3_datalist,
    pediatric_cxr_datalist,
)
from monai_shpeft.data.split import GroupSplitError, kfold_split, stratified_split
from monai_shpeft.data.user_data import (
    CSV_LAYOUT,
    IMAGE_FOLDER_LAYOUT,
    csv_classes,
    csv_items,
    image_folder_classes,
    image_folder_items,
)

__all__ = [
    "BUSI_CLASSES",
    "BUSI_LAYOUT",
    "CHAOYANG_CLASSES",
    "CHAOYANG_LAYOUT",
    "COVID19_CT_CLASSES",
    "COVID19_CT_LAYOUT",
    "COVID19_RADIOGRAPHY_CLASSES",
    "COVID19_RADIOGRAPHY_LAYOUT",
    "COVID_CXR_CLASSES",
    "COVID_CXR_LAYOUT",
    "DATASETS",
    "DDSM_CLASSES",
    "DDSM_LAYOUT",
    "DUPLICATE_MODES",
    "DuplicateIndex",
    "DuplicateReport",
    "DatalistError",
    "inference_items",
    "DatasetLayout",
    "ISIC2018_CLASSES",
    "ISIC2018_LAYOUT",
    "LIMUC_CLASSES",
    "LIMUC_LAYOUT",
    "MESSIDOR2_CLASSES",
    "MESSIDOR2_LAYOUT",
    "OCT_CLASSES",
    "OCT_LAYOUT",
    "PEDIATRIC_CXR3_CLASSES",
    "PEDIATRIC_CXR3_LAYOUT",
    "PEDIATRIC_CXR_CLASSES",
    "PEDIATRIC_CXR_LAYOUT",
    "busi_datalist",
    "chaoyang_datalist",
    "covid19_ct_datalist",
    "covid19_radiography_datalist",
    "covid_cxr_datalist",
    "ddsm_datalist",
    "find_cross_split_duplicates",
    "find_duplicates",
    "check_layout_classes",
    "get_layout",
    "isic2018_datalist",
    "kermany_datalist",
    "limuc_datalist",
    "load_datalist",
    "messidor2_datalist",
    "oct_datalist",
    "pediatric_cxr3_datalist",
    "pediatric_cxr_datalist",
    "prepare_datalist",
    "register_layout",
    "register_generic_layout",
    "resolve_layout",
    "GENERIC_LAYOUTS",
    "CSV_LAYOUT",
    "IMAGE_FOLDER_LAYOUT",
    "csv_classes",
    "csv_items",
    "image_folder_classes",
    "image_folder_items",
    "stratified_split",
    "kfold_split",
    "GroupSplitError",
]
