"""EfficientFormer (V1) L1 / L3 / L7 as a multi-scale detection backbone.

Architecture as in snap-research/EfficientFormer ``models/efficientformer.py`` (arXiv 2206.01191):
a stride-4 convolutional stem, four stages of Meta4D blocks (pooling token mixer + conv MLP) joined
by stride-2 conv downsamples, and, at the end of the last stage, ``num_vit`` Meta3D blocks
(multi-head self-attention + linear MLP) that work on the flattened stride-32 tokens.

Module and parameter names follow timm's port (``stem.conv1``, ``stages.S.downsample.conv``,
``stages.S.blocks.i.ls1.gamma``, ...), including the parameter-free ``Flat`` entry in the last
stage's ``blocks``, so a timm state dict loads by identity and an official one through a key map
(:mod:`efyolo.models.efficientformer_weights`).

Attention bias at any input size
--------------------------------
Each Meta3D attention learns one bias per head and per absolute token offset ``(|dy|, |dx|)``:
``attention_biases`` of shape ``[heads, 49]``, a 7x7 table over offsets 0..6, which is what the
224x224 ImageNet checkpoints hold. It is resampled to the actual token grid and cached in eval
mode as :mod:`efyolo.models.attention_bias` explains. The alternatives are worse: the official
detection code re-creates a fresh 25x25 bias table (discarding the ImageNet biases) and
interpolates the flattened N x N matrix every forward, and timm's module only runs at 224x224.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from efyolo.errors import EfyoloError
from efyolo.models.attention_bias import (
    BiasTableAttention,
    offset_index,
    resample_bias_table,
    softmax_without_subnormals,
)
from efyolo.models.efficientformer_weights import load_efficientformer_weights
from efyolo.models.registry import BACKBONES

# name -> (depths, widths, number of Meta3D blocks at the end of the last stage)
VARIANTS: dict[str, tuple[tuple[int, ...], tuple[int, ...], int]] = {
    # l0 is efyolo's own CPU-sized variant (not in the paper, no ImageNet weights): the L1 design
    # at half its width and a third of its depth, for the CPU training demo.
    "l0": ((1, 1, 3, 2), (24, 48, 112, 224), 1),
    # n0: efyolo's CPU-latency variant (see VARIANT_OPTIONS): no stride-4 block
    "n0": ((0, 1, 3, 2), (24, 48, 112, 224), 1),
    "l1": ((3, 2, 6, 4), (48, 96, 224, 448), 1),
    "l3": ((4, 4, 12, 6), (64, 128, 320, 512), 4),
    "l7": ((6, 6, 18, 8), (96, 192, 384, 768), 8),
}
# Architecture options beyond (depths, widths, num_vit), for efyolo's own variants; the paper's
# variants use EfficientFormer's defaults (see EfficientFormer's arguments).
VARIANT_OPTIONS: dict[str, dict[str, Any]] = {
    # n0 is efyolo's CPU-latency variant (not in the paper, no ImageNet weights), found with
    # `efyolo compare` (docs/compare.md): l0 without its stride-4 Meta4D block (the stem feeds the
    # first downsample directly), MLP expansion 2 at stride 8 and 3 at 16/32 instead of 4, and a
    # lighter Meta3D (4 heads, values 2 x 32 wide, MLP expansion 2).
    "n0": {"mlp_ratios": (2, 2, 3, 3), "num_heads": 4, "attn_ratio": 2, "vit_mlp_ratio": 2},
}
SIZE_DIVISOR = 32  # total stride; every input side must be a multiple of it
BIAS_RESOLUTION = 7  # side of the learned attention-bias table (224 / 32)


class Attention(BiasTableAttention):
    """Multi-head self-attention with a learned per-head bias over absolute token offsets."""

    def __init__(
        self,
        dim: int,
        key_dim: int = 32,
        num_heads: int = 8,
        attn_ratio: int = 4,
        resolution: int = BIAS_RESOLUTION,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.val_dim = attn_ratio * key_dim
        self.scale = key_dim**-0.5
        self.resolution = resolution
        # qkv output laid out per head as [q(key_dim), k(key_dim), v(val_dim)]: 8 * 192 = 1536
        self.qkv = nn.Linear(dim, num_heads * (2 * key_dim + self.val_dim))
        self.proj = nn.Linear(num_heads * self.val_dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, resolution * resolution))

    def compute_bias(self, h: int, w: int) -> Tensor:
        """``[heads, N, N]`` bias for an h x w token grid, differentiable w.r.t. the table."""
        r = self.resolution
        table = resample_bias_table(self.attention_biases.view(-1, r, r), h, w)  # (heads, h, w)
        return table.flatten(1)[:, offset_index(h, w, table.device)]

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        """Tokens ``[B, N, C]`` of a ``grid = (h, w)`` map (row-major) -> ``[B, N, C]``."""
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, self.num_heads, -1).permute(0, 2, 1, 3)
        # qkv: (B, heads, N, 2 * key_dim + val_dim), per head [q | k | v]
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.val_dim], dim=3)
        attn = q @ k.transpose(-2, -1)  # (B, heads, N, N) logits
        if self.scale != 1.0:  # 1.0 once fuse() folded the scale into q
            attn = attn * self.scale
        attn = softmax_without_subnormals(attn + self.get_bias(grid[0], grid[1], attn.dtype))
        x = (attn @ v).transpose(1, 2).reshape(B, N, self.num_heads * self.val_dim)
        return self.proj(x)

    @torch.no_grad()
    def fold_scale(self) -> None:
        """Fold the logit scale into the q rows of ``qkv`` (in place)."""
        if self.scale == 1.0:
            return
        per_head = 2 * self.key_dim + self.val_dim
        w = self.qkv.weight.view(self.num_heads, per_head, -1)
        w[:, : self.key_dim].mul_(self.scale)
        self.qkv.bias.view(self.num_heads, per_head)[:, : self.key_dim].mul_(self.scale)
        self.scale = 1.0


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample while training."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.div_(keep)


def _drop_path(p: float) -> nn.Module:
    return DropPath(p) if p > 0.0 else nn.Identity()


class LayerScale(nn.Module):
    """Per-channel scale of a residual branch; ``channel_dim`` 1 for NCHW maps, -1 for tokens."""

    def __init__(self, dim: int, init_value: float = 1e-5, channel_dim: int = -1) -> None:
        super().__init__()
        self.channel_dim = channel_dim
        self.gamma = nn.Parameter(torch.full((dim,), init_value))

    def forward(self, x: Tensor) -> Tensor:
        gamma = self.gamma.view(-1, 1, 1) if self.channel_dim == 1 else self.gamma
        return x * gamma


@torch.no_grad()
def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold an eval-mode BatchNorm into the preceding conv (which must have a bias), in place."""
    s = bn.weight / (bn.running_var + bn.eps).sqrt()  # (C_out,)
    conv.weight.mul_(s.view(-1, 1, 1, 1))
    conv.bias.copy_((conv.bias - bn.running_mean) * s + bn.bias)


@torch.no_grad()
def scale_output(layer: nn.Conv2d | nn.Linear, gamma: Tensor) -> None:
    """Multiply a conv/linear layer's output channels by ``gamma`` (in place)."""
    layer.weight.mul_(gamma.view(-1, *([1] * (layer.weight.dim() - 1))))
    layer.bias.mul_(gamma)


@torch.no_grad()
def fold_layernorm(norm: nn.LayerNorm, linear: nn.Linear) -> nn.LayerNorm:
    """Fold a LayerNorm's affine into the following linear; returns the affine-free norm."""
    linear.bias.add_(linear.weight @ norm.bias)
    linear.weight.mul_(norm.weight)
    return nn.LayerNorm(norm.normalized_shape, eps=norm.eps, elementwise_affine=False)


class Stem(nn.Sequential):
    """(conv3x3 s2 -> BN -> ReLU) x 2: ``[B, 3, H, W] -> [B, C, H/4, W/4]``."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        mid = out_chs // 2
        super().__init__(
            OrderedDict(
                conv1=nn.Conv2d(in_chs, mid, 3, stride=2, padding=1),
                norm1=nn.BatchNorm2d(mid),
                act1=nn.ReLU(),
                conv2=nn.Conv2d(mid, out_chs, 3, stride=2, padding=1),
                norm2=nn.BatchNorm2d(out_chs),
                act2=nn.ReLU(),
            )
        )

    def fuse(self) -> None:
        fold_bn(self.conv1, self.norm1)
        fold_bn(self.conv2, self.norm2)
        self.norm1 = nn.Identity()
        self.norm2 = nn.Identity()


class Downsample(nn.Module):
    """conv3x3 s2 p1 + BN between stages: ``[B, C_in, H, W] -> [B, C_out, H/2, W/2]``."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(out_chs)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.conv(x))

    def fuse(self) -> None:
        fold_bn(self.conv, self.norm)
        self.norm = nn.Identity()


class Pooling(nn.Module):
    """PoolFormer token mixer: ``AvgPool3x3(x) - x`` (padding excluded from the average)."""

    def __init__(self, pool_size: int = 3) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(
            pool_size, stride=1, padding=pool_size // 2, count_include_pad=False
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(x) - x


class RepDWMixer(nn.Module):
    """Learnable, re-parameterizable token mixer (efyolo's, ``token_mixer="repdw"``): a depthwise
    conv3x3 + BN branch in place of the fixed ``pool(x) - x``, ``[B, C, H, W]`` in and out.

    In training the block computes ``x + ls1 * BN(dwconv(x))``. For inference
    :meth:`fused_conv` folds the BN, the layer scale and the identity into one depthwise conv
    with a bias (the identity is a 1 at each kernel's centre), so the mixer costs one depthwise
    conv, no add, like the re-parameterized mixers of RepVGG-style CPU models.
    """

    def __init__(self, dim: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=False)
        self.norm = nn.BatchNorm2d(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.conv(x))

    @torch.no_grad()
    def fused_conv(self, gamma: Tensor) -> nn.Conv2d:
        """One depthwise conv computing ``x + gamma * BN(dwconv(x))`` (eval-mode BN statistics)."""
        c, k = self.conv.out_channels, self.conv.kernel_size[0]
        s = self.norm.weight / (self.norm.running_var + self.norm.eps).sqrt()  # (C,)
        fused = nn.Conv2d(c, c, k, padding=k // 2, groups=c, bias=True).to(self.conv.weight)
        fused.weight.copy_(self.conv.weight * (gamma * s).view(c, 1, 1, 1))
        fused.weight[:, 0, k // 2, k // 2] += 1.0  # the residual identity
        fused.bias.copy_(gamma * (self.norm.bias - self.norm.running_mean * s))
        return fused


class ConvMlp(nn.Module):
    """conv1x1 -> BN -> GELU -> conv1x1 -> BN on ``[B, C, H, W]``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.norm1 = nn.BatchNorm2d(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.norm2 = nn.BatchNorm2d(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm2(self.fc2(self.act(self.norm1(self.fc1(x)))))

    def fuse(self) -> None:
        fold_bn(self.fc1, self.norm1)
        fold_bn(self.fc2, self.norm2)
        self.norm1 = nn.Identity()
        self.norm2 = nn.Identity()


class LinearMlp(nn.Module):
    """Linear -> GELU -> Linear on tokens ``[B, N, C]``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


TOKEN_MIXERS = ("pool", "repdw")  # the paper's pooling; efyolo's re-parameterizable depthwise conv


class Meta4D(nn.Module):
    """``x + ls1 * mixer(x)`` (mixer ``pool(x) - x``, or :class:`RepDWMixer`), then
    ``x + ls2 * ConvMlp(x)``; ``[B, C, H, W]`` in and out."""

    def __init__(
        self,
        dim: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        ls_init: float = 1e-5,
        token_mixer: str = "pool",
    ) -> None:
        super().__init__()
        if token_mixer not in TOKEN_MIXERS:
            raise EfyoloError(f"unknown token_mixer {token_mixer!r} (choose from {', '.join(TOKEN_MIXERS)})")
        self.token_mixer: nn.Module = Pooling() if token_mixer == "pool" else RepDWMixer(dim)
        self.ls1 = LayerScale(dim, ls_init, channel_dim=1)
        self.drop_path1 = _drop_path(drop_path)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, ls_init, channel_dim=1)
        self.drop_path2 = _drop_path(drop_path)
        self.fused = False  # set by fuse(): pooling mixer as one lerp, RepDWMixer as one conv

    def forward(self, x: Tensor) -> Tensor:
        if self.fused and isinstance(self.token_mixer, Pooling):
            # x + ls1 * (pool(x) - x) as one lerp kernel instead of sub, mul, add
            x = torch.lerp(x, self.token_mixer.pool(x), self.ls1.gamma.view(-1, 1, 1))
        elif self.fused:  # RepDWMixer folded: one depthwise conv holds the identity and ls1
            x = self.token_mixer(x)
        else:
            x = x + self.drop_path1(self.ls1(self.token_mixer(x)))
        return x + self.drop_path2(self.ls2(self.mlp(x)))

    def fuse(self) -> None:
        # ls1 scales (pool(x) - x), which no conv precedes: it stays a per-channel scale. A
        # RepDWMixer takes ls1 and the residual into its conv.
        if isinstance(self.token_mixer, RepDWMixer):
            self.token_mixer = self.token_mixer.fused_conv(self.ls1.gamma)
            self.ls1 = nn.Identity()
        self.mlp.fuse()
        scale_output(self.mlp.fc2, self.ls2.gamma)
        self.ls2 = nn.Identity()
        self.fused = True


class Meta3D(nn.Module):
    """Pre-norm transformer block on tokens ``[B, N, C]`` of an ``(h, w)`` grid."""

    def __init__(
        self,
        dim: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        ls_init: float = 1e-5,
        num_heads: int = 8,
        attn_ratio: int = 4,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mixer = Attention(dim, num_heads=num_heads, attn_ratio=attn_ratio)
        self.ls1 = LayerScale(dim, ls_init)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = LinearMlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, ls_init)
        self.drop_path = _drop_path(drop_path)

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        x = x + self.drop_path(self.ls1(self.token_mixer(self.norm1(x), grid)))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))

    def fuse(self) -> None:
        self.norm1 = fold_layernorm(self.norm1, self.token_mixer.qkv)
        self.token_mixer.fold_scale()
        scale_output(self.token_mixer.proj, self.ls1.gamma)
        self.norm2 = fold_layernorm(self.norm2, self.mlp.fc1)
        scale_output(self.mlp.fc2, self.ls2.gamma)
        self.ls1 = nn.Identity()
        self.ls2 = nn.Identity()


class Flat(nn.Module):
    """``[B, C, H, W] -> [B, H*W, C]`` tokens (row-major), between the Meta4D and Meta3D blocks."""

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(2).transpose(1, 2)


class Stage(nn.Module):
    """Optional downsample, then Meta4D blocks, then (``num_vit`` > 0) Flat + Meta3D blocks."""

    def __init__(
        self,
        in_dim: int,
        dim: int,
        depth: int,
        num_vit: int,
        downsample: bool,
        drop_paths: Sequence[float],
        mlp_ratio: float = 4.0,
        ls_init: float = 1e-5,
        num_heads: int = 8,
        attn_ratio: int = 4,
        vit_mlp_ratio: float = 4.0,
        token_mixer: str = "pool",
    ) -> None:
        super().__init__()
        self.downsample: nn.Module = Downsample(in_dim, dim) if downsample else nn.Identity()
        blocks: list[nn.Module] = []
        for i in range(depth):
            if i == depth - num_vit:
                blocks.append(Flat())  # indexed like timm / official, so checkpoint keys match
            if i >= depth - num_vit:
                blocks.append(
                    Meta3D(dim, vit_mlp_ratio, drop_paths[i], ls_init, num_heads, attn_ratio)
                )
            else:
                blocks.append(Meta4D(dim, mlp_ratio, drop_paths[i], ls_init, token_mixer))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C_in, H, W] -> [B, C, H', W']``; tokens ``[B, H'*W', C]`` if it has Meta3D."""
        x = self.downsample(x)
        grid = (x.shape[2], x.shape[3])
        for block in self.blocks:
            x = block(x, grid) if isinstance(block, Meta3D) else block(x)
        return x


@torch.no_grad()
def _init_weights(module: nn.Module) -> None:
    """Initialisation of the official code: N(0, 0.02) for linears and MLP convs, zero biases.

    The official code calls ``trunc_normal_(w, std=0.02)``, whose default cut at +-2 (absolute)
    is 100 standard deviations away, so a plain normal is the same distribution, much faster.
    """
    for m in module.modules():
        layers = (
            [m] if isinstance(m, nn.Linear) else [m.fc1, m.fc2] if isinstance(m, ConvMlp) else []
        )
        for layer in layers:
            layer.weight.normal_(0.0, 0.02)
            layer.bias.zero_()


class EfficientFormer(nn.Module):
    """EfficientFormer backbone returning the feature maps of the stages in ``out_indices``.

    Args:
        depths: blocks per stage (4 stages).
        widths: channels per stage.
        num_vit: number of Meta3D blocks at the end of the last stage.
        drop_path_rate: stochastic-depth rate of the last block (linear from 0 over all blocks).
        out_indices: stages whose outputs ``forward`` returns (0..3 = stride 4, 8, 16, 32).
        name: variant name used in messages (e.g. ``"efficientformer_l1"``).
        mlp_ratios: hidden-width expansion of the Meta4D MLPs, per stage (the paper: 4 everywhere).
        ls_init: initial layer-scale value of every residual branch (the paper: 1e-5).
        num_heads, attn_ratio, vit_mlp_ratio: the Meta3D blocks' attention heads, value width
            per head in units of the 32-channel key, and MLP expansion (the paper: 8, 4, 4).
        token_mixer: the Meta4D blocks' mixer, ``"pool"`` (the paper) or ``"repdw"``
            (:class:`RepDWMixer`).

    Attributes:
        channels: channels of each returned map, e.g. ``[96, 224, 448]`` for L1.
        strides: stride of each returned map, ``[8, 16, 32]`` by default.
    """

    def __init__(
        self,
        depths: Sequence[int],
        widths: Sequence[int],
        num_vit: int,
        drop_path_rate: float = 0.0,
        out_indices: Sequence[int] = (1, 2, 3),
        name: str = "efficientformer",
        mlp_ratios: Sequence[float] = (4.0, 4.0, 4.0, 4.0),
        ls_init: float = 1e-5,
        num_heads: int = 8,
        attn_ratio: int = 4,
        vit_mlp_ratio: float = 4.0,
        token_mixer: str = "pool",
    ) -> None:
        super().__init__()
        if len(mlp_ratios) != len(depths):
            raise EfyoloError(f"{name}: {len(mlp_ratios)} mlp_ratios for {len(depths)} stages")
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
            vit = num_vit if s == len(depths) - 1 else 0
            prev = widths[s - 1] if s else widths[0]
            stages.append(
                Stage(
                    prev, widths[s], depth, vit, s > 0, rates[start : start + depth],
                    mlp_ratios[s], ls_init, num_heads, attn_ratio, vit_mlp_ratio, token_mixer,
                )
            )
        self.stages = nn.ModuleList(stages)
        _init_weights(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        """``[B, 3, H, W]`` (H, W multiples of 32) -> maps ``[B, C_i, H / s_i, W / s_i]``."""
        B, _, H, W = x.shape
        if H % SIZE_DIVISOR or W % SIZE_DIVISOR:
            raise EfyoloError(
                f"{self.name}: input size {H}x{W} is not a multiple of {SIZE_DIVISOR} (HxW)"
            )
        x = self.stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            if i > self.out_indices[-1]:
                break
            x = stage(x)
            if i in self.out_indices:
                if x.dim() == 3:  # Meta3D tokens (B, N, C) -> (B, C, h, w)
                    stride = 2 ** (i + 2)
                    x = x.transpose(1, 2).reshape(B, -1, H // stride, W // stride)
                outs.append(x)
        return outs

    def load_pretrained(self, path: str | Path) -> None:
        """Load ImageNet weights (official or timm layout) from a local file; see
        :func:`load_efficientformer_weights`."""
        load_efficientformer_weights(self, path)

    def fuse(self) -> "EfficientFormer":
        """Fold BatchNorms, LayerNorm affines, attention scales and layer scales into the
        neighbouring convs/linears, in place, for inference (BN running statistics are used;
        do not train the fused model). Returns ``self``."""
        if self.fused:
            return self
        for m in list(self.modules()):
            if isinstance(m, (Stem, Downsample, Meta4D, Meta3D)):
                m.fuse()
        self.fused = True
        return self


def build_efficientformer(
    variant: str,
    weights: str | Path | None = None,
    drop_path_rate: float = 0.0,
    **kwargs: Any,
) -> EfficientFormer:
    """Build EfficientFormer-``variant``, optionally loading ImageNet weights.

    Args:
        variant: ``"l1"``, ``"l3"``, ``"l7"`` (the paper's) or efyolo's ``"l0"``, ``"n0"``.
        weights: a local official or timm checkpoint (.pth/.pt/.safetensors), or None.
        drop_path_rate: stochastic-depth rate.
        **kwargs: ``out_indices`` (default ``(1, 2, 3)``).
    """
    name = f"efficientformer_{variant}"
    if variant not in VARIANTS:
        raise EfyoloError(
            f"unknown EfficientFormer variant {variant!r} (known: {', '.join(VARIANTS)})"
        )
    unknown = set(kwargs) - {"out_indices"}
    if unknown:
        raise EfyoloError(
            f"{name}: unknown argument(s) {', '.join(sorted(unknown))} (accepted: out_indices)"
        )
    depths, widths, num_vit = VARIANTS[variant]
    options = VARIANT_OPTIONS.get(variant, {})
    model = EfficientFormer(depths, widths, num_vit, drop_path_rate, name=name, **options, **kwargs)
    if weights is not None:
        load_efficientformer_weights(model, weights)
    return model


@BACKBONES.register("efficientformer_l0")
def efficientformer_l0(weights: str | Path | None = None, drop_path_rate: float = 0.0, **kwargs: Any) -> EfficientFormer:
    """efyolo's CPU-sized EfficientFormer (depths 1,1,3,2; widths 24,48,112,224; one Meta3D block):
    channels ``[48, 112, 224]`` at strides ``[8, 16, 32]``. No ImageNet weights exist for it."""
    return build_efficientformer("l0", weights, drop_path_rate, **kwargs)


@BACKBONES.register("efficientformer_l1")
def efficientformer_l1(
    weights: str | Path | None = None, drop_path_rate: float = 0.0, **kwargs: Any
) -> EfficientFormer:
    """EfficientFormer-L1 backbone: channels ``[96, 224, 448]`` at strides ``[8, 16, 32]``."""
    return build_efficientformer("l1", weights, drop_path_rate, **kwargs)


@BACKBONES.register("efficientformer_l3")
def efficientformer_l3(
    weights: str | Path | None = None, drop_path_rate: float = 0.0, **kwargs: Any
) -> EfficientFormer:
    """EfficientFormer-L3 backbone: channels ``[128, 320, 512]`` at strides ``[8, 16, 32]``."""
    return build_efficientformer("l3", weights, drop_path_rate, **kwargs)


@BACKBONES.register("efficientformer_l7")
def efficientformer_l7(
    weights: str | Path | None = None, drop_path_rate: float = 0.0, **kwargs: Any
) -> EfficientFormer:
    """EfficientFormer-L7 backbone: channels ``[192, 384, 768]`` at strides ``[8, 16, 32]``."""
    return build_efficientformer("l7", weights, drop_path_rate, **kwargs)



@BACKBONES.register("efficientformer_n0")
def efficientformer_n0(weights: str | Path | None = None, drop_path_rate: float = 0.0, **kwargs: Any) -> EfficientFormer:
    """efyolo's CPU-latency EfficientFormer (depths 0,1,3,2; widths 24,48,112,224; MLP expansion
    2,2,3,3; one 4-head Meta3D block): channels ``[48, 112, 224]`` at strides ``[8, 16, 32]``, as
    fast as yolov5n's CSP backbone in ONNX Runtime. No ImageNet weights exist for it."""
    return build_efficientformer("n0", weights, drop_path_rate, **kwargs)

