"""The checks a model zoo runs on a new bundle, as one command: ``python -m monai_shpeft.zoo check <zip or folder>``.

Each check reports PASS or FAIL with the reason:

1. ``files``: the required files (``configs/metadata.json``, ``configs/inference.json``, ``docs/README.md``,
   ``LICENSE``) and our conventions (``configs/train.json``, ``configs/evaluate.json``, ``configs/logging.conf``).
2. ``archive``: a zip holds one folder, named like the zip (``<name>_v<version>.zip``).
3. ``standalone``: no config refers to a file outside the bundle (``%path#id`` macros).
4. ``metadata``: ``configs/metadata.json`` passes MONAI's ``verify_metadata`` against the bundle schema (a copy
   shipped with this package, so the check runs offline).
5. ``version``: the metadata's version is in its changelog, and is the newest entry there.
6. ``sizes``: no file is over the model zoo's 25 MB limit; ``large_files.yml`` (if any) lists valid entries.
7. ``weights``: the bundle has trained weights: the sparse delta, the checkpoint, or the checkpoint's download entry.
8. ``verify_net_in_out``: ``python -m monai.bundle verify_net_in_out network_def`` succeeds (a real subprocess run
   from the bundle's folder, with the metadata's input shape).
9. ``ckpt_export``: ``python -m monai.bundle ckpt_export network_def`` writes TorchScript, and the TorchScript module
   gives the eager network's outputs.
10. ``properties``: MONAI's ``ConfigWorkflow(configs/inference.json, workflow_type="infer")``, initialised, finds
    every inference property (``monai.bundle.properties.InferProperties``) with the right ids.
11. ``inference``: ``python -m monai.bundle run --config_file configs/inference.json`` predicts two generated images
    from the bundle's folder and writes one row per image.

Checks 8 to 11 are real subprocesses started in the bundle's folder, as a model zoo's CI runs them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from monai_shpeft.zoo.check_result import CheckResult, parse_overrides
from monai_shpeft.zoo.file_checks import (
    MAX_FILE_BYTES,
    METADATA_SCHEMA,
    _check_files,
    _check_metadata,
    _check_sizes,
    _check_standalone,
    _check_version,
    _check_weights,
    _read_metadata,
    _unpacked,
)
from monai_shpeft.zoo.network_checks import _COMMAND_CHECKS, _check_network

__all__ = ["MAX_FILE_BYTES", "METADATA_SCHEMA", "CheckResult", "check_bundle", "parse_overrides"]


def check_bundle(
    path: str | os.PathLike,
    overrides: Sequence[str] = (),
    device: str = "cpu",
    run_commands: bool = True,
    timeout: int = 900,
) -> list[CheckResult]:
    """Run the model-zoo checks on a bundle folder or its zip.

    Args:
        path: the bundle folder, or a ``<name>_v<version>.zip`` made by ``python -m monai_shpeft.zoo package``.
        overrides: ``--key value`` pairs for the network commands (e.g. ``--pretrained /path/to/backbone``).
        device: device for the network checks.
        run_commands: run the ``verify_net_in_out`` and ``ckpt_export`` subprocesses (the slow part).
        timeout: seconds allowed for each subprocess.

    Returns:
        one :class:`CheckResult` per check, in order.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
    """
    source = Path(path)
    if not source.exists():
        raise FileNotFoundError(f"no bundle at {source}")
    results: list[CheckResult] = []
    with _unpacked(source, results) as bundle:
        if bundle is None:
            return results
        results.append(_check_files(bundle))
        results.append(_check_standalone(bundle))
        metadata = _read_metadata(bundle)
        results.append(_check_metadata(bundle, metadata))
        results.append(_check_version(metadata))
        large_files, sizes = _check_sizes(bundle)
        results.append(sizes)
        results.append(_check_weights(bundle, large_files))
        if run_commands:
            if all(r.passed for r in results if r.name in ("files", "metadata", "weights")):
                results.extend(_check_network(bundle, metadata, list(overrides), device, timeout))
            else:
                skipped = "skipped: fix the failures above first"
                for name in _COMMAND_CHECKS:
                    results.append(CheckResult(name, False, skipped))
    return results
