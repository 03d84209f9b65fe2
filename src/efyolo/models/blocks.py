"""YOLOv5's building blocks (v7.0 ``models/common.py`` semantics, parameter-exact).

Every block that changes resolution declares it through the ``stride`` attribute (the factor by
which its output is smaller than its input), so the model builder derives each layer's stride
from metadata instead of running a dummy forward pass.

Activation: ``Conv(..., act=True)`` uses the block's ``default_act`` factory (``nn.SiLU`` when
``None``). Every block that makes Convs takes ``default_act`` as a keyword and hands it down, so a
config's top-level ``activation:`` (YOLOv5's ``Conv.default_act``) reaches every Conv of that one
model, with no global state: two models with different activations coexist.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

# A zero-argument callable making a fresh activation module (``nn.SiLU``, ``partial(nn.LeakyReLU, 0.1)``).
ActFactory = Callable[[], nn.Module]


def autopad(k: int | list[int], p: int | list[int] | None = None, d: int = 1) -> int | list[int]:
    """'Same' padding for kernel ``k`` and dilation ``d`` when ``p`` is not given."""
    if d > 1:
        k = d * (k - 1) + 1 if isinstance(k, int) else [d * (x - 1) + 1 for x in k]
    if p is None:
        p = k // 2 if isinstance(k, int) else [x // 2 for x in k]
    return p


def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new conv equal to ``bn(conv(x))`` in eval mode (BatchNorm folded into weight and bias)."""
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
    ).to(device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
        fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        conv_bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        fused.bias.copy_((conv_bias - bn.running_mean) * scale + bn.bias)
    fused.requires_grad_(False)
    return fused


def make_act(act: bool | nn.Module, default_act: ActFactory | None = None) -> nn.Module:
    """``act=True``: a new ``default_act()`` (SiLU if ``None``); a module: itself; else Identity."""
    if act is True:
        return default_act() if default_act is not None else nn.SiLU()
    if isinstance(act, nn.Module):
        return act
    return nn.Identity()


class Conv(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> activation (SiLU unless ``default_act`` says otherwise).
    After :meth:`fuse`, Conv2d (with bias) -> activation."""

    def __init__(
        self,
        c1: int,
        c2: int,
        k: int = 1,
        s: int = 1,
        p: int | None = None,
        g: int = 1,
        d: int = 1,
        act: bool | nn.Module = True,
        *,
        default_act: ActFactory | None = None,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p, d), groups=g, dilation=d, bias=False)
        # YOLOv5 trains with eps 1e-3 and momentum 0.03 (set in initialize_weights).
        self.bn: nn.Module = nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03)
        self.act: nn.Module = make_act(act, default_act)
        self.stride = s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    def fuse(self) -> None:
        if isinstance(self.bn, nn.BatchNorm2d):
            self.conv = fuse_conv_bn(self.conv, self.bn)
            self.bn = nn.Identity()


class DWConv(Conv):
    """Depth-wise convolution: groups = gcd(c1, c2)."""

    def __init__(
        self, c1: int, c2: int, k: int = 1, s: int = 1, d: int = 1, act: bool | nn.Module = True,
        *, default_act: ActFactory | None = None,
    ) -> None:
        g = torch.gcd(torch.tensor(c1), torch.tensor(c2)).item()
        super().__init__(c1, c2, k, s, g=g, d=d, act=act, default_act=default_act)


class Focus(nn.Module):
    """Space-to-depth (x[::2, ::2] and its three shifts) then Conv: the pre-v6.0 YOLOv5 stem."""

    def __init__(
        self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None, g: int = 1, act: bool = True,
        *, default_act: ActFactory | None = None,
    ):
        super().__init__()
        self.conv = Conv(c1 * 4, c2, k, s, p, g, act=act, default_act=default_act)
        self.stride = 2 * s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, H, W) -> (B, 4C, H/2, W/2)
        x = torch.cat((x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]), 1)
        return self.conv(x)


class Bottleneck(nn.Module):
    """1x1 Conv -> 3x3 Conv, with a residual connection when shapes allow."""

    def __init__(
        self, c1: int, c2: int, shortcut: bool = True, g: int = 1, e: float = 0.5,
        *, default_act: ActFactory | None = None,
    ) -> None:
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1, default_act=default_act)
        self.cv2 = Conv(c_, c2, 3, 1, g=g, default_act=default_act)
        self.add = shortcut and c1 == c2
        self.stride = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class BottleneckCSP(nn.Module):
    """The original CSP bottleneck (YOLOv5's default block before v4.0); kept so old configs load.

    ``csp_act`` makes the activation after the concat: SiLU by default (YOLOv5 v6.2+);
    YOLOv5 v4.0-v6.1 used ``LeakyReLU(0.1)`` there.
    """

    def __init__(
        self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5,
        *, default_act: ActFactory | None = None, csp_act: ActFactory | None = None,
    ):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1, default_act=default_act)
        self.cv2 = nn.Conv2d(c1, c_, 1, 1, bias=False)
        self.cv3 = nn.Conv2d(c_, c_, 1, 1, bias=False)
        self.cv4 = Conv(2 * c_, c2, 1, 1, default_act=default_act)
        self.bn = nn.BatchNorm2d(2 * c_, eps=1e-3, momentum=0.03)
        self.act = csp_act() if csp_act else nn.SiLU()  # its own activation, not Conv's default one
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, e=1.0, default_act=default_act) for _ in range(n)))
        self.stride = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y1 = self.cv3(self.m(self.cv1(x)))
        y2 = self.cv2(x)
        return self.cv4(self.act(self.bn(torch.cat((y1, y2), 1))))


class C3(nn.Module):
    """CSP bottleneck with 3 convolutions: ``cv3(cat(m(cv1(x)), cv2(x)))``."""

    def __init__(
        self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5,
        *, default_act: ActFactory | None = None,
    ):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1, default_act=default_act)
        self.cv2 = Conv(c1, c_, 1, 1, default_act=default_act)
        self.cv3 = Conv(2 * c_, c2, 1, default_act=default_act)
        self.m: nn.Module = self._inner(c_, n, shortcut, g, default_act)
        self.stride = 1

    def _inner(self, c_: int, n: int, shortcut: bool, g: int, default_act: ActFactory | None) -> nn.Module:
        """The ``n`` blocks between ``cv1`` and ``cv3`` (C3Ghost and C3TR override it)."""
        return nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, e=1.0, default_act=default_act) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPP(nn.Module):
    """Spatial pyramid pooling with parallel max-pools of kernels ``k`` (YOLOv3-SPP)."""

    def __init__(
        self, c1: int, c2: int, k: tuple[int, ...] = (5, 9, 13), *, default_act: ActFactory | None = None
    ) -> None:
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1, default_act=default_act)
        self.cv2 = Conv(c_ * (len(k) + 1), c2, 1, 1, default_act=default_act)
        self.m = nn.ModuleList(nn.MaxPool2d(kernel_size=x, stride=1, padding=x // 2) for x in k)
        self.stride = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        return self.cv2(torch.cat([x] + [m(x) for m in self.m], 1))


class SPPF(nn.Module):
    """Fast SPP: three chained ``k``-max-pools, equal to SPP with kernels (k, 2k-1, 3k-2)."""

    def __init__(self, c1: int, c2: int, k: int = 5, *, default_act: ActFactory | None = None) -> None:
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1, default_act=default_act)
        self.cv2 = Conv(c_ * 4, c2, 1, 1, default_act=default_act)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)
        self.stride = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class GhostConv(nn.Module):
    """Ghost convolution (GhostNet, arXiv 1911.11907): half the output channels from a ``k x k`` Conv,
    the other half from a cheap depth-wise 5x5 Conv of the first half, concatenated."""

    def __init__(
        self, c1: int, c2: int, k: int = 1, s: int = 1, g: int = 1, act: bool | nn.Module = True,
        *, default_act: ActFactory | None = None,
    ) -> None:
        super().__init__()
        c_ = c2 // 2
        self.cv1 = Conv(c1, c_, k, s, None, g, act=act, default_act=default_act)
        self.cv2 = Conv(c_, c_, 5, 1, None, c_, act=act, default_act=default_act)
        self.stride = s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        primary = self.cv1(x)
        return torch.cat((primary, self.cv2(primary)), 1)


class GhostBottleneck(nn.Module):
    """GhostNet bottleneck: GhostConv (1x1) -> [depth-wise k x k, stride 2] -> linear GhostConv, plus a
    shortcut (identity, or depth-wise + linear 1x1 Conv when ``s == 2``)."""

    def __init__(self, c1: int, c2: int, k: int = 3, s: int = 1, *, default_act: ActFactory | None = None) -> None:
        super().__init__()
        c_ = c2 // 2
        down = s == 2
        self.conv = nn.Sequential(
            GhostConv(c1, c_, 1, 1, default_act=default_act),
            DWConv(c_, c_, k, s, act=False) if down else nn.Identity(),
            GhostConv(c_, c2, 1, 1, act=False),
        )
        self.shortcut = (
            nn.Sequential(DWConv(c1, c1, k, s, act=False), Conv(c1, c2, 1, 1, act=False)) if down else nn.Identity()
        )
        self.stride = s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.shortcut(x)


class C3Ghost(C3):
    """C3 whose inner blocks are :class:`GhostBottleneck` (``shortcut`` and ``g`` unused, as in YOLOv5)."""

    def _inner(self, c_: int, n: int, shortcut: bool, g: int, default_act: ActFactory | None) -> nn.Module:
        return nn.Sequential(*(GhostBottleneck(c_, c_, default_act=default_act) for _ in range(n)))


class Concat(nn.Module):
    """Concatenate a list of tensors along ``dimension`` (channels by default)."""

    def __init__(self, dimension: int = 1) -> None:
        super().__init__()
        self.d = dimension

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(x, self.d)


class Index(nn.Module):
    """Pick output ``index`` of a multi-output layer (a backbone returning a list of maps)."""

    def __init__(self, index: int = 0) -> None:
        super().__init__()
        self.index = index

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return x[self.index]
