"""Tests of the error family and the failure report (monai_shpeft.errors) and of ReportingCompose."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from monai.data import DataLoader, Dataset
from monai.transforms import Compose

from monai_shpeft.data.datalist import DatalistError
from monai_shpeft.errors import (
    DatasetFolderError,
    InputError,
    SettingsError,
    ShpeftError,
    find_error,
    find_error_message,
)
from monai_shpeft.failure_report import FAILURE_LOG
from monai_shpeft.transforms import ImageReadError, LoadMedicalImaged, modality_transforms
from tests.helpers import write_png


@pytest.fixture
def not_an_image(tmp_path: Path) -> Path:
    path = tmp_path / "scan (1).png"
    path.write_text("<html>a saved web page, not an image</html>")
    return path


def test_every_bad_input_error_is_one_family_and_keeps_its_builtin_base() -> None:
    assert issubclass(ImageReadError, InputError) and issubclass(ImageReadError, ValueError)
    assert issubclass(DatalistError, ShpeftError) and issubclass(DatasetFolderError, FileNotFoundError)
    assert issubclass(SettingsError, ShpeftError) and issubclass(SettingsError, ValueError)


def test_a_preset_raises_our_error_itself_where_monai_compose_wraps_it(not_an_image: Path) -> None:
    with pytest.raises(RuntimeError, match="applying transform") as wrapped:  # MONAI's own Compose
        Compose([LoadMedicalImaged("image")])({"image": str(not_an_image)})
    found = find_error(wrapped.value)
    assert isinstance(found, ImageReadError) and found.path == str(not_an_image)

    with pytest.raises(ImageReadError, match="not an image") as caught:  # ours: catchable by its own class
        modality_transforms("ultrasound", image_size=28)({"image": str(not_an_image)})
    assert caught.value.path == str(not_an_image)
    assert caught.value.__cause__ is not None  # PIL's error is kept as the cause


def test_a_worker_error_is_found_in_its_text(not_an_image: Path, tmp_path: Path) -> None:
    good = write_png(tmp_path / "good.png")
    dataset = Dataset([{"image": str(good)}, {"image": str(not_an_image)}], modality_transforms("ultrasound", 28))
    with pytest.raises(Exception) as raised:  # noqa: PT011 - PyTorch decides the type it re-raises
        list(DataLoader(dataset, batch_size=1, num_workers=1))
    assert "Original Traceback" in str(raised.value)  # only text crossed the process boundary
    message = find_error_message(raised.value)
    assert message is not None and message.startswith(f"ImageReadError: cannot read image '{not_an_image}'")
    assert "\n" not in message and "Traceback" not in message


def test_other_errors_are_not_ours() -> None:
    assert find_error(RuntimeError("boom")) is None and find_error_message(KeyError("image")) is None
    loop = RuntimeError("outer")
    inner = ValueError("inner")
    loop.__cause__, inner.__context__ = inner, loop  # chains may loop; the search ends
    assert find_error_message(loop) is None


_SCRIPT = """
import sys
from monai_shpeft.errors import SettingsError
from monai_shpeft.failure_report import install_failure_report
install_failure_report({log_dir!r}, debug={debug!r})
def expression():
    raise SettingsError("budget ratio must be in (0, 1] (0.01 means 1%), got 2.0.")
try:
    expression()
except Exception as error:
    raise RuntimeError("Failed to evaluate ConfigExpression: ...") from error
"""


def _fail(tmp_path: Path, debug: bool, script: str = _SCRIPT) -> subprocess.CompletedProcess:
    code = textwrap.dedent(script.format(log_dir=str(tmp_path / "runs"), debug=debug))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("debug", [False, "true"])
def test_a_failed_run_ends_with_our_message_and_keeps_the_traceback(tmp_path: Path, debug: bool | str) -> None:
    done = _fail(tmp_path, debug)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[-1] == "SettingsError: budget ratio must be in (0, 1] (0.01 means 1%), got 2.0."
    log = (tmp_path / "runs" / FAILURE_LOG).read_text()
    assert "Failed to evaluate ConfigExpression" in log and "in expression" in log  # the whole chain is kept
    assert str(tmp_path / "runs" / FAILURE_LOG) in lines[-2]
    assert ("Traceback (most recent call last)" in done.stderr) == (debug == "true")


def test_errors_that_are_not_ours_keep_the_usual_traceback(tmp_path: Path) -> None:
    done = _fail(tmp_path, False, _SCRIPT.replace("SettingsError(", "ZeroDivisionError("))
    assert done.returncode == 1 and "Traceback (most recent call last)" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("RuntimeError: Failed to evaluate ConfigExpression")
    assert not (tmp_path / "runs" / FAILURE_LOG).exists()
