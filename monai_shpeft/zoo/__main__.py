"""``python -m monai_shpeft.zoo``: render bundles from the template, export a delta, package, run the zoo's checks.

Examples (from the repository root)::

    python -m monai_shpeft.zoo sync_bundles            # rewrite bundles/*/configs from monai_shpeft/zoo/templates
    python -m monai_shpeft.zoo sync_bundles --check    # exit 1 if a committed bundle differs from the template
    python -m monai_shpeft.zoo new_bundle knee_xray --image_folder /data/knee --modality xray   # your own data
    python -m monai_shpeft.zoo new_bundle skin --csv /data/skin/labels.csv --modality dermoscopy
    python -m monai_shpeft.zoo export_delta bundles/busi --backbone timm:vit_small_patch14_dinov2 \\
        --pretrained ../shared/weights/vit_small_patch14_dinov2.safetensors --image_size 112
    python -m monai_shpeft.zoo package bundles/busi --output_dir dist
    python -m monai_shpeft.zoo check dist/busi_v0.6.0.zip \\
        --pretrained ../shared/weights/vit_small_patch14_dinov2.safetensors

Knobs after the positional argument (``--key value``) override the bundle config, as with ``monai.bundle run``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from monai_shpeft.errors import ShpeftError
from monai_shpeft.transforms import MODALITIES
from monai_shpeft.zoo.bundle_template import REPOSITORY_BUNDLES, stale_configs, write_configs
from monai_shpeft.zoo.check import check_bundle, parse_overrides
from monai_shpeft.zoo.export import export_bundle_delta
from monai_shpeft.zoo.new_bundle import new_bundle
from monai_shpeft.zoo.package import package_bundle


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m monai_shpeft.zoo", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    sync = commands.add_parser("sync_bundles", help="render the repository's bundle configs from the template")
    sync.add_argument("--bundles_dir", default="bundles", help="folder holding the repository's bundles")
    sync.add_argument("--check", action="store_true", help="write nothing; exit 1 if a bundle is out of date")

    new = commands.add_parser("new_bundle", help="write a bundle folder for your own labelled images")
    new.add_argument("name", help="the bundle's name and folder (letters, digits, underscores)")
    source = new.add_mutually_exclusive_group(required=True)
    source.add_argument("--image_folder", help="a folder with one subfolder of images per class")
    source.add_argument("--csv", help="a CSV with columns image,label (paths relative to the CSV) and optional split")
    new.add_argument("--modality", default="natural", choices=MODALITIES, help="the preset that reads the images")
    new.add_argument("--classes", default=None, help="class names in label order, comma-separated (default: sorted)")
    new.add_argument("--title", default=None, help="what the bundle classifies, for its descriptions")
    new.add_argument("--output_dir", default=".", help="where the bundle folder is made")

    export = commands.add_parser("export_delta", help="write models/delta.safetensors for a trained bundle")
    export.add_argument("bundle_dir")
    export.add_argument("--ckpt_file", default=None, help="trained checkpoint (default <ckpt_dir>/model.pt)")
    export.add_argument("--delta_file", default=None, help="output (default <ckpt_dir>/delta.safetensors)")
    export.add_argument("--no_record", action="store_true", help="do not record the delta in metadata.json")

    package = commands.add_parser("package", help="build the model-zoo zip <name>_v<version>.zip")
    package.add_argument("bundle_dir")
    package.add_argument("--output_dir", default="dist")
    package.add_argument("--include_checkpoint", action="store_true", help="also ship models/model.pt")
    package.add_argument("--checkpoint_url", default=None, help="list models/model.pt in large_files.yml")

    check = commands.add_parser("check", help="run the model-zoo checks on a bundle folder or zip")
    check.add_argument("path")
    check.add_argument("--device", default="cpu")
    check.add_argument("--skip_commands", action="store_true", help="skip verify_net_in_out and ckpt_export")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (1 when a check fails, 2 for bad input)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    arguments, extra = _parser().parse_known_args(argv)
    try:
        return _run(arguments, extra)
    except (ShpeftError, FileNotFoundError, ValueError, KeyError) as error:  # bad input: what and where, no traceback
        print(f"error: {error}", file=sys.stderr)
        return 2


def _run(arguments: argparse.Namespace, extra: list[str]) -> int:
    if arguments.command == "sync_bundles":
        return _sync_bundles(arguments.bundles_dir, arguments.check)
    if arguments.command == "new_bundle":
        bundle = new_bundle(
            arguments.name,
            image_folder=arguments.image_folder,
            csv_file=arguments.csv,
            modality=arguments.modality,
            classes=[c.strip() for c in arguments.classes.split(",")] if arguments.classes else None,
            output_dir=arguments.output_dir,
            title=arguments.title,
        )
        print(f"{bundle}: train it with  cd {bundle} && python -m monai.bundle run --config_file configs/train.json")
        return 0
    if arguments.command == "export_delta":
        result = export_bundle_delta(
            arguments.bundle_dir,
            parse_overrides(extra),
            ckpt_file=arguments.ckpt_file,
            delta_file=arguments.delta_file,
            record=not arguments.no_record,
        )
        print(
            f"{result['path']}: {result['bytes']:,} bytes = {result['ratio_to_checkpoint']:.3%} of "
            f"{result['checkpoint']} ({result['checkpoint_bytes']:,} bytes); "
            f"{result['sparse_entries']:,} changed backbone entries, {result['dense_entries']:,} entries stored whole"
        )
        return 0
    if extra and arguments.command == "package":
        raise SystemExit(f"package takes no config overrides: {' '.join(extra)}")
    if arguments.command == "package":
        archive = package_bundle(
            arguments.bundle_dir,
            output_dir=arguments.output_dir,
            include_checkpoint=arguments.include_checkpoint,
            checkpoint_url=arguments.checkpoint_url,
        )
        print(archive)
        return 0
    parse_overrides(extra)  # fail early on malformed pairs
    results = check_bundle(arguments.path, extra, device=arguments.device, run_commands=not arguments.skip_commands)
    for outcome in results:
        print(outcome.line())
    failed = [r.name for r in results if not r.passed]
    summary = f"{len(results) - len(failed)} of {len(results)} checks passed"
    print(summary + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def _sync_bundles(bundles_dir: str, check: bool) -> int:
    if check:
        stale = stale_configs(bundles_dir)
        for path in stale:
            print(f"out of date: {path}")
        print(f"{len(stale)} bundle config(s) differ from the template" if stale else "every bundle is up to date")
        return 1 if stale else 0
    for name, spec in REPOSITORY_BUNDLES.items():
        changed = write_configs(spec, f"{bundles_dir}/{name}")
        names = f" ({', '.join(path.name for path in changed)})" if changed else ""
        print(f"{name}: {len(changed)} file(s) rewritten{names}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
