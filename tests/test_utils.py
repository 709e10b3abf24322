from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from monai_shpeft.utils import as_flag, atomic_path, atomic_write_json, sha256_of_file


def test_atomic_write_replaces_the_file_whole(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "meta.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in target.parent.iterdir()] == ["meta.json"]


def test_a_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "meta.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half writ")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["meta.json"]


def test_sha256(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 3_000_000)
    assert sha256_of_file(path, chunk_size=1000) == hashlib.sha256(b"x" * 3_000_000).hexdigest()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (False, False),
        (None, False),
        (1, True),
        (0, False),
        ("False", False),
        ("false", False),
        (" FALSE ", False),
        ("0", False),
        ("no", False),
        ("True", True),
        ("true", True),
        ("1", True),
        ("yes", True),
    ],
)
def test_as_flag_reads_command_line_spellings(value: object, expected: bool) -> None:
    assert as_flag(value) is expected


def test_as_flag_rejects_other_words_naming_the_knob() -> None:
    with pytest.raises(ValueError, match="preload_features must be true or false, got 'ture'"):
        as_flag("ture", "preload_features")


def test_atomic_writes_leave_an_ordinary_readable_file(tmp_path: Path) -> None:
    import os
    import stat

    target = tmp_path / "result.json"
    atomic_write_json(target, {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # not mkstemp's private 0600


def test_tagged_safetensors_round_trip_and_refuse_other_formats_and_newer_versions(tmp_path: Path) -> None:
    from monai_shpeft.utils import load_tagged_safetensors, save_tagged_safetensors

    path = save_tagged_safetensors(tmp_path / "t.safetensors", {"a": torch.arange(3)}, "fmt", 1, {"k": [1, 2]}, "h")
    header, tensors = load_tagged_safetensors(path, "thing", "fmt", 1, "h")
    assert header == {"k": [1, 2]} and torch.equal(tensors["a"], torch.arange(3))
    with pytest.raises(ValueError, match=r"not a thing \(fmt\)"):
        load_tagged_safetensors(path, "thing", "other", 1, "h")
    save_tagged_safetensors(path, {"a": torch.arange(3)}, "fmt", 2, {}, "h")
    with pytest.raises(ValueError, match=r"newer monai-shpeft \(thing format 2\); upgrade"):
        load_tagged_safetensors(path, "thing", "fmt", 1, "h")
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically
