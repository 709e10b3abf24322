"""Every bundle's configs from one template: the shared pipeline exists once, each bundle folder stands alone.

The pipeline all bundles share (network, method switch, optimizer, trainer, evaluator, inference) lives in
``monai_shpeft/zoo/templates/*.json``. A bundle is the template plus a few facts (:class:`BundleSpec`: its dataset
layout, default data folder, modality, classes), rendered into complete MONAI configs that refer to nothing outside
the bundle folder. The repository's bundles are rendered by ``python -m monai_shpeft.zoo sync_bundles`` and a test
checks that the committed files equal the rendering, so an edit to the template reaches every bundle;
``new_bundle`` renders the same template for a user's own data.

``bundle_root`` is not written into a config: it is the folder that holds the ``configs/`` folder being run
(:func:`monai_shpeft.utils.config_bundle_root`), so a bundle runs the same from its own folder, from a copy anywhere
on disk and from the repository root.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monai_shpeft.data import get_layout
from monai_shpeft.transforms.presets import MODALITY_RECIPES

__all__ = [
    "CONFIG_FILES",
    "REPOSITORY_BUNDLES",
    "TEMPLATE_DIR",
    "BundleSpec",
    "modality_sections",
    "render_configs",
    "stale_configs",
    "write_configs",
]

#: the shared pipeline
TEMPLATE_DIR = Path(__file__).with_name("templates")
#: the configs a bundle gets from the template (``metadata.json`` and the model card are the bundle's own)
CONFIG_FILES = ("train.json", "evaluate.json", "inference.json", "multi_gpu_train.json", "logging.conf")


@dataclass(frozen=True)
class BundleSpec:
    """What makes one bundle differ from the template.

    Args:
        name: the bundle folder's name (``busi``).
        title: what the bundle classifies, for its descriptions (``BUSI breast ultrasound``).
        dataset: the data layout that lists the images (:func:`monai_shpeft.data.get_layout`).
        dataset_dir: the default data folder (``--dataset_dir`` overrides it).
        modality: the preset that reads the images (:data:`monai_shpeft.transforms.MODALITIES`).
        classes: class names in label order (inference writes them; training checks the layout agrees).
        cache_rate: ``CacheDataset`` cache rate (0 for datasets too large to hold in memory).
        knobs: any other knob's default (``{"image_size": 112}``).
    """

    name: str
    title: str
    dataset: str
    dataset_dir: str
    modality: str
    classes: tuple[str, ...]
    cache_rate: float = 1.0
    knobs: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def for_layout(cls, name: str, title: str, dataset: str, dataset_dir: str, cache_rate: float = 1.0) -> BundleSpec:
        """The spec of a bundle over a registered dataset layout: modality and classes come from the layout."""
        layout = get_layout(dataset)
        return cls(name, title, dataset, dataset_dir, layout.modality, tuple(layout.classes), cache_rate)


#: the bundles of this repository (``bundles/<name>``)
REPOSITORY_BUNDLES: dict[str, BundleSpec] = {
    spec.name: spec
    for spec in (
        BundleSpec.for_layout("busi", "BUSI breast ultrasound", "busi", "../shared/data/busi"),
        BundleSpec.for_layout("chaoyang", "Chaoyang colorectal pathology", "chaoyang", "data/chaoyang", 0.0),
        BundleSpec.for_layout("covid19_ct", "COVID-CT chest CT", "covid19_ct", "data/covid19_ct"),
        BundleSpec.for_layout("covid_cxr", "COVID CXR", "covid_cxr", "data/covid_cxr"),
        BundleSpec.for_layout("ddsm", "CBIS-DDSM mammography", "ddsm", "data/ddsm", 0.0),
        BundleSpec.for_layout("isic2018", "ISIC 2018 dermoscopy", "isic2018", "data/isic2018", 0.0),
        BundleSpec.for_layout("limuc", "LIMUC ulcerative colitis endoscopy", "limuc", "data/limuc", 0.0),
        BundleSpec.for_layout("messidor2", "Messidor-2 fundus", "messidor2", "data/messidor2"),
        BundleSpec.for_layout("oct", "Retinal OCT (Kermany)", "oct", "data/oct", 0.0),
        BundleSpec.for_layout(
            "pediatric_cxr", "Pediatric chest X-ray (Kermany)", "pediatric_cxr3", "data/pediatric_cxr", 0.0
        ),
    )
}

_TRAIN_DESC = (
    "SH-PEFT on {title}. Run from this folder: python -m monai.bundle run --config_file configs/train.json "
    "--dataset_dir DIR (from elsewhere, give the path of configs/train.json: outputs always go to this folder's "
    "runs/ and models/). Every top-level key is a knob (--key value). 'method' picks the fine-tuning method "
    "(monai_shpeft.methods.METHODS): 'shpeft' (sparse importance-selected backbone weights, the default), 'fpt' "
    "(frozen high-resolution backbone, low-resolution side network, optional feature preloading; fpt_* knobs) or a "
    "baseline (linear_probe, full, linear, bitfit, ln, attn, lora, adapter, ssf, vpt_shallow, vpt_deep, spt_lora, "
    "gps) with its options in 'method_options'. Every classifier method starts from a head fitted as a "
    "logistic-regression probe on the frozen features (head_warmup 'lbfgs', LP-FT), validated as epoch 0; "
    "checkpoint_rule (null: the method's default) keeps the best validation epoch or the average of the epochs' "
    "weights. --resume true continues a killed run from models/resume/checkpoint.pt. amp 'auto' uses CUDA mixed "
    "precision on a GPU and bfloat16 autocast on CPUs that compute it natively. Rendered from monai_shpeft's bundle "
    "template (python -m monai_shpeft.zoo sync_bundles)."
)
_EVALUATE_DESC = (
    "Test-split evaluation of {title}, merged after train.json with the knobs used in training: python -m "
    "monai.bundle run --config_file \"['configs/train.json','configs/evaluate.json']\". Writes macro-F1, accuracy "
    "and AUC, the linear probe's figures beside them and the test predictions to <output_dir>/eval."
)
_INFERENCE_DESC = (
    "Predict every image of --input_dir (or of --input_datalist part --datalist_part) with the trained {title} "
    "model: python -m monai.bundle run --config_file configs/inference.json --input_dir DIR. Writes "
    "<output_dir>/predictions.csv (class and probabilities per image); --saliency gradcam (or rollout, for ViTs) "
    "adds a saliency map over each image in <output_dir>/saliency, listed in the CSV. Pass the --backbone and "
    "--image_size used in training. The weights come from models/model.pt (weights 'checkpoint') or from the public "
    "backbone plus models/delta.safetensors (weights 'delta'); 'auto' takes the checkpoint if it exists."
)
_MULTI_GPU_DESC = (
    "Distributed data-parallel training of {title}, merged after train.json and launched with torchrun: torchrun "
    "--nproc_per_node N -m monai.bundle run --config_file \"['configs/train.json','configs/multi_gpu_train.json']\". "
    "NCCL on GPUs, gloo on CPUs. Importance is summed over all ranks, so every rank trains the same sparse set."
)
_DESCRIPTIONS = {
    "train.json": _TRAIN_DESC,
    "evaluate.json": _EVALUATE_DESC,
    "inference.json": _INFERENCE_DESC,
    "multi_gpu_train.json": _MULTI_GPU_DESC,
}


def modality_sections(modality: str) -> dict[str, list[dict[str, Any]]]:
    """A modality's transforms as the bundle's ``modality_transforms`` knob: ``load``, ``augmentation``, ``normalize``.

    The same choices as :func:`monai_shpeft.transforms.modality_transforms`, written with the config references
    the template resolves (``@slice_policy``, ``@input_size``, ``@augment_keys``, ``@image_keys``,
    ``@normalization``), so FPT's low-resolution branch and the backbone's normalisation follow the knobs.

    Raises:
        ValueError: for a modality without a preset.
    """
    if modality not in MODALITY_RECIPES:
        raise ValueError(f"unknown modality '{modality}'; known: {', '.join(MODALITY_RECIPES)}.")
    recipe = MODALITY_RECIPES[modality]
    if recipe.window:  # the file's VOI window; without one, the scaling the recipe names
        target, scaling = "monai_shpeft.transforms.DicomWindowd", {"fallback": recipe.scale_mode}
    else:
        target, scaling = "monai_shpeft.transforms.ScaleToUnitRanged", {"mode": recipe.scale_mode}
    intensity: dict[str, Any] = {"_target_": target, "keys": "image", **scaling}
    invert = [{"_target_": "monai_shpeft.transforms.InvertMonochrome1d", "keys": "image", "value_range": [0.0, 1.0]}]
    load: list[dict[str, Any]] = [
        {"_target_": "CopyItemsd", "keys": "image", "names": "image_path"},
        {"_target_": "monai_shpeft.transforms.LoadMedicalImaged", "keys": "image"},
        {"_target_": "monai_shpeft.transforms.VolumeToImaged", "keys": "image", "policy": "@slice_policy"},
        intensity,
        *(invert if recipe.invert_monochrome1 else []),
        {"_target_": "monai_shpeft.transforms.ToRGBd", "keys": "image"},
        {
            "_target_": "monai.transforms.Resized",
            "keys": "image",
            "spatial_size": ["@input_size", "@input_size"],
            "mode": "bilinear",
            "anti_aliasing": True,
        },
    ]
    flips: list[dict[str, Any]] = [
        {"_target_": "monai.transforms.RandFlipd", "keys": "@augment_keys", "prob": 0.5, "spatial_axis": axis}
        for axis in recipe.flip_axes
    ]
    affine: dict[str, Any] = {
        "_target_": "monai.transforms.RandAffined",
        "keys": "@augment_keys",
        "prob": 0.5,
        "rotate_range": 0.1,
        "scale_range": 0.1,
        "mode": "bilinear",
        "padding_mode": "zeros",
    }
    normalize: dict[str, Any] = {
        "_target_": "monai.transforms.NormalizeIntensityd",
        "keys": "@image_keys",
        "subtrahend": "$@normalization[0]",
        "divisor": "$@normalization[1]",
        "channel_wise": True,
    }
    return {"load": load, "augmentation": [*flips, affine], "normalize": [normalize]}


def _template(name: str) -> dict[str, Any]:
    return json.loads((TEMPLATE_DIR / name).read_text(encoding="utf-8"))


def _with(config: dict[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with ``values`` set, keeping the template's key order (new keys go last)."""
    unknown = [key for key in values if key not in config]
    if unknown:
        raise KeyError(f"the bundle template has no knob {unknown}; known knobs: {sorted(config)}")
    return {key: copy.deepcopy(values[key]) if key in values else item for key, item in config.items()}


def render_configs(spec: BundleSpec) -> dict[str, str]:
    """The text of each file of :data:`CONFIG_FILES` for one bundle (JSON indented by 4, newline at the end).

    Raises:
        ValueError: for a modality without a preset or an empty class list.
        KeyError: if ``spec.knobs`` names a knob the template does not have.
    """
    if len(spec.classes) < 2:
        raise ValueError(f"bundle '{spec.name}': a classifier needs at least two classes, got {list(spec.classes)}.")
    transforms = modality_sections(spec.modality)
    shared = {"modality_transforms": transforms, **spec.knobs}
    train_values = {
        "dataset": spec.dataset,
        "dataset_dir": spec.dataset_dir,
        "cache_rate": spec.cache_rate,
        "classes": list(spec.classes),
        **shared,
    }
    rendered: dict[str, str] = {}
    for name, description in _DESCRIPTIONS.items():
        config = _template(name)
        values: dict[str, Any] = {"_desc_": description.format(title=spec.title)}
        if name == "train.json":
            values.update(train_values)
        elif name == "inference.json":
            values.update({"classes": list(spec.classes)})
            values.update({key: value for key, value in shared.items() if key in config})
        rendered[name] = json.dumps(_with(config, values), indent=4, ensure_ascii=False) + "\n"
    rendered["logging.conf"] = (TEMPLATE_DIR / "logging.conf").read_text(encoding="utf-8")
    return rendered


def write_configs(spec: BundleSpec, bundle_dir: str | os.PathLike) -> list[Path]:
    """Write the rendered configs into ``<bundle_dir>/configs``; returns the files whose content changed."""
    configs = Path(bundle_dir) / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    changed = []
    for name, text in render_configs(spec).items():
        path = configs / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    return changed


def stale_configs(bundles_dir: str | os.PathLike) -> list[Path]:
    """The repository bundle configs under ``bundles_dir`` that differ from their rendering (missing ones too)."""
    stale = []
    for spec in REPOSITORY_BUNDLES.values():
        for name, text in render_configs(spec).items():
            path = Path(bundles_dir) / spec.name / "configs" / name
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(path)
    return stale
