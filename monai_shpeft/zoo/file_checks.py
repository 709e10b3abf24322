"""The model-zoo checks on a bundle's files (checks 1 to 7 of :mod:`monai_shpeft.zoo.check`): no code runs."""

from __future__ import annotations

import json
import re
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from monai_shpeft.zoo.check_result import CheckResult

__all__ = ["MAX_FILE_BYTES", "METADATA_SCHEMA"]

#: the model zoo's limit on any single file of a bundle
MAX_FILE_BYTES = 25 * 1024 * 1024


#: offline copy of the bundle metadata schema (model-zoo fields plus our sparse-set and delta records)
METADATA_SCHEMA = Path(__file__).with_name("metadata_schema.json")


REQUIRED_FILES = ("configs/metadata.json", "configs/inference.json", "docs/README.md", "LICENSE")


CONVENTION_FILES = ("configs/train.json", "configs/evaluate.json", "configs/logging.conf")


_HASH_TYPES = ("md5", "sha1", "sha256", "sha512")


_ARCHIVE_NAME = re.compile(r"^(?P<name>[A-Za-z0-9_]+)_v(?P<version>[0-9][0-9A-Za-z.\-+]*)\.zip$")


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
