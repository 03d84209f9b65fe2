"""Detection metrics: COCO mAP with COCOeval's exact semantics, vectorised in numpy.

:class:`DetectionEvaluator` collects per-image predictions and ground truth and computes, in one
:meth:`~DetectionEvaluator.compute` call, everything ``efyolo val`` and the trainer report:

* AP per class at IoU 0.50:0.05:0.95, mAP50, mAP75, mAP50-95 and AP small/medium/large, equal to
  ``pycocotools.cocoeval.COCOeval`` (``iouType="bbox"``, ``maxDets=100``) up to float rounding,
  for any input (verified against pycocotools on random cases in ``tests/evaluation/test_metrics.py``);
* YOLOv5's precision and recall at the confidence that maximises the mean F1 over classes, the
  curves behind it, and its confusion matrix (IoU 0.45, confidence 0.25).

The COCO rules reproduced here (pycocotools 2.0 ``COCOeval.evaluateImg`` / ``accumulate``):

* Boxes are compared within one (image, class) group. IoU is plain ``inter / union`` with no
  ``+1`` pixel convention, computed in float64 the way ``maskUtils.iou`` does.
* Each group keeps its 100 highest-scoring detections (``maxDets`` applies per image *and class*,
  not per image), sorted by descending score with a stable sort, so tied scores keep input order.
* For each IoU threshold ``t`` detections are matched greedily in that order: a detection takes the
  unmatched ground truth with the highest IoU ``>= t``; ties in IoU go to the ground truth given
  last; a ground truth that is ignored for the current area range is taken only when no regular one
  qualifies, and a detection matched to it is ignored too. Unmatched detections whose own area is
  outside the area range are ignored.
* Per class, detections of all images are ranked by score (stable: image order, then the order
  within the image), precision gets its monotone envelope and is read at the 101 recall points
  ``0:0.01:1``; classes without ground truth get ``-1`` and are left out of every mean.
* Area ranges are inclusive on both ends (an area of exactly 32**2 is both small and medium), and a
  ground-truth area is its box ``w * h`` (no segmentation here).
* Crowd regions (``gt_crowd``, COCO's ``iscrowd``) are ignored ground truth in every area range;
  their IoU is the overlap over the detection's area, and they stay free after a match, so they
  absorb any number of detections. They are not instances and take no part in the YOLOv5 extras.

How it is vectorised: all detection/ground-truth pairs of a group are generated at once and every
pair below IoU 0.5 is dropped (it can match at no threshold). The greedy matching is sequential
only *within* a group, so it runs as one numpy step per detection rank (``<= 100`` steps), each
step matching one detection of every group at all 10 thresholds and 4 area ranges together.
``benchmarks/bench_eval.py`` measures it against pycocotools and faster-coco-eval.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

# Built exactly as pycocotools' Params.setDetParams builds them (linspace, not arange: the
# thresholds must be bit-identical for ties such as IoU == 0.5 to resolve the same way).
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, int(np.round((1.0 - 0.0) / 0.01)) + 1, endpoint=True)
AREA_NAMES = ("all", "small", "medium", "large")
AREA_RANGES = np.array([[0, 1e5**2], [0, 32**2], [32**2, 96**2], [96**2, 1e5**2]], dtype=np.float64)
MAX_DETS = 100
# YOLOv5 reports P/R/F1 on a grid of 1000 confidences and smooths the mean F1 before its argmax.
CONF_GRID = np.linspace(0.0, 1.0, 1000)
_EPS = 1e-16


@dataclass
class Curves:
    """Data behind the plots (one row per class; rows of classes without ground truth are 0).

    Attributes:
        conf: ``[1000]`` confidence grid of the P/R/F1-versus-confidence curves.
        precision: ``[nc, 1000]`` precision at IoU 0.5 of detections with score >= conf.
        recall: ``[nc, 1000]`` recall likewise.
        f1: ``[nc, 1000]`` F1 likewise.
        pr_recall: ``[101]`` COCO recall points.
        pr_precision: ``[nc, 101]`` interpolated precision at IoU 0.5 (``-1`` without ground truth).
    """

    conf: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    pr_recall: np.ndarray
    pr_precision: np.ndarray


@dataclass
class EvalResult:
    """Everything one evaluation produces. AP values are in [0, 1]; ``-1`` means "no ground truth".

    Attributes:
        names: class names, ``nc`` of them.
        map50, map75, map: COCO mAP at IoU 0.5, 0.75 and averaged over 0.50:0.05:0.95.
        map_small, map_medium, map_large: mAP50-95 restricted to an area range.
        precision, recall, f1: YOLOv5's mean P, R, F1 over classes with ground truth, at the
            confidence ``conf_max_f1`` that maximises the (smoothed) mean F1 at IoU 0.5.
        ap50, ap75, ap: ``[nc]`` per-class AP (``-1`` for classes without ground truth).
        class_precision, class_recall: ``[nc]`` per-class P and R at ``conf_max_f1``.
        instances: ``[nc]`` number of ground-truth boxes per class.
        images_per_class: ``[nc]`` number of images containing the class.
        n_images, n_predictions: images seen, predictions given (before the per-group cap).
        confusion_matrix: ``[nc + 1, nc + 1]``, rows predicted class, columns true class; the last
            row/column is background (missed ground truth / false detections).
        curves: the plot data.
        coco_precision: ``[10, 101, nc, 4]`` COCOeval's ``eval["precision"][..., -1]`` (IoU,
            recall point, class, area range) for maxDets 100.
        coco_recall: ``[10, nc, 4]`` COCOeval's ``eval["recall"][..., -1]``.
    """

    names: list[str]
    map50: float
    map75: float
    map: float
    map_small: float
    map_medium: float
    map_large: float
    precision: float
    recall: float
    f1: float
    conf_max_f1: float
    ap50: np.ndarray
    ap75: np.ndarray
    ap: np.ndarray
    class_precision: np.ndarray
    class_recall: np.ndarray
    instances: np.ndarray
    images_per_class: np.ndarray
    n_images: int
    n_predictions: int
    confusion_matrix: np.ndarray
    curves: Curves = field(repr=False)
    coco_precision: np.ndarray = field(repr=False)
    coco_recall: np.ndarray = field(repr=False)

    @property
    def fitness(self) -> float:
        """YOLOv5's model-selection score, ``0.1 * mAP50 + 0.9 * mAP50-95``."""
        return 0.1 * self.map50 + 0.9 * self.map

    def to_dict(self) -> dict[str, Any]:
        """Plain-data summary (what ``efyolo val --json`` prints)."""
        per_class = [
            {
                "class": k,
                "name": self.names[k],
                "instances": int(self.instances[k]),
                "images": int(self.images_per_class[k]),
                "precision": float(self.class_precision[k]),
                "recall": float(self.class_recall[k]),
                "ap50": float(self.ap50[k]),
                "ap75": float(self.ap75[k]),
                "ap": float(self.ap[k]),
            }
            for k in range(len(self.names))
        ]
        keys = ("map50", "map75", "map", "map_small", "map_medium", "map_large",
                "precision", "recall", "f1", "conf_max_f1", "n_images", "n_predictions")
        out: dict[str, Any] = {key: getattr(self, key) for key in keys}
        out["instances"] = int(self.instances.sum())
        out["fitness"] = self.fitness
        out["per_class"] = per_class
        out["confusion_matrix"] = self.confusion_matrix.astype(int).tolist()
        return out


def _to_numpy(x: Any, dtype: type, shape_tail: tuple[int, ...], what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=dtype)
    if arr.size == 0:
        return arr.reshape((0, *shape_tail))
    if arr.ndim != 1 + len(shape_tail) or arr.shape[1:] != shape_tail:
        raise ValueError(f"{what}: expected shape [N{''.join(f', {s}' for s in shape_tail)}], got {arr.shape}")
    return arr


class DetectionEvaluator:
    """Accumulate detections and ground truth image by image, then compute COCO and YOLOv5 metrics.

    Example::

        ev = DetectionEvaluator(nc=2, names=["cat", "dog"])
        for pred, target in batches:  # per image
            ev.update(pred["boxes"], pred["scores"], pred["labels"], target["boxes"], target["labels"])
        result = ev.compute()
        print(result.map50, result.map)

    Args:
        nc: number of classes; class ids are ``0 .. nc-1``.
        names: class names (default ``"0", "1", ...``).
        max_dets: detections kept per image and class, as COCOeval's ``maxDets`` (100).
        cm_conf: confusion-matrix confidence threshold (detections with score > cm_conf count).
        cm_iou: confusion-matrix IoU threshold (a pair matches when IoU > cm_iou).
    """

    def __init__(
        self,
        nc: int,
        names: Sequence[str] | None = None,
        max_dets: int = MAX_DETS,
        cm_conf: float = 0.25,
        cm_iou: float = 0.45,
    ) -> None:
        if nc < 1:
            raise ValueError(f"nc must be >= 1, got {nc}")
        names = [str(k) for k in range(nc)] if names is None else [str(n) for n in names]
        if len(names) != nc:
            raise ValueError(f"{len(names)} names for nc={nc}")
        self.nc, self.names, self.max_dets = nc, names, max_dets
        self.cm_conf, self.cm_iou = cm_conf, cm_iou
        self.reset()

    def reset(self) -> None:
        """Forget everything added so far."""
        self._det: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (boxes, labels, scores)
        self._gt: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (boxes, labels, crowd)
        self.image_ids: list[Any] = []

    @property
    def num_images(self) -> int:
        """Images added so far."""
        return len(self._gt)

    def update(
        self,
        pred_boxes: Any,
        pred_scores: Any,
        pred_labels: Any,
        gt_boxes: Any,
        gt_labels: Any,
        image_id: Any = None,
        gt_crowd: Any = None,
    ) -> None:
        """Add one image.

        Images are ranked in the order they are added; COCOeval ranks them by sorted image id, and
        that order only matters to break exact score ties between images. Call in sorted id order
        for a bit-identical result in that corner case.

        Args:
            pred_boxes: ``[N, 4]`` xyxy pixel boxes (tensor or array).
            pred_scores: ``[N]`` confidences.
            pred_labels: ``[N]`` class ids in ``[0, nc)``.
            gt_boxes: ``[M, 4]`` xyxy pixel boxes.
            gt_labels: ``[M]`` class ids in ``[0, nc)``.
            image_id: optional identifier, kept in ``image_ids`` (default: running index).
            gt_crowd: optional ``[M]`` bool, COCO ``iscrowd`` ground truth: a region where
                detections are neither right nor wrong (COCOeval: IoU = overlap / detection
                area, may absorb several detections, not counted as an instance).
        """
        boxes = _to_numpy(pred_boxes, np.float64, (4,), "pred_boxes")
        scores = _to_numpy(pred_scores, np.float64, (), "pred_scores")
        labels = _to_numpy(pred_labels, np.int64, (), "pred_labels")
        gboxes = _to_numpy(gt_boxes, np.float64, (4,), "gt_boxes")
        glabels = _to_numpy(gt_labels, np.int64, (), "gt_labels")
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(f"{len(boxes)} pred boxes, {len(scores)} scores, {len(labels)} labels")
        if len(gboxes) != len(glabels):
            raise ValueError(f"{len(gboxes)} gt boxes but {len(glabels)} gt labels")
        crowd = np.zeros(len(glabels), bool) if gt_crowd is None else _to_numpy(gt_crowd, bool, (), "gt_crowd")
        if len(crowd) != len(glabels):
            raise ValueError(f"{len(crowd)} gt_crowd flags for {len(glabels)} gt boxes")
        self._det.append((boxes, labels, scores))
        self._gt.append((gboxes, glabels, crowd))
        self.image_ids.append(len(self.image_ids) if image_id is None else image_id)

    def compute(self) -> EvalResult:
        """Compute all metrics over the images added so far."""
        det, gt = _Flat.from_images(self._det), _Flat.from_images(self._gt)
        nc = self.nc
        for labels, what in ((det.labels, "pred_labels"), (gt.labels, "gt_labels")):
            if labels.size and (labels.min() < 0 or labels.max() >= nc):
                raise ValueError(f"{what} outside [0, {nc}): {np.unique(labels).tolist()}")

        # 1. Detections in COCO's accumulation order (class, -score, image, input order), capped
        #    at max_dets per (image, class) group. Within a group this is also the matching order.
        order = _class_score_order(det.labels, det.scores)
        order = order[_cap_per_group(det.image[order] * nc + det.labels[order], self.max_dets)]
        d_img, d_cls, d_score, d_box = det.image[order], det.labels[order], det.scores[order], det.boxes[order]
        d_group = d_img * nc + d_cls
        d_outside = _outside_area_ranges(_area(d_box)).T  # [A, D]

        # 2. Ground truth sorted by group, input order within a group.
        g_key = gt.image * nc + gt.labels
        g_order = np.argsort(g_key, kind="stable")
        g_group, g_cls, g_box, g_crowd = g_key[g_order], gt.labels[g_order], gt.boxes[g_order], gt.crowd[g_order]
        # [G, A] ignored in that area range; crowd regions are ignored in all of them
        g_ignore = _outside_area_ranges(_area(g_box)) | g_crowd[:, None]

        # 3. Greedy COCO matching of every group at every IoU threshold and area range.
        pair_d, pair_g = _pairs_by_key(d_group, g_group)
        pair_iou = _paired_iou(d_box, pair_d, g_box, pair_g, g_crowd)
        matched, matched_ignored = _greedy_match(pair_d, pair_g, pair_iou, d_group, g_ignore, g_crowd)

        # 4. COCO precision/recall tables.
        npig = np.stack([np.bincount(g_cls[~g_ignore[:, a]], minlength=nc) for a in range(len(AREA_RANGES))], 1)
        coco_precision, coco_recall = _accumulate(d_cls, matched, matched_ignored, d_outside, npig, nc)

        # 5. YOLOv5's P/R/F1 at the best mean F1 (IoU 0.5, all areas) and the confusion matrix.
        #    Detections on crowd regions are left out, as COCOeval ignores them.
        counted = ~matched_ignored[0, 0]
        tp50 = matched[0, 0][counted]
        regular = ~gt.crowd
        instances = np.bincount(gt.labels[regular], minlength=nc)
        curves_prf = _f1_curves(d_cls[counted], d_score[counted], tp50, instances, nc)
        confusion = _confusion_matrix(det, gt.select(regular), nc, self.cm_conf, self.cm_iou)

        images_per_class = _images_per_class(gt.image[regular], gt.labels[regular], nc)
        return _assemble(
            self.names, coco_precision, coco_recall, curves_prf, instances,
            images_per_class, self.num_images, len(det.scores), confusion,
        )


@dataclass
class _Flat:
    """Per-image arrays concatenated, with the image index of each row."""

    image: np.ndarray  # [N] int64
    boxes: np.ndarray  # [N, 4] float64
    labels: np.ndarray  # [N] int64
    extra: np.ndarray  # [N] detections: float64 scores; ground truth: bool crowd flags

    @property
    def scores(self) -> np.ndarray:
        return self.extra

    @property
    def crowd(self) -> np.ndarray:
        return self.extra.astype(bool)

    def select(self, mask: np.ndarray) -> _Flat:
        return _Flat(self.image[mask], self.boxes[mask], self.labels[mask], self.extra[mask])

    @staticmethod
    def from_images(items: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> _Flat:
        """``items[i] = (boxes [n, 4], labels [n], extra [n])`` of image ``i``."""
        counts = np.array([len(item[0]) for item in items], dtype=np.int64)
        image = np.repeat(np.arange(len(items), dtype=np.int64), counts)
        if not items or counts.sum() == 0:
            return _Flat(image, np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0))
        return _Flat(image, *(np.concatenate([item[i] for item in items]) for i in range(3)))


def _area(boxes: np.ndarray) -> np.ndarray:
    """``[N, 4]`` xyxy -> ``[N]`` area ``w * h``."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _outside_area_ranges(area: np.ndarray) -> np.ndarray:
    """``[N]`` areas -> ``[N, A]`` outside each (inclusive) area range."""
    return (area[:, None] < AREA_RANGES[:, 0]) | (area[:, None] > AREA_RANGES[:, 1])


def _class_score_order(cls: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Indices sorted by (class, -score), input order kept on ties (COCOeval's mergesort).

    Two stable argsorts: the float sort, then a radix sort on the small class ids (faster than
    ``np.lexsort``)."""
    order = np.argsort(-score, kind="stable")
    key = cls[order].astype(np.int16 if cls.size == 0 or cls.max() < 2**15 else np.int64)
    return order[np.argsort(key, kind="stable")]


def _cap_per_group(group: np.ndarray, k: int) -> np.ndarray:
    """``[N]`` mask keeping the first ``k`` elements (in array order) of every group key."""
    keep = np.ones(len(group), dtype=bool)
    if len(group) <= k:
        return keep
    # Only groups with more than k members need ranking; they are rare.
    crowded = np.flatnonzero(np.bincount(group)[group] > k)
    if len(crowded):
        sub = crowded[np.argsort(group[crowded], kind="stable")]
        keep[sub[_rank_in_runs(group[sub]) >= k]] = False
    return keep


def _rank_in_runs(keys: np.ndarray) -> np.ndarray:
    """``[N]`` sorted keys -> position of each element inside its run of equal keys."""
    if len(keys) == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    lengths = np.diff(np.r_[starts, len(keys)])
    return np.arange(len(keys)) - np.repeat(starts, lengths)


def _pairs_by_key(a_key: np.ndarray, b_key_sorted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All index pairs ``(i, j)`` with ``a_key[i] == b_key_sorted[j]``; ``b_key_sorted`` ascending.
    Pairs come ordered by ``i`` then ``j``."""
    lo = np.searchsorted(b_key_sorted, a_key, side="left")
    count = np.searchsorted(b_key_sorted, a_key, side="right") - lo
    total = int(count.sum())
    pair_a = np.repeat(np.arange(len(a_key)), count)
    offset = np.arange(total) - np.repeat(np.cumsum(count) - count, count)
    return pair_a, np.repeat(lo, count) + offset


def _paired_iou(
    a: np.ndarray, ia: np.ndarray, b: np.ndarray, ib: np.ndarray, b_crowd: np.ndarray | None = None
) -> np.ndarray:
    """IoU of ``a[ia[p]]`` with ``b[ib[p]]`` for every pair ``p`` (xyxy float64 boxes) -> ``[P]``.

    Same arithmetic as pycocotools' ``bbIou``: no +1, zero when the overlap is empty, and for a
    crowd box ``b`` (``b_crowd``) the overlap over the area of ``a`` alone. Works on coordinate
    columns and skips pairs without horizontal overlap early: most pairs have none."""
    area_a, area_b = _area(a), _area(b)
    at, bt = np.ascontiguousarray(a.T), np.ascontiguousarray(b.T)  # [4, N]: cheap column gathers
    iw = np.minimum(at[2][ia], bt[2][ib])
    iw -= np.maximum(at[0][ia], bt[0][ib])
    keep = np.flatnonzero(iw > 0)
    ja, jb, iw = ia[keep], ib[keep], iw[keep]
    ih = np.minimum(at[3][ja], bt[3][jb])
    ih -= np.maximum(at[1][ja], bt[1][jb])
    overlap = ih > 0
    inter = np.where(overlap, iw * ih, 0.0)
    union = area_a[ja] + area_b[jb] - inter
    if b_crowd is not None:
        union = np.where(b_crowd[jb], area_a[ja], union)
    iou = np.zeros(len(ia))
    iou[keep] = np.divide(inter, union, out=np.zeros_like(inter), where=overlap)
    return iou


def _greedy_match(
    pair_d: np.ndarray,
    pair_g: np.ndarray,
    pair_iou: np.ndarray,
    d_group: np.ndarray,
    g_ignore: np.ndarray,
    g_crowd: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """COCOeval's greedy matching for every group, IoU threshold and area range at once.

    Args:
        pair_d, pair_g, pair_iou: ``[P]`` detection index, ground-truth index and IoU of every
            pair inside a group. Within a group, detection indices must be in matching order.
        d_group: ``[D]`` group key of each detection.
        g_ignore: ``[G, A]`` ground truth ignored in each area range.
        g_crowd: ``[G]`` crowd regions: they stay free after a match.

    Returns:
        ``matched [A, T, D]`` (the detection found a ground truth) and ``matched_ignored
        [A, T, D]`` (that ground truth is ignored in the area range, so the detection is too).
    """
    n_gt, n_area = g_ignore.shape
    n_det, n_thr = len(d_group), len(IOU_THRESHOLDS)
    thresholds = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)  # COCOeval caps the threshold likewise
    matched = np.zeros((n_area, n_thr, n_det), dtype=bool)
    matched_ignored = np.zeros((n_area, n_thr, n_det), dtype=bool)
    gt_taken = np.zeros((n_gt, n_area, n_thr), dtype=bool)  # gt-major: gathered by rows below

    keep = pair_iou >= thresholds[0]  # a pair below the lowest threshold never matches
    pd, pg, piou = pair_d[keep], pair_g[keep], pair_iou[keep]
    if len(pd) == 0:
        return matched, matched_ignored
    # Step of a detection = its rank among the detections of its group that have a candidate.
    # A step matches one detection of every group, so steps run in order (<= max_dets of them).
    cand = pd[np.r_[True, pd[1:] != pd[:-1]]]  # pd is ascending = matching order in a group
    by_group = np.argsort(d_group[cand], kind="stable")
    step_of_cand = np.empty(len(cand), dtype=np.int64)
    step_of_cand[by_group] = _rank_in_runs(d_group[cand][by_group])
    step = step_of_cand[np.searchsorted(cand, pd)]
    # Inside one detection's pairs, ascending (IoU, gt index): the last eligible pair is the one
    # COCOeval picks (highest IoU; on equal IoU, the later ground truth).
    order = np.lexsort((pg, piou, pd, step))
    pd, pg, piou, step = pd[order], pg[order], piou[order], step[order]
    bounds = np.searchsorted(step, np.arange(step[-1] + 2))
    above = piou[:, None] >= thresholds  # [P, T]

    for s in range(step[-1] + 1):
        lo, hi = bounds[s], bounds[s + 1]
        sd, sg = pd[lo:hi], pg[lo:hi]
        new_det = np.r_[True, sd[1:] != sd[:-1]]
        seg_start = np.flatnonzero(new_det)  # one segment per detection
        seg_of_pair = np.cumsum(new_det) - 1
        ignored = g_ignore[sg][:, :, None]  # [P, A, 1]
        free = above[lo:hi, None, :] & ~gt_taken[sg]  # [P, A, T] candidate ground truths
        has_regular = np.logical_or.reduceat(free & ~ignored, seg_start, axis=0)  # [S, A, T]
        # An ignored ground truth is eligible only when no regular one is (COCOeval's "break").
        eligible = free & ~(ignored & has_regular[seg_of_pair])
        pos = np.where(eligible, np.arange(hi - lo, dtype=np.int32)[:, None, None], -1)
        best = np.maximum.reduceat(pos, seg_start, axis=0)  # [S, A, T]: last eligible pair or -1
        s_idx, a_idx, t_idx = np.nonzero(best >= 0)
        chosen = best[s_idx, a_idx, t_idx]
        gt_taken[sg[chosen], a_idx, t_idx] = ~g_crowd[sg[chosen]]
        matched[a_idx, t_idx, sd[chosen]] = True
        matched_ignored[a_idx, t_idx, sd[chosen]] = g_ignore[sg[chosen], a_idx]
    return matched, matched_ignored


def _accumulate(
    cls: np.ndarray,
    matched: np.ndarray,
    matched_ignored: np.ndarray,
    outside: np.ndarray,
    npig: np.ndarray,
    nc: int,
) -> tuple[np.ndarray, np.ndarray]:
    """COCOeval.accumulate for maxDets 100, all classes at once.

    Args:
        cls: ``[D]`` classes of the detections, sorted by (class, -score, image, rank).
        matched, matched_ignored: ``[A, T, D]`` from :func:`_greedy_match`, in that order.
        outside: ``[A, D]`` detection area outside the range.
        npig: ``[nc, A]`` number of non-ignored ground truths.

    Returns:
        ``precision [T, R, nc, A]`` and ``recall [T, nc, A]``, ``-1`` where a class has no
        ground truth in the area range.
    """
    n_area, n_thr, n_det = matched.shape
    n_rec = len(RECALL_THRESHOLDS)
    precision = -np.ones((n_thr, n_rec, nc, n_area))
    recall = -np.ones((n_thr, nc, n_area))
    bounds = np.searchsorted(cls, np.arange(nc + 1))
    lo, hi = bounds[:-1], bounds[1:]
    # [A, T, D] true/false positives; ignored detections are neither (mig implies m).
    tps = matched & ~matched_ignored
    fps = ~matched & ~outside[:, None, :]
    stride = n_det + 2
    class_key = cls * stride  # sort key of the recall lookups below: class, then TP count
    for a in range(n_area):
        ks = np.flatnonzero(npig[:, a] > 0)
        if len(ks) == 0 or n_det == 0:  # no detections at all: AP and recall are 0
            precision[:, :, ks, a], recall[:, ks, a] = 0.0, 0.0
            continue
        n_gt = npig[ks, a].astype(float)
        need = _min_count_reaching(RECALL_THRESHOLDS, n_gt)  # [K, R]
        queries = ks[:, None] * stride + need
        n_gt_of_det = np.maximum(npig[cls, a], 1).astype(float)
        ends = hi[ks]
        for t in range(n_thr):
            # Cumulative counts restarted at every class: global cumsum minus the class's start.
            tp = _cumsum_per_segment(tps[a, t], lo, hi)
            fp = _cumsum_per_segment(fps[a, t], lo, hi)
            rc = tp / n_gt_of_det  # int / float: the same float64 values as COCOeval's
            pr = tp / (fp + tp + np.spacing(1))
            recall[t, ks, a] = np.where(ends > lo[ks], rc[np.maximum(ends - 1, 0)], 0.0)
            # Index of the first detection whose recall reaches each recall point:
            # COCOeval's searchsorted(rc, recThrs, "left"), done on integer TP counts.
            pos = np.searchsorted(class_key + tp, queries, side="left")  # [K, R]
            valid = pos < ends[:, None]
            precision[t, :, ks, a] = np.where(valid, _suffix_max_at(pr, pos, ends, valid), 0.0)
    return precision, recall


def _min_count_reaching(thresholds: np.ndarray, n: np.ndarray) -> np.ndarray:
    """``[K, R]`` smallest integer ``c`` with ``float(c / n[k]) >= thresholds[r]``.

    Exact for float arithmetic: start from ``ceil(thr * n)`` and fix the off-by-one rounding."""
    n = n[:, None]
    need = np.ceil(thresholds[None] * n)
    while True:
        down = (need > 0) & ((need - 1) / n >= thresholds)
        up = need / n < thresholds
        if not (down.any() or up.any()):
            return need.astype(np.int64)
        need = need - down + up


def _cumsum_per_segment(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``[N]`` bool -> int cumulative sums that restart at every segment ``[lo[k], hi[k])``."""
    csum = np.cumsum(x, dtype=np.int64)
    base = np.where(lo > 0, csum[np.maximum(lo - 1, 0)], 0)
    return csum - np.repeat(base, hi - lo)


def _suffix_max_at(values: np.ndarray, pos: np.ndarray, ends: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``max(values[pos[k, r] : ends[k]])`` for every ``[K, R]`` (``pos`` non-decreasing along r).

    The precision envelope of COCOeval (a reverse running max), read only where needed: maxima
    of the pieces between consecutive positions, then a running max over the R pieces."""
    n_k, n_r = pos.shape
    idx = np.concatenate([pos, ends[:, None]], axis=1).ravel()  # non-decreasing
    padded = np.r_[values, 0.0]  # so that an index equal to len(values) is valid
    piece = np.maximum.reduceat(padded, idx).reshape(n_k, n_r + 1)[:, :n_r]
    piece = np.where(valid, piece, 0.0)  # an invalid position holds no detection (values >= 0)
    return np.maximum.accumulate(piece[:, ::-1], axis=1)[:, ::-1]


def _smooth(y: np.ndarray, fraction: float) -> np.ndarray:
    """Box filter over ``fraction`` of the samples, edges padded with the end values."""
    width = round(len(y) * fraction * 2) // 2 + 1  # odd
    pad = width // 2
    padded = np.concatenate([np.full(pad, y[0]), y, np.full(pad, y[-1])])
    return np.convolve(padded, np.ones(width) / width, mode="valid")


def _f1_curves(
    cls: np.ndarray, score: np.ndarray, tp: np.ndarray, instances: np.ndarray, nc: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """YOLOv5's P, R, F1 against confidence, ``[nc, 1000]`` each.

    Args:
        cls, score, tp: ``[D]`` detections sorted by (class, -score), true positive at IoU 0.5.
        instances: ``[nc]`` ground-truth counts.
    """
    p = np.zeros((nc, len(CONF_GRID)))
    r = np.zeros((nc, len(CONF_GRID)))
    bounds = np.searchsorted(cls, np.arange(nc + 1))
    for k in np.flatnonzero(instances > 0):
        lo, hi = bounds[k], bounds[k + 1]
        if hi == lo:
            continue
        tpc = np.cumsum(tp[lo:hi])
        fpc = np.arange(1, hi - lo + 1) - tpc
        # np.interp needs increasing x: use -score (scores are sorted descending).
        r[k] = np.interp(-CONF_GRID, -score[lo:hi], tpc / (instances[k] + _EPS), left=0)
        p[k] = np.interp(-CONF_GRID, -score[lo:hi], tpc / (tpc + fpc), left=1)
    f1 = 2 * p * r / (p + r + _EPS)
    return p, r, f1


def _confusion_matrix(det: _Flat, gt: _Flat, nc: int, conf: float, iou_thr: float) -> np.ndarray:
    """YOLOv5's confusion matrix, class-agnostic matching within each image.

    Pairs with IoU > ``iou_thr`` are kept; each detection keeps its best pair, then each ground
    truth its best remaining pair. Matched pairs count at (predicted, true); unmatched ground truth
    at (background, true); unmatched detections at (predicted, background). Unlike YOLOv5 v7.0,
    false detections in an image where nothing matched are counted too.
    """
    matrix = np.zeros((nc + 1, nc + 1), dtype=np.int64)
    keep = np.flatnonzero(det.scores > conf)
    d_img, d_cls, d_box = det.image[keep], det.labels[keep], det.boxes[keep]
    g_img, g_cls, g_box = gt.image, gt.labels, gt.boxes  # already sorted by image
    pd, pg = _pairs_by_key(d_img, g_img)
    iou = _paired_iou(d_box, pd, g_box, pg)
    sel = iou > iou_thr
    pd, pg, iou = pd[sel], pg[sel], iou[sel]
    pd, pg, iou = _best_pair_per(pd, pg, iou)  # each detection keeps its best ground truth
    pg, pd, iou = _best_pair_per(pg, pd, iou)  # then each ground truth its best detection
    np.add.at(matrix, (d_cls[pd], g_cls[pg]), 1)
    g_free = np.ones(len(g_cls), dtype=bool)
    g_free[pg] = False
    d_free = np.ones(len(d_cls), dtype=bool)
    d_free[pd] = False
    np.add.at(matrix, (np.full(g_free.sum(), nc), g_cls[g_free]), 1)
    np.add.at(matrix, (d_cls[d_free], np.full(d_free.sum(), nc)), 1)
    return matrix


def _best_pair_per(key: np.ndarray, other: np.ndarray, iou: np.ndarray) -> tuple[np.ndarray, ...]:
    """Keep, for every distinct ``key``, its pair of highest IoU (lowest ``other`` on ties)."""
    order = np.lexsort((other, -iou, key))
    key, other, iou = key[order], other[order], iou[order]
    first = np.r_[True, key[1:] != key[:-1]] if len(key) else np.zeros(0, dtype=bool)
    return key[first], other[first], iou[first]


def _images_per_class(image: np.ndarray, cls: np.ndarray, nc: int) -> np.ndarray:
    pairs = np.unique(image * nc + cls)
    return np.bincount(pairs % nc, minlength=nc) if len(pairs) else np.zeros(nc, dtype=np.int64)


def _mean_valid(values: np.ndarray) -> float:
    """COCOeval's summary: the mean of the entries > -1, or -1 when there are none."""
    valid = values[values > -1]
    return float(np.mean(valid)) if valid.size else -1.0


def _assemble(
    names: list[str],
    coco_precision: np.ndarray,
    coco_recall: np.ndarray,
    curves_prf: tuple[np.ndarray, np.ndarray, np.ndarray],
    instances: np.ndarray,
    images_per_class: np.ndarray,
    n_images: int,
    n_predictions: int,
    confusion: np.ndarray,
) -> EvalResult:
    """Summaries and per-class numbers from the COCO tables and the YOLOv5 curves."""
    has_gt = instances > 0
    per_class = coco_precision[:, :, :, 0]  # [T, R, nc], area "all"
    ap = np.where(has_gt, per_class.mean(axis=(0, 1)), -1.0)
    ap50 = np.where(has_gt, per_class[0].mean(axis=0), -1.0)
    ap75 = np.where(has_gt, per_class[5].mean(axis=0), -1.0)

    p, r, f1 = curves_prf
    # YOLOv5: the confidence of the highest smoothed mean F1 over classes with ground truth
    best = int(_smooth(f1[has_gt].mean(axis=0), 0.1).argmax()) if has_gt.any() else 0
    class_p, class_r, class_f1 = p[:, best], r[:, best], f1[:, best]

    def mean_or_zero(x: np.ndarray) -> float:
        return float(x[has_gt].mean()) if has_gt.any() else 0.0

    return EvalResult(
        names=list(names),
        map50=_mean_valid(coco_precision[0, :, :, 0]),
        map75=_mean_valid(coco_precision[5, :, :, 0]),
        map=_mean_valid(coco_precision[:, :, :, 0]),
        map_small=_mean_valid(coco_precision[:, :, :, 1]),
        map_medium=_mean_valid(coco_precision[:, :, :, 2]),
        map_large=_mean_valid(coco_precision[:, :, :, 3]),
        precision=mean_or_zero(class_p),
        recall=mean_or_zero(class_r),
        f1=mean_or_zero(class_f1),
        conf_max_f1=float(CONF_GRID[best]),
        ap50=ap50,
        ap75=ap75,
        ap=ap,
        class_precision=np.where(has_gt, class_p, 0.0),
        class_recall=np.where(has_gt, class_r, 0.0),
        instances=instances,
        images_per_class=images_per_class,
        n_images=n_images,
        n_predictions=n_predictions,
        confusion_matrix=confusion,
        curves=Curves(
            conf=CONF_GRID, precision=p, recall=r, f1=f1,
            pr_recall=RECALL_THRESHOLDS, pr_precision=coco_precision[0, :, :, 0].T.copy(),
        ),
        coco_precision=coco_precision,
        coco_recall=coco_recall,
    )


def format_table(result: EvalResult, verbose: bool = False) -> str:
    """YOLOv5's results table (``Class Images Instances P R mAP50 mAP50-95``): the ``all`` row,
    and with ``verbose`` one row per class that has ground truth; then a COCO summary line."""
    head = ("%22s" + "%11s" * 6) % ("Class", "Images", "Instances", "P", "R", "mAP50", "mAP50-95")
    row = "%22s" + "%11i" * 2 + "%11.3g" * 4
    lines = [head, row % ("all", result.n_images, int(result.instances.sum()), result.precision, result.recall,
                          max(result.map50, 0.0), max(result.map, 0.0))]
    if verbose:
        for k in np.flatnonzero(result.instances > 0):
            lines.append(row % (result.names[k][:22], result.images_per_class[k], result.instances[k],
                                result.class_precision[k], result.class_recall[k], result.ap50[k], result.ap[k]))

    def fmt(v: float) -> str:
        return "-" if v < 0 else f"{v:.3f}"

    lines.append(f"COCO mAP50-95 {fmt(result.map)}  mAP50 {fmt(result.map50)}  mAP75 {fmt(result.map75)}  "
                 f"small {fmt(result.map_small)}  medium {fmt(result.map_medium)}  large {fmt(result.map_large)}")
    return "\n".join(lines)
