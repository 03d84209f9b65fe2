"""The evaluator: exact agreement with pycocotools, hand-checked cases, YOLOv5 extras."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch

from efyolo.evaluation.metrics import DetectionEvaluator, format_table

pycocotools = pytest.importorskip("pycocotools")
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402


def ltwh2xyxy(b: np.ndarray) -> np.ndarray:
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    return np.c_[b[:, :2], b[:, :2] + b[:, 2:]]


def random_case(rng: np.random.Generator) -> tuple[int, list[tuple]]:
    """A few images of ``(gt ltwh, gt cls, det ltwh, det cls, scores, gt crowd)`` mixing every
    edge case: images without ground truth or detections, classes without ground truth, integer
    boxes (exact IoU ties and IoU exactly at a threshold), tied scores, duplicate detections,
    > 100 detections of one class in an image, crowd regions; box sizes cover the small/medium/
    large area ranges."""
    n_img, nc = int(rng.integers(1, 7)), int(rng.integers(1, 5))
    integer = rng.random() < 0.4
    crowd_rate = rng.choice([0.0, 0.0, 0.2])
    if rng.random() < 0.25:
        return nc, [(*grid_image(rng, nc), rng.random(7) < crowd_rate) for _ in range(n_img)]
    images = []
    for _ in range(n_img):
        ng = int(rng.integers(0, 6))
        size = rng.choice([6.0, 30.0, 60.0, 150.0], size=(ng, 2)) * rng.uniform(0.5, 1.5, (ng, 2))
        gt = np.c_[rng.uniform(0, 300, (ng, 2)), size]
        gt = np.round(gt) if integer else gt
        gt_cls = rng.integers(0, nc, ng)
        dets, det_cls = [], []
        for j in range(ng):
            for _ in range(int(rng.integers(0, 3))):
                d = gt[j] + rng.normal(0, 0.12, 4) * np.r_[gt[j, 2:], gt[j, 2:]]
                d = np.round(d) if integer else d
                d[2:] = np.maximum(d[2:], 1)
                dets.append(d)
                det_cls.append(gt_cls[j] if rng.random() < 0.85 else rng.integers(0, nc))
        for _ in range(int(rng.integers(0, 5))):
            d = np.r_[rng.uniform(0, 300, 2), rng.uniform(2, 150, 2)]
            dets.append(np.round(d) if integer else d)
            det_cls.append(rng.integers(0, nc))
        if ng and rng.random() < 0.08:  # > 100 detections of one class in one image
            for _ in range(110):
                d = gt[0] + rng.normal(0, 0.2, 4) * np.r_[gt[0, 2:], gt[0, 2:]]
                d[2:] = np.maximum(d[2:], 1)
                dets.append(d)
                det_cls.append(gt_cls[0])
        dets, det_cls = np.array(dets).reshape(-1, 4), np.array(det_cls, dtype=int)
        if len(dets) and rng.random() < 0.3:  # exact duplicates
            k = rng.integers(0, len(dets), 3)
            dets, det_cls = np.r_[dets, dets[k]], np.r_[det_cls, det_cls[k]]
        scores = rng.choice([0.1, 0.5, 0.9], len(dets)) if rng.random() < 0.4 else rng.random(len(dets))
        if rng.random() < 0.1:
            dets, det_cls, scores = dets[:0], det_cls[:0], scores[:0]
        images.append((gt, gt_cls, dets, det_cls, scores, rng.random(ng) < crowd_rate))
    return nc, images


def grid_image(rng: np.random.Generator, nc: int) -> tuple:
    """Boxes on a coarse grid, crowded together: many exactly equal IoUs (a detection between
    two ground truths), IoUs exactly at a threshold such as 0.5, and overlapping boxes on both
    sides of an area-range boundary (32**2 or 96**2, by the scale)."""
    scale = rng.choice([1, 2, 6])

    def boxes(n: int) -> np.ndarray:
        return np.c_[rng.integers(0, 5, (n, 2)) * 5, rng.choice([10, 15, 20], (n, 2))].astype(float) * scale

    ng, nd = int(rng.integers(0, 7)), int(rng.integers(0, 12))
    return boxes(ng), rng.integers(0, nc, ng), boxes(nd), rng.integers(0, nc, nd), rng.choice([0.3, 0.6], nd)


def run_pycocotools(nc: int, images: list[tuple]) -> COCOeval:
    gt = {"images": [{"id": i} for i in range(len(images))], "categories": [{"id": k} for k in range(nc)],
          "annotations": []}
    dt = []
    for i, (g, gc, d, dc, s, crowd) in enumerate(images):
        for b, c, cr in zip(g.tolist(), gc.tolist(), crowd[: len(g)].tolist()):
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i, "category_id": c,
                                      "bbox": b, "area": b[2] * b[3], "iscrowd": int(cr)})
        for b, c, sc in zip(d.tolist(), dc.tolist(), s.tolist()):  # what COCO.loadRes makes of results
            dt.append({"id": len(dt) + 1, "image_id": i, "category_id": c, "bbox": b, "score": sc,
                       "area": b[2] * b[3], "iscrowd": 0})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = COCO()  # built by hand: loadRes refuses an empty results list
        coco_dt.dataset = {"images": gt["images"], "categories": gt["categories"], "annotations": dt}
        coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def run_ours(nc: int, images: list[tuple]):
    ev = DetectionEvaluator(nc)
    for g, gc, d, dc, s, crowd in images:
        ev.update(ltwh2xyxy(d), s, dc, ltwh2xyxy(g), gc, gt_crowd=crowd[: len(g)])
    return ev.compute()


def test_parity_with_pycocotools_on_random_cases() -> None:
    rng = np.random.default_rng(2024)
    n_truncated = n_empty_class = n_crowd = 0
    for case in range(200):
        nc, images = random_case(rng)
        ref, ours = run_pycocotools(nc, images), run_ours(nc, images)
        stats = ref.stats
        got = [ours.map, ours.map50, ours.map75, ours.map_small, ours.map_medium, ours.map_large]
        assert np.allclose(got, stats[:6], atol=1e-4, rtol=0), f"case {case}: {got} vs {stats[:6]}"
        prec = ref.eval["precision"][:, :, :, 0, -1]  # [T, R, K] area all, maxDets 100
        for k in range(nc):
            p = prec[:, :, k]
            ref_ap = p.mean() if (p > -1).any() else -1.0
            assert ours.ap[k] == pytest.approx(ref_ap, abs=1e-4), f"case {case} class {k}"
            assert ours.ap50[k] == pytest.approx(p[0].mean() if ref_ap > -1 else -1.0, abs=1e-4)
        assert np.abs(ours.coco_precision - ref.eval["precision"][..., -1]).max() <= 1e-12
        assert np.abs(ours.coco_recall - ref.eval["recall"][..., -1]).max() <= 1e-12
        n_truncated += any(np.bincount(d[3], minlength=nc).max() > 100 for d in images if len(d[3]))
        n_empty_class += (ours.instances == 0).any()
        n_crowd += any(im[5][: len(im[0])].any() for im in images)
    assert n_truncated >= 3 and n_empty_class >= 20 and n_crowd >= 20  # the edge cases were exercised


def test_equal_iou_goes_to_the_later_ground_truth() -> None:
    # d1 overlaps a and b equally (IoU 0.818): COCOeval gives it the later one, b, so d2 gets a
    gt = np.array([[0, 0, 10, 10], [2, 0, 10, 10]], dtype=float)  # ltwh: a, b
    det = np.array([[1, 0, 10, 10], [0, 0, 10, 10]], dtype=float)  # d1, d2 (= a)
    images = [(gt, np.array([0, 0]), det, np.array([0, 0]), np.array([0.9, 0.8]), np.zeros(2, bool))]
    ours, ref = run_ours(1, images), run_pycocotools(1, images)
    assert ours.map == pytest.approx(ref.stats[0], abs=1e-12)
    # IoU 0.5..0.8: two hits (AP 1); 0.85..0.95: d1 misses, then d2 hits (precision 1/2 up to
    # recall 1/2: AP 51 * 0.5 / 101). Giving d1 to a instead would leave d2 only b (IoU 0.667).
    assert ours.ap[0] == pytest.approx((7 + 3 * 51 * 0.5 / 101) / 10)


def test_hand_computed_ap() -> None:
    ev = DetectionEvaluator(2, ["a", "b"])
    gt = np.array([[0, 0, 10, 10]])
    # a false positive outranks the true one: precision 1/2 at recall 1 -> AP 0.5
    ev.update(np.array([[50, 50, 60, 60], [0, 0, 10, 10]]), [0.9, 0.8], [0, 0], gt, [0])
    r = ev.compute()
    assert r.ap50[0] == pytest.approx(0.5) and r.ap[0] == pytest.approx(0.5)
    assert r.ap[1] == -1 and r.instances.tolist() == [1, 0]
    assert r.map == pytest.approx(0.5)  # class b has no ground truth: left out of the mean


def test_no_predictions_and_no_ground_truth() -> None:
    ev = DetectionEvaluator(3)
    ev.update(np.zeros((0, 4)), [], [], np.array([[0, 0, 5, 5]]), [1])
    r = ev.compute()
    assert r.map50 == 0 and r.map == 0 and r.precision == 0 and r.recall == 0
    assert r.confusion_matrix[3, 1] == 1  # missed -> background row
    ev = DetectionEvaluator(3)
    ev.update(np.array([[0, 0, 5, 5]]), [0.9], [2], np.zeros((0, 4)), [])
    r = ev.compute()
    assert r.map == -1 and r.map50 == -1  # COCOeval: nothing to average
    assert r.confusion_matrix[2, 3] == 1  # false detection -> background column
    assert DetectionEvaluator(2).compute().map == -1  # no images at all


def test_only_100_detections_per_image_and_class_count() -> None:
    gt = np.array([[0, 0, 10, 10]])
    miss = np.tile([[50.0, 50, 60, 60]], (100, 1))
    # 100 higher-scoring misses of class 0, then the hit: it is the 101st of its group -> dropped
    ev = DetectionEvaluator(2)
    ev.update(np.r_[miss, gt], np.r_[np.full(100, 0.9), 0.1], np.zeros(101, int), gt, [0])
    assert ev.compute().map50 == 0
    # the same 100 misses labelled class 1 do not push the class-0 hit out
    ev = DetectionEvaluator(2)
    ev.update(np.r_[miss, gt], np.r_[np.full(100, 0.9), 0.1], np.r_[np.ones(100, int), 0], gt, [0])
    assert ev.compute().map50 == pytest.approx(1.0)


def test_duplicates_are_false_positives_and_ties_keep_input_order() -> None:
    gt = np.array([[0, 0, 10, 10]])
    ev = DetectionEvaluator(1)
    ev.update(np.r_[gt, gt], [0.5, 0.5], [0, 0], gt, [0])
    r = ev.compute()
    assert r.ap50[0] == pytest.approx(1.0)  # the first copy matches, the second comes after recall 1
    # two images, tied scores: the first image's false positive ranks first (COCOeval order)
    ev = DetectionEvaluator(1)
    ev.update(np.array([[50, 50, 60, 60]]), [0.5], [0], np.zeros((0, 4)), [])
    ev.update(gt, [0.5], [0], gt, [0])
    assert ev.compute().ap50[0] == pytest.approx(0.5)


def test_accepts_tensors_and_checks_inputs() -> None:
    ev = DetectionEvaluator(2)
    ev.update(torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([0.9]), torch.tensor([1]),
              torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([1]))
    assert ev.compute().ap[1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="pred_boxes"):
        ev.update(np.zeros((2, 3)), [0, 0], [0, 0], np.zeros((0, 4)), [])
    with pytest.raises(ValueError, match="scores"):
        ev.update(np.zeros((2, 4)), [0], [0, 0], np.zeros((0, 4)), [])
    ev.update(np.zeros((1, 4)), [0.5], [7], np.zeros((0, 4)), [])
    with pytest.raises(ValueError, match="outside"):
        ev.compute()


def test_confusion_matrix_yolov5_semantics() -> None:
    ev = DetectionEvaluator(2)
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]])
    det = np.array([
        [0, 0, 10, 10],    # class 0 on a class-0 box: correct
        [20, 20, 30, 30],  # class 0 on a class-1 box: confusion
        [1, 1, 10, 10],    # second detection on the first box: background (FP)
        [70, 70, 80, 80],  # nothing there: background (FP)
        [40, 40, 50, 50],  # below the 0.25 confidence: ignored, so box 3 is missed
    ])
    ev.update(det, [0.9, 0.8, 0.7, 0.6, 0.2], [0, 0, 1, 0, 1], gt, [0, 1, 1])
    m = ev.compute().confusion_matrix
    expected = np.zeros((3, 3), int)
    expected[0, 0] = 1  # predicted 0, true 0
    expected[0, 1] = 1  # predicted 0, true 1
    expected[1, 2] = 1  # predicted 1, background
    expected[0, 2] = 1  # predicted 0, background
    expected[2, 1] = 1  # missed true 1
    assert (m == expected).all(), m


def test_precision_recall_at_best_f1() -> None:
    ev = DetectionEvaluator(1)
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30]])
    # one hit at 0.9, one false positive at 0.6, the second hit at 0.3
    ev.update(np.array([[0, 0, 10, 10], [60, 60, 70, 70], [20, 20, 30, 30]]), [0.9, 0.6, 0.3], [0, 0, 0], gt, [0, 0])
    r = ev.compute()
    # the best F1 is at a confidence <= 0.3: P = 2/3, R = 1 (F1 0.8, beats 0.667 above 0.6)
    assert r.conf_max_f1 <= 0.3
    assert r.precision == pytest.approx(2 / 3, abs=1e-3) and r.recall == pytest.approx(1.0, abs=1e-3)
    table = format_table(r, verbose=True)
    assert table.splitlines()[0].split() == ["Class", "Images", "Instances", "P", "R", "mAP50", "mAP50-95"]
    assert table.splitlines()[1].split()[:3] == ["all", "1", "2"]
