"""YOLOv5's ``C3TR``: a C3 block whose inner bottlenecks are a small vision transformer.

The semantics are those of YOLOv5 v7.0 (``TransformerLayer``, ``TransformerBlock``, ``C3TR`` in its
``models/common.py``), parameter- and state-dict-exact (``m.linear``, ``m.tr.<i>.{q,k,v,ma,fc1,fc2}``):

* :class:`TransformerLayer`: ViT encoder layer without LayerNorm (as YOLOv5): bias-free q, k, v
  projections feeding ``nn.MultiheadAttention``, a residual, then a bias-free two-layer linear MLP
  (no activation between) and a residual.
* :class:`TransformerBlock`: optional Conv to ``c2`` channels, the ``H*W`` pixels as a sequence of
  tokens ``[H*W, B, C]`` plus a learned linear position embedding ``p + linear(p)``, ``num_layers``
  layers, back to ``[B, C, H, W]``.
* :class:`C3TR`: ``C3`` with ``TransformerBlock(c_, c_, 4 heads, n layers)`` as its inner block.

Attention is quadratic in the number of pixels: YOLOv5 places C3TR at stride 32 only.
"""

from __future__ import annotations

import torch
from torch import nn

from efyolo.models.blocks import C3, ActFactory, Conv


class TransformerLayer(nn.Module):
    """``[N, B, C] -> [N, B, C]`` (sequence first): attention and MLP, each with a residual."""

    def __init__(self, c: int, num_heads: int) -> None:
        super().__init__()
        if num_heads < 1 or c % num_heads:
            raise ValueError(f"TransformerLayer: {c} channels do not split into {num_heads} heads")
        self.q = nn.Linear(c, c, bias=False)
        self.k = nn.Linear(c, c, bias=False)
        self.v = nn.Linear(c, c, bias=False)
        self.ma = nn.MultiheadAttention(embed_dim=c, num_heads=num_heads)
        self.fc1 = nn.Linear(c, c, bias=False)
        self.fc2 = nn.Linear(c, c, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn, _ = self.ma(self.q(x), self.k(x), self.v(x), need_weights=False)
        x = x + attn
        return x + self.fc2(self.fc1(x))


class TransformerBlock(nn.Module):
    """``[B, c1, H, W] -> [B, c2, H, W]``: (Conv if ``c1 != c2``), position embedding, ``num_layers`` layers."""

    def __init__(
        self, c1: int, c2: int, num_heads: int, num_layers: int, *, default_act: ActFactory | None = None
    ) -> None:
        super().__init__()
        self.conv = Conv(c1, c2, default_act=default_act) if c1 != c2 else None
        self.linear = nn.Linear(c2, c2)  # learned position embedding
        self.tr = nn.Sequential(*(TransformerLayer(c2, num_heads) for _ in range(num_layers)))
        self.c2 = c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is not None:
            x = self.conv(x)
        b, _, h, w = x.shape
        tokens = x.flatten(2).permute(2, 0, 1)  # [H*W, B, C], row-major pixels
        out = self.tr(tokens + self.linear(tokens))
        return out.permute(1, 2, 0).reshape(b, self.c2, h, w)


class C3TR(C3):
    """C3 with a :class:`TransformerBlock` (4 heads, ``n`` layers) in place of its ``n`` bottlenecks.

    YAML: ``[-1, n, C3TR, [c2]]`` like C3; the hidden width ``c2 * width_multiple / 2`` must be a
    multiple of 4.
    """

    def _inner(self, c_: int, n: int, shortcut: bool, g: int, default_act: ActFactory | None) -> nn.Module:
        return TransformerBlock(c_, c_, 4, n, default_act=default_act)
