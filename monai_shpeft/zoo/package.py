"""Package a bundle folder into the self-contained zip a MONAI model zoo hosts (``<name>_v<version>.zip``).

A bundle folder is already self-contained (its configs are rendered from the shared template and resolve
``bundle_root`` from their own location, see :mod:`monai_shpeft.zoo.bundle_template`). The package bakes the trained
network's recipe (backbone, input size, method) into the configs, carries the run's records (sparse set, delta) into
the shared metadata, ships the sparse delta instead of the full checkpoint, and lists the full checkpoint in
``large_files.yml`` when a download URL is given.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from monai_shpeft.delta import SparseDelta
from monai_shpeft.handlers.sparse_set_record_handler import RECORD_KEY
from monai_shpeft.utils import atomic_path, sha256_of_file
from monai_shpeft.zoo.export import DELTA_RECORD_KEY

__all__ = ["LARGE_FILES_NAME", "package_bundle", "package_name"]

logger = logging.getLogger(__name__)

LARGE_FILES_NAME = "large_files.yml"
#: files of models/ shipped in the package (the full checkpoint only on request)
_SHIPPED_MODEL_FILES = ("delta.safetensors", "sparse_trainable_set.safetensors", "temperature.json")
#: keys a training run writes into its ``models/metadata.json``, carried into the packaged metadata
_RUN_RECORD_KEYS = (RECORD_KEY, DELTA_RECORD_KEY)
#: top-level knobs set from the delta's recipe in every config that has them
_BAKED_KNOBS = ("backbone", "image_size", "method", "method_options", "tiny_backbone", "budget")
#: a fixed timestamp for zip entries, so that packaging the same bundle twice gives the same bytes
_ZIP_TIME = (2024, 1, 1, 0, 0, 0)


def package_name(metadata: Mapping[str, Any], bundle_name: str) -> str:
    """The model zoo's archive name, ``<bundle>_v<version>.zip``."""
    return f"{bundle_name}_v{metadata['version']}.zip"


def package_bundle(
    bundle_dir: str | os.PathLike,
    output_dir: str | os.PathLike = "dist",
    include_checkpoint: bool = False,
    checkpoint_url: str | None = None,
) -> Path:
    """Build the model-zoo zip of a bundle folder.

    Args:
        bundle_dir: the bundle (``configs/``, ``docs/``, ``LICENSE``, ``models/``).
        output_dir: where to write ``<name>_v<version>.zip``.
        include_checkpoint: also put ``models/model.pt`` in the zip (a model zoo refuses files over 25 MB).
        checkpoint_url: a public URL of ``models/model.pt``; it is then listed, with its SHA-256, in
            ``large_files.yml`` for ``python -m monai.bundle download_large_files``.

    Returns:
        the zip written.

    Raises:
        FileNotFoundError: if the bundle lacks its metadata, or a checkpoint URL is given without the checkpoint.
    """
    bundle = Path(bundle_dir)
    metadata_path = bundle / "configs" / "metadata.json"
    if not metadata_path.is_file():
        raise FileNotFoundError(f"{bundle} is not a bundle: {metadata_path} not found.")
    metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
    delta_path = bundle / "models" / "delta.safetensors"
    recipe = SparseDelta.load(delta_path).recipe if delta_path.is_file() else {}
    checkpoint = bundle / "models" / "model.pt"
    if checkpoint_url and not checkpoint.is_file():
        raise FileNotFoundError(f"--checkpoint_url given but {checkpoint} does not exist.")

    with tempfile.TemporaryDirectory() as staging_dir:
        staging = Path(staging_dir) / bundle.name
        (staging / "configs").mkdir(parents=True)
        for config in sorted((bundle / "configs").glob("*.json")):
            content = json.loads(config.read_text(encoding="utf-8"))
            if config.name != "metadata.json":
                content = _baked_config(content, recipe)
            else:
                content = _packaged_metadata(content, recipe, bundle / "models" / "metadata.json")
            (staging / "configs" / config.name).write_text(json.dumps(content, indent=4) + "\n", encoding="utf-8")
        for extra in ("configs/logging.conf", "LICENSE"):
            if (bundle / extra).is_file():
                shutil.copy2(bundle / extra, staging / extra)
        if (bundle / "docs").is_dir():
            shutil.copytree(bundle / "docs", staging / "docs")
        (staging / "models").mkdir()
        shipped = [*_SHIPPED_MODEL_FILES, *(("model.pt",) if include_checkpoint else ())]
        for name in shipped:
            if (bundle / "models" / name).is_file():
                shutil.copy2(bundle / "models" / name, staging / "models" / name)
        if checkpoint_url:
            _write_large_files(staging / LARGE_FILES_NAME, checkpoint, checkpoint_url)
        archive = Path(output_dir) / package_name(metadata, bundle.name)
        _write_zip(staging, archive)
    logger.info("Packaged %s into %s.", bundle, archive)
    return archive


def _baked_config(content: dict[str, Any], recipe: Mapping[str, Any]) -> dict[str, Any]:
    baked = dict(content)
    for knob in _BAKED_KNOBS:
        if knob in baked and knob in recipe:
            baked[knob] = recipe[knob]
    return baked


def _packaged_metadata(metadata: dict[str, Any], recipe: Mapping[str, Any], run_file: Path) -> dict[str, Any]:
    packaged = dict(metadata)
    if run_file.is_file():  # the training run's records (sparse set, delta) live beside its checkpoint
        run = json.loads(run_file.read_text(encoding="utf-8"))
        packaged.update({key: run[key] for key in _RUN_RECORD_KEYS if key in run})
    image_size = recipe.get("image_size")
    if image_size:
        for spec in packaged.get("network_data_format", {}).get("inputs", {}).values():
            if isinstance(spec, dict) and len(spec.get("spatial_shape", [])) == 2:
                spec["spatial_shape"] = [image_size, image_size]
    return packaged


def _write_large_files(path: Path, checkpoint: Path, url: str) -> None:
    # the model zoo's layout: a list of {path, url, hash_val, hash_type}; written as YAML by hand (flat strings)
    lines = [
        "large_files:",
        '  - path: "models/model.pt"',
        f'    url: "{url}"',
        f'    hash_val: "{sha256_of_file(checkpoint)}"',
        '    hash_type: "sha256"',
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _write_zip(staging: Path, archive: Path) -> None:
    archive.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(archive) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as handle:
            for path in sorted(p for p in staging.rglob("*") if p.is_file()):
                entry = zipfile.ZipInfo(str(Path(staging.name) / path.relative_to(staging)), date_time=_ZIP_TIME)
                entry.compress_type = zipfile.ZIP_DEFLATED
                entry.external_attr = 0o644 << 16
                handle.writestr(entry, path.read_bytes())
