"""``DetectionModel``: a YOLOv5-format YAML turned into a network.

Layers are kept in an ``nn.Sequential`` named ``model`` (so state-dict keys read
``model.<row>.<...>`` as in YOLOv5); each layer carries ``f`` (its input rows, -1 = previous) and
``i`` (its row number). Only the outputs that a later row reads are kept during forward.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from efyolo.errors import EfyoloError
from efyolo.models.config import load_model_config, resolve_arg
from efyolo.models.head import Detect
from efyolo.models.activations import parse_activation
from efyolo.models.parser import MODULES, BuildContext, Shape


def _parse_row(row: Any, index: int) -> tuple[list[int], int, str, list[Any]]:
    if not isinstance(row, (list, tuple)) or len(row) != 4:
        raise EfyoloError(f"model layer {index}: expected [from, number, module, args], got {row!r}")
    f, n, name, args = row
    sources = [f] if isinstance(f, int) else f
    if not isinstance(sources, list) or not sources or not all(isinstance(x, int) for x in sources):
        raise EfyoloError(f"model layer {index}: 'from' must be an int or a list of ints, got {f!r}")
    if not isinstance(n, int) or n < 1:
        raise EfyoloError(f"model layer {index}: 'number' must be a positive int, got {n!r}")
    if not isinstance(args, list):
        raise EfyoloError(f"model layer {index}: args must be a list, got {args!r}")
    return sources, n, str(name), args


def build_layers(cfg: dict[str, Any], in_channels: int = 3) -> tuple[nn.Sequential, list[Shape], list[int]]:
    """Build every row of ``cfg['backbone'] + cfg['head']``.

    The optional top-level ``cfg['activation']`` (e.g. ``"nn.LeakyReLU(0.1)"``) is the activation of
    every ``Conv`` built with ``act=True`` (YOLOv5's ``Conv.default_act``), for this model only;
    ``cfg['csp_activation']`` is ``BottleneckCSP``'s own activation after its concat (SiLU as in
    YOLOv5 v6.2+; ``"nn.LeakyReLU(0.1)"`` reproduces v4.0-v6.1, and YOLOv5 imports set it from the file).

    Returns:
        ``(layers, shapes, save)``: the modules, each row's output :class:`Shape`, and the rows
        whose outputs later rows read.
    """
    rows = list(cfg["backbone"] or []) + list(cfg["head"] or [])
    gd, gw = float(cfg["depth_multiple"]), float(cfg["width_multiple"])
    default_act = parse_activation(cfg.get("activation"))
    csp_act = parse_activation(cfg.get("csp_activation"), key="csp_activation")
    shapes: list[Shape] = []
    layers: list[nn.Module] = []
    save: set[int] = set()
    for i, row in enumerate(rows):
        sources, n, name, args = _parse_row(row, i)
        for x in sources:
            if not -i <= x < i and not (i == 0 and x == -1):
                raise EfyoloError(f"model layer {i} ({name}): 'from' {x} does not name an earlier layer")
        spec = MODULES.get(name)
        args = [resolve_arg(a, cfg) for a in args]
        n = max(round(n * gd), 1) if n > 1 else n
        ctx = BuildContext(index=i, depth_multiple=gd, width_multiple=gw, nc=int(cfg["nc"]), default_act=default_act,
                           csp_act=csp_act)
        inputs = [Shape(in_channels, 1) if i == 0 and x == -1 else shapes[x] for x in sources]
        if spec.repeats or n == 1:
            module, shape = spec.build(args, n, inputs, ctx)
        else:  # stack n copies, each fed by the previous one
            copies = []
            shape_in = inputs
            for _ in range(n):
                module, shape = spec.build(args, 1, shape_in, ctx)
                copies.append(module)
                shape_in = [shape]
            module = nn.Sequential(*copies)
        module.f = sources[0] if len(sources) == 1 else sources  # type: ignore[assignment]
        module.i = i  # type: ignore[assignment]
        module.type = name  # type: ignore[assignment]
        save.update(x % i for x in sources if x != -1)
        layers.append(module)
        shapes.append(shape)
    return nn.Sequential(*layers), shapes, sorted(save)


class DetectionModel(nn.Module):
    """A detector built from a YOLOv5-format config.

    Args:
        cfg: a built-in model name, a YAML path, or a config dict.
        nc: override the number of classes.
        in_channels: input image channels.

    Forward:
        ``x``: ``Tensor[B, in_channels, H, W]``, H and W multiples of :attr:`max_stride`.
        Training mode returns the raw head outputs (a list of ``[B, na, H_i, W_i, nc + 5]``);
        eval mode returns decoded predictions ``[B, N, nc + 5]`` (pixel xywh, objectness, class
        probabilities), see :class:`efyolo.models.head.Detect`.
    """

    def __init__(self, cfg: str | Path | dict[str, Any] = "yolov5s", nc: int | None = None, in_channels: int = 3):
        super().__init__()
        self.yaml = load_model_config(cfg, nc=nc)
        self.model, self.shapes, self.save = build_layers(self.yaml, in_channels)
        if not isinstance(self.model[-1], Detect):
            raise EfyoloError("model config: the last layer must be Detect")
        self.in_channels = in_channels
        self.names = [str(i) for i in range(self.nc)]
        # A plain int, fixed by the config: reading the stride buffer inside forward would make
        # tracers (torch.onnx, torch.export) record a data-dependent Python value. Every layer's
        # stride counts, not only the head's: yolov5-p34 detects at 8 and 16 but its backbone
        # goes down to 32 and comes back up, so its input sides must be multiples of 32.
        self._max_stride = _input_multiple(self.shapes)
        self._initialize_norms()

    # ---- metadata -------------------------------------------------------------------------
    @property
    def detect(self) -> Detect:
        return self.model[-1]  # type: ignore[return-value]

    @property
    def nc(self) -> int:
        return self.detect.nc

    @property
    def stride(self) -> torch.Tensor:
        """Strides of the detection levels, ``Tensor[nl]`` (e.g. ``[8., 16., 32.]``)."""
        return self.detect.stride

    @property
    def max_stride(self) -> int:
        """Input sides must be multiples of this: the largest stride of any layer (64 for P6 models,
        128 for P7, 32 for yolov5-p34 whose head stops at 16)."""
        return self._max_stride

    def _initialize_norms(self) -> None:
        """YOLOv5's BatchNorm settings (eps 1e-3, momentum 0.03) and in-place activations for its own
        blocks; a registered backbone keeps its own settings."""
        for m in self.model.modules():
            if isinstance(m, (nn.Hardswish, nn.LeakyReLU, nn.ReLU, nn.ReLU6, nn.SiLU)):
                m.inplace = True

    # ---- forward --------------------------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> None:
        h, w = x.shape[-2:]
        s = self.max_stride
        if not torch.jit.is_tracing() and (int(h) % s or int(w) % s):
            raise EfyoloError(f"input size {int(h)}x{int(w)} is not a multiple of the model stride {s}")

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Run every row but the head; return the head's inputs."""
        outputs: list[Any] = []
        for m in self.model[:-1]:
            if m.f != -1:
                x = outputs[m.f] if isinstance(m.f, int) else [x if j == -1 else outputs[j] for j in m.f]
            x = m(x)
            outputs.append(x if m.i in self.save else None)
        head = self.detect
        f = head.f if isinstance(head.f, list) else [head.f]
        return [x if j == -1 else outputs[j] for j in f]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor] | torch.Tensor:
        self.check_input(x)
        return self.detect(self.forward_features(x))

    def forward_train_and_eval(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Decoded predictions and raw outputs from one pass (validation with a loss)."""
        self.check_input(x)
        raw = self.detect.forward_raw(self.forward_features(x))
        return self.detect.decode(raw), raw

    # ---- inference helpers ----------------------------------------------------------------
    def fuse(self) -> "DetectionModel":
        """Fold BatchNorm into the preceding convolutions, in place, for inference."""
        _fuse_tree(self.model)
        return self

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _input_multiple(shapes: list[Shape]) -> int:
    """The least common multiple of every layer's stride: what the input sides must be multiples of."""
    strides: list[int] = []
    for shape in shapes:
        strides += shape.stride if isinstance(shape.stride, list) else [shape.stride]
    return math.lcm(*(int(s) for s in strides))


def _fuse_tree(module: nn.Module) -> None:
    """Call ``fuse()`` on the outermost modules that define it; they fuse their own insides."""
    for child in module.children():
        if callable(getattr(child, "fuse", None)):
            child.fuse()
        else:
            _fuse_tree(child)


def build_model(name_or_yaml: str | Path | dict[str, Any] = "yolov5s", nc: int | None = None) -> DetectionModel:
    """Build a detector by built-in name (``"yolov5s"``, ``"yolov5s-efficientformer-l1"``) or YAML path.

    Args:
        name_or_yaml: model name, path to a YOLOv5-format YAML, or a config dict.
        nc: number of classes (overrides the config's ``nc``).

    Returns:
        A :class:`DetectionModel` in training mode. ``model(x)`` with ``x: Tensor[B, 3, H, W]``
        returns raw per-level outputs ``[B, 3, H/s, W/s, nc + 5]`` for s in ``model.stride``; in
        eval mode it returns ``[B, N, nc + 5]`` decoded boxes (pixel xywh, objectness, classes).
    """
    return DetectionModel(name_or_yaml, nc=nc)
