"""NMS: per-class suppression, multi-label boxes, max_det."""

from __future__ import annotations
import pytest
import torch
from efyolo.ops.nms import non_max_suppression


def _pred(rows: list[list[float]], nc: int = 2) -> torch.Tensor:
    """Rows of (xc, yc, w, h, obj, cls0, cls1...) -> [1, N, 5 + nc]."""
    return torch.tensor(rows, dtype=torch.float32).view(1, -1, 5 + nc)


def test_nms_suppresses_overlaps_per_class() -> None:
    pred = _pred(
        [
            [50, 50, 20, 20, 0.9, 0.9, 0.1],  # class 0, score 0.81
            [51, 51, 20, 20, 0.8, 0.9, 0.1],  # overlaps the first, same class: suppressed
            [51, 51, 20, 20, 0.8, 0.1, 0.9],  # same place, other class: kept (class-aware)
            [150, 150, 10, 10, 0.1, 0.9, 0.1],  # below conf
        ]
    )
    (det,) = non_max_suppression(pred, conf_thres=0.25, iou_thres=0.45)
    assert det.shape == (2, 6)
    assert det[0].tolist() == pytest.approx([40, 40, 60, 60, 0.81, 0], abs=1e-5)
    assert det[1, 5] == 1
    (agnostic,) = non_max_suppression(pred, 0.25, 0.45, agnostic=True)
    assert agnostic.shape[0] == 1
    (only1,) = non_max_suppression(pred, 0.25, 0.45, classes=[1])
    assert only1[:, 5].tolist() == [1.0]


def test_nms_multi_label_and_max_det() -> None:
    pred = _pred([[50, 50, 20, 20, 1.0, 0.6, 0.5]])
    (det,) = non_max_suppression(pred, 0.25, 0.45, multi_label=True)
    assert sorted(det[:, 5].tolist()) == [0.0, 1.0]
    many = _pred([[10 * i + 5, 5, 4, 4, 0.9, 0.9, 0.0] for i in range(20)])
    (det,) = non_max_suppression(many, 0.25, 0.45, max_det=7)
    assert det.shape[0] == 7
    (empty,) = non_max_suppression(torch.zeros(1, 0, 7), 0.25, 0.45)
    assert empty.shape == (0, 6)
