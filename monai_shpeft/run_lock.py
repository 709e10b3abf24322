"""One run at a time per output folder: the second run that would write into it stops and names the first.

Two runs writing the same ``output_dir`` (checkpoints, ``datalist.json``, ``metadata.json`` records, TensorBoard
events) would overwrite each other's files without a word. Each bundle takes an exclusive ``flock`` on
``<output_dir>/.run.lock`` as an ``initialize`` step and holds it until its process ends; the operating system
releases it then, so a run killed with ``kill -9`` leaves no stale lock. Only the main process of a multi-process
run (``RANK`` 0) takes it. Where ``fcntl`` does not exist (Windows) no lock is taken.
"""

from __future__ import annotations

import datetime
import os
import socket
from pathlib import Path
from typing import IO

from monai_shpeft.errors import InputError

__all__ = ["LOCK_FILE", "OutputFolderInUseError", "lock_output_dir"]

LOCK_FILE = ".run.lock"
# the open lock files of this process, by resolved path: closing one would release its lock
_HELD: dict[str, IO[str]] = {}


class OutputFolderInUseError(InputError):
    """Another running process holds the output folder's lock."""


def lock_output_dir(output_dir: str | os.PathLike, what: str = "run") -> Path:
    """Take the output folder's lock for the rest of this process, or stop naming the run that holds it.

    Args:
        output_dir: the folder the run writes into (created if missing).
        what: what this run does (``"training"``, ``"evaluation"``), written into the lock file for the next one.

    Returns:
        the lock file's path.

    Raises:
        OutputFolderInUseError: when another process holds the lock; the message names it and what to do.
    """
    path = Path(output_dir) / LOCK_FILE
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return path
    if int(os.environ.get("RANK", "0") or 0) != 0:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    key = str(path.resolve())
    if key in _HELD:  # this process already holds it (evaluation after training in one process)
        return path
    handle = open(path, "a+")  # noqa: SIM115 - held open on purpose: the lock lives as long as the file is open
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "a process that wrote nothing yet"
        handle.close()
        raise OutputFolderInUseError(
            f"another run is writing {os.fspath(output_dir)} ({holder}): wait for it to finish, or give this run "
            f"its own folder (bundles: --output_dir DIR). The lock ({path}) is released when that process ends."
        ) from None
    handle.seek(0)
    handle.truncate()
    started = datetime.datetime.now().isoformat(timespec="seconds")
    handle.write(f"{what}, process {os.getpid()} on {socket.gethostname()}, started {started}\n")
    handle.flush()
    _HELD[key] = handle
    return path
