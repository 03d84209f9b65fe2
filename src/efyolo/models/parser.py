"""How each YAML module name becomes a layer, and what its output channels and stride are.

A YAML row ``[from, number, module, args]`` is built by the :class:`LayerSpec` registered under
``module`` in :data:`MODULES`. The spec receives the shapes (channels, stride) of its inputs and
returns the module together with its own output shape, so channels and strides flow through the
model from metadata alone: no dummy forward pass, no hard-coded lists.

The config's optional top-level ``activation`` (``nn.LeakyReLU(0.1)``, YOLOv5's way of changing
every ``Conv``'s activation) is read by :func:`efyolo.models.activations.parse_activation`, never
``eval``-ed, and reaches the builders through :class:`BuildContext`.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, Union

from torch import nn

from efyolo.errors import EfyoloError
from efyolo.models import blocks, bottleneck_transformer, transformer
from efyolo.models.head import Detect
from efyolo.models.registry import BACKBONES, Registry

# A layer's output: one (channels, stride) for a tensor, or lists for a multi-output backbone.
Channels = Union[int, list[int]]
Stride = Union[int, list[int]]


@dataclass(frozen=True)
class Shape:
    """A layer's output: ``channels`` and ``stride`` (input size / output size).

    ``excess`` (rows, columns) is how much larger than ``(H / stride, W / stride)`` the map is, for an
    input H x W that is a multiple of the model's stride: ``nn.ZeroPad2d`` makes it non-zero and a
    following ``nn.MaxPool2d`` may bring it back to zero (yolov3-tiny). Only those two (and
    ``nn.Identity``) accept an input off the stride grid.
    """

    channels: Channels
    stride: Stride
    excess: tuple[int, int] = (0, 0)

    @property
    def is_multi(self) -> bool:
        return isinstance(self.channels, list)


@dataclass(frozen=True)
class BuildContext:
    """What a row needs beyond its own arguments."""

    index: int  # row number, for error messages
    depth_multiple: float
    width_multiple: float
    nc: int
    # Conv's activation where a row does not choose one (the config's 'activation'); None: SiLU.
    default_act: blocks.ActFactory | None = None
    # BottleneckCSP's activation after its concat (the config's 'csp_activation'); None: SiLU.
    csp_act: blocks.ActFactory | None = None

    def fail(self, message: str) -> EfyoloError:
        return EfyoloError(f"model layer {self.index}: {message}")


Builder = Callable[[list[Any], int, list[Shape], BuildContext], tuple[nn.Module, Shape]]


@dataclass(frozen=True)
class LayerSpec:
    build: Builder
    repeats: bool = False  # True: 'number' is passed to the module (C3), not used to stack copies


MODULES: Registry[LayerSpec] = Registry("model module")


def make_divisible(x: float, divisor: int = 8) -> int:
    return int(math.ceil(x / divisor) * divisor)


# ---- builders -----------------------------------------------------------------------------------


def _single_input(inputs: list[Shape], ctx: BuildContext, off_grid_ok: bool = False) -> Shape:
    if len(inputs) != 1:
        raise ctx.fail(f"expects one input, got {len(inputs)}")
    if inputs[0].is_multi:
        raise ctx.fail("its input is a multi-output layer; pick one output with an Index row first")
    if inputs[0].excess != (0, 0) and not off_grid_ok:
        raise ctx.fail(_off_grid_message(inputs[0]))
    return inputs[0]


def _off_grid_message(shape: Shape) -> str:
    rows, cols = shape.excess
    return (f"its input is {rows} rows and {cols} columns larger than the input size / {shape.stride} "
            "(after nn.ZeroPad2d); follow the padding with an nn.MaxPool2d that brings it back")


def _accepts(cls: type[nn.Module], keyword: str) -> bool:
    try:
        return keyword in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False


def _conv_like(cls: type[nn.Module], pass_repeats: bool) -> Builder:
    """Rows whose first argument is the output width: ``[c2, *rest]`` -> ``cls(c1, c2', *rest)``."""

    takes_act = _accepts(cls, "default_act")
    takes_csp_act = _accepts(cls, "csp_act")

    def build(args: list[Any], n: int, inputs: list[Shape], ctx: BuildContext) -> tuple[nn.Module, Shape]:
        src = _single_input(inputs, ctx)
        if not args or not isinstance(args[0], int):
            raise ctx.fail(f"{cls.__name__} needs the output channels as its first argument, got {args}")
        c2 = make_divisible(args[0] * ctx.width_multiple, 8)
        ctor_args = [src.channels, c2, *args[1:]]
        if pass_repeats:
            ctor_args.insert(2, n)
        kwargs: dict[str, Any] = {}
        if takes_act:
            kwargs["default_act"] = ctx.default_act
        elif ctx.default_act is not None:
            raise ctx.fail(f"{cls.__name__} does not support the config's 'activation' (no default_act argument)")
        if takes_csp_act:
            kwargs["csp_act"] = ctx.csp_act
        try:
            module = cls(*ctor_args, **kwargs)
        except TypeError as err:
            raise ctx.fail(f"bad arguments {args} for {cls.__name__}: {err}") from None
        return module, Shape(c2, src.stride * module.stride)

    return build


def _build_upsample(args: list[Any], n: int, inputs: list[Shape], ctx: BuildContext) -> tuple[nn.Module, Shape]:
    src = _single_input(inputs, ctx)
    module = nn.Upsample(*args)
    scale = module.scale_factor
    if module.size is not None or not scale or src.stride % int(scale) or int(scale) != scale:
        raise ctx.fail(f"Upsample needs an integer scale_factor dividing the input stride {src.stride}, got {args}")
    return module, Shape(src.channels, src.stride // int(scale))


def _pair(value: Any, what: str, ctx: BuildContext) -> tuple[int, int]:
    """An int or a two-int sequence (PyTorch's ``_pair``) as ``(rows, cols)``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    raise ctx.fail(f"nn.MaxPool2d {what} must be an int or two ints, got {value!r}")


def _build_maxpool(args: list[Any], n: int, inputs: list[Shape], ctx: BuildContext) -> tuple[nn.Module, Shape]:
    """``nn.MaxPool2d(kernel_size, stride=kernel_size, padding=0, dilation=1)``: stride x ``stride``.

    For an input ``m * s + e`` long (``e``: the input's excess), the output is
    ``m + floor((e + 2p - d(k-1) - 1) / s) + 1`` long: on the stride grid when that offset is 0.
    """
    src = _single_input(inputs, ctx, off_grid_ok=True)
    try:
        module = nn.MaxPool2d(*args)
    except TypeError as err:
        raise ctx.fail(f"bad arguments {args} for nn.MaxPool2d: {err}") from None
    if module.return_indices or module.ceil_mode:
        raise ctx.fail("nn.MaxPool2d with return_indices or ceil_mode is not supported")
    k, s = _pair(module.kernel_size, "kernel_size", ctx), _pair(module.stride, "stride", ctx)
    p, d = _pair(module.padding, "padding", ctx), _pair(module.dilation, "dilation", ctx)
    if s[0] != s[1] or s[0] < 1:
        raise ctx.fail(f"nn.MaxPool2d needs one positive stride for both sides, got {module.stride!r}")
    excess = tuple((e + 2 * pi - di * (ki - 1) - 1) // s[0] + 1 for e, ki, pi, di in zip(src.excess, k, p, d))
    return module, Shape(src.channels, src.stride * s[0], excess)  # type: ignore[arg-type]


def _build_zeropad(args: list[Any], n: int, inputs: list[Shape], ctx: BuildContext) -> tuple[nn.Module, Shape]:
    """``nn.ZeroPad2d(padding)``, padding ``p`` or ``[left, right, top, bottom]``: same stride, a larger map."""
    src = _single_input(inputs, ctx, off_grid_ok=True)
    try:
        module = nn.ZeroPad2d(*args)
        left, right, top, bottom = (int(v) for v in module.padding)
    except (TypeError, ValueError) as err:
        raise ctx.fail(f"bad arguments {args} for nn.ZeroPad2d: {err}") from None
    excess = (src.excess[0] + top + bottom, src.excess[1] + left + right)
    return module, Shape(src.channels, src.stride, excess)


def _build_concat(args: list[Any], n: int, inputs: list[Shape], ctx: BuildContext) -> tuple[nn.Module, Shape]:
    if any(s.is_multi for s in inputs):
        raise ctx.fail("Concat input is a multi-output layer; pick one output with an Index row first")
    for s in inputs:
        if s.excess != (0, 0):
            raise ctx.fail(_off_grid_message(s))
    strides = [s.stride for s in inputs]
    if len(set(strides)) != 1:
        raise ctx.fail(f"Concat inputs have different strides {strides}; their maps would not align")
    dim = args[0] if args else 1
    if dim != 1:
        raise ctx.fail(f"Concat along dimension {dim} is not supported (channels, 1, only)")
    return blocks.Concat(dim), Shape(sum(s.channels for s in inputs), strides[0])


def _build_detect(args: list[Any], n: int, inputs: list[Shape], ctx: BuildContext) -> tuple[nn.Module, Shape]:
    if any(s.is_multi for s in inputs):
        raise ctx.fail("Detect input is a multi-output layer; pick outputs with Index rows first")
    for s in inputs:
        if s.excess != (0, 0):
            raise ctx.fail(_off_grid_message(s))
    nc, anchors = (args + [None, None])[:2]
    if not isinstance(nc, int) or nc < 1:
        raise ctx.fail(f"Detect needs the number of classes first, got {nc!r}")
    if isinstance(anchors, int):  # YOLOv5: 'na' anchors per level, to be found by AutoAnchor
        anchors = [list(range(anchors * 2))] * len(inputs)
    if not isinstance(anchors, list) or len(anchors) != len(inputs):
        raise ctx.fail(f"Detect has {len(inputs)} inputs but {anchors!r} anchor sets")
    if len({len(a) for a in anchors}) != 1 or len(anchors[0]) % 2:
        raise ctx.fail(f"Detect anchors must be equal-length lists of w,h pairs, got {anchors}")
    strides = [s.stride for s in inputs]
    if strides != sorted(strides) or len(set(strides)) != len(strides):
        raise ctx.fail(f"Detect inputs must have increasing strides, got {strides}")
    module = Detect(nc, anchors, [s.channels for s in inputs], strides)
    return module, Shape([module.no * module.na] * len(inputs), strides)


def _build_backbone(args: list[Any], n: int, inputs: list[Shape], ctx: BuildContext) -> tuple[nn.Module, Shape]:
    src = _single_input(inputs, ctx)
    if not args or not isinstance(args[0], str):
        raise ctx.fail(f"Backbone needs a registered backbone name, got {args}")
    kwargs = args[1] if len(args) > 1 and isinstance(args[1], dict) else {}
    module = BACKBONES.get(args[0])(**kwargs)
    in_chans = getattr(module, "in_chans", 3)
    if src.channels != in_chans:
        raise ctx.fail(f"backbone {args[0]} takes {in_chans} input channels, got {src.channels}")
    channels, strides = list(module.channels), list(module.strides)
    return module, Shape(channels, [src.stride * s for s in strides])


def _build_index(args: list[Any], n: int, inputs: list[Shape], ctx: BuildContext) -> tuple[nn.Module, Shape]:
    if len(inputs) != 1 or not inputs[0].is_multi:
        raise ctx.fail("Index takes one multi-output layer (a Backbone) as input")
    (idx,) = args[:1] or [None]
    src = inputs[0]
    if not isinstance(idx, int) or not -len(src.channels) <= idx < len(src.channels):
        raise ctx.fail(f"Index {idx!r} out of range for a layer with {len(src.channels)} outputs")
    return blocks.Index(idx), Shape(src.channels[idx], src.stride[idx])


def _build_identity(args: list[Any], n: int, inputs: list[Shape], ctx: BuildContext) -> tuple[nn.Module, Shape]:
    return nn.Identity(), _single_input(inputs, ctx, off_grid_ok=True)


for _name, _cls in {
    "Conv": blocks.Conv,
    "DWConv": blocks.DWConv,
    "Focus": blocks.Focus,
    "Bottleneck": blocks.Bottleneck,
    "SPP": blocks.SPP,
    "SPPF": blocks.SPPF,
    "GhostConv": blocks.GhostConv,
    "GhostBottleneck": blocks.GhostBottleneck,
}.items():
    MODULES.add(_name, LayerSpec(_conv_like(_cls, pass_repeats=False)))
for _name, _cls in {
    "C3": blocks.C3,
    "BottleneckCSP": blocks.BottleneckCSP,
    "C3Ghost": blocks.C3Ghost,
    "C3TR": transformer.C3TR,
    "BoT3": bottleneck_transformer.BoT3,
}.items():
    MODULES.add(_name, LayerSpec(_conv_like(_cls, pass_repeats=True), repeats=True))
MODULES.add("nn.Upsample", LayerSpec(_build_upsample))
MODULES.add("Upsample", LayerSpec(_build_upsample))
MODULES.add("Concat", LayerSpec(_build_concat))
MODULES.add("Detect", LayerSpec(_build_detect))
MODULES.add("Backbone", LayerSpec(_build_backbone))
MODULES.add("Index", LayerSpec(_build_index))
MODULES.add("nn.Identity", LayerSpec(_build_identity))
MODULES.add("nn.MaxPool2d", LayerSpec(_build_maxpool))
MODULES.add("nn.ZeroPad2d", LayerSpec(_build_zeropad))
