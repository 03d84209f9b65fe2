"""YOLOv5's anchor-based detection head (v7.0 ``Detect`` semantics)."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn


def order_anchors(anchors_px: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
    """Reverse the levels of pixel anchors ``[nl, na, 2]`` if their sizes run opposite to the
    strides (YOLOv5's ``check_anchor_order``): small anchors belong to the fine levels."""
    area = anchors_px.prod(-1).mean(-1)  # (nl,) mean anchor area per level
    if area[-1] != area[0] and bool(area[-1] > area[0]) != bool(strides[-1] > strides[0]):
        return anchors_px.flip(0)
    return anchors_px


class Detect(nn.Module):
    """One 1x1 conv per pyramid level predicting ``na`` anchors x ``(5 + nc)`` values per cell.

    Attributes:
        nc: number of classes; ``no = nc + 5`` outputs per anchor (x, y, w, h, obj, classes...).
        nl: number of levels; ``na``: anchors per level.
        stride: ``Tensor[nl]`` of level strides in pixels (from the builder's metadata).
        anchors: ``Tensor[nl, na, 2]`` anchor (w, h) in grid units (pixels / stride), a
            persistent buffer because AutoAnchor may rewrite it before training.

    Forward:
        training: the raw logits, a list of ``nl`` tensors ``[B, na, H_i, W_i, no]`` (for the loss).
        eval: decoded predictions ``[B, sum(na * H_i * W_i), no]`` with boxes as pixel
        ``(xc, yc, w, h)`` of the network input and sigmoid objectness/class scores.
    """

    def __init__(
        self,
        nc: int,
        anchors: Sequence[Sequence[float]],
        ch: Sequence[int],
        strides: Sequence[int],
    ) -> None:
        super().__init__()
        if len(anchors) != len(ch) or len(ch) != len(strides):
            raise ValueError(f"Detect: {len(anchors)} anchor sets for {len(ch)} input levels")
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.register_buffer("stride", torch.tensor(strides, dtype=torch.float32), persistent=False)
        anchors_px = order_anchors(torch.tensor(anchors, dtype=torch.float32).view(self.nl, -1, 2), self.stride)
        self.register_buffer("anchors", anchors_px / self.stride.view(-1, 1, 1))
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in ch)
        self.initialize_biases()

    @torch.no_grad()
    def initialize_biases(self) -> None:
        """Prior-aware bias init: about 8 objects per 640x640 image, class prior 0.6/nc."""
        for conv, s in zip(self.m, self.stride.tolist()):
            b = conv.bias.view(self.na, -1)  # (na, no)
            b[:, 4] += math.log(8 / (640 / s) ** 2)
            b[:, 5 : 5 + self.nc] += math.log(0.6 / (self.nc - 0.99999))

    def _grids(self, i: int, ny: int, nx: int, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cell offsets ``[1, 1, ny, nx, 2]`` (minus 0.5) and anchor sizes ``[1, na, 1, 1, 2]`` in pixels."""
        # arange in float32, then cast: ONNX has no float16 Range (an fp16 export would fail)
        y = torch.arange(ny, device=ref.device, dtype=torch.float32)
        x = torch.arange(nx, device=ref.device, dtype=torch.float32)
        yv, xv = torch.meshgrid(y, x, indexing="ij")
        grid = (torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2) - 0.5).to(ref.dtype)
        anchor_grid = (self.anchors[i] * self.stride[i]).to(ref.dtype).view(1, self.na, 1, 1, 2)
        return grid, anchor_grid

    def forward_raw(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """``[B, C_i, H_i, W_i]`` per level -> raw ``[B, na, H_i, W_i, no]`` per level."""
        out = []
        for conv, x in zip(self.m, feats):
            bs, _, ny, nx = x.shape
            out.append(conv(x).view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous())
        return out

    def decode(self, raw: list[torch.Tensor]) -> torch.Tensor:
        """Raw per-level logits -> ``[B, N, no]``: pixel xywh, objectness, class probabilities."""
        z = []
        for i, p in enumerate(raw):
            bs, _, ny, nx, _ = p.shape
            grid, anchor_grid = self._grids(i, ny, nx, p)
            xy, wh, conf = p.sigmoid().split((2, 2, self.nc + 1), 4)
            xy = (xy * 2 + grid) * self.stride[i]
            wh = (wh * 2) ** 2 * anchor_grid
            z.append(torch.cat((xy, wh, conf), 4).view(bs, -1, self.no))
        return torch.cat(z, 1)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor] | torch.Tensor:
        raw = self.forward_raw(feats)
        return raw if self.training else self.decode(raw)
