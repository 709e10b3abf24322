"""Exact and near-duplicate detection on real files, and the split / datalist options built on it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, PngImagePlugin
from pydicom.data import get_testdata_file

from monai_shpeft.data import (
    DatalistError,
    busi_datalist,
    find_cross_split_duplicates,
    find_duplicates,
    prepare_datalist,
)
from monai_shpeft.data.duplicates import (
    DEFAULT_THRESHOLD,
    check_duplicate_mode,
    difference_hash,
    fingerprint_images,
    near_duplicate_pairs,
)
from tests.dataset_writers import write_chaoyang
from tests.helpers import write_busi_folder

BUSI = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "busi"


def scan(seed: int, size: int = 96) -> np.ndarray:
    """A smooth, structured 8-bit RGB picture (blobs and gradients, like a scan), different for every seed."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (6, 6)).astype(np.float32)
    grey = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC))
    pixels = np.clip(grey + rng.normal(0, 3, (size, size)), 0, 255).astype(np.uint8)
    return np.stack([pixels, pixels, np.clip(pixels.astype(int) + 10, 0, 255).astype(np.uint8)], axis=-1)


def save(path: Path, pixels: np.ndarray, **kwargs: object) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **kwargs)
    return str(path)


def test_exact_duplicates_match_on_pixels_whatever_the_encoding(tmp_path: Path) -> None:
    pixels = scan(1)
    original = save(tmp_path / "a.png", pixels)
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "re-saved by another tool")
    resaved = save(tmp_path / "b.png", pixels, compress_level=0, pnginfo=info)  # other bytes, same pixels
    copy = tmp_path / "c.png"
    copy.write_bytes(Path(original).read_bytes())
    grey = scan(2)[..., 0]
    as_l = save(tmp_path / "grey_l.png", grey)
    as_rgb = save(tmp_path / "grey_rgb.png", np.stack([grey] * 3, axis=-1))  # the same grey picture, stored as RGB
    other = save(tmp_path / "other.png", scan(3))
    assert Path(original).read_bytes() != Path(resaved).read_bytes()

    index = find_duplicates([original, resaved, str(copy), as_l, as_rgb, other], progress=False)
    assert index.clusters == [[0, 1, 2], [3, 4]]
    assert [index.cluster_kind(c) for c in index.clusters] == ["exact", "exact"]
    assert index.exact_clusters == [[0, 1, 2], [3, 4]]
    assert index.group_ids([other, resaved, as_rgb]) == [None, 0, 1]
    assert all(p.exact and p.distance == 0 for p in index.pairs)


def test_palette_and_opaque_alpha_images_match_their_rgb_twins(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    indices = (np.add.outer(np.arange(48), np.arange(48)) // 7 % 7).astype(np.uint8)
    colours = rng.integers(0, 256, (7, 3), dtype=np.uint8)
    palette = Image.fromarray(indices)
    palette.putpalette(colours.ravel().tolist())
    assert palette.mode == "P"
    palette.save(tmp_path / "palette.png")
    rgb = colours[indices]
    opaque = np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 255, np.uint8)], axis=-1)
    translucent = opaque.copy()
    translucent[0, 0, 3] = 254  # a picture that is not fully opaque is another picture
    paths = [str(tmp_path / "palette.png"), save(tmp_path / "rgb.png", rgb), save(tmp_path / "rgba.png", opaque)]
    paths.append(save(tmp_path / "translucent.png", translucent))
    index = find_duplicates(paths, threshold=-1, progress=False)
    assert index.exact_clusters == [[0, 1, 2]]


def test_near_duplicates_are_found_by_the_difference_hash_and_clustered(tmp_path: Path) -> None:
    pixels = scan(4)
    source = save(tmp_path / "scan.png", pixels)
    jpeg = save(tmp_path / "scan_q60.jpg", pixels, quality=60)  # lossy: not the same pixels
    brighter = save(tmp_path / "scan_bright.png", np.clip(pixels.astype(int) * 0.8 + 30, 0, 255).astype(np.uint8))
    unrelated = [save(tmp_path / f"other{i}.png", scan(10 + i)) for i in range(3)]

    index = find_duplicates([source, jpeg, brighter, *unrelated], progress=False)
    assert index.clusters == [[0, 1, 2]]
    assert index.cluster_kind([0, 1, 2]) == "near" and index.exact_clusters == []
    assert {(p.first, p.second) for p in index.pairs} <= {(0, 1), (0, 2), (1, 2)}
    assert all(not p.exact and p.distance <= DEFAULT_THRESHOLD for p in index.pairs)
    # unrelated structured pictures are far apart: about half of the 256 bits differ
    far = near_duplicate_pairs([f.dhash for f in index.fingerprints], threshold=256)
    assert min(d for i, j, d in far if i >= 3 or j >= 3) > 2 * DEFAULT_THRESHOLD
    # the threshold decides: exact-only (-1) finds nothing here
    assert find_duplicates([source, jpeg, brighter], threshold=-1, progress=False).clusters == []


def test_clusters_are_transitive(tmp_path: Path) -> None:
    """a = b exactly, b ~ c nearly: one cluster of three, although a and c were never compared as a pair."""
    pixels = scan(5)
    first = save(tmp_path / "a.png", pixels)
    second = save(tmp_path / "b.png", pixels, compress_level=1)
    third = save(tmp_path / "c.jpg", pixels, quality=70)
    index = find_duplicates([first, third, second], progress=False)
    assert index.clusters == [[0, 1, 2]] and index.cluster_kind([0, 1, 2]) == "near"
    assert index.cluster_kind([0, 2]) == "exact"


def test_dicom_files_differing_only_in_metadata_are_exact_duplicates(tmp_path: Path) -> None:
    dataset = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    dataset.save_as(tmp_path / "one.dcm")
    dataset.PatientName = "Someone^Else"
    dataset.save_as(tmp_path / "two.dcm")
    dataset.PixelData = (dataset.pixel_array[::-1].copy()).tobytes()  # flipped: another picture
    dataset.save_as(tmp_path / "three.dcm")
    paths = [str(tmp_path / name) for name in ("one.dcm", "two.dcm", "three.dcm")]
    index = find_duplicates(paths, progress=False)
    assert index.exact_clusters == [[0, 1]]
    assert index.fingerprints[0].file_sha256 != index.fingerprints[1].file_sha256
    assert index.fingerprints[0].shape == (64, 64) and not index.fingerprints[0].error


def test_unreadable_files_are_reported_and_compared_by_bytes(tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    twin = tmp_path / "broken_copy.png"
    twin.write_bytes(broken.read_bytes())
    fine = save(tmp_path / "fine.png", scan(6))
    index = find_duplicates([str(broken), fine, str(twin)], progress=False)
    assert index.unreadable == [str(broken), str(twin)]
    assert index.clusters == [[0, 2]] and index.fingerprints[0].error
    split = {"training": [{"image": str(broken), "label": 0}, {"image": fine, "label": 0}]}
    split["test"] = [{"image": str(twin), "label": 1}]
    report = index.report(split)
    assert report.counts()["unreadable"] == 2 and "could not be decoded" in report.summary()


def test_the_cache_is_keyed_on_size_and_modification_time(tmp_path: Path) -> None:
    first = save(tmp_path / "a.bmp", scan(7))  # BMP: pictures of one shape have one byte size
    second = save(tmp_path / "b.bmp", scan(8))
    cache = tmp_path / "hashes.json"
    before = fingerprint_images([first, second], cache_file=cache, progress=False)
    entries = json.loads(cache.read_text())["entries"]
    assert set(entries) == {str(Path(first).resolve()), str(Path(second).resolve())}

    # another picture of the same byte size, with the old modification time: the cache answers (stale, by design)
    stat = os.stat(first)
    Path(first).write_bytes(Path(second).read_bytes())
    os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(first).st_size == stat.st_size
    assert fingerprint_images([first], cache_file=cache, progress=False)[0] == before[0]
    # a newer modification time: hashed again, and the cache updated
    save(Path(first), scan(9))
    os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    after = fingerprint_images([first, second], cache_file=cache, progress=False)
    assert after[0].pixel_sha256 != before[0].pixel_sha256 and after[1] == before[1]
    assert fingerprint_images([first], cache_file=cache, progress=False) == after[:1]


def test_blockwise_pairs_match_a_full_comparison() -> None:
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2, (1200, 256), dtype=np.uint8)
    bits[600:700] = bits[:100] ^ (rng.random((100, 256)) < 0.05)  # planted near copies
    hashes = [np.packbits(row).tobytes().hex() for row in bits]
    signed = bits.astype(np.float32) * 2 - 1
    distance = ((256 - signed @ signed.T) / 2).round().astype(int)
    first, second = np.nonzero(np.triu(distance <= 30, k=1))
    expected = sorted(zip(first.tolist(), second.tolist(), distance[first, second].tolist()))
    assert near_duplicate_pairs(hashes, 30) == expected and len(expected) >= 100
    assert near_duplicate_pairs(["", hashes[0], hashes[0]], 0) == [(1, 2, 0)]


def test_difference_hash_ignores_size_and_contrast_and_checks_its_input() -> None:
    pixels = scan(11, size=128).astype(np.float32)
    small = np.asarray(Image.fromarray(pixels[..., 0]).resize((64, 64), Image.Resampling.BOX))
    assert difference_hash(pixels[..., 0]) == difference_hash(pixels[..., 0] * 3 + 7)
    assert len(difference_hash(pixels)) == 64 and len(difference_hash(pixels, hash_size=8)) == 16
    distance = bin(int(difference_hash(pixels[..., 0]), 16) ^ int(difference_hash(small), 16)).count("1")
    assert distance <= 8
    with pytest.raises(ValueError, match="2-D image"):
        difference_hash(np.zeros((2, 3, 4, 5)))
    with pytest.raises(ValueError, match="at least 2"):
        difference_hash(pixels, hash_size=1)
    with pytest.raises(ValueError, match="duplicates must be one of"):
        check_duplicate_mode("remove")


def test_cross_split_report_names_the_leaks_and_label_conflicts(tmp_path: Path) -> None:
    a, b = scan(12), scan(13)
    items = {
        "a": save(tmp_path / "a.png", a),
        "a_copy": save(tmp_path / "a_copy.png", a, compress_level=9),
        "a_jpeg": save(tmp_path / "a.jpg", a, quality=80),
        "b": save(tmp_path / "b.png", b),
        "b_copy": save(tmp_path / "b_copy.png", b, compress_level=2),
        "c": save(tmp_path / "c.png", scan(14)),
    }
    split = {
        "training": [{"image": items[k], "label": 1 if k != "a" else 0} for k in ("a", "b", "b_copy")],
        "validation": [{"image": items["c"], "label": 0}],
        "test": [{"image": items["a_copy"], "label": 2}, {"image": items["a_jpeg"], "label": 0}],
    }
    report = find_cross_split_duplicates(split, progress=False)
    counts = report.counts()
    assert counts["images"] == 6 and counts["exact_clusters"] == 2 and counts["near_clusters"] == 1
    assert counts["cross_split_clusters"] == 1 and counts["cross_split_near_clusters"] == 1
    assert counts["label_conflicts"] == 1 and counts["images_in_clusters"] == 5
    (leak,) = report.cross_split_clusters
    assert leak["parts"] == ["training", "test"] and leak["labels"] == [0, 2]
    assert {m["image"] for m in leak["members"]} == {items["a"], items["a_copy"], items["a_jpeg"]}
    assert {tuple(sorted(p["parts"])) for p in report.cross_split_pairs} == {("test", "training")}
    assert sum(p["exact"] for p in report.cross_split_pairs) == 1  # a ~ a_copy; the JPEG is a near copy
    text = report.summary()
    assert "1 cluster(s) (0 exact, 1 near)" in text and "keep_together" in text and items["a_copy"] in text

    report.save(tmp_path / "report.json")
    record = json.loads((tmp_path / "report.json").read_text())
    assert record["cross_split_clusters"] == 1 and record["threshold"] == DEFAULT_THRESHOLD
    assert record["hash_bits"] == 256 and len(record["clusters"]) == 2

    official = find_cross_split_duplicates(split, mode="official", progress=False)
    assert "cannot be rearranged" in official.summary()
    split["validation"].append({"image": items["a"], "label": 0})  # the same file in two parts
    twice = find_cross_split_duplicates(split, progress=False)
    assert twice.listed_twice == [{"image": items["a"], "parts": ["training", "validation"]}]


def busi_with_duplicates(root: Path) -> tuple[Path, list[tuple[str, str]]]:
    """A BUSI folder (10 images per class) plus 6 re-saved copies and 1 copy filed under another class."""
    write_busi_folder(root, per_class=10)
    copies = []
    for name, index in (("benign", 1), ("benign", 2), ("malignant", 3), ("malignant", 4), ("normal", 5)):
        source = root / name / f"{name} ({index}).png"
        target = root / name / f"{name} ({index + 20}).png"
        with Image.open(source) as image:
            image.save(target, compress_level=0)
        copies.append((str(source), str(target)))
    source, target = root / "benign" / "benign (6).png", root / "malignant" / "malignant (30).png"
    target.write_bytes(source.read_bytes())
    copies.append((str(source), str(target)))
    return root, copies


def parts_of(split: dict[str, list[dict]]) -> dict[str, str]:
    return {item["image"]: part for part, items in split.items() for item in items}


def test_prepare_datalist_reports_or_keeps_duplicates_together(tmp_path: Path) -> None:
    root, copies = busi_with_duplicates(tmp_path / "busi")
    reported = prepare_datalist("busi", root, tmp_path / "report.json", seed=0, duplicates="report")
    record = json.loads((tmp_path / "report.json").read_text())["duplicates"]
    where = parts_of(reported)
    crossing = [pair for pair in copies if where[pair[0]] != where[pair[1]]]
    assert crossing, "seed 0 splits some copies apart"
    assert record["mode"] == "report" and record["exact_clusters"] == 6
    assert record["cross_split_clusters"] == len(crossing) and record["label_conflicts"] == 1
    leaked = {frozenset(m["image"] for m in c["members"]) for c in record["clusters"] if len(c["parts"]) > 1}
    assert leaked == {frozenset(pair) for pair in crossing}

    together = prepare_datalist("busi", root, tmp_path / "together.json", seed=0, duplicates="keep_together")
    record = json.loads((tmp_path / "together.json").read_text())["duplicates"]
    where = parts_of(together)
    assert all(where[a] == where[b] for a, b in copies)
    assert record["mode"] == "keep_together" and record["cross_split_clusters"] == 0
    assert {p: len(v) for p, v in together.items()} == {p: len(v) for p, v in reported.items()}
    # keeping them together is the default
    assert prepare_datalist("busi", root, tmp_path / "default.json", seed=0) == together
    assert json.loads((tmp_path / "default.json").read_text())["duplicates"]["mode"] == "keep_together"

    prepare_datalist("busi", root, tmp_path / "ignore.json", duplicates="ignore")
    assert json.loads((tmp_path / "ignore.json").read_text())["duplicates"] == {"mode": "ignore"}
    with pytest.raises(ValueError, match="duplicates must be one of"):
        prepare_datalist("busi", root, tmp_path / "bad.json", duplicates="drop")
    assert not (tmp_path / "bad.json").exists()


def test_every_fold_keeps_duplicates_together_by_default(tmp_path: Path) -> None:
    root, copies = busi_with_duplicates(tmp_path / "busi")
    every = sorted(item["image"] for item in busi_datalist(root))
    leaked = 0
    for seed in (0, 1):
        tested: list[str] = []
        for fold in range(3):
            split = prepare_datalist("busi", root, tmp_path / f"s{seed}f{fold}.json", seed=seed, num_folds=3, fold=fold)
            record = json.loads((tmp_path / f"s{seed}f{fold}.json").read_text())["duplicates"]
            where = parts_of(split)
            assert all(where[a] == where[b] for a, b in copies), (seed, fold)
            assert record["mode"] == "keep_together" and record["cross_split_clusters"] == 0
            assert record["exact_clusters"] == 6
            assert all({item["label"] for item in part} == {0, 1, 2} for part in split.values())
            tested += [item["image"] for item in split["test"]]
            prepare_datalist(
                "busi", root, tmp_path / f"r{seed}f{fold}.json", seed=seed, num_folds=3, fold=fold, duplicates="report"
            )
            leaked += json.loads((tmp_path / f"r{seed}f{fold}.json").read_text())["duplicates"]["cross_split_clusters"]
        assert sorted(tested) == every  # the three test folds still hold every image once
    assert leaked, "without keep_together some copies straddle parts: the test would prove nothing otherwise"


def test_clusters_too_large_to_keep_together_say_what_to_do(tmp_path: Path) -> None:
    """Flat pictures all share one difference hash: one cluster holding every image cannot be split."""
    root = tmp_path / "busi"
    for label, name in enumerate(("benign", "malignant", "normal")):
        for index in range(1, 11):
            save(root / name / f"{name} ({index}).png", np.full((32, 32), 40 * label + index, np.uint8))
    for folds in (None, 3):
        with pytest.raises(DatalistError) as info:
            prepare_datalist("busi", root, tmp_path / "datalist.json", num_folds=folds)
        message = str(info.value)
        assert "cannot all be kept in one part" in message and "--duplicates report" in message
    assert prepare_datalist("busi", root, tmp_path / "datalist.json", num_folds=3, duplicates="report")["test"]


def test_an_official_split_is_reported_not_rearranged(tmp_path: Path) -> None:
    """The Chaoyang writer files each flat test picture also as a training picture: 8 leaks, reported only."""
    root = write_chaoyang(tmp_path / "chaoyang", train_per_class=6, test_per_class=2)
    release = root / "chaoyang-data"
    plain = prepare_datalist("chaoyang", root, tmp_path / "plain.json", duplicates="ignore")
    # exact duplicates only (threshold -1): the same-named train / test pictures
    kept = prepare_datalist(
        "chaoyang", root, tmp_path / "kept.json", duplicates="keep_together", duplicate_threshold=-1
    )
    assert kept == plain
    record = json.loads((tmp_path / "kept.json").read_text())["duplicates"]
    assert record["mode"] == "official" and "cannot be rearranged" in record["advice"]
    expected = {
        frozenset(str(release / part / f"{label}-{i}.JPG") for part in ("train", "test"))
        for label in range(4)
        for i in range(2)
    }
    assert {frozenset(m["image"] for m in c["members"]) for c in record["clusters"]} == expected
    assert record["cross_split_clusters"] == 8 and all(c["parts"][-1] == "test" for c in record["clusters"])


@pytest.mark.skipif(not BUSI.is_dir(), reason="the real BUSI copy (../shared/data/busi) is not here")
def test_known_duplicates_of_the_real_busi() -> None:
    """BUSI files one picture twice (benign 433 = malignant 145) and near copies such as benign 406 ~ malignant 94."""
    names = ["benign/benign (433).png", "malignant/malignant (145).png", "benign/benign (406).png"]
    names += ["malignant/malignant (94).png", "normal/normal (1).png"]
    index = find_duplicates([str(BUSI / name) for name in names], progress=False)
    assert index.clusters == [[0, 1], [2, 3]]
    assert index.cluster_kind([0, 1]) == "exact" and index.cluster_kind([2, 3]) == "near"
