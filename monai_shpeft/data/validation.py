"""Checking a datalist before training: labels in range, no empty part, every image readable (or skipped).

Clinical data is messy: a truncated download, a text file saved as ``.png``, a DICOM without pixels, a label from
another dataset. Found by the ``DataLoader`` in the middle of an epoch, such a file stops training with MONAI's
``RuntimeError: applying transform ...`` wrapped around the real cause. :func:`check_datalist` finds them all
before training starts: it reads every image the way training will (:class:`~monai_shpeft.transforms.LoadMedicalImage`,
which decodes the pixels, so truncation shows) and checks that the values are finite. By default it stops at
the first bad file with an error naming the file, the cause and what to do; with ``skip_bad_files=True`` it
leaves the unreadable files out, logs how many and which, and writes the list to a JSON report.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from monai_shpeft.data.datalist import DatalistError
from monai_shpeft.errors import SettingsError
from monai_shpeft.transforms import ImageReadError, LoadMedicalImage
from monai_shpeft.utils import atomic_write_json

__all__ = ["BAD_FILES_REPORT", "BadFile", "check_datalist", "check_image_file", "check_items", "check_labels"]

logger = logging.getLogger(__name__)

#: file name of the report written next to a run's outputs
BAD_FILES_REPORT = "bad_files.json"
#: bad files named one per line in the log before the rest is left to the report
_LOGGED_FILES = 20


@dataclass(frozen=True)
class BadFile:
    """One image left out of a datalist.

    Args:
        part: the datalist part (``training``, ``validation``, ``test``, ``inference``).
        index: position of the item in its part.
        image: the file.
        reason: why it cannot be used.
    """

    part: str
    index: int
    image: str
    reason: str


def check_image_file(path: str | os.PathLike, loader: LoadMedicalImage | None = None) -> None:
    """Read ``path`` as training will, and check that its pixel values are finite.

    Args:
        path: an image file.
        loader: the loader to use (one per thread: the readers keep per-file state); ``None`` makes one.

    Raises:
        ImageReadError: naming the file and the cause, when it cannot be read or holds NaN or infinite values.
    """
    image = (loader or LoadMedicalImage())(path)
    if image.is_floating_point():
        finite = torch.isfinite(image)
        if not bool(finite.all()):
            count = int((~finite).sum())
            raise ImageReadError.for_file(
                path,
                f"{count} of {image.numel()} pixel values are NaN or infinite (float64 values beyond float32's "
                "range count too), which no intensity scaling can map to an image",
            )


def _label_problem(label: Any, num_classes: int) -> str | None:
    """Why ``label`` is not a class index below ``num_classes``, or ``None`` when it is one."""
    if isinstance(label, bool) or not isinstance(label, int | np.integer):
        if isinstance(label, float | np.floating) and float(label).is_integer():
            return f"is the float {label!r}, not an integer (write {int(label)})"
        return f"is {label!r} ({type(label).__name__}), not an integer class index"
    if not 0 <= int(label) < num_classes:
        return f"is {int(label)}, outside 0..{num_classes - 1}"
    return None


def check_labels(
    split: Mapping[str, Sequence[Mapping[str, Any]]],
    classes: Sequence[str],
    datalist_file: str | os.PathLike | None = None,
    label_key: str = "label",
) -> None:
    """Check that every label of ``split`` is an integer class index of ``classes``.

    A wrong label is a wrong datalist (made for another dataset or edited by hand), never a file to skip.

    Args:
        split: ``{"training": [...], ...}`` items; items without ``label_key`` are not checked.
        classes: the class names of the bundle, in label order.
        datalist_file: the datalist the split came from, quoted in the error.
        label_key: key of the label.

    Raises:
        DatalistError: naming the part, the item, its image and the label.
    """
    where = f"datalist {os.fspath(datalist_file)}" if datalist_file else "the datalist"
    names = ", ".join(f"{index} {name}" for index, name in enumerate(classes))
    for part, items in split.items():
        for index, item in enumerate(items):
            if label_key not in item:
                continue
            problem = _label_problem(item[label_key], len(classes))
            if problem is not None:
                raise DatalistError(
                    f"{where}: '{part}' item {index} ({item.get('image', '?')}) has a label that {problem}; this "
                    f"bundle has {len(classes)} classes ({names}). Fix the labels, or use the bundle of the "
                    "dataset the datalist was made for."
                )


def _scan(
    jobs: list[tuple[str, int, str]], num_workers: int, stop_at_first: bool
) -> dict[tuple[str, int, str], ImageReadError]:
    """Read every ``(part, index, path)``; return the failures (only the first when ``stop_at_first``)."""
    local = threading.local()

    def check(job: tuple[str, int, str]) -> ImageReadError | None:
        loader = getattr(local, "loader", None)
        if loader is None:
            loader = local.loader = LoadMedicalImage()
        try:
            check_image_file(job[2], loader)
        except ImageReadError as error:
            return error
        return None

    failures: dict[tuple[str, int, str], ImageReadError] = {}
    if num_workers <= 1:
        for job in jobs:
            error = check(job)
            if error is not None:
                failures[job] = error
                if stop_at_first:
                    break
        return failures
    executor = ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="check_images")
    try:
        for job, error in zip(jobs, executor.map(check, jobs)):  # in datalist order, whatever thread finished first
            if error is not None:
                failures[job] = error
                if stop_at_first:
                    break
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    return failures


def check_datalist(
    split: Mapping[str, Sequence[Mapping[str, Any]]],
    classes: Sequence[str] | None = None,
    skip_bad_files: bool = False,
    report_file: str | os.PathLike | None = None,
    datalist_file: str | os.PathLike | None = None,
    image_key: str = "image",
    num_workers: int = 0,
) -> dict[str, list[Mapping[str, Any]]]:
    """Check a split before training: labels, non-empty parts, and every image readable.

    Args:
        split: ``{"training": [...], "validation": [...], "test": [...]}`` (any part names) of
            ``{"image": path, "label": int}`` items, e.g. from :func:`~monai_shpeft.data.prepare_datalist`.
        classes: the bundle's class names; when given, every label must be an index into them.
        skip_bad_files: leave unreadable images out (logged, and listed in ``report_file``) instead of stopping
            at the first one.
        report_file: where to write the JSON report of the check (images checked, skipped files with reasons).
        datalist_file: the datalist the split came from, quoted in errors.
        image_key: key of the image path in each item.
        num_workers: threads reading images (PIL and the DICOM decoders release the GIL); 0 or 1 reads in turn.

    Returns:
        the split, without the skipped items (a new dict of new lists; the items themselves are not copied).

    Raises:
        DatalistError: for a label that is not a class index, or a part that is (or, after skipping, becomes)
            empty.
        ImageReadError: without ``skip_bad_files``, for the first image (in datalist order) that cannot be read
            or holds NaN/infinite values; the message names the file, the cause, where the datalist lists it
            and what to do.
    """
    where = f"datalist {os.fspath(datalist_file)}" if datalist_file else "the datalist"
    then = f" (then delete {os.fspath(datalist_file)} to split anew)" if datalist_file else ""
    remedy = (
        f"Replace or remove the file{then}, or leave unreadable files out with skip_bad_files (bundles: "
        "--skip_bad_files true)."
    )
    if classes is not None:
        check_labels(split, classes, datalist_file)
    return _check(split, bool(skip_bad_files), report_file, where, remedy, image_key, num_workers)


def check_batch_size(
    training: Sequence[Mapping[str, Any]], batch_size: int, datalist_file: str | os.PathLike | None = None
) -> list[Mapping[str, Any]]:
    """Check that the training part holds at least one batch (bundles: ``train#dataset``, training only).

    Args:
        training: the training items, after :func:`check_datalist`.
        batch_size: the training batch size.
        datalist_file: the datalist the items came from, quoted in the error.

    Returns:
        ``training``, unchanged.

    Raises:
        SettingsError: for a batch size larger than the training part.
    """
    if int(batch_size) > len(training):
        where = f"datalist {os.fspath(datalist_file)}" if datalist_file else "the datalist"
        raise SettingsError(
            f"batch_size {int(batch_size)} is larger than the training part of {where} ({len(training)} images): "
            f"every epoch would be one short batch. Lower --batch_size to at most {len(training)}."
        )
    return list(training)


def check_items(
    items: Sequence[Mapping[str, Any]],
    skip_bad_files: bool = False,
    report_file: str | os.PathLike | None = None,
    source: str | os.PathLike | None = None,
    image_key: str = "image",
    num_workers: int = 0,
) -> list[Mapping[str, Any]]:
    """:func:`check_datalist` for one list of items (e.g. the images inference will predict).

    Args:
        items: ``{"image": path, ...}`` dictionaries.
        skip_bad_files: leave unreadable images out instead of stopping at the first one.
        report_file: where to write the JSON report.
        source: where the items came from (a folder or a datalist), quoted in errors.
        image_key: key of the image path.
        num_workers: threads reading images.

    Returns:
        the items, without the skipped ones.

    Raises:
        DatalistError: if there is no item (left).
        ImageReadError: without ``skip_bad_files``, for the first image that cannot be read.
    """
    where = f"the images of {os.fspath(source)}" if source else "the images"
    remedy = "Replace the file, or move it out of the images to predict."
    split = {"inference": list(items)}
    return _check(split, bool(skip_bad_files), report_file, where, remedy, image_key, num_workers)["inference"]


def _check(
    split: Mapping[str, Sequence[Mapping[str, Any]]],
    skip_bad_files: bool,
    report_file: str | os.PathLike | None,
    where: str,
    remedy: str,
    image_key: str,
    num_workers: int,
) -> dict[str, list[Mapping[str, Any]]]:
    empty = [part for part, items in split.items() if not items]
    if empty:
        raise DatalistError(
            f"{where}: no items in part(s) {empty}, so there is nothing to train or test on. Check the dataset "
            "folder (is it empty?), or delete the datalist to split the dataset anew."
        )
    jobs = [(part, i, os.fspath(item[image_key])) for part, items in split.items() for i, item in enumerate(items)]
    start = time.perf_counter()
    logger.info("Checking that the %d images of %s can be read (skip_bad_files=%s).", len(jobs), where, skip_bad_files)
    failures = _scan(jobs, int(num_workers or 0), stop_at_first=not skip_bad_files)
    if failures and not skip_bad_files:
        (part, index, path), error = next(iter(failures.items()))
        message = f"{error} ['{part}' item {index} of {where}]. {remedy}"
        logger.error("%s", message)  # in the log too: MONAI's config-evaluation frames bury the traceback's copy
        raise ImageReadError(message, path=path, reason=error.reason) from None  # the message holds the cause
    bad = [BadFile(part, index, path, error.reason or str(error)) for (part, index, path), error in failures.items()]
    left_out = {(b.part, b.index) for b in bad}
    kept = {part: [item for i, item in enumerate(items) if (part, i) not in left_out] for part, items in split.items()}
    if report_file is not None:
        record = {"checked": len(jobs), "skipped": len(bad), "skip_bad_files": skip_bad_files, "source": where}
        atomic_write_json(report_file, {**record, "files": [asdict(b) for b in bad]})
    elapsed = time.perf_counter() - start
    if bad:
        report = f", listed in {os.fspath(report_file)}" if report_file is not None else ""
        lines = "".join(f"\n  [{b.part} {b.index}] {b.image}: {b.reason}" for b in bad[:_LOGGED_FILES])
        more = f"\n  ... and {len(bad) - _LOGGED_FILES} more" if len(bad) > _LOGGED_FILES else ""
        logger.warning("Skipped %d of %d images that cannot be used%s:%s%s", len(bad), len(jobs), report, lines, more)
    else:
        logger.info("All %d images of %s can be read (%.1f s).", len(jobs), where, elapsed)
    emptied = [part for part, items in kept.items() if not items]
    if emptied:
        raise DatalistError(
            f"{where}: after leaving out {len(bad)} unreadable image(s), part(s) {emptied} hold no image. Replace "
            "the unreadable files (listed above) or add images."
        )
    return kept
