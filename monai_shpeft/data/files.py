"""Finding the image a label file names, when releases spell names differently from the files on disk."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

__all__ = ["ImageIndex"]


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
        ValueError: if the folder holds no image.
    """

    def __init__(self, folder: Path, suffixes: Iterable[str], dataset: str) -> None:
        self.folder = folder
        allowed = {s.lower() for s in suffixes}
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in allowed and not p.name.startswith("."))
        if not files:
            raise ValueError(f"{dataset} image folder {folder} holds no image.")
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
        raise ValueError(f"{where} {name!r} does not name an image of {self.folder} ({found}).")
