"""NMS inside the exported graph: an end-to-end model with output ``[B, max_det, 6]``.

:class:`EndToEnd` wraps a detector in eval mode. Its output rows are ``(x1, y1, x2, y2, score,
class)`` in pixels of the network input, best first per image; rows past an image's detections
are all zero (score 0), so a consumer keeps the rows with ``score > 0``. Scores and the best class
per box are computed exactly as :func:`efyolo.ops.nms.non_max_suppression` does without
``multi_label`` (``objectness x class probability``), and suppression is per class.

The graph contains no loop over images, so the batch can stay dynamic:

1. one NMS over all images: ONNX ``NonMaxSuppression`` (batched natively) in ONNX exports,
   ``torchvision.ops.batched_nms`` with the image index as the group in TorchScript and eager
   mode (they select the same boxes); per-class suppression by offsetting each class's boxes by
   ``class * MAX_WH`` pixels so boxes of different classes never overlap;
2. sort the selected boxes by ``(image, -score)`` and number them within their image (a cumulative
   sum over a one-hot image mask);
3. scatter the first ``max_det`` of each image into a zero ``[B * max_det, 6]`` tensor.
"""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor, nn

from efyolo.ops.boxes import xywh2xyxy

MAX_WH = 7680.0  # class offset in pixels for per-class NMS (larger than any input side)


def select_torch(boxes: Tensor, scores: Tensor, iou: float, conf: float) -> Tensor:
    """NMS over a batch with torchvision: the ``[K, 3]`` ``(image, 0, box)`` indices it keeps.

    Args:
        boxes: ``[B, N, 4]`` xyxy (already class-offset for per-class NMS).
        scores: ``[B, N]``; boxes scoring ``<= conf`` are dropped first.
        iou: suppress a box whose IoU with a better one of its image exceeds this.
        conf: score threshold.
    """
    b, i = (scores > conf).nonzero(as_tuple=True)  # (K0,) image and box of each candidate
    keep = torchvision.ops.batched_nms(boxes[b, i], scores[b, i], b, iou)  # (K,) sorted by score
    b, i = b[keep], i[keep]
    return torch.stack((b, torch.zeros_like(b), i), 1)


class _OnnxNms(torch.autograd.Function):
    """ONNX ``NonMaxSuppression`` when exported; the same selection with torchvision when run."""

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, max_det: int, iou: float, conf: float) -> Tensor:  # noqa: ARG004
        # boxes (B, N, 4), scores (B, 1, N) -> selected (K, 3) int64 rows (image, class 0, box)
        return select_torch(boxes, scores[:, 0], iou, conf)

    @staticmethod
    def symbolic(g, boxes, scores, max_det: int, iou: float, conf: float):  # noqa: ANN001, ANN205
        return g.op(
            "NonMaxSuppression",
            boxes,
            scores,
            g.op("Constant", value_t=torch.tensor([max_det], dtype=torch.int64)),
            g.op("Constant", value_t=torch.tensor([iou], dtype=torch.float32)),
            g.op("Constant", value_t=torch.tensor([conf], dtype=torch.float32)),
        )


class EndToEnd(nn.Module):
    """A detector followed by NMS (see the module docstring).

    Args:
        model: eval-mode detector, ``[B, 3, H, W] -> [B, N, 5 + nc]`` (pixel xywh, obj, class probs).
        conf: score threshold (objectness x class probability).
        iou: NMS IoU threshold.
        max_det: detections kept per image; the output's second dimension.
        agnostic: suppress across classes.
        onnx: emit ONNX ``NonMaxSuppression`` (for ``torch.onnx.export``); ``False`` for
            TorchScript and eager use.
    """

    def __init__(
        self,
        model: nn.Module,
        conf: float = 0.25,
        iou: float = 0.45,
        max_det: int = 300,
        agnostic: bool = False,
        onnx: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.conf, self.iou, self.max_det = float(conf), float(iou), int(max_det)
        self.agnostic = agnostic
        self.onnx = onnx

    def forward(self, x: Tensor) -> Tensor:
        pred = self.model(x).float()  # (B, N, 5 + nc); NMS runs in float32 whatever the model's dtype
        n = pred.shape[1]
        boxes = xywh2xyxy(pred[..., :4])  # (B, N, 4)
        score, cls = (pred[..., 5:] * pred[..., 4:5]).max(-1)  # (B, N) best class per box
        shifted = boxes if self.agnostic else boxes + cls.unsqueeze(-1).to(boxes.dtype) * MAX_WH
        if self.onnx:
            sel = _OnnxNms.apply(shifted, score.unsqueeze(1), self.max_det, self.iou, self.conf)
        else:
            sel = select_torch(shifted, score, self.iou, self.conf)
        img, flat = sel[:, 0], sel[:, 0] * n + sel[:, 2]  # (K,) image index, flat box index
        det = torch.cat(
            (boxes.reshape(-1, 4)[flat], score.reshape(-1, 1)[flat], cls.reshape(-1, 1)[flat].to(boxes.dtype)), 1
        )  # (K, 6)
        return scatter_per_image(det, img, x.shape[0], self.max_det)


def scatter_per_image(det: Tensor, img: Tensor, batch: int | Tensor, max_det: int) -> Tensor:
    """``[K, 6]`` detections of any images -> ``[B, max_det, 6]``, best first, zero-padded.

    Args:
        det: rows ``(x1, y1, x2, y2, score, class)`` with scores in ``[0, 1]``.
        img: ``[K]`` image index of each row.
        batch: number of images ``B``.
        max_det: rows kept per image.
    """
    order = torch.argsort(img.to(det.dtype) * 2.0 - det[:, 4])  # by image, then score descending
    det, img = det[order], img[order]
    onehot = (img.unsqueeze(1) == torch.arange(batch, device=det.device).unsqueeze(0)).long()  # (K, B)
    rank = (onehot.cumsum(0) * onehot).sum(1) - 1  # (K,) position within its image
    keep = rank < max_det
    out = det.new_zeros(batch * max_det, 6)
    out[(img * max_det + rank)[keep]] = det[keep]
    return out.view(-1, max_det, 6)
