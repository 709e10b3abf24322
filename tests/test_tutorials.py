"""The tutorials: every notebook runs top to bottom in QUICK mode, and the committed ones carry a real run's outputs.

Each ``tutorials/*.ipynb`` is executed with nbclient (kernel ``python3``) in a temporary folder, with
``MONAI_SHPEFT_TUTORIAL_QUICK=1`` (tiny synthetic data and a tiny backbone), ``MONAI_SHPEFT_REPO_ROOT`` pointing at
this checkout and ``MONAI_SHPEFT_TUTORIAL_WORK_DIR`` inside the temporary folder, so that nothing is written into
the repository. Notebooks added later are picked up by the glob.
"""

from __future__ import annotations

import re
import time
from glob import glob
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError

REPO_ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = REPO_ROOT / "tutorials"
NOTEBOOKS = [Path(p) for p in sorted(glob(str(TUTORIALS / "*.ipynb")))]
#: per cell; a whole notebook in QUICK mode is meant to take a minute or two on 2 cores
CELL_TIMEOUT_S = 600
#: the settings cell every notebook starts with (see tutorials/README.md)
SETTINGS_LINES = (
    'QUICK = os.environ.get("MONAI_SHPEFT_TUTORIAL_QUICK", "0") == "1"',
    'REPO_ROOT = Path(os.environ.get("MONAI_SHPEFT_REPO_ROOT", "..")).resolve()',
    'WORK_DIR = Path(os.environ.get("MONAI_SHPEFT_TUTORIAL_WORK_DIR", "tutorial_runs/',
)
#: the settings cell must be among the first code cells
SETTINGS_WITHIN = 3
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _ids(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def _code_cells(notebook: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def _error_outputs(cell: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [output for output in cell.get("outputs", []) if output.get("output_type") == "error"]


def _failure_report(notebook: nbformat.NotebookNode, path: Path, error: Exception) -> str:
    """The failing cell's position and source, and the error with its traceback (colour codes removed)."""
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        errors = _error_outputs(cell)
        if errors:
            out = errors[0]
            trace = _ANSI.sub("", "\n".join(out.get("traceback", [])))
            return (
                f"{path.name}: cell {index} failed in QUICK mode.\n"
                f"----- cell source -----\n{cell.source}\n"
                f"----- {out.get('ename')}: {out.get('evalue')} -----\n{trace}"
            )
    # no error output recorded (e.g. a timeout or a dead kernel): nbclient's own message names the cell
    return f"{path.name} failed in QUICK mode:\n{_ANSI.sub('', str(error))}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs_in_quick_mode(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the kernel is a child process and inherits this environment
    monkeypatch.setenv("MONAI_SHPEFT_TUTORIAL_QUICK", "1")
    monkeypatch.setenv("MONAI_SHPEFT_REPO_ROOT", str(REPO_ROOT))
    monkeypatch.setenv("MONAI_SHPEFT_TUTORIAL_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},  # the kernel's working directory
    )
    started = time.perf_counter()
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError, RuntimeError) as error:
        pytest.fail(_failure_report(notebook, path, error), pytrace=False)
    elapsed = time.perf_counter() - started
    assert not any(_error_outputs(cell) for cell in _code_cells(notebook))
    print(f"{path.name}: {elapsed:.0f} s in QUICK mode")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_committed_notebook_has_the_outputs_of_a_real_run(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata.get("kernelspec", {}).get("name") == "python3", f"{path.name}: kernel must be python3"
    assert re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", path.name), f"{path.name}: name tutorials NN_name.ipynb"

    code = _code_cells(notebook)
    assert code, f"{path.name} has no code cell"
    settings = [cell for cell in code[:SETTINGS_WITHIN] if all(line in cell.source for line in SETTINGS_LINES)]
    assert settings, f"{path.name}: no settings cell ({' / '.join(SETTINGS_LINES)}) in its first code cells"

    # executed top to bottom in one kernel: every code cell has a count, in increasing order, and none failed
    counts = [cell.get("execution_count") for cell in code]
    unexecuted = [i for i, cell in enumerate(notebook.cells) if cell.cell_type == "code" and not cell.execution_count]
    assert not unexecuted, f"{path.name}: cells {unexecuted} have no outputs of a run (execution_count unset)"
    assert counts == sorted(counts) and len(set(counts)) == len(counts), f"{path.name}: cells not run in order"
    failed = [i for i, cell in enumerate(notebook.cells) if cell.cell_type == "code" and _error_outputs(cell)]
    assert not failed, f"{path.name}: cells {failed} hold an error output"

    listing = (TUTORIALS / "README.md").read_text(encoding="utf-8")
    assert path.name in listing, f"{path.name} is not listed in tutorials/README.md"
