"""Finding the image a label file names, when releases spell names differently from the files on disk."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from monai_shpeft.errors import DatasetFolderError, DatasetLayoutError

__all__ = ["ImageIndex", "class_folder_items", "release_root"]


class ImageIndex:
    """The image files of one folder, found by exact name, case-insensitive name, or unique extension-less name.

    Label and split files of public releases often disagree with the files beside them in case or extension
    (``.png`` listed for a ``.jpeg``, a ``.tif`` converted to ``.png``); the fallbacks resolve those without
    guessing when two files would match.

    Args:
        folder: the image folder.
        suffixes: image file suffixes (lower case, with the dot).
        dataset: dataset name, quoted in errors.

    Raises:
        DatasetLayoutError: if the folder holds no image.
    """

    def __init__(self, folder: Path, suffixes: Iterable[str], dataset: str) -> None:
        self.folder = folder
        allowed = {s.lower() for s in suffixes}
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in allowed and not p.name.startswith("."))
        if not files:
            raise DatasetLayoutError(f"{dataset} image folder {folder} holds no image.")
        self.by_name = {p.name: p for p in files}
        self.by_lower = {p.name.lower(): p for p in files}
        self.by_stem: dict[str, list[Path]] = {}
        for path in files:
            self.by_stem.setdefault(path.stem.lower(), []).append(path)

    def find(self, name: str, where: str) -> Path:
        """Return the file ``name`` refers to.

        Args:
            name: the name as the label or split file writes it.
            where: the label file (and line) that names it, the start of the error message.

        Returns:
            the image path.

        Raises:
            ValueError: naming ``where`` and ``name`` when no file, or more than one, matches.
        """
        if name in self.by_name:
            return self.by_name[name]
        if name.lower() in self.by_lower:
            return self.by_lower[name.lower()]
        candidates = self.by_stem.get(Path(name).stem.lower(), [])
        if len(candidates) == 1:
            return candidates[0]
        found = "several files match it" if candidates else "no such image"
        raise DatasetLayoutError(f"{where} {name!r} does not name an image of {self.folder} ({found}).")


def class_folder_items(
    root: Path,
    classes: Sequence[str],
    dataset: str,
    suffixes: Iterable[str],
    expected: str,
    image_subfolder: str | None = None,
    is_mask: Callable[[Path], bool] | None = None,
    recursive: bool = False,
) -> list[dict]:
    """List a ``<root>/<class>/[<image_subfolder>/]<image>`` layout as labelled items.

    Args:
        root: the folder holding one folder per class.
        classes: class folder names in label order.
        dataset: dataset name, quoted in errors.
        suffixes: image file suffixes (lower case, with the dot).
        expected: a description of the layout, quoted when a folder is missing.
        image_subfolder: a folder inside each class folder that holds the images, when present (e.g. ``images``).
        is_mask: tells annotation files that sit beside the images (skipped).
        recursive: also list images in folders inside a class folder (a user's own data).

    Returns:
        ``[{"image": path, "label": index}, ...]`` sorted by class then file name.

    Raises:
        DatasetFolderError: if ``root`` is empty or a class folder is missing.
        DatasetLayoutError: if ``root`` has a folder that is not a class, or a class folder holds no image.
    """
    entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    if not entries:
        raise DatasetFolderError(
            f"{dataset} dataset folder {root} is empty (expected {expected}). Is dataset_dir the right folder, and "
            "did the download finish unpacking?"
        )
    unknown = sorted(p.name for p in entries if p.is_dir() and p.name not in classes)
    if unknown:
        raise DatasetLayoutError(
            f"{root} has folder(s) {unknown} that are not {dataset} classes {list(classes)}: every folder there is "
            "read as a class, and this bundle has no label for these. Move them out of the dataset folder, or use a "
            "bundle whose classes include them."
        )
    allowed = {s.lower() for s in suffixes}
    items: list[dict] = []
    for label, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            raise DatasetFolderError(f"{dataset} class folder missing: {folder} (expected {expected}).")
        if image_subfolder and (folder / image_subfolder).is_dir():
            folder = folder / image_subfolder
        images = sorted(
            p
            for p in (folder.rglob("*") if recursive else folder.iterdir())
            if p.is_file()
            and p.name.lower().endswith(tuple(allowed))
            and not p.name.startswith(".")
            and not (is_mask is not None and is_mask(p))
        )
        if not images:
            raise DatasetLayoutError(
                f"{dataset} class folder {folder} holds no image ({', '.join(sorted(allowed))}): a class without "
                "images cannot be learned or tested. Add its images, or check that dataset_dir is the right folder."
            )
        items.extend({"image": str(p), "label": label} for p in images)
    return items


def release_root(
    dataset_dir: str | os.PathLike, release_folder: str, first_class: str, dataset: str, expected: str
) -> Path:
    """The folder holding the class folders: ``dataset_dir`` itself, or its ``release_folder`` child.

    Args:
        dataset_dir: what the user passed.
        release_folder: the folder name the release unpacks to.
        first_class: a class folder name that marks the right level.
        dataset: dataset name, quoted in errors.
        expected: a description of the layout, quoted in errors.

    Returns:
        the folder to list.

    Raises:
        DatasetFolderError: if ``dataset_dir`` does not exist.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise DatasetFolderError(f"{dataset} dataset folder not found: {root} (expected {expected}).")
    if not (root / first_class).is_dir() and (root / release_folder).is_dir():
        return root / release_folder
    return root
