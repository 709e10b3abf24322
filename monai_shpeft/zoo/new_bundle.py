"""A ready MONAI bundle for a user's own labelled images, in one command.

``python -m monai_shpeft.zoo new_bundle NAME --image_folder DIR`` (one subfolder per class) or ``--csv FILE``
(columns ``image,label``, optional ``split``) writes the folder ``NAME/``: the configs rendered from the shared
template (the recipe every bundle of this repository trains with), ``configs/metadata.json`` with the classes,
a model card in ``docs/README.md`` and a ``LICENSE``. The data are checked first: every class has images, every
image can be read, every CSV row is well formed; a problem stops with a message naming the file (and the row).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai_shpeft.data import (
    CSV_LAYOUT,
    IMAGE_FOLDER_LAYOUT,
    csv_classes,
    csv_items,
    image_folder_classes,
    image_folder_items,
)
from monai_shpeft.data.validation import check_items
from monai_shpeft.errors import SettingsError
from monai_shpeft.transforms import MODALITIES
from monai_shpeft.zoo.bundle_template import BundleSpec, write_configs

__all__ = ["DICOM_MODALITY_CODES", "new_bundle"]

logger = logging.getLogger(__name__)

#: the metadata's input ``modality`` for each preset (DICOM modality codes; OT for other)
DICOM_MODALITY_CODES = {
    "ultrasound": "US",
    "ct": "CT",
    "xray": "DX",
    "mammography": "MG",
    "oct": "OPT",
    "fundus": "OP",
    "pathology": "SM",
    "dermoscopy": "XC",
    "endoscopy": "ES",
    "natural": "OT",
}
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
#: above this many images the training data are read from disk each epoch instead of cached in memory
_CACHE_LIMIT = 3000
_LICENSE = """Code and configuration of this bundle
-------------------------------------
Written by monai-shpeft (python -m monai_shpeft.zoo new_bundle). Licensed under the Apache License, Version 2.0:
http://www.apache.org/licenses/LICENSE-2.0.

Data and trained weights
------------------------
The images and labels are {owner}'s own; state here under which terms the data and any weights trained on them may
be shared. The pretrained backbone keeps its own licence (e.g. CLIP: MIT; DINOv2: Apache 2.0).
"""


def new_bundle(
    name: str,
    image_folder: str | os.PathLike | None = None,
    csv_file: str | os.PathLike | None = None,
    modality: str = "natural",
    classes: Sequence[str] | None = None,
    output_dir: str | os.PathLike = ".",
    title: str | None = None,
    num_workers: int = 2,
) -> Path:
    """Write a bundle folder ``<output_dir>/<name>`` for a folder of class subfolders or a CSV table.

    Args:
        name: the bundle's name (letters, digits, underscores; a letter first), also its folder's.
        image_folder: a folder with one subfolder of images per class.
        csv_file: a CSV with ``image`` and ``label`` columns (and optionally ``split``).
        modality: the preset that reads the images (:data:`monai_shpeft.transforms.MODALITIES`).
        classes: class names in label order (default: the subfolders, or the CSV's labels, sorted); a CSV label
            outside them is an error.
        output_dir: where the bundle folder is made.
        title: what the bundle classifies, for its descriptions (default: ``"<name> (<modality>)"``).
        num_workers: threads that read every image once to check it.

    Returns:
        the bundle folder.

    Raises:
        SettingsError: for a bad name, modality or source, or a bundle folder that exists and is not empty.
        DatasetFolderError, DatasetLayoutError: for data that cannot be used (naming the file, folder or row).
        ImageReadError: for an image that cannot be read.
    """
    if not _NAME.match(name):
        raise SettingsError(f"bundle name {name!r}: use letters, digits and underscores, starting with a letter.")
    data_source = image_folder if image_folder is not None else csv_file
    if data_source is None or (image_folder is not None and csv_file is not None):
        raise SettingsError("give exactly one data source: --image_folder DIR (one subfolder per class) or --csv FILE.")
    if modality not in MODALITIES:
        raise SettingsError(f"unknown modality '{modality}'; presets: {', '.join(MODALITIES)}.")
    target = Path(output_dir) / name
    if target.exists() and any(target.iterdir()):
        raise SettingsError(f"{target} exists and is not empty: choose another name or --output_dir.")

    source = Path(data_source).resolve()
    if image_folder is not None:
        dataset, found = IMAGE_FOLDER_LAYOUT, image_folder_classes(source)
    else:
        dataset, found = CSV_LAYOUT, csv_classes(source)
    chosen = tuple(str(c) for c in classes) if classes else found
    if len(chosen) < 2 or len(set(chosen)) != len(chosen):
        raise SettingsError(f"classes {list(chosen)}: give at least two different class names.")
    listed = image_folder_items(source, chosen) if dataset == IMAGE_FOLDER_LAYOUT else csv_items(source, chosen)
    items = [item for part in listed.values() for item in part] if isinstance(listed, dict) else listed
    logger.info("Checking that the %d images of %s can be read...", len(items), source)
    check_items(items, source=source, num_workers=num_workers)

    spec = BundleSpec(
        name=name,
        title=title or f"{name} ({modality})",
        dataset=dataset,
        dataset_dir=str(source),
        modality=modality,
        classes=chosen,
        cache_rate=1.0 if len(items) <= _CACHE_LIMIT else 0.0,
    )
    counts = {c: sum(1 for item in items if item["label"] == index) for index, c in enumerate(chosen)}
    write_configs(spec, target)
    metadata = _metadata(spec, counts)
    (target / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=4) + "\n", encoding="utf-8")
    (target / "docs").mkdir(exist_ok=True)
    split = "its own split column" if isinstance(listed, dict) else "a seeded, stratified 70 / 10 / 20 % split"
    (target / "docs" / "README.md").write_text(_model_card(spec, counts, split), encoding="utf-8")
    (target / "LICENSE").write_text(_LICENSE.format(owner="the bundle's author"), encoding="utf-8")
    logger.info("Wrote the bundle %s (%d classes, %d images).", target, len(chosen), len(items))
    return target


def _metadata(spec: BundleSpec, counts: dict[str, int]) -> dict[str, Any]:
    import monai
    import numpy
    import torch

    from monai_shpeft import __version__

    classes = list(spec.classes)
    channels = {str(index): name for index, name in enumerate(classes)}
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json",
        "version": "0.1.0",
        "changelog": {"0.1.0": f"made by python -m monai_shpeft.zoo new_bundle from {spec.dataset_dir}"},
        "monai_version": monai.__version__.split("+")[0],
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__,
        "required_packages_version": {"monai-shpeft": __version__},
        "supported_apps": {},
        "name": f"{spec.title} classification with SH-PEFT",
        "task": f"{spec.title} image classification ({', '.join(classes)})",
        "description": (
            f"A pretrained vision transformer fine-tuned on {spec.title} by SH-PEFT: only the 1% most important "
            "backbone weights and a new L2-normalised linear head are trained, starting from a logistic-regression "
            "probe on the frozen features."
        ),
        "authors": "the bundle's author",
        "copyright": "the bundle's author",
        "data_source": f"{spec.dataset_dir} ({', '.join(f'{c}: {n}' for c, n in counts.items())} images)",
        "data_type": spec.modality,
        "image_classes": (
            f"images read by the '{spec.modality}' preset of monai_shpeft.transforms, turned into 3 channels, "
            "resized to 224x224 and normalised with the backbone's mean and standard deviation"
        ),
        "label_classes": ", ".join(f"{index}: {name}" for index, name in enumerate(classes)),
        "pred_classes": f"{len(classes)} logits: {', '.join(classes)}",
        "eval_metrics": {"macro_f1": None, "accuracy": None, "auc_ovr": None},
        "intended_use": "Research only. Not a medical device; not for clinical decisions.",
        "references": [
            "Liu M., Xu L., Liu S., Zhang J. Sparsity- and hybridity-inspired visual parameter-efficient fine-tuning "
            "for medical diagnosis. MICCAI 2024.",
            "Kumar A. et al. Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution. ICLR "
            "2022.",
        ],
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": DICOM_MODALITY_CODES.get(spec.modality, "OT"),
                    "num_channels": 3,
                    "spatial_shape": [224, 224],
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": False,
                    "channel_def": {"0": "R", "1": "G", "2": "B"},
                }
            },
            "outputs": {
                "pred": {
                    "type": "probabilities",
                    "format": "classes",
                    "num_channels": len(classes),
                    "spatial_shape": [1, len(classes)],
                    "dtype": "float32",
                    "value_range": [],
                    "is_onehot": True,
                    "channel_def": channels,
                }
            },
        },
    }


def _model_card(spec: BundleSpec, counts: dict[str, int], split: str) -> str:
    rows = "\n".join(f"| {index} | {name} | {counts[name]} |" for index, name in enumerate(spec.classes))
    cpu = (
        "--backbone timm:vit_small_patch14_dinov2 --pretrained /path/to/vit_small_patch14_dinov2.safetensors "
        "--image_size 224 --batch_size 32 --max_epochs 1 --estimation_iterations 4 --learning_rate 1e-5 "
        "--checkpoint_rule best --device cpu"
    )
    return f"""# {spec.title} classification with SH-PEFT

A MONAI bundle made by `python -m monai_shpeft.zoo new_bundle` for the images of `{spec.dataset_dir}`. It
trains with the same recipe as the BUSI bundle of monai-shpeft: the head starts as a logistic-regression probe on
the frozen features, then SH-PEFT trains the 1% most important backbone weights.

**Research use only. This is not a medical device and must not be used for clinical decisions.**

## Data

| label | class | images |
| --- | --- | --- |
{rows}

Read from `{spec.dataset_dir}` (dataset layout `{spec.dataset}`) by the `{spec.modality}` preset. The split is
{split}, written once to `runs/datalist.json` and reused by evaluation and inference; near-duplicate images are
kept in one part. `--num_folds 5 --fold k` gives fold k of a 5-fold split instead.

## Use

Run from this folder (or give the path of `configs/<file>.json` from anywhere):

```bash
# train (default: CLIP ViT-B/16 from open_clip, which needs its weights cached or a local file)
python -m monai.bundle run --config_file configs/train.json
# on 2 CPU cores, with a local DINOv2 ViT-S/14 (the knobs of the BUSI bundle's README command)
python -m monai.bundle run --config_file configs/train.json {cpu}
# test-split figures, with the linear probe's beside them (same knobs as training)
python -m monai.bundle run --config_file "['configs/train.json','configs/evaluate.json']" --image_size 224
# predict a folder of images into runs/predictions.csv
python -m monai.bundle run --config_file configs/inference.json --input_dir /path/to/images
```

Every top-level key of `configs/train.json` is a knob (`--key value`); `--dataset_dir` points at other data of the
same layout. The run writes `runs/` (logs, TensorBoard, the split, evaluation) and `models/` (the checkpoint, the
sparse trainable set and the run's metadata) in this folder.

## Performance

Not measured yet: fill `eval_metrics` in `configs/metadata.json` and this section from `runs/eval/metrics.csv`,
with the command and the split. Evaluation also writes the clinical report: `runs/eval/report.json` (per-class
sensitivity, specificity, PPV, NPV, F1 and AUC with 95% bootstrap intervals, calibration, the confusion matrix)
and its figures (`confusion_matrix.png`, `roc_curves.png`, `reliability_diagram.png`), with the probabilities
scaled by the temperature training fitted on the validation split (`models/temperature.json`; ECE and Brier score
before and after in the report). Inference with `--saliency gradcam` (or `rollout`) draws one overlay per image in
`runs/saliency/`; `--tracking mlflow` logs training and evaluation into one MLflow run (`runs/mlruns.db`).

## References

- Liu M., Xu L., Liu S., Zhang J. Sparsity- and hybridity-inspired visual parameter-efficient fine-tuning for
  medical diagnosis. MICCAI 2024.
- Kumar A. et al. Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution. ICLR 2022.
"""
