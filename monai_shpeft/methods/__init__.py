"""Fine-tuning methods selectable by the bundles' ``method`` knob."""

from __future__ import annotations

__all__ = ["METHODS", "check_method"]

# SH-PEFT (sparse, importance-selected weights of the backbone) and FPT (frozen backbone plus side network).
METHODS = ("shpeft", "fpt")


def check_method(method: str) -> str:
    """Return ``method`` when it is supported.

    Args:
        method: the bundle's ``method`` knob.

    Returns:
        the method.

    Raises:
        ValueError: naming the supported methods when ``method`` is not one of them.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; supported methods: {', '.join(METHODS)}.")
    return method
