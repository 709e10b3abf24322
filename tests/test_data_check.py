"""``python -m monai_shpeft.data check DIR`` on a real folder, through a real subprocess."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.data import get_testdata_file

from monai_shpeft.data.__main__ import check_folder, image_files
from tests.helpers import run_process, write_busi_folder


def test_check_lists_every_unusable_file_with_its_cause_and_fails(tmp_path: Path) -> None:
    root = write_busi_folder(tmp_path / "busi", per_class=3)
    truncated = root / "benign" / "benign (2).png"
    truncated.write_bytes(truncated.read_bytes()[:150])
    (root / "normal" / "notes.png").write_text("<html>a saved page</html>")
    shutil.copy(get_testdata_file("CT_small.dcm"), root / "normal" / "IM0001")  # DICOM without a suffix: read
    nan = np.ones((6, 6), np.float32)
    nan[1, 1] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), root / "malignant" / "scan.nii.gz")
    (root / "labels.csv").write_text("image,label\n")  # a table, not read
    report = tmp_path / "bad.json"

    done = run_process([sys.executable, "-m", "monai_shpeft.data", "check", str(root), "--report", str(report)])
    assert done.returncode == 1
    checked = len(image_files(root))
    assert checked == 3 * 3 * 2 + 3  # images and masks, the page, the suffix-less DICOM, the NIfTI
    assert done.stdout.strip().splitlines()[-1] == f"{checked} files read as training reads them: 3 cannot be used."
    bad = json.loads(report.read_text())
    assert set(bad) == {str(truncated), str(root / "normal" / "notes.png"), str(root / "malignant" / "scan.nii.gz")}
    assert "truncated" in bad[str(truncated)] and "not an image" in bad[str(root / "normal" / "notes.png")]
    assert "NaN" in bad[str(root / "malignant" / "scan.nii.gz")]
    assert str(truncated) in done.stdout  # the table names each file
    assert "checking" in done.stderr  # the progress bar


def test_a_clean_folder_passes_and_a_missing_one_says_so(tmp_path: Path) -> None:
    root = write_busi_folder(tmp_path / "busi", per_class=2)
    assert check_folder(root, progress=False) == {}
    done = run_process([sys.executable, "-m", "monai_shpeft.data", "check", str(tmp_path / "nowhere")])
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("DatasetFolderError: ")
    assert "nowhere is not a folder" in done.stderr
