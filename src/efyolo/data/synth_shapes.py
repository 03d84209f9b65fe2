"""Painters for the synthetic dataset: object shapes, distractor clutter and backgrounds.

Everything here is a pure function of its arguments and a ``numpy.random.Generator``; nothing is
drawn from global random state, so an image is a function of its generator's seed alone.

Geometry conventions: pixel ``(x, y)`` covers the square ``[x, x+1) x [y, y+1)``. An object is
a polygon (and an optional hole) in a unit frame whose tight box is ``[-1, 1]^2``, scaled to
``w x h``, rotated by ``angle`` (radians, counter-clockwise on screen) and centred at ``(cx, cy)``.
A rasterised shape is a :class:`Mask`: a 0/1 ``uint8`` array over the shape's bounding box
clipped to the image, plus that box's top-left pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import cv2
import numpy as np

# The object classes, in class-id order. Every class is a distinct silhouette; colour is random and
# carries no class information, so a detector has to learn shape.
CLASS_NAMES: tuple[str, ...] = ("ellipse", "rectangle", "triangle", "star", "cross", "ring")

# Largest aspect ratio (long side / short side, before rotation) per class. Ellipse and ring stay
# round-ish so that they do not turn into sticks; rectangles and triangles may be long and thin.
MAX_ASPECT: tuple[float, ...] = (1.6, 4.0, 3.0, 1.5, 2.0, 1.5)

BACKGROUND_KINDS: tuple[str, ...] = (
    "flat",
    "linear",
    "radial",
    "noise",
    "waves",
    "checker",
    "grain",
)

# cv2.fillPoly fixed-point precision: vertices are given in 1/16 pixel.
_SHIFT = 4


@dataclass(frozen=True)
class Mask:
    """A binary shape over its own bounding box: ``mask[y - y0, x - x0]`` is 1 inside the shape."""

    mask: np.ndarray  # (h, w) uint8 in {0, 1}
    x0: int
    y0: int


# --------------------------------------------------------------------------------------------
# Object silhouettes in the unit frame: one outer polygon whose tight box is [-1, 1]^2 and an
# optional hole, each an (N, 2) float array.


def _regular(n: int, phase: float = 0.0) -> np.ndarray:
    t = phase + np.arange(n) * (2.0 * np.pi / n)
    return np.stack([np.cos(t), np.sin(t)], axis=1)


_CIRCLE = _regular(64)  # a constant table, read-only use
_SQUARE = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
Silhouette = tuple[np.ndarray, Optional[np.ndarray]]  # (outer, hole)


def _ellipse(rng: np.random.Generator) -> Silhouette:
    return _CIRCLE, None


def _rectangle(rng: np.random.Generator) -> Silhouette:
    return _SQUARE, None


def _triangle(rng: np.random.Generator) -> Silhouette:
    # Apex anywhere along the top edge: right, isosceles and obtuse-looking triangles.
    apex = rng.uniform(-1.0, 1.0)
    return np.array([[apex, -1.0], [1.0, 1.0], [-1.0, 1.0]]), None


def _star(rng: np.random.Generator) -> Silhouette:
    points = int(rng.integers(5, 7))  # 5- or 6-pointed
    inner = rng.uniform(0.38, 0.55)
    star = _regular(2 * points, phase=rng.uniform(0.0, np.pi))
    star[1::2] *= inner
    lo, hi = star.min(axis=0), star.max(axis=0)
    return (star - (lo + hi) / 2) * (2.0 / (hi - lo)), None  # tight box -> [-1, 1]^2


def _cross(rng: np.random.Generator) -> Silhouette:
    # A plus sign; arm half-thickness a and b (fractions of the half-extent) differ a little.
    a, b = rng.uniform(0.25, 0.45, size=2)
    pts = [(-a, -1), (a, -1), (a, -b), (1, -b), (1, b), (a, b),
           (a, 1), (-a, 1), (-a, b), (-1, b), (-1, -b), (-a, -b)]  # fmt: skip
    return np.array(pts), None


def _ring(rng: np.random.Generator) -> Silhouette:
    return _CIRCLE, _CIRCLE * rng.uniform(0.45, 0.7)  # hole radius / outer radius


_SILHOUETTES: tuple[Callable[[np.random.Generator], Silhouette], ...] = (
    _ellipse, _rectangle, _triangle, _star, _cross, _ring,
)  # fmt: skip


def object_polygons(cls: int, rng: np.random.Generator) -> Silhouette:
    """Unit-frame polygons of one instance of class ``cls`` (its parameters drawn from ``rng``).

    Returns:
        ``(outer, hole)``: ``(N, 2)`` arrays (``hole`` may be None); the outer polygon's tight box
        is ``[-1, 1]^2``.
    """
    return _SILHOUETTES[cls](rng)


# --------------------------------------------------------------------------------------------
# Rasterisation.


def to_image(
    poly: np.ndarray, cx: float, cy: float, w: float, h: float, angle: float
) -> np.ndarray:
    """Unit-frame ``(N, 2)`` polygon -> image coordinates: scale ``[-1, 1]^2`` to ``w x h``,
    rotate by ``angle`` (counter-clockwise on screen), centre at ``(cx, cy)``."""
    c, s = math.cos(angle), math.sin(angle)
    # Row vectors: [x', y'] = [x, y] @ m + [cx, cy], with x' = cx + c*x*w/2 + s*y*h/2 and
    # y' = cy - s*x*w/2 + c*y*h/2 (image y points down).
    m = np.array([[c * w / 2, -s * w / 2], [s * h / 2, c * h / 2]])
    return poly @ m + (cx, cy)


def _fixed(poly: np.ndarray, x0: int, y0: int) -> np.ndarray:
    # cv2 samples pixel (i, j) at integer coordinates; shift by -0.5 to sample pixel centres.
    return np.round((poly - (x0 + 0.5, y0 + 0.5)) * (1 << _SHIFT)).astype(np.int32)


def rasterize(outer: np.ndarray, hole: np.ndarray | None, size: int) -> Mask:
    """Fill an image-coordinate polygon (minus ``hole``) into a mask over its bounding box (plus
    a pixel), clipped to a ``size x size`` image (the mask may be empty: a 0 in its shape).

    A pixel is inside when its centre ``(x + 0.5, y + 0.5)`` is (OpenCV's fill rule, up to 1/16 px).
    """
    # One pixel of margin: inside the image, the shape never touches the mask's edge (so that
    # erosion, which treats outside the mask as inside, still finds its outline there).
    lo, hi = outer.min(axis=0), outer.max(axis=0)
    x0, y0 = max(math.floor(lo[0]) - 1, 0), max(math.floor(lo[1]) - 1, 0)
    x1, y1 = min(math.ceil(hi[0]) + 2, size), min(math.ceil(hi[1]) + 2, size)
    mask = np.zeros((max(y1 - y0, 0), max(x1 - x0, 0)), np.uint8)
    if mask.size:
        cv2.fillPoly(mask, [_fixed(outer, x0, y0)], 1, lineType=cv2.LINE_8, shift=_SHIFT)
        if hole is not None:
            cv2.fillPoly(mask, [_fixed(hole, x0, y0)], 0, lineType=cv2.LINE_8, shift=_SHIFT)
    return Mask(mask, x0, y0)


def mask_slices(m: Mask) -> tuple[slice, slice]:
    """The image rows and columns that ``m.mask`` covers."""
    h, w = m.mask.shape
    return slice(m.y0, m.y0 + h), slice(m.x0, m.x0 + w)


@dataclass(frozen=True)
class Strokes:
    """Open polylines in image coordinates: ``points`` (M, 2) cut into lines at ``breaks``
    (indices, as for ``np.split``), drawn ``thickness`` pixels wide."""

    points: np.ndarray
    breaks: tuple[int, ...]
    thickness: int


def draw_strokes(image: np.ndarray, strokes: Strokes, value: float | tuple[float, ...]) -> None:
    """Draw ``strokes`` into ``image`` (in place) with a colour or a label value, hard-edged."""
    lines = np.split(_fixed(strokes.points, 0, 0), strokes.breaks)
    cv2.polylines(image, lines, False, value, strokes.thickness, cv2.LINE_8, _SHIFT)


# --------------------------------------------------------------------------------------------
# Distractors: things that are not objects. They are thin (lines, squiggles), translucent
# (blobs) or textured (noise patches), so none of them is a solid filled shape like a class.


_WOBBLE_K = np.array([2.0, 3.0, 9.0])  # harmonics of a blob's outline
_WOBBLE_AMP = np.array([0.2, 0.15, 0.05])  # their largest amplitudes
_WOBBLE_T = np.arange(40) * (2.0 * np.pi / 40)  # 40 outline points
_WOBBLE_CIRCLE = _regular(40)


def _wobbly_polygon(rng: np.random.Generator, cx: float, cy: float, r: float) -> np.ndarray:
    """An irregular closed outline: a circle whose radius wobbles with a few random harmonics.

    Low harmonics make it lumpy, a weak high one makes the edge irregular; there are no 5-6
    lobes, which would look like a star.
    """
    amp = rng.uniform(0.3, 1.0, 3) * _WOBBLE_AMP
    phase = rng.uniform(0.0, 2.0 * np.pi, 3)
    radius = 1.0 + amp @ np.sin(_WOBBLE_K[:, None] * _WOBBLE_T + phase[:, None])  # (40,)
    scale = np.array([r, r * rng.uniform(0.5, 1.0)])  # squashed vertically
    return (cx, cy) + radius[:, None] * _WOBBLE_CIRCLE * scale


def line_clutter(rng: np.random.Generator, size: int) -> Strokes:
    """A random 2-4 point polyline, 1-3 px thick, crossing a good part of the image."""
    n = int(rng.integers(2, 5))
    steps = rng.normal(0.0, size * 0.25, (n, 2))
    steps[0] = rng.uniform(0, size, 2)  # the start point
    return Strokes(np.cumsum(steps, axis=0), (), thickness=int(rng.integers(1, 4)))


def squiggle_clutter(rng: np.random.Generator, size: int) -> Strokes:
    """A text-like row of small scribbled glyphs (each a 2-4 point stroke), 1 px thick."""
    cell = rng.uniform(4.0, 9.0)
    n = int(rng.integers(3, 10))
    x, y = rng.uniform(0, size - cell * n * 0.8), rng.uniform(0, size - cell)
    k = rng.integers(2, 5, n)  # points per glyph
    pts = rng.uniform(0.0, 1.0, (int(k.sum()), 2)) * (cell * 0.7, cell)
    pts[:, 0] += x + np.repeat(np.arange(n), k) * (cell * 0.8)  # glyph i sits in cell i
    pts[:, 1] += y
    return Strokes(pts, tuple(np.cumsum(k)[:-1].tolist()), thickness=1)


def blob_clutter(rng: np.random.Generator, size: int) -> Mask:
    """An irregular blob (to be painted translucent)."""
    r = rng.uniform(0.03, 0.12) * size
    return rasterize(_wobbly_polygon(rng, *rng.uniform(0, size, 2), r), None, size)


# The distractor kinds, drawn with equal probability. "patch" reuses the blob outline and is
# painted with a noise texture instead of a translucent colour.
CLUTTER_KINDS: tuple[str, ...] = ("line", "squiggle", "blob", "patch")
CLUTTER_PAINTERS: dict[str, Callable[[np.random.Generator, int], Strokes | Mask]] = {
    "line": line_clutter,
    "squiggle": squiggle_clutter,
    "blob": blob_clutter,
    "patch": blob_clutter,
}


# --------------------------------------------------------------------------------------------
# Backgrounds: a mixing field t (uint8 levels 0..255 over the image) picks between two colours.
# The fields are built from separable 1-D pieces and OpenCV conversions, because full-image
# float maths would dominate the cost of an image.


def solid(h: int, w: int, colour: np.ndarray) -> np.ndarray:
    """A contiguous ``(h, w, 3)`` uint8 image of one colour (fast: copies whole rows)."""
    row = np.tile(np.asarray(colour, np.uint8), w)  # (3w,)
    return np.broadcast_to(row, (h, 3 * w)).reshape(h, w, 3).copy()


def _levels(field: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map a float field from ``[lo, hi]`` to uint8 levels 0..255 (rounded, saturated)."""
    scale = 255.0 / max(hi - lo, 1e-6)
    return cv2.convertScaleAbs(field, alpha=scale, beta=-lo * scale)


def _value_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth random field: a ``(cells+1)^2`` grid of uniforms in [0, 1], bicubically upsampled."""
    grid = rng.random((cells + 1, cells + 1), dtype=np.float32)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)  # (S, S), may overshoot


def _smooth_levels(kind: str, rng: np.random.Generator, n: int) -> np.ndarray:
    """An ``(n, n)`` uint8 field of one of the smooth kinds (sampled coarsely, then upsampled)."""
    r = (np.arange(n, dtype=np.float32) + 0.5) / n  # sample centres in (0, 1)
    if kind == "linear":
        a = rng.uniform(0, 2 * np.pi)
        c, s = math.cos(a), math.sin(a)  # Python floats keep the maths in float32
        corners = [0.0, c, s, c + s]
        return _levels((c * r)[None, :] + (s * r)[:, None], min(corners), max(corners))
    if kind == "radial":
        cx, cy = (float(v) for v in rng.uniform(0, 1, 2))
        d2 = ((r - cx) ** 2)[None, :] + ((r - cy) ** 2)[:, None]
        return _levels(np.sqrt(d2), 0.0, rng.uniform(0.4, 1.2))
    if kind == "waves":
        # sin(u + v) = sin u cos v + cos u sin v with u along x and v along y: no 2-D sin.
        a, f, phase = (float(v) for v in rng.uniform((0, 2, 0), (2 * np.pi, 12, 2 * np.pi)))
        u = (2 * np.pi * f * math.cos(a)) * r + phase  # (n,) float32
        v = (2 * np.pi * f * math.sin(a)) * r
        field = np.sin(u)[None, :] * np.cos(v)[:, None] + np.cos(u)[None, :] * np.sin(v)[:, None]
        return _levels(field, -1.0, 1.0)
    if kind == "noise":
        return _levels(_value_noise(rng, n, int(rng.integers(2, 9))), 0.0, 1.0)
    raise ValueError(kind)


def background_levels(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """The ``(S, S)`` uint8 mixing field (0 = first colour, 255 = second) of a background kind.

    Smooth fields are computed at half resolution and upsampled (bilinear): the same look at a
    quarter of the cost.
    """
    if kind == "flat":
        return np.zeros((size, size), np.uint8)
    if kind in ("linear", "radial", "waves", "noise"):
        half = _smooth_levels(kind, rng, max(size // 2, 8))
        return cv2.resize(half, (size, size), interpolation=cv2.INTER_LINEAR)
    if kind == "checker":
        cells = int(rng.integers(4, 17))
        idx = (np.arange(size) * cells // size).astype(np.uint8)
        return ((idx[None, :] + idx[:, None]) & 1) * np.uint8(255)
    if kind == "grain":
        # Fine value noise (cells of 3-6 px) over a coarse one.
        coarse = _value_noise(rng, max(size // 2, 8), int(rng.integers(2, 6)))
        coarse = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_LINEAR)
        fine = _value_noise(rng, size, max(size // int(rng.integers(3, 7)), 2))
        return _levels(cv2.addWeighted(coarse, 0.5, fine, 0.5, 0.0), 0.0, 1.0)
    raise ValueError(f"unknown background kind {kind!r}; expected one of {BACKGROUND_KINDS}")


def background(rng: np.random.Generator, size: int, kinds: tuple[str, ...]) -> np.ndarray:
    """A ``(S, S, 3)`` uint8 background: one of ``kinds`` mixing two colours at most ~90 apart."""
    kind = kinds[int(rng.integers(len(kinds)))]
    c1 = rng.uniform(0, 255, 3)
    c2 = np.clip(c1 + rng.uniform(-90, 90, 3), 0, 255)
    if kind == "flat":  # exactly one colour (tests rely on this)
        return solid(size, size, np.round(c1))
    # Map the levels through one 256-entry table per channel: (S, S) uint8 -> (S, S, 3) uint8.
    # (Three single-channel LUTs and a merge are ~2x faster than one 3-channel LUT.)
    levels = np.linspace(0.0, 1.0, 256)[:, None]
    table = np.round(c1 + levels * (c2 - c1)).astype(np.uint8)  # (256, 3)
    t8 = background_levels(kind, rng, size)
    return cv2.merge([cv2.LUT(t8, np.ascontiguousarray(table[:, c])) for c in range(3)])
