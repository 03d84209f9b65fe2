"""One validation of the options every command shares: image size, thresholds, counts.

``efyolo val``, ``efyolo detect``, ``efyolo train`` and their Python functions take the same
kinds of options; each is checked here once, before any work (no run folder, no dataset scan),
and a bad value raises one :class:`EfyoloError` that names the option and the value.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from efyolo.errors import EfyoloError

# Larger inputs are almost always a typo (100000 px asks OpenCV for a 30 GB image per sample);
# 8192 covers 8K frames and large aerial tiles.
MAX_IMGSZ = 8192
DEFAULT_IMGSZ = 640  # when neither the user nor the weights say (YOLOv5's default)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def check_range(name: str, value: Any, lo: float, hi: float = math.inf, *, hi_open: bool = False) -> float:
    """``value`` as a float, finite and within ``[lo, hi]`` (``[lo, hi)`` with ``hi_open``)."""
    if not _is_number(value) or not math.isfinite(float(value)):
        raise EfyoloError(f"{name} must be a finite number, got {value!r}")
    v = float(value)
    if v < lo or v > hi or (hi_open and v == hi):
        upper = "" if hi == math.inf else (f", {hi:g})" if hi_open else f", {hi:g}]")
        rule = f"in [{lo:g}{upper}" if upper else f"at least {lo:g}"
        raise EfyoloError(f"{name} must be {rule}, got {value!r}")
    return v


def check_positive(name: str, value: Any) -> float:
    """A finite number above zero."""
    if not _is_number(value) or not math.isfinite(float(value)) or float(value) <= 0:
        raise EfyoloError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def check_int(name: str, value: Any, minimum: int) -> int:
    """An integer of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise EfyoloError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise EfyoloError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def check_inference_options(
    conf: float | None = None,
    iou: float | None = None,
    batch: int | None = None,
    max_det: int | None = None,
    workers: int | None = None,
) -> None:
    """The options of ``val`` and ``detect`` (those given): thresholds in [0, 1], counts in range."""
    if conf is not None:
        check_range("conf", conf, 0.0, 1.0)
    if iou is not None:
        check_range("iou", iou, 0.0, 1.0)
    if batch is not None:
        check_int("batch", batch, 1)
    if max_det is not None:
        check_int("max_det", max_det, 1)
    if workers is not None:
        check_int("workers", workers, 0)


def check_imgsz(imgsz: int | Sequence[int], stride: int) -> tuple[int, int]:
    """``imgsz`` (one int or ``(h, w)``) -> ``(h, w)``, each a positive multiple of ``stride`` up to
    :data:`MAX_IMGSZ`.

    Raises:
        EfyoloError: a side is not a positive multiple of the stride (nearest valid sizes named), or
            is larger than :data:`MAX_IMGSZ`.
    """
    sides = [imgsz] * 2 if _is_number(imgsz) else list(imgsz)
    if len(sides) == 1:
        sides = sides * 2
    if len(sides) != 2 or not all(_is_number(s) for s in sides):
        raise EfyoloError(f"imgsz {imgsz}: expected one size or (height, width)")
    for s in sides:
        if not math.isfinite(float(s)) or int(s) != s or s <= 0 or int(s) % stride:
            finite = s if math.isfinite(float(s)) else stride
            lo = max(stride, int(finite) // stride * stride)
            hi = max(stride, math.ceil(finite / stride) * stride)
            hint = f"{lo}" if lo == hi else f"{lo} or {hi}"
            raise EfyoloError(f"imgsz {s} is not a positive multiple of the model stride {stride} (try {hint})")
        if s > MAX_IMGSZ:
            raise EfyoloError(f"imgsz {s} is larger than the supported maximum {MAX_IMGSZ} pixels")
    return int(sides[0]), int(sides[1])
