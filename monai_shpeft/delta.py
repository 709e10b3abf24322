"""Sparse delta: a fine-tuned model shared as "public backbone + the entries that changed".

An SH-PEFT model differs from its public pretrained backbone in 1% of its weights or fewer, so sharing the whole
checkpoint (about 350 MB for ViT-B/16) wastes 99% of the bytes and goes over a model zoo's 25 MB per-file limit.
A :class:`SparseDelta` stores instead:

- the **recipe** of the network: backbone name, pretrained tag or weights-file name and SHA-256, input size, method,
  number and names of classes;
- a **fingerprint of the base**: the SHA-256 of every pretrained tensor the delta relies on, so that loading onto
  other backbone weights fails with a clear error instead of silently giving a different model;
- the **changed entries**: per backbone tensor, the flat indices and the trained values of the entries that differ
  from the pretrained ones (values, not differences, so the rebuilt model is bit-identical); a tensor where more than
  about half of the entries changed is stored whole, as is everything outside the backbone (the new head, adapters).

The file is one ``.safetensors`` (no pickle) with a JSON header. ``load_network`` / ``apply_delta`` rebuild the exact
fine-tuned network on any machine that has the public backbone weights.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from monai_shpeft.errors import InputError
from monai_shpeft.utils import load_tagged_safetensors, save_tagged_safetensors, sha256_of_file, unwrap

__all__ = [
    "DELTA_FORMAT",
    "DeltaMismatchError",
    "SparseDelta",
    "apply_delta",
    "base_fingerprint",
    "choose_weights",
    "recorded_pretrained",
    "size_report",
]

logger = logging.getLogger(__name__)

DELTA_FORMAT = "monai_shpeft.sparse_delta"
DELTA_FORMAT_VERSION = 1
_HEADER_KEY = "delta"
_SPARSE_INDICES = "sparse_indices/"
_SPARSE_VALUES = "sparse_values/"
_DENSE = "dense/"
_WEIGHT_SOURCES = ("checkpoint", "delta", "auto")


class DeltaMismatchError(InputError, ValueError):
    """The network a delta is applied to is not the one it was made against (structure or backbone weights)."""


def base_fingerprint(state: Mapping[str, torch.Tensor], names: list[str]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of ``state[name]`` for ``name`` in ``names`` (in order).

    Args:
        state: a state dict.
        names: the entries to hash.

    Returns:
        the hexadecimal digest.
    """
    digest = hashlib.sha256()
    for name in names:
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{list(tensor.shape)}|".encode())
        # bytes through uint8 so that every dtype (bfloat16 included) hashes without a numpy conversion
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass
class SparseDelta:
    """The difference between a fine-tuned network and the same network built from public pretrained weights.

    Args:
        sparse: ``name -> (flat indices, values)`` of the changed entries of base tensors.
        dense: ``name -> tensor`` stored whole (new modules such as the head, or mostly-changed tensors).
        shapes: the shape of every sparse tensor.
        base_names: the state entries the delta relies on (everything not stored whole), in hashing order.
        base_sha256: :func:`base_fingerprint` of ``base_names`` in the pretrained network.
        recipe: how to build the network: backbone, pretrained, image size, method, classes (JSON values).
    """

    sparse: dict[str, tuple[torch.Tensor, torch.Tensor]]
    dense: dict[str, torch.Tensor]
    shapes: dict[str, tuple[int, ...]]
    base_names: list[str]
    base_sha256: str
    recipe: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_networks(
        cls,
        pretrained: nn.Module,
        trained: nn.Module,
        recipe: Mapping[str, Any] | None = None,
        scope: str = "backbone.",
    ) -> SparseDelta:
        """Compare a fine-tuned network with the same network freshly built from the pretrained weights.

        Args:
            pretrained: the network as built before training (same recipe, public weights).
            trained: the fine-tuned network (DataParallel / DDP wrappers are unwrapped).
            recipe: how the network was built (stored in the file and used by :func:`recorded_pretrained`).
            scope: name prefix of the entries that come from the public weights. Entries outside it (the new head,
                randomly initialised modules) are always stored whole: their starting values are not public.

        Returns:
            the delta.

        Raises:
            DeltaMismatchError: if the two networks do not have the same entries and shapes.
        """
        base_state = unwrap(pretrained).state_dict()
        trained_state = unwrap(trained).state_dict()
        _check_same_structure(base_state, trained_state)
        sparse: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        dense: dict[str, torch.Tensor] = {}
        shapes: dict[str, tuple[int, ...]] = {}
        base_names: list[str] = []
        for name, value in trained_state.items():
            value = value.detach().to("cpu")
            if not name.startswith(scope) or not value.is_floating_point():
                if name.startswith(scope):  # integer buffers of the backbone (e.g. position ids) come from the build
                    base_names.append(name)
                else:
                    dense[name] = value.clone().contiguous()
                continue
            before = base_state[name].detach().to("cpu")
            # a NaN weight counts as changed (NaN != NaN) and is stored: the rebuild still reproduces it exactly
            changed = (value != before).reshape(-1).nonzero().squeeze(1)
            index_bytes = 4 if value.numel() < 2**31 else 8
            if changed.numel() * (index_bytes + value.element_size()) >= value.numel() * value.element_size():
                dense[name] = value.clone().contiguous()
                continue
            base_names.append(name)
            if changed.numel():
                index_dtype = torch.int32 if index_bytes == 4 else torch.int64
                sparse[name] = (changed.to(index_dtype), value.reshape(-1)[changed].clone())
                shapes[name] = tuple(value.shape)
        return cls(
            sparse=sparse,
            dense=dense,
            shapes=shapes,
            base_names=base_names,
            base_sha256=base_fingerprint(base_state, base_names),
            recipe=dict(recipe or {}),
        )

    # ------------------------------------------------------------------ reporting
    @property
    def num_sparse_entries(self) -> int:
        """Number of changed entries stored by index."""
        return sum(int(indices.numel()) for indices, _ in self.sparse.values())

    @property
    def num_dense_entries(self) -> int:
        """Number of entries stored in whole tensors."""
        return sum(int(t.numel()) for t in self.dense.values())

    def to_record(self) -> dict[str, Any]:
        """A JSON-serialisable summary for a bundle's metadata."""
        return {
            "format": DELTA_FORMAT,
            "format_version": DELTA_FORMAT_VERSION,
            "recipe": self.recipe,
            "base_sha256": self.base_sha256,
            "sparse_tensors": len(self.sparse),
            "sparse_entries": self.num_sparse_entries,
            "dense_tensors": len(self.dense),
            "dense_entries": self.num_dense_entries,
        }

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        """Write the delta to one ``.safetensors`` file, atomically.

        Args:
            path: destination.

        Returns:
            the path written.
        """
        tensors: dict[str, torch.Tensor] = {}
        for name, (indices, values) in self.sparse.items():
            tensors[_SPARSE_INDICES + name] = indices.contiguous()
            tensors[_SPARSE_VALUES + name] = values.contiguous()
        for name, value in self.dense.items():
            tensors[_DENSE + name] = value.contiguous()
        header = {
            "recipe": self.recipe,
            "shapes": {name: list(shape) for name, shape in self.shapes.items()},
            "base_names": self.base_names,
            "base_sha256": self.base_sha256,
        }
        return save_tagged_safetensors(path, tensors, DELTA_FORMAT, DELTA_FORMAT_VERSION, header, _HEADER_KEY)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SparseDelta:
        """Read a delta written by :meth:`save`.

        Args:
            path: the ``.safetensors`` file.

        Returns:
            the delta.

        Raises:
            FileNotFoundError: if the file does not exist.
            ValueError: if it is not a readable sparse delta.
        """
        path = Path(path)
        header, tensors = load_tagged_safetensors(path, "sparse delta", DELTA_FORMAT, DELTA_FORMAT_VERSION, _HEADER_KEY)
        sparse = {
            name[len(_SPARSE_INDICES) :]: (tensor, tensors[_SPARSE_VALUES + name[len(_SPARSE_INDICES) :]])
            for name, tensor in tensors.items()
            if name.startswith(_SPARSE_INDICES)
        }
        dense = {name[len(_DENSE) :]: tensor for name, tensor in tensors.items() if name.startswith(_DENSE)}
        return cls(
            sparse=sparse,
            dense=dense,
            shapes={name: tuple(shape) for name, shape in header["shapes"].items()},
            base_names=list(header["base_names"]),
            base_sha256=header["base_sha256"],
            recipe=dict(header.get("recipe", {})),
        )

    # ------------------------------------------------------------------ applying
    def apply_to(self, network: nn.Module, source: str = "") -> nn.Module:
        """Write the fine-tuned entries into a network built from the public weights, in place.

        Args:
            network: the network built with the delta's recipe (same backbone, weights, input size and method).
            source: the delta's file, named in errors.

        Returns:
            ``network``, now equal to the fine-tuned one.

        Raises:
            DeltaMismatchError: if the network lacks an entry of the delta, has another shape, or its base weights
                are not the ones the delta was made against.
        """
        state = unwrap(network).state_dict()
        origin = f" {source}" if source else ""
        made_for = _describe_recipe(self.recipe)
        for name in [*self.base_names, *self.dense]:
            if name not in state:
                raise DeltaMismatchError(
                    f"The sparse delta{origin} was made for {made_for}, but this network has no entry '{name}'. "
                    "Build the network with the delta's recipe (backbone, image size, method)."
                )
        for name, shape in [*self.shapes.items(), *((n, tuple(t.shape)) for n, t in self.dense.items())]:
            if tuple(state[name].shape) != tuple(shape):
                raise DeltaMismatchError(
                    f"The sparse delta{origin} was made for {made_for}: entry '{name}' has shape {list(shape)} there "
                    f"but {list(state[name].shape)} in this network. Build the network with the delta's recipe."
                )
        found = base_fingerprint(state, self.base_names)
        if found != self.base_sha256:
            raise DeltaMismatchError(
                f"The backbone weights of this network are not the ones the sparse delta{origin} was made against "
                f"({made_for}; expected base fingerprint {self.base_sha256[:16]}..., found {found[:16]}...). "
                f"{_pretrained_hint(self.recipe)}"
            )
        with torch.no_grad():
            for name, (indices, values) in self.sparse.items():
                target = state[name]
                target.view(-1)[indices.to(target.device).long()] = values.to(target.device, target.dtype)
            for name, value in self.dense.items():
                state[name].copy_(value.to(state[name].device, state[name].dtype))
        return network


def apply_delta(network: nn.Module, delta_file: str | os.PathLike) -> nn.Module:
    """Load a delta file and apply it to ``network`` (see :meth:`SparseDelta.apply_to`).

    Args:
        network: the network built from the public weights with the delta's recipe.
        delta_file: the ``.safetensors`` delta.

    Returns:
        the network, now the fine-tuned one.
    """
    delta = SparseDelta.load(delta_file)
    delta.apply_to(network, source=os.fspath(delta_file))
    logger.info(
        "Applied the sparse delta %s: %d changed backbone entries in %d tensors, %d tensors whole.",
        delta_file,
        delta.num_sparse_entries,
        len(delta.sparse),
        len(delta.dense),
    )
    return network


def recorded_pretrained(delta_file: str | os.PathLike) -> str | None:
    """The ``pretrained`` value to build the delta's base network with, from the delta's recipe.

    A pretrained tag (e.g. ``"openai"``) is returned as is. A weights file is returned if it is still at the recorded
    path with the recorded SHA-256; otherwise the error says which file to pass with ``--pretrained``.

    Args:
        delta_file: the ``.safetensors`` delta.

    Returns:
        a tag or a path for ``build_classifier(pretrained=...)``.

    Raises:
        FileNotFoundError: if the delta was made against a local weights file that is not here.
    """
    recipe = SparseDelta.load(delta_file).recipe
    pretrained = recipe.get("pretrained")
    expected_hash = recipe.get("pretrained_sha256")
    if not expected_hash:
        return pretrained
    candidate = Path(os.path.expanduser(str(pretrained)))
    if candidate.is_file() and sha256_of_file(candidate) == expected_hash:
        return str(candidate)
    raise FileNotFoundError(
        f"The sparse delta {delta_file} was made against the backbone weights file '{candidate.name}' "
        f"(sha256 {expected_hash}), which is not at '{candidate}'. {_pretrained_hint(recipe)}"
    )


def choose_weights(weights: str, ckpt_file: str | os.PathLike, delta_file: str | os.PathLike) -> str:
    """Decide where a bundle's trained weights come from.

    Args:
        weights: ``"checkpoint"`` (the full ``model.pt``), ``"delta"`` (public backbone + sparse delta) or
            ``"auto"`` (the checkpoint if present, else the delta if present, else ``"checkpoint"``).
        ckpt_file: the full checkpoint.
        delta_file: the sparse delta.

    Returns:
        ``"checkpoint"`` or ``"delta"``.

    Raises:
        ValueError: for an unknown ``weights`` value.
        FileNotFoundError: if the file explicitly chosen is missing.
    """
    if weights not in _WEIGHT_SOURCES:
        raise ValueError(f"weights must be one of {', '.join(_WEIGHT_SOURCES)}; got {weights!r}.")
    has_ckpt, has_delta = Path(ckpt_file).is_file(), Path(delta_file).is_file()
    if weights == "auto":
        if has_ckpt:
            return "checkpoint"
        # with neither file, "checkpoint": the network still builds (verify_net_in_out checks shapes only), and
        # running inference stops at the checkpoint check with its own clear error
        return "delta" if has_delta else "checkpoint"
    chosen, present = (ckpt_file, has_ckpt) if weights == "checkpoint" else (delta_file, has_delta)
    if not present:
        raise FileNotFoundError(f"--weights {weights}: {chosen} does not exist.")
    return weights


def size_report(delta_file: str | os.PathLike, full_checkpoint: str | os.PathLike) -> dict[str, Any]:
    """Sizes on disk of a delta and of the full checkpoint it replaces.

    Args:
        delta_file: the sparse delta.
        full_checkpoint: the full fine-tuned checkpoint (e.g. the bundle's ``models/model.pt``).

    Returns:
        ``{"delta_bytes", "checkpoint_bytes", "ratio", "sparse_entries", "dense_entries"}``.
    """
    delta = SparseDelta.load(delta_file)
    delta_bytes = Path(delta_file).stat().st_size
    checkpoint_bytes = Path(full_checkpoint).stat().st_size
    return {
        "delta_bytes": delta_bytes,
        "checkpoint_bytes": checkpoint_bytes,
        "ratio": delta_bytes / checkpoint_bytes,
        "sparse_entries": delta.num_sparse_entries,
        "dense_entries": delta.num_dense_entries,
    }


def _check_same_structure(base: Mapping[str, torch.Tensor], trained: Mapping[str, torch.Tensor]) -> None:
    missing = [name for name in trained if name not in base]
    extra = [name for name in base if name not in trained]
    if missing or extra:
        first = missing[0] if missing else extra[0]
        raise DeltaMismatchError(
            f"The pretrained and trained networks differ in structure ('{first}' is in only one of them; "
            f"{len(missing)} + {len(extra)} such entries). Build both with the same recipe."
        )
    for name, value in trained.items():
        if tuple(value.shape) != tuple(base[name].shape):
            raise DeltaMismatchError(
                f"Entry '{name}' has shape {list(value.shape)} in the trained network but {list(base[name].shape)} "
                "in the pretrained one. Build both with the same recipe (e.g. the same image size)."
            )


def _describe_recipe(recipe: Mapping[str, Any]) -> str:
    if not recipe:
        return "another network"
    parts = [f"{key}={recipe[key]}" for key in ("backbone", "image_size", "method", "num_classes") if key in recipe]
    return ", ".join(parts) if parts else "another network"


def _pretrained_hint(recipe: Mapping[str, Any]) -> str:
    pretrained = recipe.get("pretrained")
    if recipe.get("pretrained_sha256"):
        return (
            f"Pass --pretrained /path/to/{Path(str(pretrained)).name} (the file with sha256 "
            f"{recipe['pretrained_sha256']}) and the delta's backbone {recipe.get('backbone')!r}."
        )
    if pretrained:
        return f"Build the backbone {recipe.get('backbone')!r} with pretrained={pretrained!r}."
    return "The delta was made against a randomly initialised backbone, which cannot be rebuilt elsewhere."
