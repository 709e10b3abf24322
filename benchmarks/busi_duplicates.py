"""Exact and near-duplicate images in BUSI, how many cross the seeded split, and what keep_together changes.

Hashes every image once (pixel SHA-256 and a 256-bit difference hash), clusters the duplicates, checks the bundles'
seed-0 70/10/20 stratified split for clusters that span its parts, splits again with each cluster kept in one part,
and sweeps the near-duplicate threshold. Writes the figures as JSON and a PNG of a few cross-split pairs side by side
(with their difference-hash distance), for people who would rather look than read.

Example (the README's figures came from this command)::

    python benchmarks/busi_duplicates.py --dataset_dir ../shared/data/busi
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from monai_shpeft.data import BUSI_CLASSES, busi_datalist, find_duplicates, stratified_split
from monai_shpeft.data.duplicates import DEFAULT_THRESHOLD
from monai_shpeft.utils import atomic_path, atomic_write_json

PARTS = ("training", "validation", "test")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset_dir", default="../shared/data/busi")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threshold", type=int, default=DEFAULT_THRESHOLD)
    parser.add_argument("--sweep", default="0,8,16,24,32,40,48,64", help="thresholds to count clusters at")
    parser.add_argument("--output", default="docs/benchmarks/busi_duplicates.json")
    parser.add_argument("--figure", default="docs/benchmarks/busi_duplicates.png")
    parser.add_argument("--pairs_shown", type=int, default=6)
    return parser


def class_counts(split: dict[str, list[dict]]) -> dict[str, dict[str, int]]:
    """Images per class in each part."""
    return {
        part: {name: sum(1 for i in split[part] if i["label"] == label) for label, name in enumerate(BUSI_CLASSES)}
        for part in PARTS
    }


def figure_of_pairs(pairs: list[dict[str, Any]], root: Path, path: Path, tile: int = 200) -> None:
    """Cross-split pairs side by side, one row each, with their parts, labels and distance above the row."""
    from PIL import Image, ImageDraw

    caption = 30
    canvas = Image.new("L", (2 * tile + 30, len(pairs) * (tile + caption) + 10), 255)  # BUSI is grey
    draw = ImageDraw.Draw(canvas)
    for row, pair in enumerate(pairs):
        top = row * (tile + caption) + 10
        kind = "identical pixels" if pair["exact"] else f"difference hashes {pair['distance']} of 256 bits apart"
        draw.text((10, top), kind, fill=0)
        for column, (name, part) in enumerate(zip(pair["images"], pair["parts"])):
            left = 10 + column * (tile + 10)
            draw.text((left, top + 12), f"{Path(name).name} - {part}", fill=0)
            with Image.open(root / name) as image:
                canvas.paste(image.convert("L").resize((tile, tile)), (left, top + caption))
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root = Path(args.dataset_dir)
    items = busi_datalist(root)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        cache = Path(scratch) / "hashes.json"  # hash once; the sweep reads the cache
        index = find_duplicates([i["image"] for i in items], args.threshold, cache_file=cache)
        seconds = time.perf_counter() - start
        sweep = []
        for threshold in (int(t) for t in args.sweep.split(",")):
            swept = find_duplicates([i["image"] for i in items], threshold, cache_file=cache, progress=False)
            report = swept.report(stratified_split(items, seed=args.seed))
            counts = report.counts()
            sweep.append(
                {
                    "threshold": threshold,
                    **{k: counts[k] for k in ("clusters", "images_in_clusters", "cross_split_clusters")},
                    "largest_cluster": max((len(c) for c in swept.clusters), default=0),
                }
            )

    plain = stratified_split(items, seed=args.seed)
    together = stratified_split(items, seed=args.seed, groups=index.group_ids([i["image"] for i in items]))
    report = index.report(plain)
    kept = index.report(together, "keep_together")
    where = {i["image"]: p for p in PARTS for i in plain[p]}
    moved = sum(where[i["image"]] != p for p in PARTS for i in together[p])

    def relative(name: str) -> str:
        return str(Path(name).relative_to(root))

    for pair in report.cross_split_pairs:
        pair["images"] = [relative(n) for n in pair["images"]]
    for cluster in report.clusters:
        for member in cluster["members"]:
            member["image"] = relative(member["image"])
    result = {
        "dataset": "BUSI (Al-Dhabyani et al., Data in Brief 28, 2020)",
        "dataset_dir": str(root),
        "seed": args.seed,
        "fractions": [0.7, 0.1, 0.2],
        "hashing_seconds": round(seconds, 1),
        "report": report.to_record(),
        "keep_together": {
            "sizes": {p: len(together[p]) for p in PARTS},
            "sizes_without": {p: len(plain[p]) for p in PARTS},
            "class_counts": class_counts(together),
            "class_counts_without": class_counts(plain),
            "images_moved": moved,
            "cross_split_clusters": kept.counts()["cross_split_clusters"],
        },
        "threshold_sweep": sweep,
        "command": "python benchmarks/busi_duplicates.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    atomic_write_json(args.output, result)
    # the identical pairs, then near pairs spread over the distances found (what 5 or 30 bits look like)
    exact = [p for p in report.cross_split_pairs if p["exact"]][: args.pairs_shown]
    near = sorted((p for p in report.cross_split_pairs if not p["exact"]), key=lambda p: p["distance"])
    wanted = args.pairs_shown - len(exact)
    step = (len(near) - 1) / max(1, wanted - 1)
    spread = [near[round(k * step)] for k in range(wanted)] if near and wanted > 0 else []
    figure_of_pairs(exact + list({id(p): p for p in spread}.values()), root, Path(args.figure))

    counts = report.counts()
    print(report.summary(max_pairs=0).replace(str(root) + "/", ""))
    print(
        f"exact clusters {counts['exact_clusters']}, near-duplicate clusters {counts['near_clusters']} "
        f"({counts['images_in_clusters']} of {counts['images']} images); crossing the seed-{args.seed} split: "
        f"{counts['cross_split_clusters']} clusters ({counts['cross_split_exact_clusters']} exact, "
        f"{counts['cross_split_near_clusters']} near), {counts['cross_split_pairs']} pairs, "
        f"{counts['images_in_cross_split_clusters']} images; label conflicts {counts['label_conflicts']}"
    )
    sizes = result["keep_together"]
    print(
        f"keep_together: sizes {sizes['sizes']} (without: {sizes['sizes_without']}), {moved} images moved, "
        f"class counts per part unchanged: {sizes['class_counts'] == sizes['class_counts_without']}, "
        f"clusters crossing: {sizes['cross_split_clusters']}"
    )
    for row in sweep:
        print(
            f"threshold {row['threshold']:>3}: {row['clusters']:>3} clusters, {row['images_in_clusters']:>3} images, "
            f"{row['cross_split_clusters']:>3} crossing, largest {row['largest_cluster']}"
        )
    print(f"hashing {len(items)} images: {seconds:.1f} s; wrote {args.output} and {args.figure}")
    print(json.dumps({k: counts[k] for k in ("exact_clusters", "near_clusters", "cross_split_clusters")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
