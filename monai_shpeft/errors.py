"""The one family of errors monai-shpeft raises for bad input or bad settings, and how to find them again.

Every error the project raises because of what a user gave it (a file, a folder, a datalist, a checkpoint, a knob)
derives from :class:`ShpeftError`, and its message names the file or the knob and the cause. MONAI wraps whatever a
transform or a config expression raises in ``RuntimeError("applying transform ...")`` or ``RuntimeError("Failed
to evaluate ConfigExpression: ...")``, so on its own the last line of a failed bundle run is MONAI's wrapper. Two
places undo that, once each:

- :func:`~monai_shpeft.failure_report.install_failure_report`, the first ``initialize`` step of every bundle,
  replaces the process's ``sys.excepthook``: when a run stops on one of our errors the traceback goes to
  ``<output_dir>/failure.log`` (printed too with ``--debug true``) and the last line on the terminal is our error's
  message;
- :class:`~monai_shpeft.transforms.presets.ReportingCompose`, the ``Compose`` of the modality presets, re-raises our
  error itself, so ``except ImageReadError`` catches a bad file read through a preset.

Errors raised in a ``DataLoader`` worker reach the main process as text only; :func:`find_error_message` reads our
error's message from that text.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

__all__ = [
    "DatasetFolderError",
    "DatasetLayoutError",
    "InputError",
    "SettingsError",
    "ShpeftError",
    "find_error",
    "find_error_message",
]


class ShpeftError(Exception):
    """Base of every error monai-shpeft raises for bad input or bad settings; the message names what and why."""


class InputError(ShpeftError):
    """A file, folder, datalist, checkpoint or other input cannot be used as given."""


class SettingsError(ShpeftError, ValueError):
    """A knob or argument has a value that cannot work (unknown name, out of range, sizes that do not fit)."""


class DatasetFolderError(InputError, FileNotFoundError):
    """A dataset folder, or a folder or file its layout needs, is missing or empty."""


class DatasetLayoutError(InputError, ValueError):
    """A dataset folder's content does not follow its published layout (unknown class folder, bad label file)."""


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and the exceptions it was raised from or during, outermost first, each once (chains may loop)."""
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)


def find_error(error: BaseException) -> ShpeftError | None:
    """The outermost :class:`ShpeftError` in the chain of ``error`` (itself included), if any.

    The outermost one is taken because an error of ours that wraps another of ours adds context (e.g. the datalist
    item of an unreadable image).

    Args:
        error: any exception, typically MONAI's ``RuntimeError`` wrapper.

    Returns:
        the error, or ``None`` when none of ours is in the chain.
    """
    return next((e for e in _chain(error) if isinstance(e, ShpeftError)), None)


def _error_names() -> set[str]:
    """Names of every :class:`ShpeftError` subclass defined so far (the error text of a worker names its class)."""
    names, pending = set(), [ShpeftError]
    while pending:
        cls = pending.pop()
        names.add(cls.__name__)
        pending.extend(cls.__subclasses__())
    return names


# PyTorch re-raises a worker's error with the worker's traceback as its message (as the same class when it can)
_WORKER_MARK = "Original Traceback (most recent call last):"
# "monai_shpeft.transforms.errors.ImageReadError: cannot read ..." as a traceback prints it
_QUALIFIED_ERROR = re.compile(r"^(?:[\w.]+\.)?(?P<name>\w+): (?P<message>.*)$", re.MULTILINE)


def find_error_message(error: BaseException) -> str | None:
    """The line a user should read last: ``"<ErrorName>: <message>"`` of our error in ``error``'s chain.

    The chain is searched outermost first. An error raised in a ``DataLoader`` worker process reaches the main
    process as a new exception whose message is the worker's whole traceback (PyTorch re-raises it with the same
    class when it can, else as ``RuntimeError``); from such text the message of the outermost error of ours is read.

    Args:
        error: any exception.

    Returns:
        the line, or ``None`` when no error of ours is found.
    """
    names = _error_names()
    for current in _chain(error):
        text = str(current)
        if _WORKER_MARK in text:
            # a worker's traceback prints the innermost error first: the last of ours in the text is the outermost
            found = [m for m in _QUALIFIED_ERROR.finditer(text) if m.group("name") in names]
            if found:
                return f"{found[-1].group('name')}: {found[-1].group('message')}"
        if isinstance(current, ShpeftError):
            return f"{type(current).__name__}: {text}"
    return None
