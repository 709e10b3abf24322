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

    def __call__(self, input_: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(input_, *args, **kwargs)
        except RuntimeError as wrapped:
            ours = find_error(wrapped)
            if ours is None or ours is wrapped:
                raise
            # keep its own cause (e.g. PIL's error) and hide MONAI's wrapper, which only repeats the transform name
            raise ours.with_traceback(ours.__traceback__) from ours.__cause__
