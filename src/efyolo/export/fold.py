"""Rewrites of a prepared model that make exported graphs cheaper; the maths stays the same.

Attention bias as a constant (fixed-size exports, every format)
---------------------------------------------------------------
In eval mode the model caches the ``[heads, N, N]`` attention bias per grid, but while tracing it
recomputes it in the graph (bicubic resampling of the bias table and a gather), so that a
``--dynamic`` export follows the input size. For a fixed export size that computation is waste:
TorchScript would run it every forward and CoreML cannot convert it (no bicubic resize). Here
each attention module of a copy owned by the exporter gets the bias for its one grid as a buffer,
and its ``get_bias`` returns that buffer.

Pooling mixer as depthwise convolutions (ONNX and OpenVINO)
-----------------------------------------------------------
A fused Meta4D block computes ``y = lerp(x, pool(x), g)`` (``x + g * (pool(x) - x)``), then
``y + mlp(y)``. ONNX has no lerp: the tracer writes it as six element-wise ops (Sub, Mul, Add,
Mul, Sub, Where), and Sub is not one of the ops ONNX Runtime's CPU provider runs in its blocked
NCHWc layout, so every block converted its maps out of and back into that layout around the
mixer and the residual adds (67 reorder nodes in yolov5s-efficientformer-l1). Written as
``y = dwconv1x1(x; 1 - g) + dwconv1x1(pool(x); g)`` (two depthwise 1x1 convolutions, whose add
ONNX Runtime fuses into the second convolution) the whole block stays in NCHWc (5 reorders left):
yolov5s-efficientformer-l1 at 640, ONNX Runtime 1.32, 2 threads, median 328 -> 282 ms
(``benchmarks/bench_export.py``).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn


def _constant_bias(module: nn.Module, grid: tuple[int, int]) -> Callable[[int, int, torch.dtype], Tensor]:
    def get_bias(h: int, w: int, dtype: torch.dtype) -> Tensor:
        if (int(h), int(w)) != grid:
            raise RuntimeError(f"attention bias fixed for a {grid} token grid at export, got {(h, w)}")
        return module.fixed_bias.to(dtype)

    return get_bias


@torch.no_grad()
def materialize_attention_bias(model: nn.Module, imgsz: tuple[int, int]) -> int:
    """Freeze every learned attention bias at the token grid that ``imgsz`` gives, in place.

    Runs one forward pass at ``imgsz``; each attention module (a
    :class:`~efyolo.models.attention_bias.BiasTableAttention`: EfficientFormer V1 and V2, BoT3)
    remembers the grid it served, so no stride is assumed.

    Returns:
        The number of attention modules changed (0 for models without attention).
    """
    from efyolo.models.attention_bias import BiasTableAttention

    modules = [m for m in model.modules() if isinstance(m, BiasTableAttention)]
    if not modules:
        return 0
    for m in modules:
        m.last_grid = None
    p = next(model.parameters())
    model(torch.zeros(1, 3, *imgsz, device=p.device, dtype=p.dtype))
    for m in modules:
        grid = m.last_grid
        if grid is None:  # not on the forward path (an unused branch): leave it as it is
            continue
        m.register_buffer("fixed_bias", m.compute_bias(*grid), persistent=False)
        m.get_bias = _constant_bias(m, grid)  # instance attribute: shadows the class's get_bias
    return len(modules)


class PoolMixerBlock(nn.Module):
    """A Meta4D block for export: ``y = (1 - g) * x + g * pool(x)`` as two depthwise 1x1 convs,
    then ``y + ls2(mlp(y))`` (``ls2`` is an identity once the block is fused)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        gamma = block.ls1.gamma.detach()  # (C,) layer scale of the mixer branch
        c = gamma.numel()
        self.pool = block.token_mixer.pool
        self.mix_x = nn.Conv2d(c, c, 1, groups=c, bias=False, device=gamma.device, dtype=gamma.dtype)
        self.mix_pool = nn.Conv2d(c, c, 1, groups=c, bias=False, device=gamma.device, dtype=gamma.dtype)
        with torch.no_grad():
            self.mix_x.weight.copy_((1 - gamma).view(c, 1, 1, 1))
            self.mix_pool.weight.copy_(gamma.view(c, 1, 1, 1))
        self.mix_x.weight.requires_grad_(False)  # an export-time module: frozen like the model it joins
        self.mix_pool.weight.requires_grad_(False)
        self.mlp = block.mlp
        self.ls2 = block.ls2

    def forward(self, x: Tensor) -> Tensor:
        y = self.mix_x(x) + self.mix_pool(self.pool(x))  # (B, C, H, W)
        return y + self.ls2(self.mlp(y))


@torch.no_grad()
def rewrite_pool_mixers(model: nn.Module) -> int:
    """Replace every EfficientFormer Meta4D block with a pooling mixer (eval mode) by a
    :class:`PoolMixerBlock`, in place (a fused RepDWMixer block is one depthwise conv already).

    Returns:
        The number of blocks replaced.
    """
    from efyolo.models.efficientformer import Meta4D, Pooling

    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Meta4D) and isinstance(child.token_mixer, Pooling):
                setattr(parent, name, PoolMixerBlock(child))  # ModuleList children are set by index name
                count += 1
    return count
