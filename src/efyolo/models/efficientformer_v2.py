"""EfficientFormerV2 S0 / S1 / S2 / L as a multi-scale detection backbone.

Architecture as in snap-research/EfficientFormer ``models/efficientformer_v2.py`` (arXiv 2212.08059,
"Rethinking Vision Transformers for MobileNet Size and Speed"): a stride-4 convolutional stem
(two conv3x3 s2 + BN + GELU), four stages of blocks joined by stride-2 downsamples. Every block
has a convolutional FFN (conv1x1 -> depthwise conv3x3 -> conv1x1, each with BN); the last
``num_vit`` blocks of stages 2 and 3 first add a 4D multi-head attention (:class:`Attention4D`,
stride-2 in stage 2), and the downsample into stage 3 adds a downsampling attention
(:class:`Attention4DDownsample`) to its strided conv. Everything stays NCHW; attention flattens the
map only inside the module.

Module and parameter names follow timm's port (``stem.conv1.conv``, ``stages.S.downsample.conv.bn``,
``stages.3.downsample.attn.q.local``, ``stages.S.blocks.j.mlp.fc1.conv``, ``ls1.gamma``,
``token_mixer.talking_head1``, ...), so a timm state dict loads by identity and an official one
through the key map of :mod:`efyolo.models.efficientformer_v2_weights`.

Attention bias at any input size
--------------------------------
Both attentions learn one bias per head and per absolute token offset ``(|dy|, |dx|)``, on the
grids of 224-px ImageNet training:

* :class:`Attention4D`: ``attention_biases`` ``[8, 7*7]`` over the grid it attends on (stage 3's
  7x7 tokens; in stage 2 the grid after its stride-2 conv, 14x14 -> 7x7). The ``[8, 7, 7]`` table
  is resampled to the actual grid ``(h, w)`` and gathered with
  :func:`~efyolo.models.attention_bias.offset_index`: ``[8, h*w, h*w]``.
* :class:`Attention4DDownsample`: ``[8, 14*14]`` over its key grid (stage 2's 14x14 map); query
  ``(qy, qx)`` of the half grid sits at key ``(2qy, 2qx)``. The ``[8, 14, 14]`` table is resampled
  to the key grid ``(h, w)`` and gathered with
  :func:`~efyolo.models.attention_bias.strided_offset_index`: ``[8, ceil(h/2)*ceil(w/2), h*w]``.

Resampling, the eval-mode cache and ``last_grid`` (which the exporter uses to freeze a fixed-size
bias) are :class:`~efyolo.models.attention_bias.BiasTableAttention`'s; see
:mod:`efyolo.models.attention_bias`. At 224 px the tables are used as they are (exactly the
original model); every reshape takes its sizes from the actual input, so any input whose sides are
multiples of 32 works, square or not. The official detection code instead starts new zero tables
for one fixed grid (discarding the ImageNet biases), and timm's module runs only at the
``img_size`` it was built for.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from efyolo.errors import EfyoloError
from efyolo.models.attention_bias import (
    BiasTableAttention,
    offset_index,
    resample_bias_table,
    softmax_without_subnormals,
    strided_offset_index,
)
from efyolo.models.efficientformer import DropPath, LayerScale, fold_bn, scale_output
from efyolo.models.efficientformer_v2_weights import load_efficientformer_v2_weights
from efyolo.models.registry import BACKBONES

# name -> (depths, widths, attention blocks at the end of stages 2 and 3,
#          per-stage MLP expansion ratios (one per block), default drop-path rate)
VARIANTS: dict[str, tuple[tuple[int, ...], tuple[int, ...], int, tuple[tuple[int, ...], ...], float]] = {
    "s0": ((2, 2, 6, 4), (32, 48, 96, 176), 2,
           ((4, 4), (4, 4), (4, 3, 3, 3, 4, 4), (4, 3, 3, 4)), 0.0),
    "s1": ((3, 3, 9, 6), (32, 48, 120, 224), 2,
           ((4, 4, 4), (4, 4, 4), (4, 4, 3, 3, 3, 3, 4, 4, 4), (4, 4, 3, 3, 4, 4)), 0.0),
    "s2": ((4, 4, 12, 8), (32, 64, 144, 288), 4,
           ((4,) * 4, (4,) * 4, (4, 4, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4), (4, 4, 3, 3, 3, 3, 4, 4)), 0.02),
    "l": ((5, 5, 15, 10), (40, 80, 192, 384), 6,
          ((4,) * 5, (4,) * 5, (4, 4, 4, 4, 3, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4),
           (4, 4, 4, 3, 3, 3, 3, 4, 4, 4)), 0.1),
}  # fmt: skip
SIZE_DIVISOR = 32  # total stride; every input side must be a multiple of it
BIAS_RESOLUTION = 7  # Attention4D table side (224 / 32)
DOWNSAMPLE_BIAS_RESOLUTION = 14  # Attention4DDownsample table side (its key grid, 224 / 16)


class ConvNorm(nn.Module):
    """conv (with bias) -> BN [-> GELU]; ``fuse()`` folds the BN into the conv."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        act: bool = False,
    ) -> None:
        super().__init__()
        padding = (stride - 1 + kernel_size - 1) // 2  # 1 for 3x3 (s1 and s2), 0 for 1x1
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, groups=groups)
        self.bn: nn.Module = nn.BatchNorm2d(out_chs)
        self.act: nn.Module = nn.GELU() if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))

    def fuse(self) -> None:
        if isinstance(self.bn, nn.BatchNorm2d):
            fold_bn(self.conv, self.bn)
            self.bn = nn.Identity()


class Stem(nn.Module):
    """(conv3x3 s2 -> BN -> GELU) x 2: ``[B, 3, H, W] -> [B, C, H/4, W/4]``."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.conv1 = ConvNorm(in_chs, out_chs // 2, 3, stride=2, act=True)
        self.conv2 = ConvNorm(out_chs // 2, out_chs, 3, stride=2, act=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.conv1(x))


@torch.no_grad()
def _fold_scale(conv: nn.Conv2d, scale: float) -> None:
    """Multiply a conv's output by a scalar (in place)."""
    conv.weight.mul_(scale)
    conv.bias.mul_(scale)


class Attention4D(BiasTableAttention):
    """Multi-head self-attention on a ``[B, C, H, W]`` map with talking heads and a local value conv.

    ``q, k``: conv1x1+BN to ``heads * key_dim`` (256); ``v``: conv1x1+BN to ``heads * attn_ratio *
    key_dim`` (1024), plus ``v_local`` (depthwise conv3x3+BN on v) added to the attention output.
    With ``stride`` (stage 2) it attends on the map after a depthwise conv3x3 s2 + BN and upsamples
    the result (bilinear) back to the input grid before the output projection.
    """

    def __init__(
        self,
        dim: int,
        key_dim: int = 32,
        num_heads: int = 8,
        attn_ratio: int = 4,
        resolution: int = BIAS_RESOLUTION,
        stride: int | None = None,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.val_dim = attn_ratio * key_dim  # per head
        self.scale = key_dim**-0.5
        self.resolution = resolution
        self.stride = stride
        kh, dh = num_heads * key_dim, num_heads * self.val_dim
        self.stride_conv = ConvNorm(dim, dim, 3, stride, groups=dim) if stride else None
        self.q = ConvNorm(dim, kh)
        self.k = ConvNorm(dim, kh)
        self.v = ConvNorm(dim, dh)
        self.v_local = ConvNorm(dh, dh, 3, groups=dh)
        self.talking_head1 = nn.Conv2d(num_heads, num_heads, 1)
        self.talking_head2 = nn.Conv2d(num_heads, num_heads, 1)
        self.act = nn.GELU()
        self.proj = ConvNorm(dh, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, resolution * resolution))

    def compute_bias(self, h: int, w: int) -> Tensor:
        """``[heads, N, N]`` bias for the h x w grid attended on (N = h * w), differentiable."""
        r = self.resolution
        table = resample_bias_table(self.attention_biases.view(-1, r, r), h, w)  # (heads, h, w)
        return table.flatten(1)[:, offset_index(h, w, table.device)]

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W] -> [B, C, H, W]``."""
        B, _, H, W = x.shape
        if self.stride_conv is not None:
            x = self.stride_conv(x)  # (B, C, h, w) = (B, C, ceil(H/2), ceil(W/2))
        h, w = x.shape[2], x.shape[3]
        nh = self.num_heads
        q = self.q(x).reshape(B, nh, self.key_dim, -1).transpose(-2, -1)  # (B, nh, N, kd)
        k = self.k(x).reshape(B, nh, self.key_dim, -1)  # (B, nh, kd, N)
        v = self.v(x)  # (B, dh, h, w)
        v_local = self.v_local(v)
        v = v.reshape(B, nh, self.val_dim, -1).transpose(-2, -1)  # (B, nh, N, d)

        attn = q @ k  # (B, nh, N, N) logits
        if self.scale != 1.0:  # 1.0 once fuse() folded the scale into q
            attn = attn * self.scale
        attn = attn + self.get_bias(h, w, attn.dtype)
        attn = self.talking_head2(softmax_without_subnormals(self.talking_head1(attn)))  # mixes the heads

        x = (attn @ v).transpose(-2, -1).reshape(B, nh * self.val_dim, h, w) + v_local
        if self.stride_conv is not None:  # back to exactly the input grid
            x = F.interpolate(x, size=(H, W), mode="bilinear", align_corners=False)
        return self.proj(self.act(x))  # (B, C, H, W)

    def fuse(self) -> None:
        """Fold BNs (see :class:`ConvNorm`) and the logit scale into q (in place)."""
        for m in (self.stride_conv, self.q, self.k, self.v, self.v_local, self.proj):
            if m is not None:
                m.fuse()
        if self.scale != 1.0:
            _fold_scale(self.q.conv, self.scale)
            self.scale = 1.0


class LocalGlobalQuery(nn.Module):
    """Half-resolution query: ``proj(dwconv3x3 s2(x) + x[..., ::2, ::2])``, proj = conv1x1+BN."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.local = nn.Conv2d(in_dim, in_dim, 3, stride=2, padding=1, groups=in_dim)
        self.proj = ConvNorm(in_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W] -> [B, out_dim, ceil(H/2), ceil(W/2)]``."""
        return self.proj(self.local(x) + x[:, :, ::2, ::2])


class Attention4DDownsample(BiasTableAttention):
    """Attention that halves the grid: half-resolution queries over full-resolution keys/values.

    No talking heads; ``v_local`` is a depthwise conv3x3 **s2** + BN, added to the output at the
    query grid. ``[B, C, H, W] -> [B, out_dim, ceil(H/2), ceil(W/2)]``.
    """

    def __init__(
        self,
        dim: int,
        out_dim: int,
        key_dim: int = 16,
        num_heads: int = 8,
        attn_ratio: int = 4,
        resolution: int = DOWNSAMPLE_BIAS_RESOLUTION,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.val_dim = attn_ratio * key_dim
        self.scale = key_dim**-0.5
        self.resolution = resolution
        kh, dh = num_heads * key_dim, num_heads * self.val_dim
        self.q = LocalGlobalQuery(dim, kh)
        self.k = ConvNorm(dim, kh)
        self.v = ConvNorm(dim, dh)
        self.v_local = ConvNorm(dh, dh, 3, stride=2, groups=dh)
        self.act = nn.GELU()
        self.proj = ConvNorm(dh, out_dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, resolution * resolution))

    def compute_bias(self, h: int, w: int) -> Tensor:
        """``[heads, Nq, Nk]`` bias for an h x w key grid (queries on the stride-2 grid)."""
        r = self.resolution
        table = resample_bias_table(self.attention_biases.view(-1, r, r), h, w)  # (heads, h, w)
        return table.flatten(1)[:, strided_offset_index(h, w, 2, table.device)]

    def forward(self, x: Tensor) -> Tensor:
        B, _, H, W = x.shape
        nh = self.num_heads
        q = self.q(x)  # (B, kh, hq, wq), hq = ceil(H/2)
        hq, wq = q.shape[2], q.shape[3]
        q = q.reshape(B, nh, self.key_dim, -1).transpose(-2, -1)  # (B, nh, Nq, kd)
        k = self.k(x).reshape(B, nh, self.key_dim, -1)  # (B, nh, kd, Nk)
        v = self.v(x)  # (B, dh, H, W)
        v_local = self.v_local(v)  # (B, dh, hq, wq)
        v = v.reshape(B, nh, self.val_dim, -1).transpose(-2, -1)  # (B, nh, Nk, d)

        attn = q @ k  # (B, nh, Nq, Nk)
        if self.scale != 1.0:
            attn = attn * self.scale
        attn = softmax_without_subnormals(attn + self.get_bias(H, W, attn.dtype))
        x = (attn @ v).transpose(-2, -1).reshape(B, nh * self.val_dim, hq, wq) + v_local
        return self.proj(self.act(x))

    def fuse(self) -> None:
        for m in (self.q.proj, self.k, self.v, self.v_local, self.proj):
            m.fuse()
        if self.scale != 1.0:
            _fold_scale(self.q.proj.conv, self.scale)
            self.scale = 1.0


class Downsample(nn.Module):
    """conv3x3 s2 + BN, plus (before stage 3) an :class:`Attention4DDownsample` branch.

    ``[B, C_in, H, W] -> [B, C_out, H/2, W/2]``.
    """

    def __init__(self, in_chs: int, out_chs: int, use_attn: bool = False) -> None:
        super().__init__()
        self.conv = ConvNorm(in_chs, out_chs, 3, stride=2)
        self.attn = Attention4DDownsample(in_chs, out_chs) if use_attn else None

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return out if self.attn is None else self.attn(x) + out


class ConvMlp(nn.Module):
    """conv1x1+BN+GELU -> depthwise conv3x3+BN+GELU -> conv1x1+BN on ``[B, C, H, W]``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = ConvNorm(dim, hidden, act=True)
        self.mid = ConvNorm(hidden, hidden, 3, groups=hidden, act=True)
        self.fc2 = ConvNorm(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.mid(self.fc1(x)))


def _drop_path(p: float) -> nn.Module:
    return DropPath(p) if p > 0.0 else nn.Identity()


class Block(nn.Module):
    """``x + ls1 * Attention4D(x)`` (attention blocks only), then ``x + ls2 * ConvMlp(x)``."""

    def __init__(
        self,
        dim: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        use_attn: bool = False,
        stride: int | None = None,
        ls_init: float = 1e-5,
    ) -> None:
        super().__init__()
        self.token_mixer = Attention4D(dim, stride=stride) if use_attn else None
        self.ls1: nn.Module | None = LayerScale(dim, ls_init, channel_dim=1) if use_attn else None
        self.drop_path1 = _drop_path(drop_path) if use_attn else None
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio))
        self.ls2: nn.Module = LayerScale(dim, ls_init, channel_dim=1)
        self.drop_path2 = _drop_path(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        if self.token_mixer is not None:
            x = x + self.drop_path1(self.ls1(self.token_mixer(x)))
        return x + self.drop_path2(self.ls2(self.mlp(x)))

    def fuse(self) -> None:
        """Fold BNs, the attention scale and both layer scales into the branches' last convs."""
        if self.token_mixer is not None:
            self.token_mixer.fuse()
            scale_output(self.token_mixer.proj.conv, self.ls1.gamma)
            self.ls1 = nn.Identity()
        for m in (self.mlp.fc1, self.mlp.mid, self.mlp.fc2):
            m.fuse()
        scale_output(self.mlp.fc2.conv, self.ls2.gamma)
        self.ls2 = nn.Identity()


class Stage(nn.Module):
    """Optional :class:`Downsample`, then ``depth`` blocks, the last ``num_vit`` with attention."""

    def __init__(
        self,
        in_dim: int,
        dim: int,
        depth: int,
        mlp_ratios: Sequence[float],
        drop_paths: Sequence[float],
        downsample: bool,
        downsample_attn: bool = False,
        num_vit: int = 0,
        attn_stride: int | None = None,
    ) -> None:
        super().__init__()
        self.downsample: nn.Module = (
            Downsample(in_dim, dim, downsample_attn) if downsample else nn.Identity()
        )
        self.blocks = nn.Sequential(
            *(
                Block(dim, mlp_ratios[j], drop_paths[j], j >= depth - num_vit, attn_stride)
                for j in range(depth)
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.downsample(x))


@torch.no_grad()
def _init_weights(module: nn.Module) -> None:
    """Initialisation of the official code: the FFN's two 1x1 convs (``fc1``, ``fc2``) draw from
    a truncated N(0, 0.02) with zero biases; every other conv keeps PyTorch's default, BNs start
    at identity, layer scales at 1e-5, attention biases at zero (timm's port is the same)."""
    for m in module.modules():
        if isinstance(m, ConvMlp):
            for layer in (m.fc1.conv, m.fc2.conv):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                layer.bias.zero_()


class EfficientFormerV2(nn.Module):
    """EfficientFormerV2 backbone returning the feature maps of the stages in ``out_indices``.

    Args:
        depths: blocks per stage (4 stages).
        widths: channels per stage.
        num_vit: attention blocks at the end of stages 2 and 3.
        mlp_ratios: per stage, the MLP expansion ratio of each block.
        drop_path_rate: stochastic-depth rate of the last block (linear from 0 over all blocks).
        out_indices: stages whose outputs ``forward`` returns (0..3 = stride 4, 8, 16, 32).
        name: variant name used in messages (e.g. ``"efficientformerv2_s0"``).

    Attributes:
        channels: channels of each returned map, e.g. ``[48, 96, 176]`` for S0.
        strides: stride of each returned map, ``[8, 16, 32]`` by default.
    """

    def __init__(
        self,
        depths: Sequence[int],
        widths: Sequence[int],
        num_vit: int,
        mlp_ratios: Sequence[Sequence[float]],
        drop_path_rate: float = 0.0,
        out_indices: Sequence[int] = (1, 2, 3),
        name: str = "efficientformerv2",
    ) -> None:
        super().__init__()
        if not out_indices or any(i not in range(len(depths)) for i in out_indices):
            raise EfyoloError(
                f"{name}: out_indices must be stage indices 0..{len(depths) - 1}, got {out_indices}"
            )
        self.name = name
        self.out_indices = tuple(sorted(set(out_indices)))
        self.channels = [int(widths[i]) for i in self.out_indices]
        self.strides = [2 ** (i + 2) for i in self.out_indices]
        self.fused = False

        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        self.stem = Stem(3, widths[0])
        stages = []
        for s, depth in enumerate(depths):
            start = sum(depths[:s])
            stages.append(
                Stage(
                    widths[s - 1] if s else widths[0],
                    widths[s],
                    depth,
                    mlp_ratios[s],
                    rates[start : start + depth],
                    downsample=s > 0,
                    downsample_attn=s >= 3,
                    num_vit=num_vit if s >= 2 else 0,
                    attn_stride=2 if s == 2 else None,
                )
            )
        self.stages = nn.ModuleList(stages)
        _init_weights(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        """``[B, 3, H, W]`` (H, W multiples of 32) -> maps ``[B, C_i, H / s_i, W / s_i]``."""
        H, W = x.shape[2], x.shape[3]
        if H % SIZE_DIVISOR or W % SIZE_DIVISOR:
            raise EfyoloError(
                f"{self.name}: input size {H}x{W} is not a multiple of {SIZE_DIVISOR} (HxW)"
            )
        x = self.stem(x)  # (B, C0, H/4, W/4)
        outs = []
        for i, stage in enumerate(self.stages):
            if i > self.out_indices[-1]:
                break
            x = stage(x)  # (B, C_i, H / 2^(i+2), W / 2^(i+2))
            if i in self.out_indices:
                outs.append(x)
        return outs

    def load_pretrained(self, path: str | Path) -> None:
        """Load ImageNet weights (official or timm layout) from a local file; see
        :func:`~efyolo.models.efficientformer_v2_weights.load_efficientformer_v2_weights`."""
        load_efficientformer_v2_weights(self, path)

    def fuse(self) -> EfficientFormerV2:
        """Fold BatchNorms into their convs, the attention scales into q and the layer scales
        into the last conv of their branch, in place, for inference (BN running statistics are
        used; do not train the fused model). Returns ``self``."""
        if self.fused:
            return self
        for m in list(self.modules()):
            if isinstance(m, (Block, Attention4DDownsample)):
                m.fuse()
        for m in list(self.modules()):  # stem, downsample convs (the rest is fused already)
            if isinstance(m, ConvNorm):
                m.fuse()
        self.fused = True
        return self


def build_efficientformer_v2(
    variant: str,
    weights: str | Path | None = None,
    drop_path_rate: float | None = None,
    **kwargs: Any,
) -> EfficientFormerV2:
    """Build EfficientFormerV2-``variant``, optionally loading ImageNet weights.

    Args:
        variant: ``"s0"``, ``"s1"``, ``"s2"`` or ``"l"``.
        weights: a local official or timm checkpoint (.pth/.pt/.safetensors), or None.
        drop_path_rate: stochastic-depth rate; None = the official default of the variant
            (0.0, 0.0, 0.02, 0.1).
        **kwargs: ``out_indices`` (default ``(1, 2, 3)``).
    """
    name = f"efficientformerv2_{variant}"
    if variant not in VARIANTS:
        raise EfyoloError(
            f"unknown EfficientFormerV2 variant {variant!r} (known: {', '.join(VARIANTS)})"
        )
    unknown = set(kwargs) - {"out_indices"}
    if unknown:
        raise EfyoloError(
            f"{name}: unknown argument(s) {', '.join(sorted(unknown))} (accepted: out_indices)"
        )
    depths, widths, num_vit, ratios, default_dpr = VARIANTS[variant]
    dpr = default_dpr if drop_path_rate is None else drop_path_rate
    model = EfficientFormerV2(depths, widths, num_vit, ratios, dpr, name=name, **kwargs)
    if weights is not None:
        model.load_pretrained(weights)
    return model


@BACKBONES.register("efficientformerv2_s0")
def efficientformerv2_s0(
    weights: str | Path | None = None, drop_path_rate: float = 0.0, **kwargs: Any
) -> EfficientFormerV2:
    """EfficientFormerV2-S0 backbone: channels ``[48, 96, 176]`` at strides ``[8, 16, 32]``."""
    return build_efficientformer_v2("s0", weights, drop_path_rate, **kwargs)


@BACKBONES.register("efficientformerv2_s1")
def efficientformerv2_s1(
    weights: str | Path | None = None, drop_path_rate: float = 0.0, **kwargs: Any
) -> EfficientFormerV2:
    """EfficientFormerV2-S1 backbone: channels ``[48, 120, 224]`` at strides ``[8, 16, 32]``."""
    return build_efficientformer_v2("s1", weights, drop_path_rate, **kwargs)


@BACKBONES.register("efficientformerv2_s2")
def efficientformerv2_s2(
    weights: str | Path | None = None, drop_path_rate: float = 0.02, **kwargs: Any
) -> EfficientFormerV2:
    """EfficientFormerV2-S2 backbone: channels ``[64, 144, 288]`` at strides ``[8, 16, 32]``."""
    return build_efficientformer_v2("s2", weights, drop_path_rate, **kwargs)


@BACKBONES.register("efficientformerv2_l")
def efficientformerv2_l(
    weights: str | Path | None = None, drop_path_rate: float = 0.1, **kwargs: Any
) -> EfficientFormerV2:
    """EfficientFormerV2-L backbone: channels ``[80, 192, 384]`` at strides ``[8, 16, 32]``."""
    return build_efficientformer_v2("l", weights, drop_path_rate, **kwargs)
