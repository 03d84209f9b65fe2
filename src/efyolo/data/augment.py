"""YOLOv5's training-time image augmentations as pure functions.

Conventions shared by every function here:

* Images are ``uint8`` arrays ``[H, W, 3]`` in BGR order (as OpenCV reads them). Inputs are
  never modified; each function returns new arrays.
* Labels are ``float32`` arrays ``[n, 5]`` of ``(class, x1, y1, x2, y2)`` in pixels of the image
  they come with (``xyxy``). ``n`` may be 0: an empty ``[0, 5]`` array flows through everything.
* Randomness comes only from an explicit ``rng: numpy.random.Generator`` argument, so a sample is
  a function of ``(inputs, rng state)`` and a seeded data loader is reproducible.
* Hyperparameters use the keys of YOLOv5's ``hyp.scratch-low.yaml``: ``hsv_h, hsv_s, hsv_v,
  degrees, translate, scale, shear, perspective, flipud, fliplr, mosaic, mixup``.

The order YOLOv5 v7.0 applies them in ``LoadImagesAndLabels.__getitem__`` (and which
:func:`train_sample` reproduces)::

    with probability hyp['mosaic']:                        # mosaic path
        4 images, each resized so its long side is imgsz   (resize_long_side, augment=True)
        -> 2*imgsz canvas around a random centre            (mosaic4)
        -> random_perspective, border -imgsz//2 -> imgsz    (load_mosaic = both steps)
        -> with probability hyp['mixup']: mixup with a second mosaic
    otherwise:                                             # single-image path
        1 image resized so its long side is imgsz
        -> letterbox to imgsz (auto=False)                  (letterbox + letterbox_labels)
        -> random_perspective, no border                    (apply_train_augment starts here)
    then, on both paths:
        -> augment_hsv -> flip up-down (hyp['flipud']) -> flip left-right (hyp['fliplr'])

YOLOv5 then converts the labels to normalised ``xywh`` (clipped); that belongs to the dataset.
Not reproduced here: copy-paste (needs segments; ``copy_paste`` is 0 in hyp.scratch-low),
the optional albumentations pass, and 9-image mosaics (unused by YOLOv5's default path).
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import cv2
import numpy as np

from efyolo.errors import EfyoloError
from efyolo.ops.boxes import letterbox_params

PAD_COLOR = (114, 114, 114)  # YOLOv5's grey for letterbox padding and warp borders

# One (image, labels) pair: uint8 [H, W, 3] BGR and float32 [n, 5] (class, x1, y1, x2, y2) px.
Sample = tuple[np.ndarray, np.ndarray]


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _as_labels(labels: np.ndarray | None) -> np.ndarray:
    """A float32 ``[n, 5]`` copy of ``labels``; ``None`` or any empty array becomes ``[0, 5]``."""
    if labels is None or np.size(labels) == 0:
        return np.zeros((0, 5), dtype=np.float32)
    labels = np.array(labels, dtype=np.float32)  # copy
    if labels.ndim != 2 or labels.shape[1] != 5:
        raise ValueError(f"labels must be [n, 5] (class, x1, y1, x2, y2), got {labels.shape}")
    return labels


def _hyp(hyp: Mapping[str, float], key: str) -> float:
    """``hyp[key]`` as a float, or an :class:`EfyoloError` naming the missing key."""
    try:
        return float(hyp[key])
    except KeyError:
        raise EfyoloError(
            f"hyperparameter '{key}' is missing (augmentation needs hsv_h, hsv_s, hsv_v, degrees, "
            "translate, scale, shear, perspective, flipud, fliplr, mosaic, mixup)"
        ) from None


# --------------------------------------------------------------------------------------------
# Resizing
# --------------------------------------------------------------------------------------------


def resize_long_side(
    img: np.ndarray, imgsz: int, augment: bool
) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    """Resize so that the long side is ``imgsz``, keeping the aspect ratio (YOLOv5 ``load_image``).

    INTER_LINEAR when augmenting or enlarging, INTER_AREA when shrinking for evaluation.

    Args:
        img: ``uint8 [H0, W0, 3]`` image.
        imgsz: target length of the long side.
        augment: whether the sample is for augmented training.

    Returns:
        ``(img, (h0, w0), (h, w))``: the resized image, its original and its new height/width.
    """
    h0, w0 = img.shape[:2]
    r = imgsz / max(h0, w0)
    if r == 1:
        return img.copy(), (h0, w0), (h0, w0)
    interp = cv2.INTER_LINEAR if (augment or r > 1) else cv2.INTER_AREA
    # ceil keeps the long side at exactly imgsz; the 1e-6 absorbs float error in w0 * (imgsz / w0)
    size_wh = (max(1, math.ceil(w0 * r - 1e-6)), max(1, math.ceil(h0 * r - 1e-6)))
    out = cv2.resize(img, size_wh, interpolation=interp)
    return out, (h0, w0), out.shape[:2]


def letterbox(
    img: np.ndarray,
    new_shape: int | Sequence[int] = (640, 640),
    color: tuple[int, int, int] = PAD_COLOR,
    auto: bool = False,
    scaleup: bool = True,
    stride: int = 32,
) -> tuple[np.ndarray, float, tuple[float, float]]:
    """Resize keeping the aspect ratio, then pad to ``new_shape`` (YOLOv5 ``letterbox``).

    The gain and padding are those of :func:`efyolo.ops.boxes.letterbox_params`, so
    ``scale_boxes(boxes, out.shape[:2], img.shape[:2], ratio_pad=(gain, pad))`` inverts
    :func:`letterbox_labels` exactly. Half-integer padding is split like YOLOv5:
    ``round(pad - 0.1)`` before, ``round(pad + 0.1)`` after, so the image content sits up to half
    a pixel left of / above where the returned (fractional) padding puts the labels.

    Args:
        img: ``uint8 [H, W, 3]`` image.
        new_shape: target ``(h, w)``, or one int for a square.
        color: padding colour (BGR).
        auto: pad only up to the smallest multiple of ``stride`` (minimum rectangle, used for
            inference on single images) instead of to ``new_shape``.
        scaleup: allow enlarging; ``False`` only shrinks (YOLOv5 validation).
        stride: the stride for ``auto``.

    Returns:
        ``(img, gain, (pad_w, pad_h))``: the letterboxed image, the resize factor and the
        padding on the left and top (possibly ``x.5``).
    """
    if isinstance(new_shape, int):
        new_shape = (new_shape, new_shape)
    h, w = img.shape[:2]
    gain, (pad_w, pad_h) = letterbox_params((h, w), new_shape, scaleup)
    # letterbox_params pads by half the total, so the resized size is what the padding leaves
    new_w, new_h = round(new_shape[1] - 2 * pad_w), round(new_shape[0] - 2 * pad_h)
    if auto:  # smallest stride multiple that holds the resized image
        pad_w = ((new_shape[1] - new_w) % stride) / 2
        pad_h = ((new_shape[0] - new_h) % stride) / 2
    out = img
    if (new_w, new_h) != (w, h):
        out = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top, bottom = round(pad_h - 0.1), round(pad_h + 0.1)
    left, right = round(pad_w - 0.1), round(pad_w + 0.1)
    out = cv2.copyMakeBorder(out, top, bottom, left, right, cv2.BORDER_CONSTANT, value=color)
    return out, gain, (pad_w, pad_h)


def letterbox_labels(labels: np.ndarray, gain: float, pad: tuple[float, float]) -> np.ndarray:
    """Map ``[n, 5]`` labels into a letterboxed image: ``xy * gain + (pad_w, pad_h)``."""
    labels = _as_labels(labels)
    labels[:, 1:5] *= gain
    labels[:, [1, 3]] += pad[0]
    labels[:, [2, 4]] += pad[1]
    return labels


# --------------------------------------------------------------------------------------------
# Colour
# --------------------------------------------------------------------------------------------


def augment_hsv(
    img: np.ndarray,
    rng: np.random.Generator,
    hgain: float = 0.5,
    sgain: float = 0.5,
    vgain: float = 0.5,
) -> np.ndarray:
    """Random hue/saturation/value gains through lookup tables (YOLOv5 ``augment_hsv``).

    Each gain is drawn uniformly from ``[1 - g, 1 + g]``; hue wraps at 180 (OpenCV's 8-bit hue
    range), saturation and value are clipped to 255. Geometry is untouched: every pixel goes
    through the same per-channel table. Returns a new image.
    """
    if not (hgain or sgain or vgain):
        return img.copy()
    r = rng.uniform(-1, 1, 3) * (hgain, sgain, vgain) + 1  # (3,) gains for h, s, v
    hue, sat, val = cv2.split(cv2.cvtColor(img, cv2.COLOR_BGR2HSV))
    x = np.arange(256, dtype=np.float64)
    lut_hue = ((x * r[0]) % 180).astype(np.uint8)
    lut_sat = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut_val = np.clip(x * r[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_hue), cv2.LUT(sat, lut_sat), cv2.LUT(val, lut_val)))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


def box_candidates(
    box1: np.ndarray,
    box2: np.ndarray,
    wh_thr: float = 2,
    ar_thr: float = 100,
    area_thr: float = 0.1,
    eps: float = 1e-16,
) -> np.ndarray:
    """Which warped boxes to keep (YOLOv5 ``box_candidates``).

    Args:
        box1: ``[n, 4]`` ``xyxy`` boxes before the warp, multiplied by the warp's scale.
        box2: ``[n, 4]`` ``xyxy`` boxes after the warp and clipping.
        wh_thr: minimum width and height in pixels.
        ar_thr: maximum aspect ratio.
        area_thr: minimum ratio of the new area to the (scaled) old one.

    Returns:
        ``bool [n]`` mask.
    """
    w1, h1 = box1[:, 2] - box1[:, 0], box1[:, 3] - box1[:, 1]
    w2, h2 = box2[:, 2] - box2[:, 0], box2[:, 3] - box2[:, 1]
    ar = np.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (ar < ar_thr)


def _perspective_matrix(
    shape: Sequence[int],
    out_shape: Sequence[int],
    rng: np.random.Generator,
    degrees: float,
    translate: float,
    scale: float,
    shear: float,
    perspective: float,
) -> tuple[np.ndarray, float]:
    """The random 3x3 warp of YOLOv5's ``random_perspective`` and its scale factor.

    ``M = T @ S @ R @ P @ C`` (applied right to left): centre the input at the origin, perspective,
    rotation + scale, shear, then translate to around the output's centre. The draws happen in
    YOLOv5's order: perspective x/y, angle, scale, shear x/y, translation x/y.
    """
    h, w = shape[:2]
    out_h, out_w = out_shape[:2]
    C = np.eye(3)
    C[0, 2], C[1, 2] = -w / 2, -h / 2
    P = np.eye(3)
    P[2, 0] = rng.uniform(-perspective, perspective)
    P[2, 1] = rng.uniform(-perspective, perspective)
    R = np.eye(3)
    angle = rng.uniform(-degrees, degrees)
    s = rng.uniform(1 - scale, 1 + scale)
    R[:2] = cv2.getRotationMatrix2D(center=(0, 0), angle=angle, scale=s)
    S = np.eye(3)
    S[0, 1] = math.tan(math.radians(rng.uniform(-shear, shear)))
    S[1, 0] = math.tan(math.radians(rng.uniform(-shear, shear)))
    T = np.eye(3)
    T[0, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * out_w
    T[1, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * out_h
    return T @ S @ R @ P @ C, s


def _warp_corners(boxes: np.ndarray, M: np.ndarray, projective: bool) -> np.ndarray:
    """``[n, 4]`` ``xyxy`` boxes -> ``[n, 4, 2]`` warped corners, in order around the box."""
    n = len(boxes)
    xy = np.ones((n * 4, 3))
    xy[:, :2] = boxes[:, [0, 1, 2, 1, 2, 3, 0, 3]].reshape(n * 4, 2)  # x1y1, x2y1, x2y2, x1y2
    xy = xy @ M.T  # (4n, 3)
    xy = xy[:, :2] / xy[:, 2:3] if projective else xy[:, :2]
    return xy.reshape(n, 4, 2)


def _inside(points: np.ndarray, size: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """``[..., 2]`` points -> ``bool [...]``: within ``[0, w] x [0, h]`` (``size = (w, h)``)."""
    return ((points >= -eps) & (points <= size + eps)).all(-1)


def _clipped_quad_boxes(quads: np.ndarray, width: int, height: int) -> np.ndarray:
    """``xyxy`` boxes of the parts of convex quadrilaterals ``[n, 4, 2]`` inside the image.

    The part of a convex polygon inside a rectangle is the convex hull of: its vertices inside
    the rectangle, the points where its edges cross the rectangle's sides, and the rectangle's
    corners inside it; the box is the extent of those points. A quad that misses the image
    gets an all-zero box. For axis-aligned quads this equals clipping their bounding box.
    """
    n = len(quads)
    size = np.array([width, height], dtype=np.float64)
    d = np.roll(quads, -1, axis=1) - quads  # (n, 4, 2) edge vectors, edge k from vertex k
    points, valid = [quads], [_inside(quads, size)]
    for axis in (0, 1):
        for value in (0.0, size[axis]):
            with np.errstate(divide="ignore", invalid="ignore"):
                t = (value - quads[..., axis]) / d[..., axis]  # (n, 4) where edges meet the side
                cross = quads + t[..., None] * d
            cross[..., axis] = value
            points.append(cross)
            valid.append((t >= 0) & (t <= 1) & _inside(cross, size))
    corners = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float64)
    rel = corners[None, None] - quads[:, :, None]  # (n, 4 edges, 4 corners, 2)
    z = d[:, :, None, 0] * rel[..., 1] - d[:, :, None, 1] * rel[..., 0]  # side of each edge
    # strictly inside (either winding); corners on an edge are already crossing points, and
    # degenerate (zero-area) quads contain nothing
    points.append(np.broadcast_to(corners, (n, 4, 2)))
    valid.append((z > 0).all(1) | (z < 0).all(1))
    pts, ok = np.concatenate(points, 1), np.concatenate(valid, 1)  # (n, 24, 2), (n, 24)
    lo = np.where(ok[..., None], pts, np.inf).min(1)
    hi = np.where(ok[..., None], pts, -np.inf).max(1)
    boxes = np.concatenate((lo, hi), 1)
    boxes[~ok.any(1)] = 0.0
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    return boxes


def random_perspective(
    img: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    degrees: float = 10,
    translate: float = 0.1,
    scale: float = 0.1,
    shear: float = 10,
    perspective: float = 0.0,
    border: tuple[int, int] = (0, 0),
) -> Sample:
    """Random rotation, scale, shear, translation and perspective (YOLOv5 ``random_perspective``).

    Boxes become the bounding boxes of their warped corners (so a rotated box encloses more than
    the object), limited to the part of the warped box inside the output, and are dropped by
    :func:`box_candidates` when they become too small, too thin, or lose 90% of their (scaled)
    area.

    One deliberate difference from YOLOv5: YOLOv5 clips the bounding box of the warped corners
    to the image. When a rotated, sheared or perspective-warped box crosses the border, that
    box can cover the empty triangle beside the object's corner, or only that triangle: a label
    with no object in it. Here the warped quadrilateral is clipped first, so the box holds the
    visible part. Without rotation, shear and perspective (hyp.scratch-low's defaults) both
    give the same boxes.

    Args:
        img: ``uint8 [H, W, 3]`` image.
        labels: ``float32 [n, 5]`` pixel ``xyxy`` labels of ``img``.
        rng: random generator.
        degrees: rotation range ``+-degrees``.
        translate: translation range, a fraction of the output size.
        scale: scale range ``1 +- scale``.
        shear: shear range ``+-shear`` degrees.
        perspective: perspective coefficient range (0 means an affine warp).
        border: ``(border_h, border_w)``; the output is ``[H + 2*border_h, W + 2*border_w]``
            (negative for mosaics: ``-imgsz // 2`` crops the ``2*imgsz`` canvas to ``imgsz``).

    Returns:
        ``(img, labels)`` with ``labels`` ``float32 [m, 5]``, ``m <= n``.
    """
    labels = _as_labels(labels)
    out_h, out_w = img.shape[0] + 2 * border[0], img.shape[1] + 2 * border[1]
    M, s = _perspective_matrix(
        img.shape, (out_h, out_w), rng, degrees, translate, scale, shear, perspective
    )
    if border[0] != 0 or border[1] != 0 or (M != np.eye(3)).any():
        if perspective:
            out = cv2.warpPerspective(img, M, dsize=(out_w, out_h), borderValue=PAD_COLOR)
        else:
            out = cv2.warpAffine(img, M[:2], dsize=(out_w, out_h), borderValue=PAD_COLOR)
    else:
        out = img.copy()
    if len(labels) == 0:
        return out, labels
    boxes = labels[:, 1:5].astype(np.float64)
    new = _clipped_quad_boxes(_warp_corners(boxes, M, bool(perspective)), out_w, out_h)
    keep = box_candidates(boxes * s, new)
    labels = labels[keep]
    labels[:, 1:5] = new[keep]
    return out, labels


def flip_lr(img: np.ndarray, labels: np.ndarray) -> Sample:
    """Mirror left-right: ``x -> W - x`` (x1 and x2 swap roles)."""
    labels = _as_labels(labels)
    w = img.shape[1]
    labels[:, [1, 3]] = w - labels[:, [3, 1]]
    return np.ascontiguousarray(img[:, ::-1]), labels


def flip_ud(img: np.ndarray, labels: np.ndarray) -> Sample:
    """Mirror up-down: ``y -> H - y`` (y1 and y2 swap roles)."""
    labels = _as_labels(labels)
    h = img.shape[0]
    labels[:, [2, 4]] = h - labels[:, [4, 2]]
    return np.ascontiguousarray(img[::-1]), labels


def random_flip(
    img: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    flipud: float = 0.0,
    fliplr: float = 0.5,
) -> Sample:
    """Flip up-down with probability ``flipud``, then left-right with probability ``fliplr``.

    Two uniform draws always happen (in that order), whatever the probabilities.
    """
    labels = _as_labels(labels)
    if rng.random() < flipud:
        img, labels = flip_ud(img, labels)
    if rng.random() < fliplr:
        img, labels = flip_lr(img, labels)
    return img, labels


# --------------------------------------------------------------------------------------------
# Mosaic and mixup
# --------------------------------------------------------------------------------------------


def mosaic4(
    tiles: Sequence[Sample], imgsz: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Place four images around a random centre of a ``2*imgsz`` square canvas (YOLOv5 mosaic).

    Tile 0 ends at the centre from the top left, tile 1 starts there towards the top right,
    tile 2 towards the bottom left, tile 3 towards the bottom right; parts that fall off the
    canvas are cut. The centre ``(xc, yc)`` is drawn (``yc`` first, as YOLOv5) uniformly in
    ``[imgsz//2, 2*imgsz - imgsz//2]`` (even ``imgsz``) and truncated to an int. Labels are
    shifted with their tile and clipped to the canvas (tiles are only ever cut at its edges).

    Args:
        tiles: four ``(img, labels)`` pairs, images ``uint8 [h, w, 3]`` (normally resized so the
            long side is ``imgsz``), labels ``float32 [n, 5]`` pixel ``xyxy`` of their image.
        imgsz: training image size; the canvas is ``[2*imgsz, 2*imgsz, 3]`` grey (114).
        rng: random generator.

    Returns:
        ``(canvas, labels, (xc, yc))``: labels ``float32 [sum n, 5]`` in canvas pixels.
    """
    if len(tiles) != 4:
        raise ValueError(f"mosaic4 needs 4 (img, labels) tiles, got {len(tiles)}")
    s = imgsz
    border = -s // 2  # YOLOv5's mosaic_border; the centre is uniform in (-border, 2s + border)
    lo, hi = -border, 2 * s + border
    yc, xc = int(rng.uniform(lo, hi)), int(rng.uniform(lo, hi))
    canvas = np.full((2 * s, 2 * s, tiles[0][0].shape[2]), PAD_COLOR[0], dtype=np.uint8)
    all_labels = []
    for i, (img, labels) in enumerate(tiles):
        h, w = img.shape[:2]
        if i == 0:  # top left: ends at the centre
            x1a, y1a, x2a, y2a = max(xc - w, 0), max(yc - h, 0), xc, yc
            x1b, y1b, x2b, y2b = w - (x2a - x1a), h - (y2a - y1a), w, h
        elif i == 1:  # top right
            x1a, y1a, x2a, y2a = xc, max(yc - h, 0), min(xc + w, 2 * s), yc
            x1b, y1b, x2b, y2b = 0, h - (y2a - y1a), min(w, x2a - x1a), h
        elif i == 2:  # bottom left
            x1a, y1a, x2a, y2a = max(xc - w, 0), yc, xc, min(2 * s, yc + h)
            x1b, y1b, x2b, y2b = w - (x2a - x1a), 0, w, min(y2a - y1a, h)
        else:  # bottom right
            x1a, y1a, x2a, y2a = xc, yc, min(xc + w, 2 * s), min(2 * s, yc + h)
            x1b, y1b, x2b, y2b = 0, 0, min(w, x2a - x1a), min(y2a - y1a, h)
        canvas[y1a:y2a, x1a:x2a] = img[y1b:y2b, x1b:x2b]
        labels = _as_labels(labels)
        labels[:, [1, 3]] += x1a - x1b  # tile origin in canvas pixels
        labels[:, [2, 4]] += y1a - y1b
        all_labels.append(labels)
    out_labels = np.concatenate(all_labels, 0)
    out_labels[:, 1:5] = out_labels[:, 1:5].clip(0, 2 * s)
    return canvas, out_labels, (xc, yc)


def load_mosaic(
    tiles: Sequence[Sample], imgsz: int, rng: np.random.Generator, hyp: Mapping[str, float]
) -> Sample:
    """A 4-image mosaic warped and cropped back to ``imgsz`` (YOLOv5 ``load_mosaic``).

    :func:`mosaic4` builds the ``2*imgsz`` canvas, then :func:`random_perspective` with the
    ``degrees, translate, scale, shear, perspective`` of ``hyp`` and ``border = -imgsz // 2``
    warps it into an ``[imgsz, imgsz, 3]`` image (``imgsz - 1`` for odd ``imgsz``, as YOLOv5).

    Returns:
        ``(img, labels)``: ``uint8 [imgsz, imgsz, 3]`` and ``float32 [m, 5]``.
    """
    canvas, labels, _ = mosaic4(tiles, imgsz, rng)
    border = -imgsz // 2
    return random_perspective(canvas, labels, rng, border=(border, border), **_geometry(hyp))


def mixup(
    img1: np.ndarray,
    labels1: np.ndarray,
    img2: np.ndarray,
    labels2: np.ndarray,
    rng: np.random.Generator,
) -> Sample:
    """Blend two same-size images with a Beta(32, 32) ratio and keep both label sets (YOLOv5).

    ``img = (img1 * r + img2 * (1 - r)).astype(uint8)`` (truncation, as YOLOv5); labels are
    ``labels1`` followed by ``labels2``.
    """
    if img1.shape != img2.shape:
        raise ValueError(f"mixup needs images of one shape, got {img1.shape} and {img2.shape}")
    r = rng.beta(32.0, 32.0)
    img = (img1 * r + img2 * (1 - r)).astype(np.uint8)
    return img, np.concatenate((_as_labels(labels1), _as_labels(labels2)), 0)


# --------------------------------------------------------------------------------------------
# Compositions (the order of LoadImagesAndLabels.__getitem__)
# --------------------------------------------------------------------------------------------


def _geometry(hyp: Mapping[str, float]) -> dict[str, float]:
    keys = ("degrees", "translate", "scale", "shear", "perspective")
    return {k: _hyp(hyp, k) for k in keys}


def apply_colour_and_flip(
    img: np.ndarray, labels: np.ndarray, rng: np.random.Generator, hyp: Mapping[str, float]
) -> Sample:
    """The tail both paths share: :func:`augment_hsv`, then :func:`random_flip`."""
    img = augment_hsv(img, rng, _hyp(hyp, "hsv_h"), _hyp(hyp, "hsv_s"), _hyp(hyp, "hsv_v"))
    return random_flip(img, labels, rng, _hyp(hyp, "flipud"), _hyp(hyp, "fliplr"))


def apply_train_augment(
    img: np.ndarray, labels: np.ndarray, rng: np.random.Generator, hyp: Mapping[str, float]
) -> Sample:
    """Augment a letterboxed single image (the non-mosaic path).

    :func:`random_perspective` without border, then :func:`augment_hsv`, then the flips.

    Args:
        img: ``uint8 [H, W, 3]`` letterboxed image.
        labels: ``float32 [n, 5]`` pixel ``xyxy`` labels of ``img``.
        rng: random generator.
        hyp: hyperparameters (hyp.scratch-low keys).

    Returns:
        ``(img, labels)``, same image size, ``labels`` ``float32 [m, 5]``.
    """
    img, labels = random_perspective(img, labels, rng, **_geometry(hyp))
    return apply_colour_and_flip(img, labels, rng, hyp)


def _mosaic_tiles(
    index: int, num_images: int, load: Callable[[int], Sample], rng: np.random.Generator
) -> list[Sample]:
    """``index`` plus three random images (with replacement), in a random order (as YOLOv5)."""
    indices = [index, *rng.integers(0, num_images, size=3).tolist()]
    return [load(indices[i]) for i in rng.permutation(4)]


def train_sample(
    index: int,
    num_images: int,
    load: Callable[[int], Sample],
    imgsz: int,
    rng: np.random.Generator,
    hyp: Mapping[str, float],
) -> Sample:
    """One augmented square training sample, in the order of YOLOv5's ``__getitem__``.

    With probability ``hyp['mosaic']``: :func:`load_mosaic` of ``index`` and three random
    images, then with probability ``hyp['mixup']`` :func:`mixup` with a second mosaic around a
    random image. Otherwise: :func:`letterbox` of image ``index`` to ``imgsz`` and
    :func:`random_perspective`. Then :func:`augment_hsv` and the flips.

    Args:
        index: the dataset index of the sample.
        num_images: the dataset length (mosaic partners are drawn from ``range(num_images)``).
        load: ``i -> (img, labels)``: image ``i`` resized by :func:`resize_long_side` with
            ``augment=True`` and its ``float32 [n, 5]`` pixel ``xyxy`` labels in that image.
        imgsz: training image size.
        rng: random generator.
        hyp: hyperparameters (hyp.scratch-low keys).

    Returns:
        ``(img, labels)``: ``uint8 [imgsz, imgsz, 3]`` BGR and ``float32 [m, 5]`` pixel ``xyxy``.
    """
    if rng.random() < _hyp(hyp, "mosaic"):
        img, labels = load_mosaic(_mosaic_tiles(index, num_images, load, rng), imgsz, rng, hyp)
        if rng.random() < _hyp(hyp, "mixup"):
            other = int(rng.integers(0, num_images))
            tiles2 = _mosaic_tiles(other, num_images, load, rng)
            img, labels = mixup(img, labels, *load_mosaic(tiles2, imgsz, rng, hyp), rng)
        return apply_colour_and_flip(img, labels, rng, hyp)
    img, labels = load(index)
    img, gain, pad = letterbox(img, imgsz, auto=False, scaleup=True)
    return apply_train_augment(img, letterbox_labels(labels, gain, pad), rng, hyp)
