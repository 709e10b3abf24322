"""Check a folder of images before a run: ``python -m monai_shpeft.data check DIR``.

Every file that looks like an image (by its suffix, or DICOM without one) is read exactly as training reads it
(:func:`~monai_shpeft.data.validation.check_image_file`: decoded, values finite), with a progress bar; the command
prints a table of the files that cannot be used and why (a truncated file, a missing decoder and the command that
installs it, NaN pixels, ...), optionally writes it as JSON, and exits with status 1 when there is any.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from monai_shpeft.data.validation import check_image_file
from monai_shpeft.transforms import ImageReadError, LoadMedicalImage

# what a dataset folder holds besides images: files with these suffixes are not read
_NOT_IMAGES = {".csv", ".json", ".txt", ".md", ".xml", ".xlsx", ".xls", ".yml", ".yaml", ".zip", ".py", ".pdf"}


def image_files(folder: Path) -> list[Path]:
    """The files under ``folder`` a run may read: every non-hidden file but tables, notes and archives.

    Args:
        folder: the dataset folder.

    Returns:
        the files, sorted.
    """
    return sorted(
        path
        for path in folder.rglob("*")
        if path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
        and path.suffix.lower() not in _NOT_IMAGES
    )


def check_folder(folder: str | os.PathLike, num_workers: int = 2, progress: bool = True) -> dict[str, str]:
    """Read every image file under ``folder`` as training would.

    Args:
        folder: the folder to check.
        num_workers: reading threads.
        progress: show a progress bar.

    Returns:
        ``{file: cause}`` for each file that cannot be used, in file order.

    Raises:
        DatasetFolderError: when ``folder`` is not a folder.
    """
    from monai_shpeft.errors import DatasetFolderError

    root = Path(folder)
    if not root.is_dir():
        raise DatasetFolderError(f"{root} is not a folder: pass the dataset folder to check.")
    files = image_files(root)
    local = threading.local()

    def check(path: Path) -> str | None:
        loader = getattr(local, "loader", None) or LoadMedicalImage()
        local.loader = loader
        try:
            check_image_file(path, loader)
        except ImageReadError as error:
            return error.reason or str(error)
        return None

    with ThreadPoolExecutor(max_workers=max(1, num_workers), thread_name_prefix="check") as executor:
        results = executor.map(check, files)
        if progress:
            from tqdm.auto import tqdm

            results = tqdm(results, total=len(files), desc=f"checking {root}", unit="file")
        causes = list(results)
    return {str(path): cause for path, cause in zip(files, causes) if cause is not None}


def _table(bad: dict[str, str]) -> str:
    width = max(len("file"), *(len(path) for path in bad))
    lines = [f"{'file':<{width}}  cause", f"{'-' * width}  -----"]
    lines += [f"{path:<{width}}  {cause}" for path, cause in bad.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: the arguments (``None``: ``sys.argv[1:]``).

    Returns:
        the exit status: 0 when every file can be read, 1 otherwise.
    """
    parser = argparse.ArgumentParser(prog="python -m monai_shpeft.data", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="read every image of a folder as a run would; list the unreadable")
    check.add_argument("folder", help="the dataset folder")
    check.add_argument("--num_workers", type=int, default=2, help="reading threads (default 2)")
    check.add_argument("--report", default=None, help="also write {file: cause} as JSON here")
    args = parser.parse_args(argv)

    bad = check_folder(args.folder, args.num_workers)
    checked = len(image_files(Path(args.folder)))
    if args.report:
        Path(args.report).write_text(json.dumps(bad, indent=2) + "\n")
    if bad:
        print(_table(bad))
    print(f"{checked} files read as training reads them: {len(bad)} cannot be used" + ("." if bad else ", all good."))
    return 1 if bad else 0


if __name__ == "__main__":
    from monai_shpeft.failure_report import install_failure_report

    install_failure_report()
    sys.exit(main())
