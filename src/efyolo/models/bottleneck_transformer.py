"""Bottleneck Transformer blocks for YOLOv5 configs: ``MHSA`` and the C3-style ``BoT3``.

BoTNet (Srinivas et al., "Bottleneck Transformers for Visual Recognition", arXiv 2101.11605)
replaces the 3x3 convolution of a ResNet bottleneck by multi-head self-attention over the whole
feature map. The YOLOv5-improvement series puts such bottlenecks inside a C3 block (``BoT3``) at
the end of the backbone or in the neck. BoTNet's relative position encoding is learned for one
fixed feature-map size; a detector sees many. Here the position term is a learned per-head bias
over signed 2-D token offsets ``(dy, dx)`` (Swin's relative position bias), kept as a
``[heads, 2R-1, 2R-1]`` table for an R x R reference grid and resampled to the actual
``(2h-1) x (2w-1)`` offsets of an h x w grid, the scheme EfficientFormer's tables use
(:mod:`efyolo.models.attention_bias`): exact at the reference grid, any size and aspect ratio
elsewhere, cached in eval mode and frozen to a constant in fixed-size exports.

Cost: attention is quadratic in the number of tokens. At stride 32 and 640 px that is 400 tokens
(cheap); at stride 8 it is 6400 tokens and a ``[B, heads, 6400, 6400]`` logit tensor. Put
``BoT3`` at stride 16 or 32.

YAML: ``[-1, n, BoT3, [c2]]`` or ``[c2, shortcut, heads]`` (defaults ``True, 4``), like ``C3``;
the hidden width ``c2 * width_multiple / 2`` must be a multiple of ``heads``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from efyolo.models.attention_bias import (
    BiasTableAttention,
    resample_bias_table,
    softmax_without_subnormals,
)
from efyolo.models.blocks import C3, ActFactory, Conv

REFERENCE_GRID = 20  # R: the token grid of a 640-px input at stride 32, where the table is exact


def signed_offset_index(h: int, w: int, device: torch.device | None = None) -> Tensor:
    """Index into a flattened ``[2h-1, 2w-1]`` signed-offset table for every token pair.

    Returns:
        ``LongTensor[N, N]`` (N = h * w, row-major tokens) holding
        ``(dy + h - 1) * (2w - 1) + (dx + w - 1)`` with ``dy = y_i - y_j`` and ``dx = x_i - x_j``.
    """
    ys = torch.arange(h, device=device).repeat_interleave(w)
    xs = torch.arange(w, device=device).repeat(h)
    dy = ys[:, None] - ys[None, :] + (h - 1)
    dx = xs[:, None] - xs[None, :] + (w - 1)
    return dy * (2 * w - 1) + dx


class MHSA(BiasTableAttention):
    """Multi-head self-attention over a feature map with a relative position bias.

    ``[B, C, H, W] -> [B, C, H, W]``: q, k, v are 1x1 convolutions (``C / heads`` channels per
    head), logits ``q.k / sqrt(C / heads) + bias[dy, dx]``, softmax over the ``H * W`` keys.
    """

    def __init__(self, dim: int, heads: int = 4, resolution: int = REFERENCE_GRID) -> None:
        super().__init__()
        if heads < 1 or dim % heads:
            raise ValueError(f"MHSA: {dim} channels do not split into {heads} heads")
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim**-0.5
        self.resolution = resolution
        self.q = nn.Conv2d(dim, dim, 1)
        self.k = nn.Conv2d(dim, dim, 1)
        self.v = nn.Conv2d(dim, dim, 1)
        side = 2 * resolution - 1
        self.attention_biases = nn.Parameter(torch.zeros(heads, side, side))
        nn.init.trunc_normal_(self.attention_biases, std=0.02)
        self.stride = 1

    def compute_bias(self, h: int, w: int) -> Tensor:
        """``[heads, N, N]`` bias for an h x w grid, differentiable w.r.t. the table."""
        table = resample_bias_table(self.attention_biases, 2 * h - 1, 2 * w - 1)
        return table.flatten(1)[:, signed_offset_index(h, w, table.device)]

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape

        def heads(t: Tensor) -> Tensor:  # (B, C, H, W) -> (B, heads, N, head_dim)
            return t.reshape(B, self.heads, self.head_dim, H * W).transpose(2, 3)

        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        logits = (q * self.scale) @ k.transpose(2, 3)  # (B, heads, N, N)
        attn = softmax_without_subnormals(logits + self.get_bias(H, W, logits.dtype))
        out = attn @ v  # (B, heads, N, head_dim)
        return out.transpose(2, 3).reshape(B, C, H, W)


class BoTBottleneck(nn.Module):
    """1x1 Conv -> MHSA -> BN + activation -> 1x1 Conv, with a residual when shapes allow."""

    def __init__(
        self, c1: int, c2: int, shortcut: bool = True, heads: int = 4, e: float = 1.0,
        *, default_act: ActFactory | None = None,
    ) -> None:
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1, default_act=default_act)
        self.attn = MHSA(c_, heads)
        self.norm = nn.BatchNorm2d(c_, eps=1e-3, momentum=0.03)
        self.act = default_act() if default_act is not None else nn.SiLU()
        self.cv2 = Conv(c_, c2, 1, 1, default_act=default_act)
        self.add = shortcut and c1 == c2
        self.stride = 1

    def forward(self, x: Tensor) -> Tensor:
        y = self.cv2(self.act(self.norm(self.attn(self.cv1(x)))))
        return x + y if self.add else y


class BoT3(C3):
    """C3 with Bottleneck-Transformer bottlenecks: ``cv3(cat(m(cv1(x)), cv2(x)))``.

    YAML arguments ``[c2, shortcut, heads]`` (``heads`` where C3 has its group count ``g``).
    """

    def __init__(
        self, c1: int, c2: int, n: int = 1, shortcut: bool = True, heads: int = 4, e: float = 0.5,
        *, default_act: ActFactory | None = None,
    ):
        c_ = int(c2 * e)
        if heads < 1 or c_ % heads:
            raise ValueError(f"BoT3: hidden width {c_} (= {c2} x {e}) does not split into {heads} heads")
        self.heads = heads  # read by _inner during C3.__init__
        super().__init__(c1, c2, n, shortcut, 1, e, default_act=default_act)

    def _inner(self, c_: int, n: int, shortcut: bool, g: int, default_act: ActFactory | None) -> nn.Module:
        return nn.Sequential(*(BoTBottleneck(c_, c_, shortcut, self.heads, default_act=default_act) for _ in range(n)))
