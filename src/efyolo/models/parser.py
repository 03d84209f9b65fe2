"""How each YAML module name becomes a layer, and what its output channels and stride are.

A YAML row ``[from, number, module, args]`` is built by the :class:`LayerSpec` registered under
``module`` in :data:`MODULES`. The spec receives the shapes (channels, stride) of its inputs and
returns the module together with its own output shape, so channels and strides flow through the
model from metadata alone: no dummy forward pass, no hard-coded lists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Union

from torch import nn

from efyolo.errors import EfyoloError
from efyolo.models import blocks
from efyolo.models.head import Detect
from efyolo.models.registry import BACKBONES, Registry

# A layer's output: one (channels, stride) for a tensor, or lists for a multi-output backbone.
Channels = Union[int, list[int]]
Stride = Union[int, list[int]]


@dataclass(frozen=True)
class Shape:
    channels: Channels
    stride: Stride

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


def _single_input(inputs: list[Shape], ctx: BuildContext) -> Shape:
    if len(inputs) != 1:
        raise ctx.fail(f"expects one input, got {len(inputs)}")
    if inputs[0].is_multi:
        raise ctx.fail("its input is a multi-output layer; pick one output with an Index row first")
    return inputs[0]


def _conv_like(cls: type[nn.Module], pass_repeats: bool) -> Builder:
    """Rows whose first argument is the output width: ``[c2, *rest]`` -> ``cls(c1, c2', *rest)``."""

    def build(args: list[Any], n: int, inputs: list[Shape], ctx: BuildContext) -> tuple[nn.Module, Shape]:
        src = _single_input(inputs, ctx)
        if not args or not isinstance(args[0], int):
            raise ctx.fail(f"{cls.__name__} needs the output channels as its first argument, got {args}")
        c2 = make_divisible(args[0] * ctx.width_multiple, 8)
        ctor_args = [src.channels, c2, *args[1:]]
        if pass_repeats:
            ctor_args.insert(2, n)
        try:
            module = cls(*ctor_args)
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


def _build_concat(args: list[Any], n: int, inputs: list[Shape], ctx: BuildContext) -> tuple[nn.Module, Shape]:
    if any(s.is_multi for s in inputs):
        raise ctx.fail("Concat input is a multi-output layer; pick one output with an Index row first")
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
    return nn.Identity(), _single_input(inputs, ctx)


for _name, _cls in {
    "Conv": blocks.Conv,
    "DWConv": blocks.DWConv,
    "Focus": blocks.Focus,
    "Bottleneck": blocks.Bottleneck,
    "SPP": blocks.SPP,
    "SPPF": blocks.SPPF,
}.items():
    MODULES.add(_name, LayerSpec(_conv_like(_cls, pass_repeats=False)))
for _name, _cls in {"C3": blocks.C3, "BottleneckCSP": blocks.BottleneckCSP}.items():
    MODULES.add(_name, LayerSpec(_conv_like(_cls, pass_repeats=True), repeats=True))
MODULES.add("nn.Upsample", LayerSpec(_build_upsample))
MODULES.add("Upsample", LayerSpec(_build_upsample))
MODULES.add("Concat", LayerSpec(_build_concat))
MODULES.add("Detect", LayerSpec(_build_detect))
MODULES.add("Backbone", LayerSpec(_build_backbone))
MODULES.add("Index", LayerSpec(_build_index))
MODULES.add("nn.Identity", LayerSpec(_build_identity))
