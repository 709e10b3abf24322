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

import ast
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "MAX_FILE_BYTES",
    "METADATA_SCHEMA",
    "CheckResult",
    "check_bundle",
    "parse_overrides",
]

#: the model zoo's limit on any single file of a bundle
MAX_FILE_BYTES = 25 * 1024 * 1024
#: offline copy of the bundle metadata schema (model-zoo fields plus our sparse-set and delta records)
METADATA_SCHEMA = Path(__file__).with_name("metadata_schema.json")
REQUIRED_FILES = ("configs/metadata.json", "configs/inference.json", "docs/README.md", "LICENSE")
CONVENTION_FILES = ("configs/train.json", "configs/evaluate.json", "configs/logging.conf")
_HASH_TYPES = ("md5", "sha1", "sha256", "sha512")
_COMMAND_CHECKS = ("verify_net_in_out", "ckpt_export", "properties", "inference")
#: run in the bundle's folder: initialise the inference workflow and list the properties it lacks
_PROPERTIES_SCRIPT = """
import json, sys
from monai.bundle import ConfigWorkflow
workflow = ConfigWorkflow(config_file="configs/inference.json", workflow_type="infer", **json.loads(sys.argv[1]))
workflow.initialize()
missing = workflow.check_properties()
print("missing properties:", json.dumps(missing))
sys.exit(1 if missing else 0)
"""
_ARCHIVE_NAME = re.compile(r"^(?P<name>[A-Za-z0-9_]+)_v(?P<version>[0-9][0-9A-Za-z.\-+]*)\.zip$")


@dataclass
class CheckResult:
    """One check's outcome."""

    name: str
    passed: bool
    detail: str

    def line(self) -> str:
        """``PASS name: detail`` / ``FAIL name: detail``."""
        return f"{'PASS' if self.passed else 'FAIL'}  {self.name:<18} {self.detail}"


def parse_overrides(arguments: Sequence[str]) -> dict[str, Any]:
    """Turn ``--key value`` pairs (as given to ``monai.bundle``) into config overrides.

    Values are read as Python literals where they are one (``112``, ``True``, ``[1, 2]``), else kept as text
    (``timm:vit_small_patch14_dinov2``, ``$None``), as ``python -m monai.bundle`` reads them.

    Args:
        arguments: ``["--key", "value", ...]``.

    Returns:
        ``{key: value}``.

    Raises:
        ValueError: for a key without ``--`` or without a value.
    """
    if len(arguments) % 2:
        raise ValueError(f"overrides come in '--key value' pairs; got {' '.join(arguments)!r}.")
    overrides: dict[str, Any] = {}
    for key, text in zip(arguments[::2], arguments[1::2]):
        if not key.startswith("--"):
            raise ValueError(f"override keys start with '--'; got {key!r}.")
        try:
            value: Any = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        overrides[key[2:]] = value
    return overrides


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


@contextmanager
def _unpacked(source: Path, results: list[CheckResult]) -> Iterator[Path | None]:
    if source.is_dir():
        yield source
        return
    with tempfile.TemporaryDirectory() as workdir:
        try:
            with zipfile.ZipFile(source) as archive:
                names = archive.namelist()
                bad = [n for n in names if n.startswith("/") or ".." in Path(n).parts]
                if bad:
                    results.append(CheckResult("archive", False, f"unsafe entry {bad[0]!r} in {source.name}"))
                    yield None
                    return
                archive.extractall(workdir)
        except zipfile.BadZipFile as error:
            results.append(CheckResult("archive", False, f"{source} is not a zip file ({error})"))
            yield None
            return
        tops = sorted({Path(n).parts[0] for n in names if Path(n).parts})
        match = _ARCHIVE_NAME.match(source.name)
        if len(tops) != 1:
            results.append(CheckResult("archive", False, f"{source.name} must hold one bundle folder, has {tops}"))
            yield None
            return
        if match is None or match["name"] != tops[0]:
            detail = f"{source.name} should be named {tops[0]}_v<version>.zip (model-zoo convention)"
            results.append(CheckResult("archive", False, detail))
        else:
            results.append(CheckResult("archive", True, f"{source.name}: one folder '{tops[0]}'"))
        yield Path(workdir) / tops[0]


def _check_files(bundle: Path) -> CheckResult:
    missing = [name for name in (*REQUIRED_FILES, *CONVENTION_FILES) if not (bundle / name).is_file()]
    if missing:
        return CheckResult("files", False, f"missing {', '.join(missing)}")
    return CheckResult("files", True, f"{len(REQUIRED_FILES) + len(CONVENTION_FILES)} required files present")


def _check_standalone(bundle: Path) -> CheckResult:
    for config in sorted((bundle / "configs").glob("*.json")):
        try:
            content = json.loads(config.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            return CheckResult("standalone", False, f"{config.name} is not valid JSON: {error}")
        for value in _strings(content):
            if value.startswith("%") and not value.startswith("%#"):
                return CheckResult(
                    "standalone",
                    False,
                    f"{config.name} refers to another file ({value!r}); package the bundle with "
                    "'python -m monai_shpeft.zoo package' to inline it",
                )
    return CheckResult("standalone", True, "configs refer to no file outside the bundle")


def _read_metadata(bundle: Path) -> dict[str, Any]:
    try:
        return json.loads((bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def _check_metadata(bundle: Path, metadata: dict[str, Any]) -> CheckResult:
    if not metadata:
        return CheckResult("metadata", False, "configs/metadata.json is missing or not valid JSON")
    import warnings

    from monai.bundle import verify_metadata

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="No hash value provided")  # a local schema copy has no hash
            verify_metadata(meta_file=str(bundle / "configs" / "metadata.json"), filepath=str(METADATA_SCHEMA))
    except Exception as error:  # jsonschema's ValidationError and friends
        first = str(error).splitlines()[0]
        return CheckResult("metadata", False, f"does not pass the bundle schema: {first}")
    return CheckResult("metadata", True, f"passes the bundle schema ({METADATA_SCHEMA.name})")


def _check_version(metadata: dict[str, Any]) -> CheckResult:
    version, changelog = metadata.get("version"), metadata.get("changelog") or {}
    if not version:
        return CheckResult("version", False, "metadata has no version")
    if version not in changelog:
        return CheckResult("version", False, f"version {version} has no changelog entry")
    newest = max(changelog, key=_version_key)
    if newest != version:
        return CheckResult("version", False, f"version {version} is not the newest changelog entry ({newest})")
    return CheckResult("version", True, f"{version} is the newest changelog entry")


def _check_sizes(bundle: Path) -> tuple[list[dict[str, Any]], CheckResult]:
    large_files: list[dict[str, Any]] = []
    listing = [p for p in bundle.glob("large_files*") if p.suffix in (".yml", ".yaml", ".json")]
    if listing:
        from monai.bundle import ConfigParser

        try:
            entries = ConfigParser.load_config_file(str(listing[0])).get("large_files")
        except Exception as error:  # YAML / JSON syntax errors
            return large_files, CheckResult("sizes", False, f"{listing[0].name} is not readable: {error}")
        if not isinstance(entries, list):
            return large_files, CheckResult("sizes", False, f"{listing[0].name} has no 'large_files' list")
        for entry in entries:
            problem = _large_file_problem(bundle, entry)
            if problem:
                return large_files, CheckResult("sizes", False, f"{listing[0].name}: {problem}")
            large_files.append(entry)
    too_big = [
        (p.relative_to(bundle).as_posix(), p.stat().st_size)
        for p in sorted(bundle.rglob("*"))
        if p.is_file() and p.stat().st_size > MAX_FILE_BYTES
    ]
    if too_big:
        name, size = too_big[0]
        return large_files, CheckResult(
            "sizes",
            False,
            f"{name} is {size / 2**20:.1f} MB, over the 25 MB limit: leave it out and list it in large_files.yml "
            "(python -m monai_shpeft.zoo package --checkpoint_url URL)",
        )
    listed = f"; {len(large_files)} large file(s) listed" if large_files else ""
    return large_files, CheckResult("sizes", True, f"every file under 25 MB{listed}")


def _large_file_problem(bundle: Path, entry: Any) -> str | None:
    if not isinstance(entry, dict) or "path" not in entry or "url" not in entry:
        return f"entry {entry!r} needs 'path' and 'url'"
    relative = Path(str(entry["path"]))
    if relative.is_absolute() or ".." in relative.parts:
        return f"path {entry['path']!r} must stay inside the bundle"
    if not re.match(r"^[a-z][a-z0-9+.\-]*://", str(entry["url"])):
        return f"url {entry['url']!r} of {entry['path']} is not a URL"
    hash_type = str(entry.get("hash_type") or "")
    if hash_type and hash_type not in _HASH_TYPES:
        return f"hash_type {hash_type!r} of {entry['path']} is not one of {', '.join(_HASH_TYPES)}"
    local = bundle / relative
    if local.is_file() and entry.get("hash_val"):
        import hashlib

        digest = hashlib.new(hash_type or "md5")
        with open(local, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        if digest.hexdigest() != entry["hash_val"]:
            return f"{entry['path']} does not match its {hash_type or 'md5'} hash"
    return None


def _check_weights(bundle: Path, large_files: list[dict[str, Any]]) -> CheckResult:
    models = bundle / "models"
    found = [name for name in ("delta.safetensors", "model.pt") if (models / name).is_file()]
    listed = [str(e["path"]) for e in large_files if str(e["path"]).startswith("models/")]
    if not found and not listed:
        return CheckResult("weights", False, "no models/delta.safetensors or models/model.pt, none in large_files.yml")
    described = ", ".join([*(f"models/{n}" for n in found), *(f"{p} (download)" for p in listed)])
    return CheckResult("weights", True, described)


def _check_network(
    bundle: Path, metadata: dict[str, Any], overrides: list[str], device: str, timeout: int
) -> list[CheckResult]:
    meta, config = "configs/metadata.json", "configs/inference.json"
    results = []
    verify = _run_bundle_command(
        ["verify_net_in_out", "network_def", "--meta_file", meta, "--config_file", config, "--device", device],
        overrides,
        bundle,
        timeout,
    )
    if verify is None:
        results.append(CheckResult("verify_net_in_out", True, "network input/output shapes and dtypes match"))
    else:
        results.append(CheckResult("verify_net_in_out", False, verify))
    results.append(_check_export(bundle, metadata, overrides, timeout))
    with tempfile.TemporaryDirectory() as workdir:
        images = _sample_images(Path(workdir) / "images", metadata)
        results.append(_check_properties(bundle, overrides, images, Path(workdir) / "properties", timeout))
        results.append(_check_inference(bundle, overrides, images, Path(workdir) / "inference", timeout))
    return results


def _sample_images(folder: Path, metadata: dict[str, Any]) -> Path:
    """Two RGB PNGs of the network's input size, written with PIL (a bundle's inference reads real files)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    size = _input_shape(metadata)[2:]
    rng = np.random.default_rng(0)
    for index in range(2):
        pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"sample_{index}.png")
    return folder


def _check_properties(bundle: Path, overrides: list[str], images: Path, output: Path, timeout: int) -> CheckResult:
    knobs = {**parse_overrides(overrides), "input_dir": str(images), "output_dir": str(output)}
    command = [sys.executable, "-c", _PROPERTIES_SCRIPT, json.dumps(knobs)]
    try:
        done = subprocess.run(command, cwd=bundle, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return CheckResult("properties", False, f"the inference workflow did not initialise in {timeout} s")
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    if done.returncode != 0:
        found = [line for line in lines if line.startswith("missing properties:")]
        return CheckResult("properties", False, found[-1] if found else (lines[-1] if lines else "no output"))
    return CheckResult("properties", True, "the inference workflow has every InferProperties id")


def _check_inference(bundle: Path, overrides: list[str], images: Path, output: Path, timeout: int) -> CheckResult:
    arguments = ["run", "--config_file", "configs/inference.json", "--input_dir", str(images)]
    failure = _run_bundle_command([*arguments, "--output_dir", str(output)], overrides, bundle, timeout)
    if failure is not None:
        return CheckResult("inference", False, failure)
    predictions = output / "predictions.csv"
    rows = predictions.read_text(encoding="utf-8").splitlines()[1:] if predictions.is_file() else []
    if len(rows) != 2:
        return CheckResult("inference", False, f"expected 2 predictions in {predictions}, found {len(rows)}")
    return CheckResult("inference", True, f"2 images predicted ({rows[0].split(',')[1]}, {rows[1].split(',')[1]})")


def _check_export(bundle: Path, metadata: dict[str, Any], overrides: list[str], timeout: int) -> CheckResult:
    import torch

    from monai_shpeft.zoo.export import bundle_parser, load_checkpoint

    shape = _input_shape(metadata)
    with tempfile.TemporaryDirectory() as workdir:
        try:
            parser = bundle_parser(bundle, ("inference.json",), parse_overrides(overrides))
            parser["device"] = "$torch.device('cpu')"
            network = parser.get_parsed_content("network_def").to("cpu")
        except Exception as error:  # any build failure is this check's finding
            return CheckResult("ckpt_export", False, f"network_def cannot be built: {error}")
        checkpoint = bundle / "models" / "model.pt"
        if checkpoint.is_file():
            load_checkpoint(network, checkpoint)
        else:  # a delta-only bundle: export the rebuilt network's weights
            checkpoint = Path(workdir) / "model.pt"
            torch.save(network.state_dict(), checkpoint)
        scripted_file = Path(workdir) / "model.ts"
        failure = _run_bundle_command(
            [
                "ckpt_export",
                "network_def",
                "--filepath",
                str(scripted_file),
                "--ckpt_file",
                str(checkpoint),
                "--meta_file",
                "configs/metadata.json",
                "--config_file",
                "configs/inference.json",
                "--use_trace",
                "True",
                "--input_shape",
                json.dumps(shape),
            ],
            overrides,
            bundle,
            timeout,
        )
        if failure is not None:
            return CheckResult("ckpt_export", False, failure)
        scripted = torch.jit.load(str(scripted_file), map_location="cpu")
        network.eval()
        generator = torch.Generator().manual_seed(0)
        image = torch.rand(*shape, generator=generator)
        with torch.no_grad():
            expected, exported = network(image), scripted(image)
        difference = float((expected - exported).abs().max())
        if not torch.allclose(expected, exported, rtol=1e-4, atol=1e-5):
            return CheckResult("ckpt_export", False, f"TorchScript output differs from the network by {difference:.2e}")
        size = scripted_file.stat().st_size
    detail = f"TorchScript ({size / 2**20:.1f} MB) gives the network's outputs (max diff {difference:.1e})"
    return CheckResult("ckpt_export", True, detail)


def _run_bundle_command(arguments: list[str], overrides: list[str], cwd: Path, timeout: int) -> str | None:
    command = [sys.executable, "-m", "monai.bundle", *arguments, *overrides]
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"'{' '.join(arguments[:2])}' did not finish in {timeout} s"
    if done.returncode == 0:
        return None
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return f"'{' '.join(arguments[:2])}' exited {done.returncode}: {lines[-1] if lines else 'no output'}"


def _input_shape(metadata: dict[str, Any]) -> list[int]:
    spec = next(iter(metadata.get("network_data_format", {}).get("inputs", {}).values()), {})
    return [1, int(spec.get("num_channels", 3)), *[int(s) for s in spec.get("spatial_shape", [224, 224])]]


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, str):
        yield value


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) if part.isdigit() else -1 for part in re.split(r"[.\-+]", version))
