"""The one family of errors monai-shpeft raises for bad input or bad settings, and how a failed run reports them.

Every error the project raises because of what a user gave it (a file, a folder, a datalist, a checkpoint, a knob)
derives from :class:`ShpeftError`, and its message names the file or the knob and the cause. MONAI wraps whatever a
transform or a config expression raises in ``RuntimeError("applying transform ...")`` or ``RuntimeError("Failed
to evaluate ConfigExpression: ...")``, so on its own the last line of a failed bundle run is MONAI's wrapper. Two
places undo that, once each:

- :func:`install_failure_report`, the first ``initialize`` step of every bundle, replaces the process's
  ``sys.excepthook``: when a run stops on one of our errors the traceback goes to ``<output_dir>/failure.log``
  (printed too with ``--debug true``) and the last line on the terminal is our error's message;
- :class:`~monai_shpeft.transforms.presets.ReportingCompose`, the ``Compose`` of the modality presets, re-raises our
  error itself, so ``except ImageReadError`` catches a bad file read through a preset.

Errors raised in a ``DataLoader`` worker reach the main process as text only; :func:`find_error_message` reads our
error's message from that text.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

__all__ = [
    "FAILURE_LOG",
    "DatasetFolderError",
    "DatasetLayoutError",
    "InputError",
    "SettingsError",
    "ShpeftError",
    "find_error",
    "find_error_message",
    "install_failure_report",
]

#: the file, in the run's output folder, that keeps the full traceback of a run stopped by one of our errors
FAILURE_LOG = "failure.log"


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


ExceptHook = Callable[[type[BaseException], BaseException, TracebackType | None], object]


class _FailureReport:
    """``sys.excepthook`` that ends a run stopped by one of our errors with that error's message."""

    def __init__(self, previous: ExceptHook, log_dir: str | os.PathLike | None, debug: bool) -> None:
        self.previous = previous
        self.log_dir = log_dir
        self.debug = debug

    def __call__(self, error_type: type[BaseException], error: BaseException, trace: TracebackType | None) -> object:
        message = find_error_message(error)
        if message is None:  # not a bad-input error: the usual full traceback
            return self.previous(error_type, error, trace)
        text = "".join(traceback.format_exception(error_type, error, trace))
        log_file = self._write_log(text)
        if self.debug:
            sys.stderr.write(text)
        where = f"the full traceback is in {log_file}" if log_file else "the traceback could not be written"
        sys.stderr.write(f"\nThe run stopped on bad input or a bad setting ({where}; --debug true prints it).\n")
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
        return None

    def _write_log(self, text: str) -> Path | None:
        if self.log_dir is None:
            return None
        try:
            path = Path(self.log_dir) / FAILURE_LOG
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            return path
        except OSError:  # a full or read-only disk must not hide the message itself
            return None


def install_failure_report(log_dir: str | os.PathLike | None = None, debug: bool | str = False) -> None:
    """Make a run stopped by one of our errors end with our message, the traceback kept in ``log_dir``.

    Errors that are not ours keep Python's usual report. Calling it again replaces the settings (one hook).

    Args:
        log_dir: where ``failure.log`` (the full traceback) goes; ``None``: nowhere.
        debug: print the full traceback above the message as well (bundles: ``--debug true``).
    """
    from monai_shpeft.utils import as_flag

    previous = sys.excepthook
    if isinstance(previous, _FailureReport):
        previous = previous.previous
    sys.excepthook = _FailureReport(previous, log_dir, as_flag(debug, "debug"))
