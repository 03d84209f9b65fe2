"""AutoAnchor: check that a head's anchors fit a dataset's boxes, and refit them when not.

YOLOv5's ``utils/autoanchor.py`` semantics. A label *fits* an anchor when neither of its sides
differs from the anchor's by more than a factor ``thr`` (the loss's ``anchor_t``): the metric
of a (label, anchor) pair is ``min(w/aw, aw/w, h/ah, ah/h)``, and fitting means a metric above
``1/thr``. The *best possible recall* (BPR) is the fraction of labels that fit at least one
anchor: a label that fits none is never assigned by the loss and cannot be learned.

When the BPR is at most 0.98, new anchors are computed by k-means on the label sizes (whitened
by their standard deviation), then evolved by a genetic search for 1000 generations that
maximises the mean best metric of the fitting labels; they replace the old ones only if their
BPR is higher. Everything random draws from one seeded generator.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from efyolo.utils.log import LOGGER

PREFIX = "AutoAnchor: "
BPR_OK = 0.98  # YOLOv5's threshold: anchors with a BPR above it are kept as they are


@dataclass
class AnchorReport:
    """What :func:`check_anchors` found and did.

    Attributes:
        bpr_before: best possible recall of the anchors the head had.
        bpr_after: best possible recall of the anchors the head has now.
        replaced: whether the head's anchors were replaced.
        anchors_px: ``ndarray[nl * na, 2]`` the head's anchors now, ``(w, h)`` in pixels,
            level by level.
        aat_before: anchors above threshold per label, before.
        aat_after: anchors above threshold per label, now.
    """

    bpr_before: float
    bpr_after: float
    replaced: bool
    anchors_px: np.ndarray
    aat_before: float = float("nan")
    aat_after: float = float("nan")


def anchor_metric(wh: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Ratio metric of every (label, anchor) pair, ``[n, 2] x [k, 2] -> [n, k]``.

    ``min(w/aw, aw/w, h/ah, ah/h)``: 1 for a perfect match, ``1/thr`` at the loss's limit.
    """
    wh = np.asarray(wh, dtype=np.float32)
    anchors = np.asarray(anchors, dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = wh[:, None] / anchors[None]  # [n, k, 2]
        x = np.minimum(r, 1 / r).min(2)
    return np.nan_to_num(x, nan=0.0)  # a zero-size label fits nothing


def bpr_aat(wh: np.ndarray, anchors: np.ndarray, thr: float = 4.0) -> tuple[float, float]:
    """Best possible recall and mean number of anchors above threshold per label.

    Args:
        wh: ``ndarray[n, 2]`` label sizes in pixels.
        anchors: ``ndarray[k, 2]`` anchor sizes in pixels.
        thr: the loss's ``anchor_t``.

    Returns:
        ``(bpr, aat)``; ``(nan, nan)`` when there are no labels.
    """
    if len(wh) == 0:
        return float("nan"), float("nan")
    x = anchor_metric(wh, anchors)  # [n, k]
    bpr = float((x.max(1) > 1 / thr).mean())
    aat = float((x > 1 / thr).sum(1).mean())
    return bpr, aat


def label_wh_from_dataset(
    shapes: np.ndarray,
    labels: Sequence[np.ndarray],
    imgsz: int = 640,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Label sizes in pixels at the training image size.

    Each image is resized so that its long side is ``imgsz`` (as the letterbox does), and, when
    ``rng`` is given, by a further random factor in ``[0.9, 1.1]`` per image (YOLOv5's
    ``check_anchors`` does this to mimic scale augmentation).

    Args:
        shapes: ``ndarray[N, 2]`` ``(w, h)`` of the images in pixels.
        labels: ``N`` arrays ``[k, 5]`` ``(class, xc, yc, w, h)`` normalised to the image.
        imgsz: training image size.
        rng: generator for the random scale; ``None`` for no random scale.

    Returns:
        ``ndarray[n, 2]`` float32 ``(w, h)`` of every label in pixels.
    """
    shapes = np.asarray(shapes, dtype=np.float64).reshape(-1, 2)
    if len(shapes) != len(labels):
        raise ValueError(f"{len(shapes)} image shapes but {len(labels)} label arrays")
    sizes = imgsz * shapes / shapes.max(1, keepdims=True)  # [N, 2] image size at imgsz
    if rng is not None:
        sizes = sizes * rng.uniform(0.9, 1.1, size=(len(sizes), 1))
    parts = [  # [k, 2] label (w, h) in pixels, per image
        np.asarray(lb, dtype=np.float64).reshape(-1, 5)[:, 3:5] * s for s, lb in zip(sizes, labels)
    ]
    if not parts:
        return np.zeros((0, 2), dtype=np.float32)
    return np.concatenate(parts).astype(np.float32)


def kmeans(
    x: np.ndarray, k: int, rng: np.random.Generator, restarts: int = 30, thresh: float = 1e-5
) -> np.ndarray:
    """Lloyd's k-means with random restarts (the algorithm of ``scipy.cluster.vq.kmeans``).

    Each restart starts from ``k`` distinct observations drawn at random and iterates until
    the mean distance to the nearest centroid improves by at most ``thresh``; the centroids of
    the restart with the lowest mean distance are returned. A cluster that loses all its
    points keeps its previous centroid (scipy drops it, which returns fewer than ``k``).

    Args:
        x: ``ndarray[n, d]`` observations, ``n >= k``.
        k: number of clusters.
        rng: random generator (the initial centroids).
        restarts: number of random starts.
        thresh: convergence threshold on the mean distance.

    Returns:
        ``ndarray[k, d]`` centroids.
    """
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if not 0 < k <= n:
        raise ValueError(f"k-means needs 0 < k <= n, got k={k}, n={n}")
    best, best_dist = None, np.inf
    for _ in range(restarts):
        c = x[rng.choice(n, size=k, replace=False)]  # [k, d]
        prev = np.inf
        while True:
            d2 = np.zeros((n, k))  # [n, k] squared distances, one column of x at a time
            for j in range(x.shape[1]):
                d2 += (x[:, j : j + 1] - c[None, :, j]) ** 2
            code = d2.argmin(1)  # [n] nearest centroid
            dist = np.sqrt(np.take_along_axis(d2, code[:, None], 1)).mean()
            counts = np.bincount(code, minlength=k)  # [k]
            sums = np.stack([np.bincount(code, weights=col, minlength=k) for col in x.T], 1)
            filled = counts > 0
            c = c.copy()
            c[filled] = sums[filled] / counts[filled, None]
            if prev - dist <= thresh:
                break
            prev = dist
        if dist < best_dist:
            best, best_dist = c, dist
    return best


class _Fitness:
    """The evolution's fitness: mean best metric of the labels, 0 for labels that fit no anchor.

    Computed in log space, where the metric ``min(w/aw, aw/w, h/ah, ah/h)`` is
    ``exp(-max(|log w - log aw|, |log h - log ah|))``: the same value, with the label logs
    computed once and no division per generation (twice as fast as the ratio form).
    """

    def __init__(self, wh: np.ndarray, thr: float):
        with np.errstate(divide="ignore"):
            self.log_wh = np.log(np.asarray(wh, dtype=np.float32))  # [n, 2]; a 0 side gives -inf
        self.thr = thr

    def __call__(self, k: np.ndarray) -> float:
        log_k = np.log(np.asarray(k, dtype=np.float32))  # [m, 2]
        dw = np.abs(self.log_wh[:, 0:1] - log_k[None, :, 0])  # [n, m]
        dh = np.abs(self.log_wh[:, 1:2] - log_k[None, :, 1])
        best = np.exp(-np.maximum(dw, dh).min(1))  # [n] best metric per label
        return float((best * (best > 1 / self.thr)).mean())


def _sort_by_area(k: np.ndarray) -> np.ndarray:
    return k[np.argsort(k.prod(1), kind="stable")]


def kmean_anchors(
    wh: np.ndarray,
    n: int = 9,
    imgsz: int = 640,
    thr: float = 4.0,
    gen: int = 1000,
    seed: int = 0,
    verbose: bool = False,
) -> np.ndarray:
    """Anchors fitted to label sizes: k-means, then genetic evolution (YOLOv5's recipe).

    Args:
        wh: ``ndarray[m, 2]`` label sizes in pixels at the training image size.
        n: number of anchors (``nl * na``).
        imgsz: training image size (scale of the random fallback when k-means cannot run).
        thr: the loss's ``anchor_t``.
        gen: generations of evolution.
        seed: seed of the generator behind every random choice.
        verbose: log each improvement of the evolution.

    Returns:
        ``ndarray[n, 2]`` float32 anchors ``(w, h)`` in pixels, sorted by area.
    """
    rng = np.random.default_rng(seed)
    wh0 = np.asarray(wh, dtype=np.float32).reshape(-1, 2)
    tiny = int((wh0 < 3.0).any(1).sum())
    if tiny:
        LOGGER.info(f"{PREFIX}{tiny} of {len(wh0)} labels are smaller than 3 pixels")
    whf = wh0[(wh0 >= 2.0).any(1)]  # drop labels under 2 px on both sides

    std = whf.std(0) if len(whf) else np.zeros(2)
    if n <= len(whf) and (std > 0).all():
        LOGGER.info(f"{PREFIX}running k-means for {n} anchors on {len(whf)} points...")
        k = kmeans(whf / std, n, rng) * std  # whiten so both axes weigh the same
    else:
        LOGGER.warning(f"{PREFIX}too few distinct labels for k-means, starting from random anchors")
        k = np.sort(rng.random(n * 2)).reshape(n, 2) * imgsz
    k = _sort_by_area(k.astype(np.float32))

    fitness = _Fitness(whf if len(whf) else wh0, thr)
    f = fitness(k)
    mp, sigma = 0.9, 0.1  # mutation probability per value, mutation scale
    for g in range(gen):
        v = np.ones(k.shape)
        while (v == 1).all():  # mutate until something changes
            mask = rng.random(k.shape) < mp
            v = (mask * rng.random() * rng.standard_normal(k.shape) * sigma + 1).clip(0.3, 3.0)
        kg = (k * v).clip(min=2.0).astype(np.float32)
        fg = fitness(kg)
        if fg > f:
            f, k = fg, kg
            if verbose:
                LOGGER.info(f"{PREFIX}generation {g}: fitness {f:.4f}")

    k = _sort_by_area(k)
    bpr, aat = bpr_aat(wh0, k, thr)
    LOGGER.info(
        f"{PREFIX}thr={thr:.2f}: {bpr:.4f} best possible recall, {aat:.2f} anchors past thr; "
        f"anchors: {', '.join(f'{w:.0f},{h:.0f}' for w, h in k)}"
    )
    return k.astype(np.float32)


def check_anchor_order(detect) -> bool:
    """Make the anchors grow with the stride: reverse the levels when their mean anchor area
    runs the other way from the strides. Works on pixel or grid units.

    Returns:
        Whether the order was reversed.
    """
    area = detect.anchors.prod(-1).mean(-1).view(-1)  # [nl] mean anchor area per level
    da = area[-1] - area[0]
    ds = detect.stride[-1] - detect.stride[0]
    if da and ds and torch.sign(da) != torch.sign(ds):
        LOGGER.info(f"{PREFIX}reversing anchor order")
        with torch.no_grad():
            detect.anchors[:] = detect.anchors.flip(0)
        return True
    return False


def check_anchors(
    detect,
    wh: np.ndarray,
    thr: float = 4.0,
    imgsz: int = 640,
    seed: int = 0,
    verbose: bool = True,
    gen: int = 1000,
    refit: bool = False,
) -> AnchorReport:
    """Check the head's anchors against the labels and replace them when they fit badly.

    ``refit`` fits new anchors even when the BPR is fine, and keeps them when they match the labels
    better (higher mean best-anchor ratio, the evolution's fitness). YOLOv5's anchors are sized for
    640-pixel COCO images; at a small training size every label still finds some anchor within the
    factor ``thr`` (BPR 1.0), but the P5 anchors are larger than any object and the box regression
    starts far from the sizes it has to learn (demo, 192 px: mAP50 0.298 -> 0.321 with refit).

    Args:
        detect: the detection head: ``anchors`` (``Tensor[nl, na, 2]`` grid units, changed in
            place) and ``stride`` (``Tensor[nl]``).
        wh: ``ndarray[n, 2]`` label sizes in pixels at ``imgsz``
            (see :func:`label_wh_from_dataset`).
        thr: the loss's ``anchor_t``.
        imgsz: training image size.
        seed: seed for k-means and the evolution.
        verbose: log the result at INFO level (otherwise DEBUG).
        gen: generations of evolution.
        refit: fit anchors whatever the BPR (``efyolo train --autoanchor refit``).

    Returns:
        An :class:`AnchorReport`.
    """
    level = logging.INFO if verbose else logging.DEBUG
    wh = np.asarray(wh, dtype=np.float32).reshape(-1, 2)
    anchors = detect.anchors
    stride = torch.as_tensor(detect.stride, device=anchors.device, dtype=anchors.dtype)
    stride = stride.view(-1, 1, 1)
    old_px = (anchors.detach() * stride).cpu().numpy().reshape(-1, 2)  # [nl*na, 2]
    bpr, aat = bpr_aat(wh, old_px, thr)
    if len(wh) == 0:
        LOGGER.log(level, f"{PREFIX}no labels, keeping the anchors")
        return AnchorReport(bpr, bpr, False, old_px, aat, aat)

    msg = f"{PREFIX}{aat:.2f} anchors/target, {bpr:.3f} Best Possible Recall (BPR). "
    if bpr > BPR_OK and not refit:
        LOGGER.log(level, msg + "Current anchors are a good fit to the dataset")
        return AnchorReport(bpr, bpr, False, old_px, aat, aat)

    LOGGER.log(level, msg + ("Refitting the anchors..." if refit else
                             "Anchors are a poor fit to the dataset, trying to improve..."))
    new_px = kmean_anchors(wh, n=len(old_px), imgsz=imgsz, thr=thr, gen=gen, seed=seed)
    new_bpr, new_aat = bpr_aat(wh, new_px, thr)
    fitness = _Fitness(wh, thr)
    better = new_bpr > bpr or (refit and new_bpr >= bpr and fitness(new_px) > fitness(old_px))
    if not better:
        LOGGER.log(level, f"{PREFIX}original anchors are better than the new ones, keeping them")
        return AnchorReport(bpr, bpr, False, old_px, aat, aat)

    with torch.no_grad():
        # smallest anchors to the first level, then fix the order to follow the strides
        new = torch.as_tensor(new_px, device=anchors.device, dtype=anchors.dtype)
        anchors[:] = new.view_as(anchors)
        check_anchor_order(detect)
        anchors /= stride  # pixels -> grid units
    now_px = (anchors.detach() * stride).cpu().numpy().reshape(-1, 2)
    LOGGER.log(level, f"{PREFIX}new anchors written to the model (BPR {bpr:.3f} -> {new_bpr:.3f})")
    return AnchorReport(bpr, new_bpr, True, now_px, aat, new_aat)
