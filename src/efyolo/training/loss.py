"""YOLOv5's training loss (v7.0 ``utils/loss.py`` semantics) and its target assignment.

The loss has three parts, each a mean over its own elements and weighted by a hyperparameter:

* **box**: ``1 - CIoU`` between the decoded prediction and the target, over assigned cells;
* **obj**: BCE of every cell's objectness logit against a target that is the (detached,
  clamped at 0) CIoU at assigned cells and 0 elsewhere, weighted per level by
  ``4.0 / 1.0 / 0.4`` (P3 / P4 / P5): small-object levels have many more cells;
* **cls**: BCE of the class logits against label-smoothed one-hot targets (only when
  ``nc > 1``), optionally wrapped in a focal loss (``fl_gamma > 0``, alpha 0.25).

Target assignment works in grid units: a target goes to every anchor of a level whose
width/height ratio to it is below ``anchor_t`` (both ways), in the cell holding its centre and
in the two neighbouring cells nearest to the centre (a centre in the left half of its cell also
goes to the cell on its left, and so on), which is why the decoded centre may range over
``[-0.5, 1.5]`` cells.
"""

from __future__ import annotations

import math
from typing import Mapping, NamedTuple, Sequence

import torch
import torch.nn.functional as F

from efyolo.errors import EfyoloError

# YOLOv5's per-level objectness weights: {3 levels: P3-P5}, otherwise P3-P7.
_BALANCE_3 = [4.0, 1.0, 0.4]
_BALANCE_OTHER = [4.0, 1.0, 0.25, 0.06, 0.02]
_REQUIRED_HYP = ("box", "cls", "obj", "anchor_t")


class LevelTargets(NamedTuple):
    """The targets assigned on one detection level (``m`` assignments).

    Attributes:
        cls: ``Tensor[m]`` (long) class of each assignment.
        box: ``Tensor[m, 4]`` target ``(x, y, w, h)`` in grid units, ``x, y`` relative to the
            top-left corner of the assigned cell (so in ``[-0.5, 1.5]``).
        indices: ``(b, a, gj, gi)``, four ``Tensor[m]`` (long): image in the batch, anchor,
            grid row, grid column.
        anchors: ``Tensor[m, 2]`` the assigned anchor's ``(w, h)`` in grid units.
    """

    cls: torch.Tensor
    box: torch.Tensor
    indices: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
    anchors: torch.Tensor


def smooth_bce_targets(eps: float = 0.0) -> tuple[float, float]:
    """Label-smoothed BCE targets ``(positive, negative) = (1 - eps/2, eps/2)``."""
    return 1.0 - 0.5 * eps, 0.5 * eps


def bce_with_logits(
    logits: torch.Tensor,
    target: torch.Tensor,
    pos_weight: float = 1.0,
    gamma: float = 0.0,
    alpha: float = 0.25,
) -> torch.Tensor:
    """Mean binary cross-entropy on logits, optionally as a focal loss.

    Args:
        logits: raw predictions, any shape.
        target: targets in ``[0, 1]``, same shape.
        pos_weight: weight of the positive term (YOLOv5's ``cls_pw`` / ``obj_pw``).
        gamma: focal-loss exponent; 0 is plain BCE.
        alpha: focal-loss balance of positives vs negatives (used only when ``gamma > 0``).

    Returns:
        Scalar tensor, the mean over all elements.
    """
    pw = None
    if pos_weight != 1.0:
        pw = torch.tensor(pos_weight, device=logits.device, dtype=logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pw, reduction="none")
    if gamma > 0:
        # TF-addons focal loss, as YOLOv5: scale each term by alpha_t * (1 - p_t)^gamma.
        prob = logits.sigmoid()
        p_t = target * prob + (1 - target) * (1 - prob)
        alpha_t = target * alpha + (1 - target) * (1 - alpha)
        loss = loss * alpha_t * (1.0 - p_t) ** gamma
    return loss.mean()


def bbox_ciou(box1: torch.Tensor, box2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Elementwise Complete IoU of two sets of ``(xc, yc, w, h)`` boxes.

    ``CIoU = IoU - rho^2 / c^2 - alpha * v`` with ``rho`` the distance between the centres,
    ``c`` the diagonal of the smallest enclosing box, ``v`` the aspect-ratio consistency term
    ``4 / pi^2 * (atan(w2/h2) - atan(w1/h1))^2`` and ``alpha = v / (v - IoU + 1)`` treated as a
    constant for the gradient (Zheng et al., 2020; YOLOv5 ``bbox_iou(..., CIoU=True)``).

    Args:
        box1: ``Tensor[n, 4]`` predicted boxes.
        box2: ``Tensor[n, 4]`` target boxes, same units.
        eps: numerical guard.

    Returns:
        ``Tensor[n]`` CIoU in ``[-1.5, 1]``.
    """
    (x1, y1, w1, h1), (x2, y2, w2, h2) = box1.unbind(-1), box2.unbind(-1)
    b1_x1, b1_x2, b1_y1, b1_y2 = x1 - w1 / 2, x1 + w1 / 2, y1 - h1 / 2, y1 + h1 / 2
    b2_x1, b2_x2, b2_y1, b2_y2 = x2 - w2 / 2, x2 + w2 / 2, y2 - h2 / 2, y2 + h2 / 2

    inter_w = (torch.minimum(b1_x2, b2_x2) - torch.maximum(b1_x1, b2_x1)).clamp(0)
    inter_h = (torch.minimum(b1_y2, b2_y2) - torch.maximum(b1_y1, b2_y1)).clamp(0)
    inter = inter_w * inter_h
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union

    cw = torch.maximum(b1_x2, b2_x2) - torch.minimum(b1_x1, b2_x1)  # enclosing box width
    ch = torch.maximum(b1_y2, b2_y2) - torch.minimum(b1_y1, b2_y1)
    c2 = cw**2 + ch**2 + eps  # squared enclosing diagonal
    rho2 = (x2 - x1) ** 2 + (y2 - y1) ** 2  # squared centre distance
    v = (4 / math.pi**2) * (torch.atan(w2 / (h2 + eps)) - torch.atan(w1 / (h1 + eps))) ** 2
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)


def scale_loss_gains(hyp: Mapping[str, float], nc: int, nl: int, imgsz: int) -> dict:
    """YOLOv5 ``train.py``'s scaling of the loss gains to classes, levels and image size.

    ``box *= 3/nl``; ``cls *= nc/80 * 3/nl``; ``obj *= (imgsz/640)^2 * 3/nl`` (the default
    gains were tuned for COCO, 3 levels, 640 px).

    Args:
        hyp: hyperparameters with ``box``, ``cls`` and ``obj`` keys (not modified).
        nc: number of classes.
        nl: number of detection levels.
        imgsz: training image size in pixels.

    Returns:
        A new dict with the three gains scaled and every other key copied.
    """
    out = dict(hyp)
    out["box"] = hyp["box"] * 3 / nl
    out["cls"] = hyp["cls"] * nc / 80 * 3 / nl
    out["obj"] = hyp["obj"] * (imgsz / 640) ** 2 * 3 / nl
    return out


class ComputeLoss:
    """YOLOv5's loss for a detection head.

    Reads from ``detect``: ``nc``, ``nl``, ``na`` and ``anchors`` (``Tensor[nl, na, 2]`` in grid
    units). The anchors are read at every call, so anchors replaced by AutoAnchor or moved
    with the model to another device are picked up.

    Args:
        detect: the detection head (or any object with the attributes above).
        hyp: hyperparameters with YOLOv5's keys: ``box``, ``cls``, ``obj``, ``anchor_t``
            (required), ``cls_pw``, ``obj_pw`` (default 1.0), ``fl_gamma``,
            ``label_smoothing`` (default 0.0).
    """

    def __init__(self, detect, hyp: Mapping[str, float]):
        missing = [k for k in _REQUIRED_HYP if k not in hyp]
        if missing:
            raise EfyoloError(f"hyperparameters: missing key(s) {', '.join(missing)}")
        self.detect = detect
        self.hyp = dict(hyp)
        self.nc, self.nl, self.na = int(detect.nc), int(detect.nl), int(detect.na)
        self.cp, self.cn = smooth_bce_targets(self.hyp.get("label_smoothing", 0.0))
        self.gamma = float(self.hyp.get("fl_gamma", 0.0))
        self.balance = _BALANCE_3 if self.nl == 3 else _BALANCE_OTHER
        self.anchor_t = float(self.hyp["anchor_t"])
        self.g = 0.5  # neighbour-cell threshold: a centre this close to a cell edge

    def __call__(
        self, preds: Sequence[torch.Tensor], targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Compute the loss.

        Args:
            preds: ``nl`` tensors ``[B, na, H_i, W_i, nc + 5]`` of raw logits, laid out as
                ``(x, y, w, h, obj, cls...)``.
            targets: ``Tensor[n, 6]`` ``(image, class, xc, yc, w, h)``, coordinates normalised
                to the network input size.

        Returns:
            ``(loss * B, items)``: the weighted sum of the three losses times the batch size
            (YOLOv5's convention, so the gradient scales with the batch), and the detached
            ``Tensor[3]`` ``(box, obj, cls)`` of weighted losses.
        """
        device = preds[0].device
        lbox = torch.zeros(1, device=device)
        lobj = torch.zeros(1, device=device)
        lcls = torch.zeros(1, device=device)
        level_targets = self.build_targets(preds, targets)

        for i, (pi, lt) in enumerate(zip(preds, level_targets)):
            b, a, gj, gi = lt.indices
            tobj = torch.zeros(pi.shape[:4], device=device)  # [B, na, H, W] objectness targets
            if b.numel():
                # [m, no] predictions at the assigned cells, computed in float32
                pxy, pwh, _, pcls = pi[b, a, gj, gi].float().split((2, 2, 1, self.nc), 1)
                pxy = pxy.sigmoid() * 2 - 0.5  # centre offset in [-0.5, 1.5] cells
                pwh = (pwh.sigmoid() * 2) ** 2 * lt.anchors  # size in (0, 4) anchors
                iou = bbox_ciou(torch.cat((pxy, pwh), 1), lt.box)  # [m]
                lbox = lbox + (1.0 - iou).mean()
                # gr = 1.0: the objectness target is the IoU itself. A cell assigned twice
                # keeps one of its IoUs (the last write wins, as in YOLOv5).
                tobj[b, a, gj, gi] = iou.detach().clamp(0).to(tobj.dtype)
                if self.nc > 1:
                    t = torch.full_like(pcls, self.cn)
                    t[torch.arange(b.numel(), device=device), lt.cls] = self.cp
                    lcls = lcls + bce_with_logits(
                        pcls, t, self.hyp.get("cls_pw", 1.0), self.gamma
                    )
            obji = bce_with_logits(
                pi[..., 4].float(), tobj, self.hyp.get("obj_pw", 1.0), self.gamma
            )
            lobj = lobj + obji * self.balance[i]

        lbox = lbox * self.hyp["box"]
        lobj = lobj * self.hyp["obj"]
        lcls = lcls * self.hyp["cls"]
        bs = preds[0].shape[0]
        return (lbox + lobj + lcls).squeeze(0) * bs, torch.cat((lbox, lobj, lcls)).detach()

    def build_targets(
        self, preds: Sequence[torch.Tensor], targets: torch.Tensor
    ) -> list[LevelTargets]:
        """Assign targets to (image, anchor, cell) on every level.

        Args:
            preds: the per-level predictions (only their shapes and device are used).
            targets: ``Tensor[n, 6]`` ``(image, class, xc, yc, w, h)``, normalised.

        Returns:
            ``nl`` :class:`LevelTargets`, one per level, in level order.
        """
        device = preds[0].device
        na, nt = self.na, targets.shape[0]
        targets = targets.to(device=device, dtype=torch.float32)
        all_anchors = self.detect.anchors.to(device=device, dtype=torch.float32)  # [nl, na, 2]

        # [na, nt, 7]: every target once per anchor, with the anchor index appended
        ai = torch.arange(na, device=device, dtype=torch.float32).view(na, 1).expand(na, nt)
        targets = torch.cat((targets.expand(na, nt, 6), ai[..., None]), 2)

        g = self.g
        # the cell itself, then the left, upper, right and lower neighbours (as offsets
        # subtracted from the centre: +g moves the centre to the cell on the left)
        off = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], device=device).float() * g

        out = []
        for i in range(self.nl):
            anchors = all_anchors[i]  # [na, 2] grid units
            h, w = preds[i].shape[2], preds[i].shape[3]
            gain = torch.tensor([1, 1, w, h, w, h, 1], device=device, dtype=torch.float32)
            t = targets * gain  # [na, nt, 7] in grid units
            if nt:
                # anchor-ratio filter: both sides within a factor anchor_t of the anchor
                r = t[..., 4:6] / anchors[:, None]  # [na, nt, 2]
                keep = torch.max(r, 1 / r).max(2)[0] < self.anchor_t  # [na, nt]
                t = t[keep]  # [m, 7]

                gxy = t[:, 2:4]  # centre from the top-left corner
                gxi = gain[[2, 3]] - gxy  # centre from the bottom-right corner
                # left / upper neighbour when the centre is in the left / upper half of its
                # cell (and not in the first column / row); right / lower likewise
                j, k = ((gxy % 1 < g) & (gxy > 1)).T
                l, m = ((gxi % 1 < g) & (gxi > 1)).T
                sel = torch.stack((torch.ones_like(j), j, k, l, m))  # [5, m]
                t = t.expand(5, -1, -1)[sel]  # [m', 7]
                offsets = (torch.zeros_like(gxy)[None] + off[:, None])[sel]  # [m', 2]
            else:
                t = targets[0]  # [0, 7]
                offsets = torch.zeros_like(t[:, 2:4])

            b, c = t[:, 0].long(), t[:, 1].long()
            gxy, gwh, a = t[:, 2:4], t[:, 4:6], t[:, 6].long()
            gij = (gxy - offsets).long()
            # a centre on the far edge (x == 1.0) belongs to the last cell
            gij[:, 0].clamp_(0, w - 1)
            gij[:, 1].clamp_(0, h - 1)
            gi, gj = gij[:, 0], gij[:, 1]
            out.append(
                LevelTargets(
                    cls=c,
                    box=torch.cat((gxy - gij, gwh), 1),
                    indices=(b, a, gj, gi),
                    anchors=anchors[a],
                )
            )
        return out
