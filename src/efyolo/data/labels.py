"""YOLO label files: where they live, how to read them, and which rows to refuse.

A label file sits where YOLOv5 looks for it: the image path with its last ``/images/`` component
replaced by ``/labels/`` and its suffix by ``.txt``. Each row is ``class xc yc w h`` with the box
centre and size normalised by the image width and height. A row of ``class x1 y1 x2 y2 ...`` (a
polygon of at least 3 points, YOLOv5's segment format) is turned into its bounding box. A missing
file means a background image.

Problems are reported, never fatal: each one becomes a message ``"<file>:<line>: <reason>"``, the
row is dropped (or clipped, when a coordinate is outside [0, 1] by at most ``TOLERANCE``) and
counted. Refused rows: wrong column count, a value that is not a finite number, a class id that
is not an integer in ``[0, nc)``, a box outside the image by more than ``TOLERANCE``, a box of
zero width or height, and an exact repeat of an earlier row of the same file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

TOLERANCE = 0.01  # how far (in image fractions) a box may stick out before it is refused
ROUNDING = 1e-5  # sticking out by less is decimal rounding (6-decimal files): clipped silently
_NUMBERS = set("0123456789.+-eE")


@dataclass
class LabelResult:
    """The rows kept from one label file and what was wrong with the others.

    Attributes:
        labels: ``[n, 5]`` float32 rows ``(cls, xc, yc, w, h)``, normalised.
        problems: one message per refused or modified row, with file and line.
        dropped: number of refused rows.
        missing: the label file does not exist.
    """

    labels: np.ndarray
    problems: list[str] = field(default_factory=list)
    dropped: int = 0
    missing: bool = False


def img2label_paths(img_paths: Sequence[str]) -> list[str]:
    """Label file of each image: last ``/images/`` -> ``/labels/``, suffix -> ``.txt``."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    out = []
    for p in img_paths:
        head, sep, tail = p.rpartition(sa)
        p = head + sb + tail if sep else p
        out.append(os.path.splitext(p)[0] + ".txt")
    return out


def read_label_file(path: str, nc: int) -> LabelResult:
    """Parse and check one label file (see the module docstring for the rules).

    Args:
        path: the ``.txt`` file; missing means "no objects". Read as ``utf-8-sig``: a byte-order
            mark (U+FEFF, Windows editors write one) would otherwise stick to the first class id
            ("not a number") and lose the first box.
        nc: number of classes, for the class-id check.
    """
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except FileNotFoundError:
        return LabelResult(np.zeros((0, 5), np.float32), missing=True)
    except (OSError, UnicodeDecodeError) as err:
        return LabelResult(np.zeros((0, 5), np.float32), [f"{path}: unreadable label file ({err})"])
    rows, linenos, refused = [], [], []
    for lineno, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        row, reason = _parse_row(fields)
        if reason:
            refused.append((lineno, reason))
        else:
            rows.append(row)
            linenos.append(lineno)
    labels, keep, checked = _check_rows(np.array(rows, dtype=np.float64).reshape(-1, 5), nc)
    messages = sorted(refused + [(linenos[i], msg) for i, msg in checked])
    dropped = len(refused) + int(len(rows) - keep.sum())
    return LabelResult(labels, [f"{path}:{n}: {msg}" for n, msg in messages], dropped)


def _parse_row(fields: list[str]) -> tuple[list[float] | None, str | None]:
    """One text row -> ``[cls, xc, yc, w, h]`` or a reason to refuse it."""
    n = len(fields)
    if n != 5 and (n < 7 or n % 2 == 0):
        return None, f"expected 5 values 'class xc yc w h' (or a polygon 'class x1 y1 x2 y2 x3 y3 ...'), got {n}"
    try:
        values = [float(v) for v in fields]
    except ValueError:
        bad = next(v for v in fields if not _is_float(v))
        return None, f"not a number: {bad!r}"
    if n == 5:
        return values, None
    xs, ys = np.array(values[1::2]), np.array(values[2::2])  # polygon -> its bounding box
    x1, x2, y1, y2 = xs.min(), xs.max(), ys.min(), ys.max()
    return [values[0], (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], None


def _is_float(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


def clean_labels(rows: np.ndarray, where: Sequence[str], nc: int) -> tuple[np.ndarray, list[str], int]:
    """Check parsed rows; drop the bad ones, clip the ones slightly outside the image.

    Args:
        rows: ``[n, 5]`` ``(cls, xc, yc, w, h)``, normalised.
        where: ``n`` locations for the messages (``"file:line"`` or ``"ann.json: annotation 7"``).
        nc: number of classes.

    Returns:
        ``(labels [m, 5] float32, problems, dropped)``: the kept rows in input order, one message
        per dropped or clipped row (in row order), and the number of dropped rows.
    """
    labels, keep, messages = _check_rows(np.asarray(rows, dtype=np.float64).reshape(-1, 5), nc)
    return labels, [f"{where[i]}: {msg}" for i, msg in messages], int(len(keep) - keep.sum())


def _check_rows(rows: np.ndarray, nc: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """``[n, 5]`` float64 rows -> (kept rows as float32, ``[n]`` keep mask, sorted (row, message))."""
    finite = np.isfinite(rows).all(axis=1)
    r = np.where(finite[:, None], rows, 0.0)
    cls, w, h = r[:, 0], r[:, 3], r[:, 4]
    bad_cls = finite & ((cls != np.floor(cls)) | (cls < 0) | (cls >= nc))
    zero = finite & ~bad_cls & ((w <= 0) | (h <= 0))
    box = np.stack([r[:, 1] - w / 2, r[:, 2] - h / 2, r[:, 1] + w / 2, r[:, 2] + h / 2], axis=1)
    valid = finite & ~bad_cls & ~zero
    far = valid & ((box < -TOLERANCE) | (box > 1 + TOLERANCE)).any(axis=1)
    outside = valid & ~far & ((box < 0) | (box > 1)).any(axis=1)
    near = outside & ((box < -ROUNDING) | (box > 1 + ROUNDING)).any(axis=1)  # reported
    clipped = box.clip(0, 1)
    out = rows.copy()
    out[outside, 1:] = np.stack([
        (clipped[:, 0] + clipped[:, 2]) / 2, (clipped[:, 1] + clipped[:, 3]) / 2,
        clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1],
    ], axis=1)[outside]
    zero_after = outside & ((out[:, 3] <= 0) | (out[:, 4] <= 0))

    messages: list[tuple[int, str]] = []
    for i in np.flatnonzero(~finite):
        messages.append((i, "not a finite number"))
    for i in np.flatnonzero(bad_cls):
        messages.append((i, f"class id {cls[i]:g} is not an integer in [0, {nc})"))
    for i in np.flatnonzero(zero):
        messages.append((i, f"zero-area box (w={w[i]:g}, h={h[i]:g})"))
    for i in np.flatnonzero(far):
        messages.append((i, f"box {_fmt(box[i])} (x1 y1 x2 y2) is outside the image by more than {TOLERANCE:g}"))
    for i in np.flatnonzero(zero_after):
        messages.append((i, "zero-area box after clipping to the image"))
    for i in np.flatnonzero(near & ~zero_after):
        messages.append((i, f"box {_fmt(box[i])} slightly outside the image, clipped"))
    keep = valid & ~far & ~zero_after

    kept = np.flatnonzero(keep)
    if len(kept) > 1:  # exact repeats of an earlier kept row
        _, first = np.unique(out[kept], axis=0, return_index=True)
        dup = np.ones(len(kept), dtype=bool)
        dup[first] = False
        for i in kept[dup]:
            messages.append((i, "duplicate of an earlier row"))
        keep[kept[dup]] = False
    messages.sort(key=lambda m: m[0])
    return out[keep].astype(np.float32), keep, [(int(i), msg) for i, msg in messages]


def _fmt(values: np.ndarray) -> str:
    return "[" + " ".join(f"{v:.4g}" for v in values) + "]"
