"""Non-maximum suppression for YOLOv5-style decoded predictions (torchvision underneath)."""

from __future__ import annotations

import torch
import torchvision

from efyolo.ops.boxes import xywh2xyxy


def non_max_suppression(
    prediction: torch.Tensor,
    conf_thres: float = 0.25,
    iou_thres: float = 0.45,
    classes: list[int] | None = None,
    agnostic: bool = False,
    multi_label: bool = False,
    max_det: int = 300,
    max_nms: int = 30000,
) -> list[torch.Tensor]:
    """Filter decoded predictions to final detections, per image.

    Args:
        prediction: ``[B, N, 5 + nc]``: pixel ``(xc, yc, w, h)``, objectness, class probabilities
            (the eval-mode output of :class:`efyolo.models.head.Detect`).
        conf_thres: keep candidates whose ``objectness x class probability`` exceeds this.
        iou_thres: IoU above which a lower-scored box of the same class is suppressed.
        classes: keep only these class ids.
        agnostic: suppress across classes.
        multi_label: one candidate per (box, class) above threshold instead of the best class only.
        max_det: detections kept per image (highest scores).
        max_nms: candidates entering NMS per image (highest scores), a bound on its cost.

    Returns:
        A list of ``B`` tensors ``[n, 6]``: ``(x1, y1, x2, y2, score, class)``, sorted by score.
    """
    if not 0 <= conf_thres <= 1 or not 0 <= iou_thres <= 1:
        raise ValueError(f"conf_thres {conf_thres} and iou_thres {iou_thres} must be in [0, 1]")
    nc = prediction.shape[2] - 5
    output = []
    for x in prediction:  # (N, 5 + nc) for one image
        x = x[x[:, 4] > conf_thres]
        if nc == 1:
            scores = x[:, 4:5] * x[:, 5:6] if x.shape[1] > 5 else x[:, 4:5]
        else:
            scores = x[:, 5:] * x[:, 4:5]  # (n, nc) conf = obj * cls
        boxes = xywh2xyxy(x[:, :4])
        if multi_label and nc > 1:
            i, j = (scores > conf_thres).nonzero(as_tuple=True)
            det = torch.cat((boxes[i], scores[i, j, None], j[:, None].to(x.dtype)), 1)
        else:
            conf, j = scores.max(1, keepdim=True)
            det = torch.cat((boxes, conf, j.to(x.dtype)), 1)[conf.view(-1) > conf_thres]
        if classes is not None:
            det = det[(det[:, 5:6] == torch.tensor(classes, device=det.device, dtype=det.dtype)).any(1)]
        if det.shape[0] > max_nms:
            det = det[det[:, 4].argsort(descending=True)[:max_nms]]
        if det.shape[0]:
            group = torch.zeros_like(det[:, 5]) if agnostic else det[:, 5]
            keep = torchvision.ops.batched_nms(det[:, :4].float(), det[:, 4].float(), group, iou_thres)[:max_det]
            det = det[keep]
        output.append(det)
    return output
