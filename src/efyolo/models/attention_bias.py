"""Learned attention-bias tables that work at any token grid, shared by every attention module.

EfficientFormer (V1 and V2) learns one bias per head and per absolute token offset ``(|dy|, |dx|)``
on the grid its ImageNet checkpoints were trained at (7x7 tokens at 224 px; 14x14 for V2's
downsampling attention). A detector sees other grids (640 px -> 20x20 tokens at stride 32,
384x640 -> 12x20). We treat a table as resolution-relative, like the position tables of ViT/Swin
that are resampled for fine-tuning at a higher resolution: the ``[heads, R, R]`` table is
resampled bicubically with ``align_corners=True`` (offset 0 stays offset 0, the largest offset
lands on the largest) to ``[heads, h, w]`` over offsets ``0..h-1 x 0..w-1``, and every token pair's
bias is gathered from it with its ``(|dy|, |dx|)``. At the table's own grid the table is used as is
(exactly the original model); non-square grids work because ``|dy|`` and ``|dx|`` are indexed
separately.

:class:`BiasTableAttention` is the base of every module holding such a table. It caches the
gathered bias in eval mode (no gradient wanted) per ``(grid, device, dtype)``, recomputes it when
the table changes (its version counter or storage moved) or on ``train()`` / ``to()``, and in
training mode recomputes it every forward so gradients reach the table. It remembers the last grid
it served (``last_grid``), which is how the exporter freezes the bias of a fixed-size export as a
constant (:func:`efyolo.export.fold.materialize_attention_bias`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


# Logits more than this far below their row's maximum are raised to it before the softmax.
# exp(-70) = 4e-31, so every probability stays a normal float32 (> 1.2e-38) for up to 1e7 keys.
SOFTMAX_FLOOR = 70.0


def softmax_without_subnormals(logits: Tensor, dim: int = -1) -> Tensor:
    """``softmax(logits, dim)`` whose outputs are never subnormal floats.

    A trained attention is sharp: in a yolov5n-efficientformer-n0 trained for 7 minutes, 9% of the
    stride-32 attention's probabilities at 640 px were subnormal (below 1.2e-38). x86 CPUs compute
    on subnormals through a microcode assist, 10-100x slower, and ONNX Runtime's
    ``session.set_denormal_as_zero`` did not help here (1.32): that attention's ``attn @ v`` took
    11.4 ms instead of 0.3 ms, the whole model 27.9 ms instead of ~20. Clamping each logit to at
    most ``SOFTMAX_FLOOR`` below its row's maximum changes probabilities below ~4e-31 only
    (their sum over 1e7 keys stays below 4e-24), and adds a max, a subtraction and a clamp.
    """
    logits = logits - logits.amax(dim=dim, keepdim=True)  # the row maximum becomes 0
    return logits.clamp_min(-SOFTMAX_FLOOR).softmax(dim=dim)


def is_tracing() -> bool:
    """True while torch.jit.trace, torch.compile or torch.export records the forward."""
    is_compiling = getattr(torch.compiler, "is_compiling", None)  # torch >= 2.3
    return torch.jit.is_tracing() or (is_compiling is not None and is_compiling())


def offset_index(h: int, w: int, device: torch.device | None = None) -> Tensor:
    """Index into a flattened ``[h, w]`` offset table for every pair of tokens of an h x w grid.

    Returns:
        ``LongTensor[N, N]`` (N = h * w, tokens in row-major order) holding ``|dy| * w + |dx|``.
    """
    ys = torch.arange(h, device=device).repeat_interleave(w)  # (N,) row of each token
    xs = torch.arange(w, device=device).repeat(h)  # (N,) column of each token
    dy = (ys[:, None] - ys[None, :]).abs()
    dx = (xs[:, None] - xs[None, :]).abs()
    return dy * w + dx


def strided_offset_index(h: int, w: int, stride: int = 2, device: torch.device | None = None) -> Tensor:
    """Offsets between the queries of a strided grid and the keys of an h x w grid.

    Query ``(qy, qx)`` of the ``ceil(h / stride) x ceil(w / stride)`` grid sits at key position
    ``(stride * qy, stride * qx)`` (EfficientFormerV2's downsampling attention).

    Returns:
        ``LongTensor[Nq, Nk]`` holding ``|stride * qy - ky| * w + |stride * qx - kx|``.
    """
    hq, wq = -(-h // stride), -(-w // stride)
    qy = (torch.arange(hq, device=device) * stride).repeat_interleave(wq)  # (Nq,)
    qx = (torch.arange(wq, device=device) * stride).repeat(hq)
    ky = torch.arange(h, device=device).repeat_interleave(w)  # (Nk,)
    kx = torch.arange(w, device=device).repeat(h)
    return (qy[:, None] - ky[None, :]).abs() * w + (qx[:, None] - kx[None, :]).abs()


def resample_bias_table(table: Tensor, h: int, w: int) -> Tensor:
    """Resample a ``[heads, R, R]`` offset table to ``[heads, h, w]`` (see module docstring).

    Bicubic with ``align_corners=True``: offset 0 stays offset 0 and offset R-1 lands on h-1 / w-1.
    An axis whose size is unchanged is reproduced exactly (integer sample positions).
    """
    if table.shape[-2:] == (h, w):
        return table
    return F.interpolate(table[None], size=(h, w), mode="bicubic", align_corners=True)[0]


class BiasTableAttention(nn.Module):
    """Base of attention modules with a learned ``attention_biases`` table (see module docstring).

    Subclasses create ``self.attention_biases`` (an ``nn.Parameter``) and implement
    :meth:`compute_bias` for a grid; their forward calls :meth:`get_bias`.
    """

    attention_biases: nn.Parameter

    def __init__(self) -> None:
        super().__init__()
        self._bias_cache: dict[tuple[Any, ...], tuple[tuple[int, int], Tensor]] = {}
        self.last_grid: tuple[int, int] | None = None

    def train(self, mode: bool = True) -> "BiasTableAttention":
        self._bias_cache = {}
        return super().train(mode)

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> "BiasTableAttention":
        self._bias_cache = {}  # .to(device/dtype) invalidates cached biases
        return super()._apply(fn, *args, **kwargs)

    def compute_bias(self, h: int, w: int) -> Tensor:
        """The bias for an h x w grid (the grid the subclass defines), differentiable."""
        raise NotImplementedError

    def get_bias(self, h: int, w: int, dtype: torch.dtype) -> Tensor:
        """The bias to add to the attention logits; cached when no gradient can flow to it."""
        if not is_tracing():
            self.last_grid = (int(h), int(w))
        table = self.attention_biases
        needs_grad = torch.is_grad_enabled() and table.requires_grad
        if self.training or needs_grad or is_tracing():
            return self.compute_bias(h, w).to(dtype)
        key = (h, w, table.device, dtype)
        stamp = (table._version, table.data_ptr())  # changes when the table is modified/replaced
        hit = self._bias_cache.get(key)
        if hit is None or hit[0] != stamp:
            with torch.no_grad():
                hit = (stamp, self.compute_bias(h, w).to(dtype))
            self._bias_cache[key] = hit
        return hit[1]
