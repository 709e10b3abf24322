"""A MONAI ``Compose`` that lets the project's own errors through, as themselves."""

from __future__ import annotations

from typing import Any

from monai.transforms import Compose

from monai_shpeft.errors import find_error

__all__ = ["ReportingCompose"]


class ReportingCompose(Compose):
    """``Compose`` whose failures on bad input are the project's error, not MONAI's ``RuntimeError`` around it.

    MONAI's ``Compose`` wraps whatever a transform raises in ``RuntimeError("applying transform <object at 0x..>")``,
    so ``except ImageReadError`` does not catch an unreadable file and the last line of the trace names MONAI's
    wrapper. When the chain holds a :class:`~monai_shpeft.errors.ShpeftError` it is raised again, with its own
    traceback and cause; any other failure stays MONAI's.
    """

    def __call__(
        self, input_: Any, start: int = 0, end: int | None = None, threading: bool = False, lazy: bool | None = None
    ) -> Any:
        """Apply the transforms as ``Compose`` does, raising a project error from the chain as itself.

        Args:
            input_: the data.
            start: index of the first transform to apply.
            end: index after the last transform to apply (``None``: to the end).
            threading: whether the call runs in a thread (see ``Compose``).
            lazy: lazy resampling override (``None``: the ``Compose`` setting).

        Returns:
            the transformed data.
        """
        try:
            return super().__call__(input_, start=start, end=end, threading=threading, lazy=lazy)
        except RuntimeError as wrapped:
            ours = find_error(wrapped)
            if ours is None or ours is wrapped:
                raise
            # keep its own cause (e.g. PIL's error) and hide MONAI's wrapper, which only repeats the transform name
            raise ours.with_traceback(ours.__traceback__) from ours.__cause__
