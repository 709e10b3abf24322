"""How a run stopped by one of our errors reports it: our message last, the traceback kept in a log file.

See :mod:`monai_shpeft.errors` for why MONAI's wrappers need undoing.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from monai_shpeft.errors import find_error_message
from monai_shpeft.utils import as_flag

__all__ = ["FAILURE_LOG", "install_failure_report"]

ExceptHook = Callable[[type[BaseException], BaseException, TracebackType | None], object]

#: the file, in the run's output folder, that keeps the full traceback of a run stopped by one of our errors
FAILURE_LOG = "failure.log"


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
    previous = sys.excepthook
    if isinstance(previous, _FailureReport):
        previous = previous.previous
    sys.excepthook = _FailureReport(previous, log_dir, as_flag(debug, "debug"))
