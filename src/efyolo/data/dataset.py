"""Scanning a dataset split into an index of images, sizes and checked labels, with a cache.

    cfg = load_data_config("data.yaml")
    index = scan_split(cfg, "val")
    print(index.summary())        # "val: 120 images, 3 backgrounds, 2 corrupt images skipped, ..."
    for rec in index:             # ImageRecord(im_file, shape=(h, w), labels=[n, 5])
        ...

:func:`scan_split` is the one entry point for both dataset formats (YOLO label files, or a COCO
instances JSON, see :mod:`efyolo.data.coco`). Problems are logged as warnings on the ``efyolo``
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

import contextlib
import hashlib
import logging
import os
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from efyolo.data.config import DataConfig
from efyolo.data.images import find_images, inspect_image
from efyolo.data.labels import TOLERANCE, img2label_paths, read_label_file

LOGGER = logging.getLogger("efyolo")
# bump whenever the image or label checks change: a cache keeps the old results and messages.
# 4: images OpenCV cannot decode are skipped, decoder exceptions skip the image, truncated JPEGs
#    are reported, label files with a byte-order mark keep their first row.
CACHE_VERSION = 4


@dataclass(frozen=True)
class ImageRecord:
    """One usable image of a split.

    Attributes:
        im_file: absolute path of the image.
        shape: ``(h, w)`` in pixels, EXIF orientation applied.
        labels: ``[n, 5]`` float32 rows ``(cls, xc, yc, w, h)``, normalised to [0, 1].
        crowd: ``[k, 5]`` the same for COCO ``iscrowd`` regions (COCO JSON splits only): not
            objects to train on, but regions where evaluation ignores detections.
    """

    im_file: str
    shape: tuple[int, int]
    labels: np.ndarray
    crowd: np.ndarray = field(default_factory=lambda: np.zeros((0, 5), np.float32))


@dataclass
class SplitIndex:
    """The usable images of a split and what the scan found wrong.

    Attributes:
        split: split name (``"val"``...).
        names: class names.
        images: the usable images, in listing order.
        problems: every problem message (file and line, or file and annotation id).
        n_listed: images listed by the sources.
        n_corrupt: listed images skipped because they could not be read.
        n_backgrounds: usable images without any label (missing or empty label file).
        n_dropped: label rows refused.
        n_crowd: COCO ``iscrowd`` regions, kept apart in :attr:`ImageRecord.crowd`.
        cache_path: the cache file used or written (None when not writable).
        from_cache: whether the index was read from the cache.
    """

    split: str
    names: list[str]
    images: list[ImageRecord]
    problems: list[str] = field(default_factory=list)
    n_listed: int = 0
    n_corrupt: int = 0
    n_backgrounds: int = 0
    n_dropped: int = 0
    n_crowd: int = 0
    cache_path: Path | None = None
    from_cache: bool = False

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> ImageRecord:
        return self.images[i]

    def __iter__(self) -> Iterator[ImageRecord]:
        return iter(self.images)

    @property
    def im_files(self) -> list[str]:
        """Image paths."""
        return [r.im_file for r in self.images]

    @property
    def shapes(self) -> np.ndarray:
        """``[N, 2]`` int ``(h, w)``."""
        return np.array([r.shape for r in self.images], dtype=np.int64).reshape(-1, 2)

    @property
    def labels(self) -> list[np.ndarray]:
        """Per-image ``[n, 5]`` label arrays."""
        return [r.labels for r in self.images]

    @property
    def n_instances(self) -> int:
        """Number of labelled boxes."""
        return sum(len(r.labels) for r in self.images)

    def summary(self) -> str:
        """One line, e.g. ``"val: 120 images, 3 backgrounds, 2 corrupt images skipped, 4 label rows
        dropped (see warnings)"``."""
        parts = [f"{len(self.images)} images", f"{self.n_instances} boxes", f"{self.n_backgrounds} backgrounds"]
        if self.n_corrupt:
            parts.append(f"{self.n_corrupt} corrupt images skipped")
        if self.n_dropped:
            parts.append(f"{self.n_dropped} label rows dropped")
        if self.n_crowd:
            parts.append(f"{self.n_crowd} crowd regions")
        line = f"{self.split}: " + ", ".join(parts)
        if self.problems:
            line += f" ({len(self.problems)} problems, see warnings)"
        return line + (" [cached]" if self.from_cache else "")


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
        from efyolo.data.coco import scan_coco_split  # noqa: PLC0415 - keeps the formats apart

        index = scan_coco_split(cfg, split, cache=cache, workers=workers)
    else:
        index = _scan_yolo_split(cfg, split, cache=cache, workers=workers)
    log_problems(index.problems, max_warnings)
    return index


def log_problems(problems: Sequence[str], max_warnings: int = 20) -> None:
    """Log the first ``max_warnings`` problems as warnings, then one line counting the rest."""
    for msg in problems[:max_warnings]:
        LOGGER.warning(msg)
    if len(problems) > max_warnings:
        LOGGER.warning("... and %d more problems", len(problems) - max_warnings)


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


def files_hash(paths: Sequence[str], extra: str = "") -> str:
    """SHA-256 of every path with its size and mtime (``-`` for a missing file), plus ``extra``."""
    h = hashlib.sha256(f"v{CACHE_VERSION} {extra}\n".encode())
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{p}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}\t-\n".encode())
    return h.hexdigest()


def _cache_path(sources: Sequence[Path], label_files: Sequence[str], split: str) -> Path:
    """``labels/<folder>.cache`` for a single folder source (YOLOv5's place), next to the list
    file for a ``.txt`` source, ``<labels parent>/<split>.cache`` for several sources."""
    if len(sources) == 1 and sources[0].is_file():
        return sources[0].with_suffix(".cache")
    if len(sources) == 1:  # images/val -> labels/val.cache
        return Path(img2label_paths([str(sources[0] / "x.jpg")])[0]).parent.with_suffix(".cache")
    return Path(label_files[0]).parent.parent / f"{split}.cache"


def save_cache(path: Path, digest: str, index: SplitIndex) -> bool:
    """Write ``index`` to ``path`` (atomically); False when the folder is not writable."""
    counts = np.array([len(r.labels) for r in index.images], dtype=np.int64)
    crowd_counts = np.array([len(r.crowd) for r in index.images], dtype=np.int64)
    arrays = {
        "version": np.array(CACHE_VERSION),
        "hash": np.array(digest),
        "im_files": np.array([r.im_file for r in index.images], dtype=str),
        "shapes": index.shapes,
        "counts": counts,
        "labels": _concat_rows([r.labels for r in index.images]),
        "crowd_counts": crowd_counts,
        "crowd": _concat_rows([r.crowd for r in index.images]),
        "problems": np.array(index.problems, dtype=str),
        "stats": np.array([index.n_listed, index.n_corrupt, index.n_backgrounds, index.n_dropped, index.n_crowd]),
    }
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except OSError as err:
        LOGGER.debug("scan cache not written to %s: %s", path, err)
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return False
    return True


def load_cache(path: Path, digest: str, split: str, names: list[str]) -> SplitIndex | None:
    """The cached index when ``path`` holds one for ``digest``; None otherwise (or unreadable)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) != CACHE_VERSION or str(z["hash"]) != digest:
                return None
            im_files, shapes, counts = z["im_files"].tolist(), z["shapes"], z["counts"]
            labels = _split_rows(z["labels"], counts)
            crowds = _split_rows(z["crowd"], z["crowd_counts"])
            problems = z["problems"].tolist()
            listed, corrupt, backgrounds, dropped, crowd = (int(v) for v in z["stats"])
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as err:
        if not isinstance(err, FileNotFoundError):
            LOGGER.debug("scan cache %s unusable (%s), rescanning", path, err)
        return None
    images = [
        ImageRecord(f, (int(s[0]), int(s[1])), lab, cr) for f, s, lab, cr in zip(im_files, shapes, labels, crowds)
    ]
    return SplitIndex(split, list(names), images, problems, listed, corrupt, backgrounds, dropped, crowd, path, True)


def _concat_rows(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(arrays).astype(np.float32) if arrays else np.zeros((0, 5), np.float32)


def _split_rows(rows: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    return np.split(rows, np.cumsum(counts)[:-1]) if len(counts) else []
