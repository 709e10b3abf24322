"""Export a trained bundle's network as a sparse delta against its public backbone."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from monai.bundle import ConfigParser

from monai_shpeft.delta import SparseDelta
from monai_shpeft.utils import as_flag, atomic_write_json, read_run_metadata, sha256_of_file, unwrap

__all__ = ["DELTA_RECORD_KEY", "bundle_parser", "export_bundle_delta", "load_checkpoint", "recipe_of"]

logger = logging.getLogger(__name__)

#: key of the delta's record in a bundle's configs/metadata.json
DELTA_RECORD_KEY = "sparse_delta"
#: knobs that describe how the network is built, copied into the delta's recipe when the config has them
_RECIPE_KNOBS = ("dataset", "backbone", "image_size", "method", "method_options", "num_classes", "classes", "budget")


def bundle_parser(
    bundle_dir: str | os.PathLike,
    config_names: Sequence[str] = ("train.json", "evaluate.json"),
    overrides: Mapping[str, Any] | None = None,
) -> ConfigParser:
    """Read a bundle's configs and metadata with MONAI's ``ConfigParser``, ``bundle_root`` set to ``bundle_dir``.

    Bundles are self-contained, so this works from any working directory.

    Args:
        bundle_dir: the bundle folder (holding ``configs/``).
        config_names: config files of ``configs/`` to merge, in order.
        overrides: ``id -> value`` pairs applied after reading (the command line's ``--key value``).

    Returns:
        the parser.

    Raises:
        FileNotFoundError: if a config file or the metadata is missing.
    """
    bundle = Path(bundle_dir)
    files = [bundle / "configs" / name for name in config_names]
    for path in [*files, bundle / "configs" / "metadata.json"]:
        if not path.is_file():
            raise FileNotFoundError(f"bundle file not found: {path}")
    parser = ConfigParser(ConfigParser.load_config_files([str(path) for path in files]))
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    parser["bundle_root"] = str(bundle)
    for key, value in (overrides or {}).items():
        parser[key] = value
    return parser


def recipe_of(parser: ConfigParser) -> dict[str, Any]:
    """How the bundle builds its network, as JSON values: the knobs of ``_RECIPE_KNOBS`` plus the weights source.

    A local pretrained file is recorded by absolute path and SHA-256, so that loading elsewhere can check it.

    Args:
        parser: the bundle's parser (see :func:`bundle_parser`).

    Returns:
        the recipe.
    """
    recipe: dict[str, Any] = {}
    for knob in _RECIPE_KNOBS:
        if knob in parser:
            value = parser.get_parsed_content(knob)
            recipe[knob] = list(value) if isinstance(value, tuple) else value
    recipe["tiny_backbone"] = as_flag(parser.get_parsed_content("tiny_backbone"), "tiny_backbone")
    pretrained = parser.get_parsed_content("pretrained")
    recipe["pretrained"] = None if pretrained is None else os.fspath(pretrained)
    if pretrained is not None and Path(os.path.expanduser(os.fspath(pretrained))).is_file():
        weights = Path(os.path.expanduser(os.fspath(pretrained))).resolve()
        recipe["pretrained"] = str(weights)
        recipe["pretrained_sha256"] = sha256_of_file(weights)
    return recipe


def load_checkpoint(network: nn.Module, ckpt_file: str | os.PathLike) -> nn.Module:
    """Load a bundle checkpoint (``CheckpointSaver`` format: the model's state dict, or nested under ``"model"``).

    Args:
        network: the network to load into (strictly).
        ckpt_file: the checkpoint.

    Returns:
        the network.

    Raises:
        FileNotFoundError: if the checkpoint does not exist.
        ValueError: if it does not fit the network (names the file and the first mismatching entry).
    """
    path = Path(ckpt_file)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]
    try:
        unwrap(network).load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[1].strip() if len(str(error).splitlines()) > 1 else str(error)
        raise ValueError(
            f"The checkpoint {path} does not fit the network built from the bundle config ({first}). "
            "Pass the knobs used in training (e.g. --backbone, --image_size, --method)."
        ) from error
    return network


def export_bundle_delta(
    bundle_dir: str | os.PathLike,
    overrides: Mapping[str, Any] | None = None,
    ckpt_file: str | os.PathLike | None = None,
    delta_file: str | os.PathLike | None = None,
    record: bool = True,
) -> dict[str, Any]:
    """Write ``models/delta.safetensors`` for a trained bundle and check that it rebuilds the checkpoint exactly.

    The network is built twice from the bundle's ``train.json`` + ``evaluate.json`` (with the public pretrained
    weights): once as the base, once to load the trained checkpoint into. A third build with the delta applied must
    equal the checkpoint entry for entry before anything is written to the metadata.

    Args:
        bundle_dir: the bundle folder.
        overrides: the knobs used in training (``backbone``, ``pretrained``, ``image_size``, ...).
        ckpt_file: the trained checkpoint; defaults to ``<ckpt_dir>/model.pt``.
        delta_file: where to write; defaults to ``<ckpt_dir>/delta.safetensors``.
        record: also record the delta (file, SHA-256, sizes, recipe) in the run's ``metadata_file``
            (``models/metadata.json``, the bundle's tracked metadata is never written).

    Returns:
        the record: delta and checkpoint paths and sizes, their ratio, entry counts and the recipe.

    Raises:
        FileNotFoundError: if the checkpoint is missing.
        ValueError: if the checkpoint does not fit the configured network, or the delta does not reproduce it.
    """
    parser = bundle_parser(bundle_dir, overrides=overrides)
    method = parser.get_parsed_content("method")
    if method == "fpt":
        raise ValueError(
            "FPT trains a side network and prompts, not backbone entries: there is no sparse delta to share. "
            "Share models/model.pt (list it in large_files.yml if it is over 25 MB)."
        )
    ckpt_dir = Path(parser.get_parsed_content("ckpt_dir"))
    ckpt_path = Path(ckpt_file) if ckpt_file is not None else ckpt_dir / "model.pt"
    delta_path = Path(delta_file) if delta_file is not None else ckpt_dir / "delta.safetensors"
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {ckpt_path}; train the bundle first (or pass --ckpt_file).")

    base = parser.get_parsed_content("network_def", lazy=False).to("cpu")
    trained = load_checkpoint(parser.get_parsed_content("network_def", lazy=False).to("cpu"), ckpt_path)
    delta = SparseDelta.from_networks(base, trained, recipe=recipe_of(parser))
    delta.save(delta_path)

    rebuilt = SparseDelta.load(delta_path).apply_to(
        parser.get_parsed_content("network_def", lazy=False).to("cpu"), source=str(delta_path)
    )
    _assert_equal_states(rebuilt, trained, delta_path, ckpt_path)

    result = {
        "file": delta_path.name,
        "sha256": sha256_of_file(delta_path),
        "bytes": delta_path.stat().st_size,
        "checkpoint_bytes": ckpt_path.stat().st_size,
        "ratio_to_checkpoint": delta_path.stat().st_size / ckpt_path.stat().st_size,
        **delta.to_record(),
    }
    logger.info(
        "Sparse delta %s: %s bytes (%.3f%% of the %s-byte checkpoint); %d changed backbone entries, %d tensors whole.",
        delta_path,
        f"{result['bytes']:,}",
        100 * result["ratio_to_checkpoint"],
        f"{result['checkpoint_bytes']:,}",
        delta.num_sparse_entries,
        len(delta.dense),
    )
    if record:
        # the run's metadata beside the checkpoint, started from the bundle's own if the run wrote none
        metadata_file = Path(parser.get_parsed_content("metadata_file"))
        metadata = read_run_metadata(metadata_file, Path(bundle_dir) / "configs" / "metadata.json")
        metadata[DELTA_RECORD_KEY] = result
        atomic_write_json(metadata_file, metadata)
    return {**result, "path": str(delta_path), "checkpoint": str(ckpt_path)}


def _assert_equal_states(rebuilt: nn.Module, trained: nn.Module, delta_path: Path, ckpt_path: Path) -> None:
    rebuilt_state, trained_state = unwrap(rebuilt).state_dict(), unwrap(trained).state_dict()
    for name, value in trained_state.items():
        if not torch.equal(rebuilt_state[name].cpu(), value.cpu()):
            delta_path.unlink(missing_ok=True)
            raise ValueError(
                f"The delta {delta_path} does not rebuild {ckpt_path} (entry '{name}' differs); it was removed. "
                "Were the network's frozen weights changed outside the trainable set?"
            )
