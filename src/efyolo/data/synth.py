"""The built-in synthetic detection dataset: procedurally drawn shapes on cluttered backgrounds.

``efyolo train`` without ``--data`` trains on this set, so a new user can watch a detector learn
with no download. It has to be hard enough that mAP is not trivially 1.0 (small objects, random
colours, occlusion, clutter, blur, noise) and easy enough that a small model trained for minutes
on a CPU reaches a useful mAP (solid, contrasting fills; no object smaller than ~8 px; distractors
that never look like a class).

Labelling rules (what an annotator would do):

* objects are drawn in order, so a later object (or a thin distractor drawn on top) may cover an
  earlier one; an object keeps its box only if at least ``SynthConfig.min_visible`` of its in-image
  pixels stay visible (per-object masks, exact);
* the box is the tight box of the object's whole silhouette inside the image, occluded parts
  included (amodal) and truncated parts excluded (clipped at the image border).

Each image comes from its own generator ``np.random.default_rng([seed, split_id, index])``, so the
bytes of image ``i`` do not depend on how many images are written, nor on the number of worker
processes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Mapping

import cv2
import numpy as np
import yaml

from efyolo.data.synth_shapes import (
    BACKGROUND_KINDS,
    CLASS_NAMES,
    CLUTTER_KINDS,
    CLUTTER_PAINTERS,
    MAX_ASPECT,
    Strokes,
    background,
    draw_strokes,
    mask_slices,
    object_polygons,
    rasterize,
    solid,
    to_image,
)
from efyolo.errors import EfyoloError

# Bump when the same arguments would produce different bytes; it is part of the cache folder name.
# 2: fewer objects and distractors, less noise and blur, more contrast
# 3: JPEGs at 4:4:4 (4:2:0 halved the colour resolution and smeared small objects' outlines)
SYNTH_VERSION = 3
MIN_IMGSZ = 32
SIZE_LAWS = ("log", "sqrt")
# OpenCV's JPEG sampling-factor values (opencv >= 4.7)
JPEG_SUBSAMPLING = {"4:2:0": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420, "4:4:4": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444}
SPLITS: tuple[tuple[str, int], ...] = (("train", 0), ("val", 1))  # (name, split_id for the seed)
MARKER = ".efyolo-synth.json"  # written first (complete: false) and last (complete: true)
# Occlusion bookkeeping: an (S, S) uint8 "owner" map holds what is on top of each pixel:
# 0 nothing yet, 1 an occluding distractor, 2 + i object i.
_OWNER_CLUTTER = 1
_OWNER_FIRST = 2


@dataclass(frozen=True)
class SynthConfig:
    """Difficulty knobs of the synthetic dataset. The defaults are the built-in dataset.

    Attributes:
        min_size: Shortest object side in pixels (before rotation); smaller objects are not made.
        max_size: Longest object side as a fraction of the image size.
        size_law: How object sides are spread between the two: ``"log"`` (log-uniform: as many
            objects from 8 to 16 px as from 16 to 32) or ``"sqrt"`` (uniform in the square root
            of the side: fewer tiny objects).
        max_objects: Objects per image are uniform in ``[1, max_objects]`` (before occlusion drops).
        empty_prob: Probability of a background-only image (no objects at all).
        min_visible: Fraction of an object's in-image pixels that must stay visible to keep its box.
        max_truncation: At most this fraction of an object's extent may fall outside the image,
            per side.
        clutter: Mean number of distractors per 320x320 image (Poisson; scales with image area).
        clutter_over: Probability that a thin distractor (line, squiggle) is drawn over the
            objects, where it can occlude them, rather than under them.
        noise: Per-image noise standard deviation is uniform in ``[0, noise]`` (grey levels).
        blur_prob: Probability of a Gaussian blur of the whole image.
        blur_sigma: Largest blur sigma in pixels (a blurred image gets ``U(0.4, blur_sigma)``).
        min_contrast: Smallest RGB distance between an object's colour and the mean colour under
            it; up to 8 random colours are tried, else the most distant one is used.
        shading: Largest linear shading of an object's fill, as a fraction of its colour.
        outline_prob: Probability that an object (of at least 12 px) gets a 1-2 px outline.
        backgrounds: Background kinds to choose from (see ``synth_shapes.BACKGROUND_KINDS``).
        jpeg_quality: Inclusive range of the per-image JPEG quality.
        jpeg_subsampling: JPEG chroma subsampling, ``"4:4:4"`` (full-resolution colour) or
            ``"4:2:0"`` (half-resolution colour, most cameras' default, and the dataset's before
            version 3: objects are told from their background by colour more than by brightness,
            and at 4:2:0 an 8-px shape's outline is smeared over 2-px colour blocks).
    """

    min_size: float = 8.0
    max_size: float = 0.5
    size_law: str = "log"
    max_objects: int = 8
    empty_prob: float = 0.05
    min_visible: float = 0.6
    max_truncation: float = 0.25
    clutter: float = 3.0
    clutter_over: float = 0.3
    noise: float = 4.0
    blur_prob: float = 0.15
    blur_sigma: float = 1.2
    min_contrast: float = 140.0
    shading: float = 0.15
    outline_prob: float = 0.3
    backgrounds: tuple[str, ...] = BACKGROUND_KINDS
    jpeg_quality: tuple[int, int] = (75, 95)
    jpeg_subsampling: str = "4:4:4"

    def __post_init__(self) -> None:
        unknown = set(self.backgrounds) - set(BACKGROUND_KINDS)
        if not self.backgrounds or unknown:
            raise EfyoloError(f"SynthConfig.backgrounds: unknown or empty {sorted(unknown)}")
        if not (0.0 <= self.min_visible <= 1.0 and 0.0 <= self.max_truncation < 0.5):
            raise EfyoloError(
                "SynthConfig: min_visible must be in [0, 1], max_truncation in [0, 0.5)"
            )
        if self.size_law not in SIZE_LAWS:
            raise EfyoloError(f"SynthConfig.size_law: {self.size_law!r} is not one of {SIZE_LAWS}")
        if self.min_size < 1 or self.max_size <= 0 or not 0 <= self.max_objects <= 250:
            raise EfyoloError(
                "SynthConfig: min_size >= 1, max_size > 0, 0 <= max_objects <= 250 required"
            )
        knobs = (self.empty_prob, self.clutter_over, self.blur_prob, self.outline_prob)
        if not all(0.0 <= p <= 1.0 for p in knobs):
            raise EfyoloError("SynthConfig: probabilities must be in [0, 1]")
        if min(self.clutter, self.noise, self.blur_sigma, self.min_contrast, self.shading) < 0:
            raise EfyoloError("SynthConfig: clutter, noise, blur_sigma, min_contrast, shading >= 0")
        if self.jpeg_subsampling not in JPEG_SUBSAMPLING:
            raise EfyoloError(f"SynthConfig.jpeg_subsampling: {self.jpeg_subsampling!r} is not one of "
                              f"{tuple(JPEG_SUBSAMPLING)}")
        lo, hi = self.jpeg_quality
        if not 1 <= lo <= hi <= 100:
            raise EfyoloError(f"SynthConfig.jpeg_quality: need 1 <= lo <= hi <= 100, got {lo, hi}")


def as_synth_config(config: "SynthConfig | Mapping[str, Any] | None") -> SynthConfig:
    """``config`` as a :class:`SynthConfig`: the defaults for None, a mapping's keys over them.

    Mappings come from YAML or ``efyolo.train(synth={"config": {...}})`` (and from ``args.yaml``
    of a run, where the dataclass was written as a plain mapping); an unknown key is an error.
    """
    if config is None or isinstance(config, SynthConfig):
        return config or SynthConfig()
    if not isinstance(config, Mapping):
        raise EfyoloError(f"synthetic dataset config: expected a mapping, got {type(config).__name__}")
    known = {f.name for f in dataclasses.fields(SynthConfig)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise EfyoloError(f"synthetic dataset config: unknown key(s) {unknown}; known: {sorted(known)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    try:
        return SynthConfig(**values)
    except (TypeError, ValueError) as e:  # e.g. a string where a number belongs
        raise EfyoloError(f"synthetic dataset config {dict(config)}: {e}") from None


@dataclass(frozen=True)
class ObjectSpec:
    """Where and how big one object is: class id, centre and size in pixels, rotation in radians."""

    cls: int
    cx: float
    cy: float
    w: float
    h: float
    angle: float = 0.0


@dataclass(frozen=True)
class RenderedImage:
    """One synthetic image and its labels."""

    image: np.ndarray  # (S, S, 3) uint8, BGR (the colours are random anyway)
    classes: np.ndarray  # (n,) int64 class ids
    boxes: np.ndarray  # (n, 4) float32 xyxy in pixels (pixel-edge coordinates)


@dataclass(frozen=True)
class _Painted:
    """An object as painted: its in-image mask crop and where that crop lies in the image."""

    cls: int
    mask: np.ndarray  # (h, w) uint8 0/1, in-image part of the silhouette
    rows: slice
    cols: slice


# --------------------------------------------------------------------------------------------
# One image.


def sample_objects(rng: np.random.Generator, size: int, config: SynthConfig) -> list[ObjectSpec]:
    """Draw the objects of one image, ordered for painting (mostly large first).

    Sides are spread between ``min_size`` and ``max_size * size`` by ``config.size_law``
    (log-uniform by default, so that small objects are as common as in real data); aspect ratios
    are log-uniform within the class's limit.
    """
    if config.max_objects == 0 or rng.random() < config.empty_prob:
        return []
    n = int(rng.integers(1, config.max_objects + 1))
    longest = max(config.max_size * size, config.min_size)
    objects, keys = [], []
    for _ in range(n):
        cls = int(rng.integers(len(CLASS_NAMES)))
        side = _sample_side(rng, config.min_size, longest, config.size_law)
        aspect = math.exp(rng.uniform(-1.0, 1.0) * math.log(MAX_ASPECT[cls]))
        w, h = side * math.sqrt(aspect), side / math.sqrt(aspect)
        grow = max(1.0, config.min_size / min(w, h))
        shrink = min(1.0, longest / (max(w, h) * grow))
        w, h = w * grow * shrink, h * grow * shrink
        angle = rng.uniform(0.0, 2.0 * math.pi)
        # Extent of the rotated box; the centre keeps all but max_truncation of it inside.
        c, s = abs(math.cos(angle)), abs(math.sin(angle))
        ex, ey = w * c + h * s, w * s + h * c
        cx = _uniform_centre(rng, size, ex, config.max_truncation)
        cy = _uniform_centre(rng, size, ey, config.max_truncation)
        objects.append(ObjectSpec(cls, cx, cy, w, h, angle))
        # Large objects first (they become the backdrop), with jitter so that small objects are
        # sometimes covered too: log-area plus N(0, 1).
        keys.append(math.log(w * h) + rng.normal())
    order = np.argsort(-np.asarray(keys), kind="stable")
    return [objects[i] for i in order]


def _sample_side(rng: np.random.Generator, lo: float, hi: float, law: str) -> float:
    """One object side in ``[lo, hi]`` pixels, log-uniform or uniform in its square root."""
    if law == "sqrt":
        return float(rng.uniform(math.sqrt(lo), math.sqrt(hi)) ** 2)
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def _uniform_centre(rng: np.random.Generator, size: int, extent: float, trunc: float) -> float:
    margin = (0.5 - trunc) * extent
    if 2 * margin >= size:
        return size / 2.0
    return float(rng.uniform(margin, size - margin))


def _pick_colour(rng: np.random.Generator, under: np.ndarray, min_contrast: float) -> np.ndarray:
    """A random colour at least ``min_contrast`` (RGB distance) from ``under`` (3,), else the best
    of 8 tries."""
    candidates = rng.uniform(0.0, 255.0, (8, 3))
    dist = ((candidates - under) ** 2).sum(axis=1)  # squared RGB distances, (8,)
    ok = np.flatnonzero(dist >= min_contrast**2)
    return candidates[ok[0] if ok.size else int(np.argmax(dist))]


def _paint_object(
    canvas: np.ndarray,
    owner: np.ndarray,
    index: int,
    spec: ObjectSpec,
    rng: np.random.Generator,
    config: SynthConfig,
) -> _Painted | None:
    """Fill object ``index`` into ``canvas`` (S, S, 3) and claim its pixels in ``owner`` (S, S)."""
    size = canvas.shape[0]
    outer, hole = object_polygons(spec.cls, rng)
    pose = (spec.cx, spec.cy, spec.w, spec.h, spec.angle)
    shape = rasterize(to_image(outer, *pose), None if hole is None else to_image(hole, *pose), size)
    crop = shape.mask  # (h, w) uint8, the in-image part of the silhouette
    if crop.size == 0 or cv2.countNonZero(crop) == 0:
        return None
    rows, cols = mask_slices(shape)
    region = canvas[rows, cols]  # view, (h, w, 3)
    under = np.asarray(cv2.mean(region, mask=crop)[:3])
    colour = _pick_colour(rng, under, config.min_contrast)

    # Mild linear shading across the object: colour * (1 + a * g), g in [-1, 1] along direction d.
    a = config.shading * rng.uniform(-1.0, 1.0)
    d = rng.uniform(0.0, 2.0 * math.pi)
    h, w = crop.shape
    c, s = math.cos(d), math.sin(d)
    half = max((abs(c) * w + abs(s) * h) / 2.0, 1.0)
    gx = (np.arange(w, dtype=np.float32) - (w - 1) / 2.0) * np.float32(c * a / half)
    gy = (np.arange(h, dtype=np.float32) - (h - 1) / 2.0) * np.float32(s * a / half)
    g = gx[None, :] + gy[:, None]  # (h, w) float32 in [-|a|, |a|]
    # Channel v of the fill is round(v * (1 + g)): one saturating convert per channel.
    fill = cv2.merge([cv2.convertScaleAbs(g, alpha=float(v), beta=float(v)) for v in colour])
    cv2.copyTo(fill, crop, region)  # in place: region is a view of canvas

    if min(spec.w, spec.h) >= 12 and rng.random() < config.outline_prob:
        # An inner outline (inside the silhouette, so the mask and box stay exact); skipped where
        # it would eat most of a thin shape (a narrow ring), which would then read as an outline.
        thickness = int(rng.integers(1, 3))
        # (Erosion treats outside the mask as inside: no outline along the image border, where
        # the object goes on; rasterize leaves a margin elsewhere.)
        eroded = cv2.erode(crop, np.ones((3, 3), np.uint8), iterations=thickness)
        dark = rng.random() < 0.5
        if 2 * cv2.countNonZero(eroded) >= cv2.countNonZero(crop):
            edge = crop - eroded
            line = colour * 0.35 if dark else colour + (255.0 - colour) * 0.6
            cv2.copyTo(solid(h, w, np.round(line)), edge, region)

    cv2.copyTo(np.full((h, w), _OWNER_FIRST + index, np.uint8), crop, owner[rows, cols])
    return _Painted(spec.cls, crop, rows, cols)


def _paint_clutter(
    canvas: np.ndarray, kind: str, rng: np.random.Generator, owner: np.ndarray | None = None
) -> None:
    """Paint one distractor; if ``owner`` is given, its pixels occlude the objects under it."""
    size = canvas.shape[0]
    shape = CLUTTER_PAINTERS[kind](rng, size)
    colour = rng.uniform(0.0, 255.0, 3)
    if isinstance(shape, Strokes):  # line, squiggle: solid, drawn straight onto the image
        draw_strokes(canvas, shape, tuple(float(v) for v in np.round(colour)))
        if owner is not None:
            draw_strokes(owner, shape, _OWNER_CLUTTER)
        return
    crop = shape.mask
    if crop.size == 0 or cv2.countNonZero(crop) == 0:
        return
    rows, cols = mask_slices(shape)
    region = canvas[rows, cols]  # view, (h, w, 3)
    h, w = crop.shape
    if kind == "blob":  # translucent
        alpha = rng.uniform(0.2, 0.45)
        values = cv2.addWeighted(region, 1.0 - alpha, solid(h, w, np.round(colour)), alpha, 0.0)
    else:  # patch: noise texture around a random colour
        amp = rng.uniform(40.0, 90.0)
        noise = rng.random((h, w, 3), dtype=np.float32) * np.float32(2 * amp)  # U(0, 2 amp)
        values = np.clip(noise + (colour - amp + 0.5).astype(np.float32), 0, 255).astype(np.uint8)
    cv2.copyTo(values, crop, region)  # in place
    if owner is not None:
        cv2.copyTo(np.full((h, w), _OWNER_CLUTTER, np.uint8), crop, owner[rows, cols])


def _visible_boxes(
    owner: np.ndarray, painted: list[_Painted | None], min_visible: float
) -> tuple[np.ndarray, np.ndarray]:
    """Apply the occlusion rule; return ``(classes (n,), boxes (n, 4) xyxy)`` of kept objects."""
    classes, boxes = [], []
    for i, p in enumerate(painted):
        if p is None:
            continue
        visible = cv2.countNonZero((owner[p.rows, p.cols] == _OWNER_FIRST + i).view(np.uint8))
        if visible == 0 or visible < min_visible * cv2.countNonZero(p.mask):
            continue
        x, y, w, h = cv2.boundingRect(p.mask)  # tight box of the nonzero pixels, in the crop
        x0, y0 = p.cols.start + x, p.rows.start + y
        boxes.append((x0, y0, x0 + w, y0 + h))
        classes.append(p.cls)
    return np.asarray(classes, np.int64), np.asarray(boxes, np.float32).reshape(-1, 4)


def draw_objects(
    canvas: np.ndarray,
    objects: list[ObjectSpec],
    rng: np.random.Generator,
    config: SynthConfig,
    over_clutter: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint ``objects`` in order onto ``canvas`` (S, S, 3) uint8, in place, then ``over_clutter``
    thin distractors on top, and label what stays visible.

    Returns:
        ``(classes, boxes)``: ``(n,)`` int64 and ``(n, 4)`` float32 xyxy pixel boxes of the objects
        that keep at least ``config.min_visible`` of their in-image pixels visible.
    """
    if len(objects) > 255 - _OWNER_FIRST:
        raise ValueError(f"at most {255 - _OWNER_FIRST} objects per image")
    owner = np.zeros(canvas.shape[:2], np.uint8)  # (S, S): what is on top of each pixel
    painted = [_paint_object(canvas, owner, i, o, rng, config) for i, o in enumerate(objects)]
    for _ in range(over_clutter):
        _paint_clutter(canvas, ("line", "squiggle")[int(rng.integers(2))], rng, owner)
    return _visible_boxes(owner, painted, config.min_visible)


def _finish(canvas: np.ndarray, rng: np.random.Generator, config: SynthConfig) -> np.ndarray:
    """Per-image blur and additive grey noise."""
    if rng.random() < config.blur_prob:
        canvas = cv2.GaussianBlur(canvas, (0, 0), rng.uniform(0.4, max(config.blur_sigma, 0.4)))
    sigma = rng.uniform(0.0, config.noise)
    if sigma > 0:
        # Grey (same on all channels) uniform noise of standard deviation sigma, done in uint8:
        # random bytes -> signed offsets through a table, split into a positive and a negative
        # part that are added and subtracted with saturation. A quarter of the memory traffic of
        # float noise on a 3-channel image.
        size = canvas.shape[0]
        offsets = np.round((np.arange(256) / 255.0 - 0.5) * sigma * math.sqrt(12.0))
        pos = np.clip(offsets, 0, 255).astype(np.uint8).reshape(256, 1)
        neg = np.clip(-offsets, 0, 255).astype(np.uint8).reshape(256, 1)
        noise = np.frombuffer(rng.bytes(size * size), np.uint8).reshape(size, size)
        # In place, reusing one buffer: fresh full-size arrays cost page faults.
        offset = cv2.cvtColor(cv2.LUT(noise, pos), cv2.COLOR_GRAY2BGR)  # (S, S, 3) uint8
        cv2.add(canvas, offset, dst=canvas)
        cv2.cvtColor(cv2.LUT(noise, neg), cv2.COLOR_GRAY2BGR, dst=offset)
        cv2.subtract(canvas, offset, dst=canvas)
    return canvas


def render_image(
    rng: np.random.Generator, size: int, config: SynthConfig | None = None
) -> RenderedImage:
    """Draw one synthetic image and its labels.

    Args:
        rng: The image's own generator (everything random comes from it).
        size: Image side in pixels (square).
        config: Difficulty knobs; the defaults when None.

    Returns:
        The image (S, S, 3) uint8 and the kept objects' classes and xyxy pixel boxes.
    """
    config = config or SynthConfig()
    canvas = background(rng, size, config.backgrounds)
    n_clutter = int(rng.poisson(config.clutter * (size / 320.0) ** 2))
    kinds = [CLUTTER_KINDS[int(i)] for i in rng.integers(len(CLUTTER_KINDS), size=n_clutter)]
    over = [k in ("line", "squiggle") and rng.random() < config.clutter_over for k in kinds]
    for kind, on_top in zip(kinds, over):
        if not on_top:
            _paint_clutter(canvas, kind, rng)
    objects = sample_objects(rng, size, config)
    classes, boxes = draw_objects(canvas, objects, rng, config, over_clutter=sum(over))
    return RenderedImage(_finish(canvas, rng, config), classes, boxes)


def label_text(classes: np.ndarray, boxes: np.ndarray, size: int) -> str:
    """YOLO label rows ``cls xc yc w h`` (normalised, 6 decimals) for xyxy pixel ``boxes``."""
    rows = []
    for c, (x0, y0, x1, y1) in zip(classes, boxes / size):
        rows.append(
            f"{int(c)} {(x0 + x1) / 2:.6f} {(y0 + y1) / 2:.6f} {x1 - x0:.6f} {y1 - y0:.6f}\n"
        )
    return "".join(rows)


# --------------------------------------------------------------------------------------------
# A dataset on disk.


def _check_params(n_train: int, n_val: int, imgsz: int, seed: int, workers: int | None) -> None:
    def is_int(v: object) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    for name, flag, value, low in (
        ("n_train", "--train", n_train, 0),
        ("n_val", "--val", n_val, 0),
        ("imgsz", "--imgsz", imgsz, MIN_IMGSZ),
        ("seed", "--seed", seed, 0),
    ):
        if not is_int(value) or value < low:
            raise EfyoloError(
                f"synthetic dataset: {name} ({flag}) must be an integer >= {low}, got {value!r}"
            )
    if n_train + n_val == 0:
        raise EfyoloError("synthetic dataset: n_train + n_val (--train, --val) must be at least 1")
    if workers is not None and (not is_int(workers) or workers < 0):
        raise EfyoloError(f"synthetic dataset: workers must be an integer >= 0, got {workers!r}")


def _params(n_train: int, n_val: int, imgsz: int, seed: int, config: SynthConfig) -> dict:
    return {
        "generator": "efyolo synth",
        "version": SYNTH_VERSION,
        "n_train": int(n_train),
        "n_val": int(n_val),
        "imgsz": int(imgsz),
        "seed": int(seed),
        "config": dataclasses.asdict(config),
    }


def _read_marker(root: Path) -> dict | None:
    try:
        return json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _write_marker(root: Path, params: dict, complete: bool) -> None:
    (root / MARKER).write_text(json.dumps({**params, "complete": complete}, indent=1) + "\n")


def _write_sample(task: tuple) -> None:
    """Render and write image ``index`` of a split (a top-level function, so a pool can run it)."""
    root, split, split_id, index, size, seed, config = task
    rng = np.random.default_rng([seed, split_id, index])
    sample = render_image(rng, size, config)
    quality = int(rng.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1))
    ok, jpg = cv2.imencode(".jpg", sample.image, [
        cv2.IMWRITE_JPEG_QUALITY, quality,
        cv2.IMWRITE_JPEG_SAMPLING_FACTOR, JPEG_SUBSAMPLING[config.jpeg_subsampling],
    ])
    if not ok:
        raise RuntimeError("cv2.imencode failed")
    stem = f"{index:06d}"
    Path(root, "images", split, stem + ".jpg").write_bytes(jpg.tobytes())
    Path(root, "labels", split, stem + ".txt").write_text(
        label_text(sample.classes, sample.boxes, size)
    )


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one process per core already; OpenCV's own threads would oversubscribe


def _run_tasks(tasks: list[tuple], workers: int | None) -> None:
    if workers is None:
        # A spawned worker imports the package (torch included: seconds on a small machine),
        # while one core writes 100-300 images per second: a pool pays off for large sets only.
        workers = min(os.cpu_count() or 1, 8) if len(tasks) >= 4000 else 1
    workers = min(workers, len(tasks))
    if workers <= 1:
        for task in tasks:
            _write_sample(task)
        return
    # spawn: safe even when the caller has already started threads (torch, OpenMP).
    with ProcessPoolExecutor(
        workers, mp_context=get_context("spawn"), initializer=_init_worker
    ) as pool:
        for _ in pool.map(_write_sample, tasks, chunksize=max(1, len(tasks) // (workers * 8))):
            pass


def _write_dataset(
    work: Path, root: Path, params: dict, config: SynthConfig, workers: int | None
) -> Path:
    """Write the dataset into the empty folder ``work``; its YAML names ``root`` as ``path``."""
    _write_marker(work, params, complete=False)
    tasks = []
    for split, split_id in SPLITS:
        (work / "images" / split).mkdir(parents=True)
        (work / "labels" / split).mkdir(parents=True)
        n = params["n_" + split]
        tasks += [
            (str(work), split, split_id, i, params["imgsz"], params["seed"], config)
            for i in range(n)
        ]
    _run_tasks(tasks, workers)
    data = {
        "path": str(root),
        "train": "images/train",
        "val": "images/val",
        "nc": len(CLASS_NAMES),
        "names": list(CLASS_NAMES),
    }
    header = (
        f"# efyolo synthetic shapes v{SYNTH_VERSION}: "
        f"{params['n_train']} train + {params['n_val']} val "
        f"images, imgsz {params['imgsz']}, seed {params['seed']}\n"
    )
    (work / "data.yaml").write_text(header + yaml.safe_dump(data, sort_keys=False))
    _write_marker(work, params, complete=True)
    return root / "data.yaml"


def _prepare_out_dir(out: Path) -> None:
    """Make ``out`` an empty folder; refuse a non-empty one unless an earlier synth run made it."""
    if out.exists() and not out.is_dir():
        raise EfyoloError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if _read_marker(out) is None:
            raise EfyoloError(
                f"{out}: directory is not empty and was not written by efyolo synth; "
                "choose a new or empty folder"
            )
        # Ours: replace it (only the things we write live there).
        for name in ("images", "labels"):
            shutil.rmtree(out / name, ignore_errors=True)
        for name in ("data.yaml", MARKER):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def generate_dataset(
    out_dir: str | os.PathLike,
    n_train: int = 800,
    n_val: int = 200,
    imgsz: int = 320,
    seed: int = 0,
    workers: int | None = None,
    config: SynthConfig | Mapping[str, Any] | None = None,
) -> Path:
    """Write the synthetic dataset in YOLO format.

    Layout: ``images/{train,val}/NNNNNN.jpg``, ``labels/{train,val}/NNNNNN.txt`` (rows
    ``cls xc yc w h``, normalised, 6 decimals; empty for background-only images) and ``data.yaml``
    (``path`` absolute, ``train``, ``val``, ``nc``, ``names``). The same arguments give the same
    bytes, whatever ``workers`` is.

    Args:
        out_dir: Target folder: new, empty, or an earlier output of this function (replaced).
        n_train: Number of training images.
        n_val: Number of validation images.
        imgsz: Side of the square images in pixels (>= 32).
        seed: Dataset seed (>= 0).
        workers: Worker processes; 0 or 1 runs inline; None runs inline below 4000 images and
            uses one process per CPU (at most 8) above.
        config: Difficulty knobs (a SynthConfig or a mapping of its fields); the defaults when None.

    Returns:
        The path of ``data.yaml``.

    Raises:
        EfyoloError: Bad arguments, or ``out_dir`` holds something else.
    """
    _check_params(n_train, n_val, imgsz, seed, workers)
    config = as_synth_config(config)
    out = Path(out_dir).expanduser().resolve()
    _prepare_out_dir(out)
    return _write_dataset(out, out, _params(n_train, n_val, imgsz, seed, config), config, workers)


def default_cache_dir() -> Path:
    """``$EFYOLO_CACHE`` if set, else ``~/.cache/efyolo``."""
    return Path(os.environ.get("EFYOLO_CACHE") or Path.home() / ".cache" / "efyolo").expanduser()


def dataset_name(
    n_train: int = 800,
    n_val: int = 200,
    imgsz: int = 320,
    seed: int = 0,
    config: SynthConfig | None = None,
) -> str:
    """Cache folder name for a parameter set, e.g. ``synth-v3-800-200-320-s0``."""
    name = f"synth-v{SYNTH_VERSION}-{n_train}-{n_val}-{imgsz}-s{seed}"
    if config is not None and config != SynthConfig():
        digest = hashlib.sha1(
            json.dumps(dataclasses.asdict(config), sort_keys=True).encode()
        ).hexdigest()
        name += f"-c{digest[:8]}"
    return name


def default_dataset(
    cache_dir: str | os.PathLike | None = None,
    n_train: int = 800,
    n_val: int = 200,
    imgsz: int = 320,
    seed: int = 0,
    workers: int | None = None,
    config: SynthConfig | Mapping[str, Any] | None = None,
) -> Path:
    """The synthetic dataset in the cache, generated on first use and reused afterwards.

    It is generated into a temporary sibling folder and moved into place with one ``os.replace``,
    so an interrupted run never leaves a half-written dataset under the final name; the marker
    file (written last, ``complete: true``) proves completeness. Processes that race here each
    generate and the first rename wins; distributed training should still call this on rank 0
    first and let the other ranks wait. Parameters as in :func:`generate_dataset`.

    Args:
        cache_dir: Cache root; ``$EFYOLO_CACHE`` or ``~/.cache/efyolo`` when None.

    Returns:
        The path of the cached ``data.yaml``.
    """
    _check_params(n_train, n_val, imgsz, seed, workers)
    config = as_synth_config(config)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cache = cache.resolve()
    final = cache / dataset_name(n_train, n_val, imgsz, seed, config)
    params = _params(n_train, n_val, imgsz, seed, config)
    if _is_complete(final, params):
        return final / "data.yaml"

    cache.mkdir(parents=True, exist_ok=True)
    _remove_stale_work_dirs(cache, final.name)
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=cache))
    try:
        _write_dataset(work, final, params, config, workers)
        if final.exists() and not _is_complete(final, params):
            _discard(final)  # a damaged leftover (final is only ever made by the rename below)
        try:
            os.replace(work, final)  # atomic; fails if another process put a dataset there first
        except OSError:
            if not _is_complete(final, params):
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final / "data.yaml"


def _discard(path: Path) -> None:
    """Delete a folder, first moving it out of the way in one atomic step."""
    trash = path.with_name(f".{path.name}.old-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        os.replace(path, trash)
    except FileNotFoundError:  # someone else discarded it
        return
    shutil.rmtree(trash, ignore_errors=True)


def _remove_stale_work_dirs(cache: Path, name: str, max_age_s: float = 86400.0) -> None:
    """Delete work folders of ``name`` left behind by killed runs (older than a day)."""
    now = time.time()
    for path in cache.glob(f".{name}.*-*"):
        try:
            if now - path.stat().st_mtime > max_age_s:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


def _is_complete(root: Path, params: dict) -> bool:
    marker = _read_marker(root)
    expected = json.loads(json.dumps(params))  # as read back from JSON: tuples become lists
    return marker is not None and marker.pop("complete", False) is True and marker == expected
