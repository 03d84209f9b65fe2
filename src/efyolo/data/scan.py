"""Scanning a dataset split into an index of images, sizes and checked labels, with a cache.

    cfg = load_data_config("data.yaml")
    index = scan_split(cfg, "val")
    print(index.summary())        # "val: 120 images, 3 backgrounds, 2 corrupt images skipped, ..."
    for rec in index:             # ImageRecord(im_file, shape=(h, w), labels=[n, 5])
        ...

:func:`scan_split` is the one entry point for both dataset formats (YOLO label files, or a COCO
instances JSON, see :mod:`efyolo.data.coco_split`). Problems are logged as warnings on the ``efyolo``
logger (the first ``max_warnings`` of them; all are kept in :attr:`SplitIndex.problems`) and
summed up in one line; corrupt images (any that PIL or OpenCV cannot read) and bad label rows are
skipped, never fatal. Symbolic link loops and files listed twice are reported and listed once
(:func:`efyolo.data.images.find_images`); truncated JPEGs are reported and kept.

The scan is cached in a file next to the labels (``labels/val.cache`` for ``labels/val/``; next to
the ``.txt`` list or the COCO JSON for those sources): a numpy ``.npz`` read without pickle. It
is reused only when the hash of every image and label file's path, size and mtime (plus the
number of classes and the cache format) matches; otherwise the split is rescanned and the cache
rewritten. A folder that cannot be written simply gets no cache.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence


from efyolo.data.config import DataConfig
from efyolo.data.images import find_images, inspect_image
from efyolo.data.labels import TOLERANCE, img2label_paths, read_label_file
from efyolo.data.split import ImageRecord, SplitIndex, files_hash, load_cache, log_problems, save_cache


def scan_split(
    cfg: DataConfig,
    split: str,
    *,
    cache: bool = True,
    workers: int | None = None,
    max_warnings: int = 20,
) -> SplitIndex:
    """List, check and index the images and labels of one split.

    Args:
        cfg: the dataset config.
        split: ``"train"``, ``"val"`` or ``"test"``.
        cache: read/write the scan cache.
        workers: threads for checking images (default: up to 8).
        max_warnings: problems logged one by one; the rest are counted in one more line.

    Returns:
        The :class:`SplitIndex`.

    Raises:
        EfyoloError: the split is not in the config, or holds no images.
    """
    if cfg.is_coco(split):
        from efyolo.data.coco_split import scan_coco_split  # noqa: PLC0415 - keeps the formats apart

        index = scan_coco_split(cfg, split, cache=cache, workers=workers)
    else:
        index = _scan_yolo_split(cfg, split, cache=cache, workers=workers)
    log_problems(index.problems, max_warnings)
    return index


def _scan_yolo_split(cfg: DataConfig, split: str, *, cache: bool, workers: int | None) -> SplitIndex:
    """List, then check (or read from the cache) a split of YOLO label files.

    The listing problems (symbolic link loops, files listed twice) come first in
    :attr:`SplitIndex.problems`; they are not cached but found again by every listing, since the
    cache is keyed by the files listed, which a new loop does not change.
    """
    sources = cfg.split_sources(split)
    im_files, listing = find_images(sources, f"{cfg.yaml_path}: '{split}'")
    label_files = img2label_paths(im_files)
    digest = files_hash(im_files + label_files, extra=f"yolo nc={cfg.nc} tol={TOLERANCE}")
    cache_path = _cache_path(sources, label_files, split)
    index = load_cache(cache_path, digest, split, cfg.names) if cache else None
    if index is None:
        index = _scan_yolo(im_files, label_files, split, cfg.names, workers)
        if cache:
            index.cache_path = cache_path if save_cache(cache_path, digest, index) else None
    index.problems[:0] = listing
    return index


def _scan_yolo(
    im_files: list[str], label_files: list[str], split: str, names: list[str], workers: int | None
) -> SplitIndex:
    """Check every image and read its label file (in threads); an unusable image is skipped with
    its labels and counted as corrupt, a damaged but usable one (a truncated JPEG) reported."""
    nc = len(names)

    def one(i: int) -> tuple:
        check = inspect_image(im_files[i])
        if check.shape is None:
            return None, f"{im_files[i]}: {check.reason}, skipped", None, None
        warning = f"{im_files[i]}: {check.warning}" if check.warning else None
        return check.shape, None, warning, read_label_file(label_files[i], nc)

    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        results = list(pool.map(one, range(len(im_files))))
    index = SplitIndex(split, list(names), [], n_listed=len(im_files))
    for im_file, (shape, corrupt, warning, lab) in zip(im_files, results):
        if corrupt:
            index.problems.append(corrupt)
            index.n_corrupt += 1
            continue
        if warning:
            index.problems.append(warning)
        index.problems.extend(lab.problems)
        index.n_dropped += lab.dropped
        index.n_backgrounds += len(lab.labels) == 0
        index.images.append(ImageRecord(im_file, shape, lab.labels))
    return index


def _cache_path(sources: Sequence[Path], label_files: Sequence[str], split: str) -> Path:
    """``labels/<folder>.cache`` for a single folder source (YOLOv5's place), next to the list
    file for a ``.txt`` source, ``<labels parent>/<split>.cache`` for several sources."""
    if len(sources) == 1 and sources[0].is_file():
        return sources[0].with_suffix(".cache")
    if len(sources) == 1:  # images/val -> labels/val.cache
        return Path(img2label_paths([str(sources[0] / "x.jpg")])[0]).parent.with_suffix(".cache")
    return Path(label_files[0]).parent.parent / f"{split}.cache"


