"""The two errors of the transforms: a file that cannot be read, and an array a transform cannot process."""

from __future__ import annotations

import os

from monai_shpeft.errors import InputError

__all__ = ["ImageReadError", "InvalidImageError"]


class ImageReadError(InputError, ValueError):
    """A file could not be read as an image; the message names the file and the cause.

    Args:
        message: the full message.
        path: the file that failed, if known.
        reason: the cause alone (the message without the file name), if known.
    """

    def __init__(self, message: str, path: str | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason

    @classmethod
    def for_file(cls, path: str | os.PathLike, reason: str) -> ImageReadError:
        """Build the error for ``path`` with a message ``cannot read image '<path>': <reason>``.

        Args:
            path: the file that failed.
            reason: why it failed, in words a user can act on.

        Returns:
            the error, with ``path`` and ``reason`` set.
        """
        return cls(f"cannot read image '{os.fspath(path)}': {reason}", path=os.fspath(path), reason=reason)

    def __reduce__(self):  # keep path and reason when the error crosses a DataLoader worker boundary
        return (self.__class__, (self.args[0] if self.args else "", self.path, self.reason))


class InvalidImageError(InputError, ValueError):
    """An array transform was given an image it cannot process (wrong shape, no values, NaN/inf, no window, ...).

    Args:
        message: the full message (it names the image's file when the transform knew it).
        path: the file the image was loaded from, if known.
    """

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path

    def __reduce__(self):  # keep the path when the error crosses a DataLoader worker boundary
        return (self.__class__, (self.args[0] if self.args else "", self.path))
