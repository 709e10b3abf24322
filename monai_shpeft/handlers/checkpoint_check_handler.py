"""Ignite handler that checks a checkpoint fits the network before MONAI's ``CheckpointLoader`` loads it."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from monai.utils import min_version, optional_import

from monai_shpeft.errors import InputError
from monai_shpeft.utils import unwrap

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", "0.4.11", min_version, "Engine")

__all__ = ["CheckpointCheckHandler", "CheckpointMismatchError", "check_checkpoint"]

#: differing tensors named in a message before the rest is counted
_NAMED = 3


class CheckpointMismatchError(InputError, ValueError):
    """A checkpoint cannot be loaded into the network: another number of classes, backbone, size or method."""


def _shape(value: Any) -> list[int] | None:
    return list(value.shape) if isinstance(value, torch.Tensor) else None


def _examples(names: Sequence[str]) -> str:
    shown = ", ".join(f"'{name}'" for name in names[:_NAMED])
    return shown + (f" and {len(names) - _NAMED} more" if len(names) > _NAMED else "")


def check_checkpoint(
    checkpoint_file: str | os.PathLike,
    network: torch.nn.Module,
    classes: Sequence[str] | None = None,
    key: str = "model",
) -> None:
    """Check that ``checkpoint_file`` holds exactly the tensors (names and shapes) of ``network``.

    torch's own error for a checkpoint of another model lists every differing tensor with its full shapes; this
    names the cause a user can act on: a head for another number of classes, or a network built with other
    settings than in training.

    Args:
        checkpoint_file: a ``torch.save``-d state dict, or a dict holding one under ``key`` (MONAI's
            ``CheckpointSaver`` writes either).
        network: the network the checkpoint is about to be loaded into.
        classes: the bundle's class names, to name the classes in the message (and to spot the head by its
            number of outputs).
        key: the key of the network's state dict in a checkpoint of several objects.

    Raises:
        FileNotFoundError: if the file does not exist.
        CheckpointMismatchError: if it cannot be read as a state dict, or does not fit ``network``.
    """
    path = os.fspath(checkpoint_file)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"no trained checkpoint at {path}: train the bundle first (its train.json writes it), or point ckpt_dir "
            "to the folder that holds model.pt."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and torch errors alike: the file is not a readable checkpoint
        raise CheckpointMismatchError(
            f"cannot read the checkpoint {path} ({type(error).__name__}: {error}); is it a complete model.pt written "
            "by training (an interrupted copy)?"
        ) from error
    if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
        state = state[key]
    if not isinstance(state, Mapping):
        raise CheckpointMismatchError(f"the checkpoint {path} holds a {type(state).__name__}, not a state dict.")
    expected = unwrap(network).state_dict()
    reshaped = [n for n in expected if n in state and _shape(state[n]) != _shape(expected[n])]
    missing = [n for n in expected if n not in state]
    unexpected = [n for n in state if n not in expected]
    if not (reshaped or missing or unexpected):
        return
    num_classes = len(classes) if classes is not None else None

    def is_head(name: str) -> bool:  # same tensor but for its first axis, which counts the classes
        found, wanted = state[name].shape, expected[name].shape
        if len(found) != len(wanted) or found[1:] != wanted[1:]:
            return False
        return wanted[0] == num_classes if num_classes is not None else "head" in name

    heads = [n for n in reshaped if isinstance(state[n], torch.Tensor) and is_head(n)]
    if heads and len(heads) == len(reshaped) and not missing and not unexpected:
        found = int(state[heads[0]].shape[0])
        named = f" ({', '.join(classes)})" if classes is not None else ""
        raise CheckpointMismatchError(
            f"the checkpoint {path} has a {found}-class head but this bundle has {expected[heads[0]].shape[0]} "
            f"classes{named}: it was trained for another dataset or class list. Evaluate it with the bundle it was "
            "trained with, or train this bundle to write its own checkpoint."
        )
    details = []
    if reshaped:
        first = reshaped[0]
        details.append(
            f"'{first}' has shape {_shape(state[first])} there but {_shape(expected[first])} in the network"
            + (f" ({len(reshaped) - 1} more tensors differ in shape)" if len(reshaped) > 1 else "")
        )
    if missing:
        details.append(f"{len(missing)} tensors of the network are not in it ({_examples(missing)})")
    if unexpected:
        details.append(f"{len(unexpected)} tensors in it are not in the network ({_examples(unexpected)})")
    raise CheckpointMismatchError(
        f"the checkpoint {path} does not fit this network: {'; '.join(details)}. It was trained with other settings: "
        "pass the --backbone, --image_size, --method (and --method_options, --fpt_* knobs) used in training."
    )


class CheckpointCheckHandler:
    """Check on ``STARTED`` that a checkpoint fits the network, so that MONAI's ``CheckpointLoader`` can load it.

    Attach it before the ``CheckpointLoader`` of the same file (handlers of one event run in the order they were
    attached): a checkpoint made for another number of classes then stops the run with
    ``the checkpoint <file> has a 5-class head but this bundle has 3 classes (...)`` instead of torch's list of
    size mismatches. See :func:`check_checkpoint`.

    Args:
        load_path: the checkpoint ``CheckpointLoader`` will load.
        network: the network it will be loaded into.
        classes: the bundle's class names.
        key: the key of the network in a checkpoint of several objects (``CheckpointLoader``'s ``load_dict`` key).

    Example::

        evaluator = SupervisedEvaluator(..., val_handlers=[
            CheckpointCheckHandler("models/model.pt", network, classes=["benign", "malignant", "normal"]),
            CheckpointLoader(load_path="models/model.pt", load_dict={"model": network}),
        ])
    """

    def __init__(
        self,
        load_path: str | os.PathLike,
        network: torch.nn.Module,
        classes: Sequence[str] | None = None,
        key: str = "model",
    ) -> None:
        self.load_path = load_path
        self.network = network
        self.classes = list(classes) if classes is not None else None
        self.key = key
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        """Register with ``engine`` on ``STARTED``.

        Args:
            engine: an evaluator or trainer.
        """
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        """Check the checkpoint.

        Args:
            engine: the engine that is starting.

        Raises:
            FileNotFoundError: if the checkpoint does not exist.
            CheckpointMismatchError: if it does not fit the network.
        """
        check_checkpoint(self.load_path, self.network, self.classes, self.key)
        self.logger.info("Checkpoint %s fits the network.", os.fspath(self.load_path))
