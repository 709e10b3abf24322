"""Sharing bundles in a model zoo: sparse-delta export, self-contained zip packaging and the model-zoo checks.

Command line: ``python -m monai_shpeft.zoo {export_delta,package,check} ...`` (see ``--help``).
"""

from __future__ import annotations

from monai_shpeft.zoo.check import MAX_FILE_BYTES, METADATA_SCHEMA, CheckResult, check_bundle, parse_overrides
from monai_shpeft.zoo.export import DELTA_RECORD_KEY, bundle_parser, export_bundle_delta, load_checkpoint, recipe_of
from monai_shpeft.zoo.package import LARGE_FILES_NAME, flatten_macros, package_bundle, package_name

__all__ = [
    "DELTA_RECORD_KEY",
    "LARGE_FILES_NAME",
    "MAX_FILE_BYTES",
    "METADATA_SCHEMA",
    "CheckResult",
    "bundle_parser",
    "check_bundle",
    "export_bundle_delta",
    "flatten_macros",
    "load_checkpoint",
    "package_bundle",
    "package_name",
    "parse_overrides",
    "recipe_of",
]
