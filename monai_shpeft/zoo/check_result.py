"""One model-zoo check's outcome, and the ``--key value`` overrides the network checks pass on."""

from __future__ import annotations

import ast
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["CheckResult", "parse_overrides"]


@dataclass
class CheckResult:
    """One check's outcome."""

    name: str
    passed: bool
    detail: str

    def line(self) -> str:
        """``PASS name: detail`` / ``FAIL name: detail``."""
        return f"{'PASS' if self.passed else 'FAIL'}  {self.name:<18} {self.detail}"


def parse_overrides(arguments: Sequence[str]) -> dict[str, Any]:
    """Turn ``--key value`` pairs (as given to ``monai.bundle``) into config overrides.

    Values are read as Python literals where they are one (``112``, ``True``, ``[1, 2]``), else kept as text
    (``timm:vit_small_patch14_dinov2``, ``$None``), as ``python -m monai.bundle`` reads them.

    Args:
        arguments: ``["--key", "value", ...]``.

    Returns:
        ``{key: value}``.

    Raises:
        ValueError: for a key without ``--`` or without a value.
    """
    if len(arguments) % 2:
        raise ValueError(f"overrides come in '--key value' pairs; got {' '.join(arguments)!r}.")
    overrides: dict[str, Any] = {}
    for key, text in zip(arguments[::2], arguments[1::2]):
        if not key.startswith("--"):
            raise ValueError(f"override keys start with '--'; got {key!r}.")
        try:
            value: Any = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        overrides[key[2:]] = value
    return overrides
