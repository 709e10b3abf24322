"""Small shared utilities: atomic file writes, file hashing, flags, and where the running bundle lives."""

from __future__ import annotations

import ast
import contextlib
import hashlib
import inspect
import json
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from monai_shpeft.errors import SettingsError

__all__ = [
    "load_tagged_safetensors",
    "save_tagged_safetensors",
    "unwrap",
    "as_flag",
    "atomic_path",
    "atomic_write_json",
    "config_bundle_root",
    "config_tracking",
    "read_run_metadata",
    "read_safetensors",
    "sha256_of_file",
]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` and move it over ``path`` once the block succeeds.

    A reader (or a run killed at any moment) therefore sees either the old file or the complete new one,
    never a partly written file. The temporary file lives in the same directory so that ``os.replace``
    is an atomic rename on the same file system.

    Args:
        path: the final destination.

    Yields:
        the temporary path to write to.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; the result should read like any other file
    try:
        yield tmp
        with open(tmp, "rb+") as handle:  # make the bytes durable before the rename publishes them
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_json(path: str | os.PathLike, data: Any, indent: int = 4) -> None:
    """Write ``data`` as JSON to ``path`` atomically (see :func:`atomic_path`).

    Args:
        path: destination file.
        data: JSON-serialisable object.
        indent: indentation of the written JSON.
    """
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=indent) + "\n", encoding="utf-8")


def read_run_metadata(run_file: str | os.PathLike, template_file: str | os.PathLike | None = None) -> dict[str, Any]:
    """The metadata of a training run: ``run_file`` if it exists, else the bundle's own metadata as its start.

    A run records what it trained (the sparse set, the delta) in a copy of the bundle's ``configs/metadata.json``
    beside its checkpoint (``models/metadata.json``), so the tracked file of a bundle is never rewritten by a run
    and the record always sits next to the weights it describes.

    Args:
        run_file: the run's metadata file.
        template_file: the bundle's ``configs/metadata.json``, read when ``run_file`` does not exist yet.

    Returns:
        the metadata, as a dictionary to update and write to ``run_file``.

    Raises:
        FileNotFoundError: if neither file exists.
        ValueError: if the file read is not valid JSON.
    """
    source = Path(run_file)
    if not source.is_file() and template_file is not None:
        source = Path(template_file)
    try:
        return json.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise FileNotFoundError(f"bundle metadata not found: {source}") from error
    except json.JSONDecodeError as error:
        raise ValueError(f"bundle metadata {source} is not valid JSON: {error}") from error


def sha256_of_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Return the hex SHA-256 digest of a file, read in chunks so large checkpoints fit in memory.

    Args:
        path: the file to hash.
        chunk_size: bytes read at a time.

    Returns:
        the hexadecimal digest.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


_FALSE_WORDS = ("false", "0", "no", "off", "none", "")
_TRUE_WORDS = ("true", "1", "yes", "on")


def as_flag(value: Any, name: str = "flag") -> bool:
    """A boolean knob as the command line may deliver it.

    ``python -m monai.bundle run --knob false`` passes the string ``'false'`` (fire parses only ``False``), which
    Python would treat as true; this reads the usual spellings instead.

    Args:
        value: a bool, a number, ``None`` or a string such as ``"False"``, ``"false"``, ``"0"``, ``"yes"``.
        name: the knob's name, for the error.

    Returns:
        the flag.

    Raises:
        ValueError: naming the knob when a string is not a recognised spelling.
    """
    if not isinstance(value, str):
        return bool(value)
    word = value.strip().lower()
    if word in _FALSE_WORDS:
        return False
    if word in _TRUE_WORDS:
        return True
    raise SettingsError(f"{name} must be true or false, got {value!r}.")


def read_safetensors(path: str | os.PathLike, what: str) -> tuple[dict[str, str], dict[str, Any]]:
    """Read every tensor and the string metadata of a ``.safetensors`` file, with errors that name it.

    Args:
        path: the file.
        what: what the file should be (e.g. ``"sparse delta"``), for the error messages.

    Returns:
        ``(metadata, tensors)``.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if it is not a readable safetensors file.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as error:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{path} is not a readable safetensors file: {error}") from error
    return metadata, tensors


def save_tagged_safetensors(
    path: str | os.PathLike,
    tensors: dict[str, Any],
    format_name: str,
    version: int,
    header: dict[str, Any],
    header_key: str = "header",
) -> Path:
    """Write ``tensors`` to a ``.safetensors`` file, atomically, tagged with a format, its version and a JSON header.

    Args:
        path: the file.
        tensors: name -> tensor (made contiguous by the caller).
        format_name: the format tag that :func:`load_tagged_safetensors` checks.
        version: the format's version.
        header: JSON-serialisable description stored in the metadata.
        header_key: the metadata key of the header (kept per format for files already written).

    Returns:
        the path.
    """
    import json

    from safetensors.torch import save_file

    metadata = {"format": format_name, "version": str(version), header_key: json.dumps(header)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def load_tagged_safetensors(
    path: str | os.PathLike, what: str, format_name: str, version: int, header_key: str = "header"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a file written by :func:`save_tagged_safetensors`, checking its format tag and version.

    Args:
        path: the file.
        what: what the file should be (e.g. ``"sparse delta"``), for the error messages.
        format_name: the expected format tag.
        version: the newest format version this code reads.
        header_key: the metadata key of the header.

    Returns:
        ``(header, tensors)``.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if it is not a readable safetensors file, not a ``what``, or of a newer format version.
    """
    import json

    metadata, tensors = read_safetensors(path, what)
    if metadata.get("format") != format_name:
        raise ValueError(f"{path} is a safetensors file but not a {what} ({metadata.get('format', 'no format tag')}).")
    if int(metadata.get("version", 0)) > version:
        raise ValueError(
            f"{path} was written by a newer monai-shpeft ({what} format {metadata['version']}); upgrade to read it."
        )
    return json.loads(metadata[header_key]), tensors


def _bundle_folder(config_dir: Path) -> str:
    """The bundle folder of a config folder: the parent of ``configs/``, else the folder itself."""
    folder = config_dir.parent if config_dir.name == "configs" else config_dir
    return os.fspath(folder) or "."


def _config_file_argument(argv: Sequence[str]) -> str | None:
    """The first file of a ``--config_file`` argument (a path, or a list written as a Python/JSON list)."""
    for index, argument in enumerate(argv):
        if argument == "--config_file" and index + 1 < len(argv):
            value = argv[index + 1]
        elif argument.startswith("--config_file="):
            value = argument.split("=", 1)[1]
        else:
            continue
        if value.strip().startswith("["):
            with contextlib.suppress(ValueError, SyntaxError):
                files = ast.literal_eval(value)
                return str(files[0]) if files else None
        return value.split(",")[0]
    return None


def config_bundle_root() -> str:
    """The folder of the bundle being run: the parent of the ``configs/`` folder its first config file is in.

    A bundle's configs set ``"bundle_root": "$monai_shpeft.utils.config_bundle_root()"``, so that a bundle runs the
    same from its own folder (``--config_file configs/train.json`` gives ``.``), from the repository root
    (``bundles/busi/configs/train.json`` gives ``bundles/busi``) and from a copy anywhere. The config files come
    from MONAI's ``ConfigWorkflow`` that is resolving the expression (``python -m monai.bundle run`` and
    ``monai.bundle.run`` both make one), else from ``--config_file`` on the command line (``ckpt_export`` and
    ``verify_net_in_out`` read configs without a workflow); with neither, the working directory. An explicit
    ``--bundle_root`` overrides the expression as usual; Python code that reads a bundle with a bare
    ``ConfigParser`` sets ``parser["bundle_root"]`` itself (``monai_shpeft.zoo.bundle_parser`` does).

    Returns:
        the bundle folder, relative when the config path was.
    """
    workflow = _running_workflow()
    if workflow is not None:
        return _bundle_folder(Path(workflow.config_root_path))
    config_file = _config_file_argument(sys.argv)
    return _bundle_folder(Path(config_file).parent) if config_file else "."


def _running_workflow() -> Any | None:
    """The MONAI ``ConfigWorkflow`` whose config is being resolved (a caller's ``self`` up the stack), if any."""
    from monai.bundle import ConfigWorkflow

    frame = inspect.currentframe()
    try:
        while frame is not None:
            workflow = frame.f_locals.get("self")
            if isinstance(workflow, ConfigWorkflow):
                return workflow
            frame = frame.f_back
    finally:
        del frame  # a frame kept alive would keep every local of the stack alive
    return None


def config_tracking() -> str:
    """The experiment tracking ``monai.bundle run --tracking`` gave the bundle being run: ``"mlflow"`` or ``""``.

    ``--tracking`` is MONAI's own option (:func:`monai.bundle.run`), not a config key: MONAI appends an
    ``MLFlowHandler`` to the bundle's handler lists (``train#handlers``, ``validate#handlers``, ``handlers``) and
    keeps the bundle's ``tracking_uri``, ``experiment_name`` and ``run_name``. The bundles set
    ``"tracking": "$monai_shpeft.utils.config_tracking()"``, which finds those handlers in the running workflow's
    config, so the bundle's own tracking (:class:`~monai_shpeft.handlers.TrackingHandler`) runs exactly when MONAI's
    does.

    Returns:
        ``"mlflow"`` when the workflow's config has an ``MLFlowHandler``, else ``""`` (also outside a workflow).
    """
    workflow = _running_workflow()
    if workflow is None:
        return ""
    for handlers_id in ("train#handlers", "validate#handlers", "handlers"):
        handlers = workflow.parser.get(handlers_id)
        for handler in handlers if isinstance(handlers, list) else ():
            if isinstance(handler, dict) and str(handler.get("_target_", "")).rsplit(".", 1)[-1] == "MLFlowHandler":
                return "mlflow"
    return ""


def unwrap(network: nn.Module) -> nn.Module:
    """Return the module inside DistributedDataParallel / DataParallel wrappers."""
    while isinstance(network, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        network = network.module
    return network
