"""AutoAnchor: best possible recall, k-means + evolution, writing anchors back to the head."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from efyolo.training.autoanchor import bpr_aat, check_anchor_order, check_anchors, kmean_anchors, kmeans, label_wh_from_dataset

COCO_PX = np.array(
    [[10, 13], [16, 30], [33, 23], [30, 61], [62, 45], [59, 119], [116, 90], [156, 198],
     [373, 326]],
    dtype=np.float32,
)
GEN = 200  # evolution generations in tests (YOLOv5 uses 1000)


def make_detect(anchors_px: np.ndarray = COCO_PX, strides=(8.0, 16.0, 32.0), na: int = 3):
    """A stand-in for the Detect head: ``anchors`` in grid units, ``stride`` per level."""
    stride = torch.tensor(strides)
    anchors = torch.tensor(anchors_px, dtype=torch.float32).view(len(strides), na, 2)
    anchors = anchors / stride.view(-1, 1, 1)  # grid units
    return SimpleNamespace(stride=stride, anchors=anchors, nl=len(strides), na=na)


def mixed_sizes(rng: np.random.Generator, n: int = 600) -> np.ndarray:
    """Tiny squares of 2.5-6 px and long thin objects (400-600 x 15-25 px) at imgsz 640:
    neither fits the COCO anchors (13/3 > 4; 500/116 > 4 while 326/20 > 4)."""
    tiny = rng.uniform(2.5, 6, size=(n // 2, 1)) * rng.uniform(0.9, 1.1, size=(n // 2, 2))
    thin = np.stack((rng.uniform(400, 600, n - n // 2), rng.uniform(15, 25, n - n // 2)), 1)
    return np.concatenate((tiny, thin)).astype(np.float32)


def test_bpr_and_aat_hand_case():
    wh = np.array([[10, 10], [30, 30], [45, 45], [200, 10]], dtype=np.float32)
    # one 10x10 anchor: metrics 1, 1/3, 10/45 < 1/4, 10/200 -> 2 of 4 labels fit
    assert bpr_aat(wh, np.array([[10, 10]]), thr=4.0) == pytest.approx((0.5, 0.5))
    # add 100x100: best metrics 1, 1/3, 0.45, 0.1 -> 3 of 4; above 1/4: 1 + 2 + 1 + 0 = 4
    assert bpr_aat(wh, np.array([[10, 10], [100, 100]]), thr=4.0) == pytest.approx((0.75, 1.0))
    # thr 5 admits 45x45 vs 10x10 (0.222 > 0.2)
    assert bpr_aat(wh, np.array([[10, 10]]), thr=5.0)[0] == pytest.approx(0.75)
    # a zero-size label fits nothing instead of producing NaN
    assert bpr_aat(np.array([[0.0, 0.0], [10, 10]]), np.array([[10, 10]]))[0] == pytest.approx(0.5)


def test_check_reports_bpr_of_the_head():
    detect = make_detect(np.repeat([[10.0, 10.0], [100.0, 100.0], [400.0, 400.0]], 3, axis=0))
    wh = np.array([[10, 10], [30, 30], [45, 45], [200, 10], [900, 900]], dtype=np.float32)
    # best metrics: 1, 1/3, 0.45, 0.1, 0.44 -> 4 of 5; the evolution cannot fix 200x10 alone
    report = check_anchors(detect, wh, gen=20)
    assert report.bpr_before == pytest.approx(0.8)


def test_fitting_labels_keep_the_default_anchors(caplog):
    rng = np.random.default_rng(0)
    # every label within a factor 2.2 of one COCO anchor on each side
    base = COCO_PX[rng.integers(0, 9, 500)]
    wh = base * np.exp(rng.uniform(-0.8, 0.8, size=base.shape)).astype(np.float32)
    detect = make_detect()
    before = detect.anchors.clone()
    with caplog.at_level(logging.INFO, logger="efyolo"):
        report = check_anchors(detect, wh, gen=GEN)
    assert report.bpr_before == 1.0 and report.bpr_after == 1.0
    assert not report.replaced
    assert torch.equal(detect.anchors, before)
    np.testing.assert_allclose(report.anchors_px, COCO_PX, rtol=1e-6)
    assert "good fit" in caplog.text


def test_mismatched_labels_get_new_anchors_in_order(caplog, capsys):
    wh = mixed_sizes(np.random.default_rng(1))
    detect = make_detect()
    with caplog.at_level(logging.INFO, logger="efyolo"):
        report = check_anchors(detect, wh, gen=GEN, seed=0)
    assert report.bpr_before < 0.7
    assert report.replaced
    assert report.bpr_after > 0.98 and report.bpr_after > report.bpr_before
    assert report.bpr_after == pytest.approx(bpr_aat(wh, report.anchors_px)[0])
    # written back in grid units: pixels / stride, level by level
    px = (detect.anchors * detect.stride.view(-1, 1, 1)).view(-1, 2).numpy()
    np.testing.assert_allclose(px, report.anchors_px, rtol=1e-5)
    # smallest anchors on the stride-8 level: mean area grows with the stride
    area = (detect.anchors * detect.stride.view(-1, 1, 1)).prod(-1).mean(-1)
    assert (area.diff() > 0).all()
    assert "poor fit" in caplog.text
    assert capsys.readouterr().out == ""  # logged, not printed


def test_reversed_strides_get_reversed_anchors():
    wh = mixed_sizes(np.random.default_rng(1))
    detect = make_detect(strides=(32.0, 16.0, 8.0))
    report = check_anchors(detect, wh, gen=GEN)
    assert report.replaced
    px = detect.anchors * detect.stride.view(-1, 1, 1)
    area = px.prod(-1).mean(-1)
    assert (area.diff() < 0).all()  # the stride-32 level (first) has the largest anchors
    # the same anchors as with the usual order, levels reversed
    usual = make_detect()
    check_anchors(usual, wh, gen=GEN)
    torch.testing.assert_close(px.flip(0), usual.anchors * usual.stride.view(-1, 1, 1))


def test_check_anchor_order_flips_only_when_needed():
    detect = make_detect(COCO_PX[::-1].copy())  # largest anchors on the stride-8 level
    before = detect.anchors.clone()
    assert check_anchor_order(detect)
    assert torch.equal(detect.anchors, before.flip(0))  # levels swapped, values as they were
    assert not check_anchor_order(detect)
    assert torch.equal(detect.anchors, before.flip(0))


def test_original_anchors_kept_when_new_ones_are_worse():
    # one anchor, 8x8 px; 60% of labels are 8 px and 40% are 150 px (150/8 > 16: no single
    # anchor covers both). k-means puts the anchor at the mean (~65 px), which covers only the
    # 150 px group, and the evolution cannot cross the gap: the old anchor (BPR 0.6) stays.
    wh = np.array([[8.0, 8.0]] * 60 + [[150.0, 150.0]] * 40, dtype=np.float32)
    detect = make_detect(np.array([[8.0, 8.0]]), strides=(8.0,), na=1)
    report = check_anchors(detect, wh, gen=GEN)
    assert report.bpr_before == pytest.approx(0.6)
    assert not report.replaced and report.bpr_after == pytest.approx(0.6)
    assert torch.equal(detect.anchors, torch.ones(1, 1, 2))


def test_kmean_anchors_deterministic_for_a_seed():
    wh = mixed_sizes(np.random.default_rng(2))
    a = kmean_anchors(wh, n=9, gen=GEN, seed=5)
    b = kmean_anchors(wh, n=9, gen=GEN, seed=5)
    c = kmean_anchors(wh, n=9, gen=GEN, seed=6)
    assert a.shape == (9, 2) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert (np.diff(a.prod(1)) >= 0).all()  # sorted by area
    assert a.min() >= 2.0


def test_evolution_does_not_lower_fitness():
    wh = mixed_sizes(np.random.default_rng(3))
    k0 = kmean_anchors(wh, gen=0, seed=1)
    k1 = kmean_anchors(wh, gen=GEN, seed=1)

    def fitness(k):
        x = np.minimum(wh[:, None] / k[None], k[None] / wh[:, None]).min(2).max(1)
        return (x * (x > 0.25)).mean()

    assert fitness(k1) > fitness(k0)


def test_kmeans_finds_separated_clusters():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = np.concatenate([c + rng.normal(0, 0.3, size=(50, 2)) for c in centres])
    got = kmeans(x, 3, np.random.default_rng(1))
    dist = np.linalg.norm(centres[:, None] - got[None], axis=2)  # [3 true, 3 found]
    assert (dist.min(1) < 0.2).all() and len(set(dist.argmin(1))) == 3


def test_kmeans_iterates_to_convergence():
    # uniform points on [0, 1], k = 2: Lloyd's iterations converge to 0.25 / 0.75 from any
    # start, slowly (one step from two random points lands elsewhere)
    x = np.stack((np.linspace(0, 1, 1001), np.zeros(1001)), 1)
    for seed in range(5):
        c = np.sort(kmeans(x, 2, np.random.default_rng(seed), restarts=1)[:, 0])
        np.testing.assert_allclose(c, [0.25, 0.75], atol=2e-3)


def test_too_few_labels_fall_back_to_random_start():
    wh = np.array([[20.0, 30.0], [50.0, 40.0], [1.0, 1.0]], dtype=np.float32)
    k = kmean_anchors(wh, n=9, gen=50, seed=0)
    assert k.shape == (9, 2) and k.min() >= 2.0
    assert (np.diff(k.prod(1)) >= 0).all()


def test_no_labels_keeps_anchors():
    detect = make_detect()
    report = check_anchors(detect, np.zeros((0, 2)))
    assert not report.replaced and np.isnan(report.bpr_before)


def test_label_wh_from_dataset():
    shapes = np.array([[640, 480], [320, 640]])  # (w, h)
    labels = [
        np.array([[0, 0.5, 0.5, 0.5, 0.25], [1, 0.2, 0.2, 0.1, 0.1]]),
        np.array([[2, 0.5, 0.5, 1.0, 0.5]]),
    ]
    # at imgsz 320 the images become 320x240 and 160x320
    wh = label_wh_from_dataset(shapes, labels, imgsz=320)
    np.testing.assert_allclose(wh, [[160, 60], [32, 24], [160, 160]])
    # an image without labels contributes nothing
    assert len(label_wh_from_dataset(shapes, [labels[0], np.zeros((0, 5))], 320)) == 2

    scaled = label_wh_from_dataset(shapes, labels, 320, rng=np.random.default_rng(0))
    again = label_wh_from_dataset(shapes, labels, 320, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(scaled, again)
    factor = scaled / wh
    assert ((factor >= 0.9) & (factor <= 1.1)).all()
    np.testing.assert_allclose(factor[:, 0], factor[:, 1], rtol=1e-6)  # one factor per image
    np.testing.assert_allclose(factor[0], factor[1], rtol=1e-6)  # same image, same factor


def test_refit_replaces_oversized_anchors_although_bpr_is_perfect():
    """Labels of 8-60 px (a 192-px demo image): every label is within 4x of some COCO anchor, so
    `check` keeps YOLOv5's anchors; `refit` fits smaller ones (P5 no longer larger than any object),
    with the same BPR and a better match."""
    rng = np.random.default_rng(0)
    side = np.exp(rng.uniform(np.log(8), np.log(60), 400))
    wh = np.stack((side, side * np.exp(rng.uniform(-0.4, 0.4, 400))), 1).astype(np.float32)
    kept = check_anchors(make_detect(), wh, gen=GEN)
    assert kept.bpr_before == 1.0 and not kept.replaced
    detect = make_detect()
    report = check_anchors(detect, wh, gen=GEN, refit=True)
    assert report.replaced and report.bpr_after == 1.0
    assert report.anchors_px.max() < 120  # was 373 x 326
    areas = report.anchors_px.prod(1).reshape(3, 3).mean(1)
    assert areas[0] < areas[1] < areas[2]  # still small -> large with the strides


def test_refit_keeps_anchors_that_already_match():
    """Labels exactly at the nine anchors: nothing fits them better, so refit keeps them."""
    wh = np.repeat(COCO_PX, 40, axis=0)
    report = check_anchors(make_detect(), wh, gen=GEN, refit=True)
    assert not report.replaced
    np.testing.assert_allclose(report.anchors_px, COCO_PX, rtol=1e-6)
