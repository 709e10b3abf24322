"""Release a frozen module's weights while it is not needed, and give them back where they are asked for.

With preloaded features FPT's training never runs its frozen backbone, yet its weights would stay in memory (a third
of the process's peak for ViT-B/16 at 512 px). :func:`release_parameters` replaces every parameter of the module by
a ``meta`` tensor of the same shape and dtype (no storage) once its state dict is on disk in a snapshot file
(:func:`write_snapshot`, safetensors, checked against the weights' SHA-256 on every read); :func:`restore_parameters`
puts the snapshot's values back. The state-dict hooks of
:class:`~monai_shpeft.networks.FrozenFeatureExtractor` use :func:`read_snapshot` so that a checkpoint taken while the
weights are released holds exactly the values it held before.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save_file

from monai_shpeft.errors import InputError
from monai_shpeft.utils import atomic_path

__all__ = [
    "FrozenSnapshotError",
    "ReleasedParameter",
    "read_snapshot",
    "release_parameters",
    "restore_parameters",
    "state_digest",
    "write_snapshot",
]

#: (module, attribute name, full state-dict name) of one released parameter
ReleasedParameter = tuple[nn.Module, str, str]


class FrozenSnapshotError(InputError, RuntimeError):
    """The snapshot of released frozen weights is missing or does not hold the weights it was written from."""


def state_digest(name: str, items: Iterable[tuple[str, torch.Tensor]]) -> str:
    """SHA-256 of a model name and named tensors (names, shapes, dtypes and values), in the given order.

    Args:
        name: the model's name (the digest's first bytes).
        items: ``(name, tensor)`` pairs, in state-dict order.

    Returns:
        the hex digest.
    """
    digest = hashlib.sha256(name.encode())
    for key, tensor in items:
        digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def write_snapshot(path: Path, name: str, state: dict[str, torch.Tensor], fingerprint: str) -> None:
    """Write ``state`` to ``path`` (safetensors, atomically) unless a sound snapshot of ``fingerprint`` is there.

    An existing file is checked tensor by tensor with plain reads (one tensor in memory at a time; a memory map
    would count the whole file in the process's resident memory), so the check does not hold a second copy.

    Args:
        path: the snapshot file.
        name: the model's name (see :func:`state_digest`).
        state: the module's state dict.
        fingerprint: ``state_digest(name, state.items())``.
    """
    if path.is_file():
        try:
            if state_digest(name, _stream(path, list(state))) == fingerprint:
                return
        except (OSError, ValueError, KeyError, RuntimeError):
            pass  # unreadable or other tensors: written again below
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, os.fspath(tmp), metadata={"model": name, "sha256": fingerprint})


def read_snapshot(path: Path, name: str, keys: list[str], fingerprint: str) -> dict[str, torch.Tensor]:
    """The snapshot's tensors (on the CPU, in ``keys`` order), checked against ``fingerprint``.

    Args:
        path: the snapshot file.
        name: the model's name.
        keys: the state-dict names, in the module's order.
        fingerprint: the SHA-256 the values must have (:func:`state_digest`).

    Returns:
        ``name -> tensor``.

    Raises:
        FrozenSnapshotError: when the file is missing, unreadable or holds other weights.
    """
    try:
        tensors = dict(_stream(path, keys))
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise FrozenSnapshotError(
            f"The released frozen weights' snapshot '{path}' is unreadable or lacks a tensor ({err!r}); it must stay "
            "in place while the run holds the weights released (rerun the training to write it again)."
        ) from err
    if state_digest(name, tensors.items()) != fingerprint:
        raise FrozenSnapshotError(
            f"The released frozen weights' snapshot '{path}' does not hold the weights that were released (SHA-256 "
            f"{fingerprint[:16]}...); it was changed on disk. Rerun the training to write it again."
        )
    return {k: tensors[k] for k in keys}


_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _stream(path: Path, keys: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors ``keys`` of a safetensors file, read one at a time with plain reads (no memory map).

    Raises:
        KeyError: when the file's tensors are not exactly ``keys``.
        ValueError: on a malformed header or a truncated file.
    """
    with open(path, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(size))
        header.pop("__metadata__", None)
        if set(header) != set(keys):
            raise KeyError(f"tensors {sorted(set(header) ^ set(keys))[:3]}... differ")
        for key in keys:
            info = header[key]
            start, end = info["data_offsets"]
            handle.seek(8 + size + start)
            data = bytearray(end - start)
            if handle.readinto(data) != len(data):
                raise ValueError(f"truncated at tensor {key}")
            dtype = _SAFETENSORS_DTYPES[info["dtype"]]
            tensor = torch.frombuffer(data, dtype=dtype) if data else torch.empty(0, dtype=dtype)
            yield key, tensor.reshape(info["shape"])


def release_parameters(module: nn.Module) -> tuple[list[ReleasedParameter], int]:
    """Replace every parameter of ``module`` by a storage-less ``meta`` tensor of the same shape and dtype.

    The old parameter objects are emptied as well (``.data`` set to an empty tensor), so that references held
    elsewhere, e.g. by ``DistributedDataParallel``'s parameter list, do not keep their storage alive. Tied
    parameters stay tied. Buffers are kept (ViTs' are small or absent).

    Args:
        module: the frozen module.

    Returns:
        the released parameters and the bytes their storage held.
    """
    released: list[ReleasedParameter] = []
    replaced: dict[int, nn.Parameter] = {}
    old: list[nn.Parameter] = []
    freed = 0
    for prefix, owner in module.named_modules():
        for attribute, param in list(owner._parameters.items()):
            if param is None or param.is_meta:
                continue
            if id(param) not in replaced:
                replaced[id(param)] = nn.Parameter(torch.empty_like(param, device="meta"), requires_grad=False)
                freed += param.numel() * param.element_size()
                old.append(param)
            owner._parameters[attribute] = replaced[id(param)]
            released.append((owner, attribute, f"{prefix}.{attribute}" if prefix else attribute))
    for param in old:
        param.data = torch.empty(0, dtype=param.dtype, device=param.device)
    del old
    _return_freed_heap()
    return released, freed


def _return_freed_heap() -> None:
    """Hand freed heap pages back to the system (glibc keeps small freed blocks otherwise, and RSS would not drop)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to trim
            pass


def restore_parameters(
    released: list[ReleasedParameter], tensors: dict[str, torch.Tensor], device: torch.device
) -> None:
    """Give released parameters their values back (frozen, on ``device``), keeping tied parameters tied.

    Args:
        released: what :func:`release_parameters` returned.
        tensors: the values by state-dict name (:func:`read_snapshot`).
        device: where the parameters live again.
    """
    restored: dict[int, nn.Parameter] = {}
    for owner, attribute, key in released:
        placeholder = owner._parameters[attribute]
        if placeholder is None or not placeholder.is_meta:
            continue
        if id(placeholder) not in restored:
            restored[id(placeholder)] = nn.Parameter(tensors[key].to(device), requires_grad=False)
        owner._parameters[attribute] = restored[id(placeholder)]
