"""A scanned split: its usable images with sizes and checked labels (:class:`SplitIndex`), and the
scan cache that stores it.

The cache is a numpy ``.npz`` read without pickle, next to the labels (``labels/val.cache`` for
``labels/val/``; next to the ``.txt`` list or the COCO JSON for those sources). It is reused only
when the hash of every image and label file's path, size and mtime (plus the number of classes and
:data:`CACHE_VERSION`) matches; otherwise the split is rescanned and the cache rewritten. A
folder that cannot be written simply gets no cache.
"""

from __future__ import annotations
import contextlib
import hashlib
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence
import numpy as np
from efyolo.utils.log import LOGGER




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


def log_problems(problems: Sequence[str], max_warnings: int = 20) -> None:
    """Log the first ``max_warnings`` problems as warnings, then one line counting the rest."""
    for msg in problems[:max_warnings]:
        LOGGER.warning(msg)
    if len(problems) > max_warnings:
        LOGGER.warning("... and %d more problems", len(problems) - max_warnings)


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
