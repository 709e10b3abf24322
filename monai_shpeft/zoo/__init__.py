"""Sharing bundles in a model zoo: bundles rendered from one template, sparse-delta export, zip packaging, checks.

Command line: ``python -m monai_shpeft.zoo {sync_bundles,new_bundle,export_delta,package,check} ...`` (see ``--help``).
"""

from __future__ import annotations

from monai_shpeft.zoo.bundle_template import (
    REPOSITORY_BUNDLES,
    TEMPLATE_DIR,
    BundleSpec,
    modality_sections,
    render_configs,
    stale_configs,
    write_configs,
)
from monai_shpeft.zoo.check import MAX_FILE_BYTES, METADATA_SCHEMA, CheckResult, check_bundle, parse_overrides
from monai_shpeft.zoo.export import DELTA_RECORD_KEY, bundle_parser, export_bundle_delta, load_checkpoint, recipe_of
from monai_shpeft.zoo.new_bundle import new_bundle
from monai_shpeft.zoo.package import LARGE_FILES_NAME, package_bundle, package_name

__all__ = [
    "REPOSITORY_BUNDLES",
    "TEMPLATE_DIR",
    "BundleSpec",
    "modality_sections",
    "render_configs",
    "stale_configs",
    "write_configs",
    "DELTA_RECORD_KEY",
    "LARGE_FILES_NAME",
    "MAX_FILE_BYTES",
    "METADATA_SCHEMA",
    "CheckResult",
    "bundle_parser",
    "check_bundle",
    "export_bundle_delta",
    "load_checkpoint",
    "new_bundle",
    "package_bundle",
    "package_name",
    "parse_overrides",
    "recipe_of",
]
