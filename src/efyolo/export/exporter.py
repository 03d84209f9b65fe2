"""``efyolo export``: check the arguments, load and prepare the model, write one format.

Every format gets the same prepared model: rebuilt from the checkpoint (no pickled code), in eval
mode, fused (:meth:`DetectionModel.fuse` folds BatchNorm into convolutions and, in
EfficientFormer, BatchNorm, LayerNorm affines, attention scales and layer scales into the
neighbouring layers), gradients off, float16 on request. Then :mod:`efyolo.export.fold` rewrites
it for the graph: at a fixed size EfficientFormer's attention bias becomes one constant per
attention (with ``--dynamic`` it is computed in the graph from the bias table and follows the
input size), and for ONNX-based formats the pooling mixers become depthwise convolutions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from efyolo.errors import EfyoloError

# format -> what is appended to the weights stem ("best" -> "best.onnx", "best_openvino_model")
FORMATS: dict[str, str] = {
    "onnx": ".onnx",
    "torchscript": ".torchscript",
    "openvino": "_openvino_model",
    "coreml": ".mlpackage",
}
CUDA_HALF_FORMATS = ("onnx", "torchscript")  # float16 tracing needs CUDA; OpenVINO/CoreML compress on CPU


@dataclass(frozen=True)
class NmsOptions:
    """NMS put inside the graph by ``--nms``."""

    conf: float = 0.25
    iou: float = 0.45
    max_det: int = 300
    agnostic: bool = False

    def as_kwargs(self) -> dict[str, Any]:
        return {"conf": self.conf, "iou": self.iou, "max_det": self.max_det, "agnostic": self.agnostic}


def check_format(fmt: str) -> str:
    """Normalise a format name (``ONNX``, ``onnx``); unknown names raise :class:`EfyoloError`."""
    name = str(fmt).strip().lower()
    if name not in FORMATS:
        raise EfyoloError(f"unknown export format {fmt!r} (choose from {', '.join(FORMATS)})")
    return name


def export_path(weights: str | Path, fmt: str) -> Path:
    """Where the export of ``weights`` goes: next to it, same stem (``best.pt`` -> ``best.onnx``)."""
    weights = Path(weights)
    return weights.with_name(weights.stem + FORMATS[check_format(fmt)])


def check_options(
    fmt: str, batch: int, dynamic: bool, half: bool, nms: NmsOptions | None, device: torch.device, opset: int | None
) -> None:
    """Refuse combinations a format cannot do, before any work.

    Raises:
        EfyoloError: naming the option and why.
    """
    from efyolo.export.onnx import check_opset

    if batch < 1:
        raise EfyoloError(f"--batch must be at least 1, got {batch}")
    if half and fmt in CUDA_HALF_FORMATS and device.type != "cuda":
        raise EfyoloError(f"--half for {fmt} needs a CUDA device (--device 0); got {device}")
    if fmt == "coreml" and (dynamic or nms is not None):
        raise EfyoloError("coreml export supports neither --dynamic nor --nms")
    if fmt in ("onnx", "openvino"):
        check_opset(opset)
    if nms is not None:
        if not 0 <= nms.conf <= 1 or not 0 <= nms.iou <= 1:
            raise EfyoloError(f"--conf {nms.conf} and --iou {nms.iou} must be in [0, 1]")
        if nms.max_det < 1:
            raise EfyoloError(f"--max-det must be at least 1, got {nms.max_det}")


def prepare_model(model: nn.Module, device: torch.device, half: bool = False, fuse: bool = True) -> nn.Module:
    """Eval mode, fused (if ``fuse``), gradients off, on ``device`` (float16 if ``half``), in place.
    The one preparation for inference: exports and :class:`efyolo.runtime.pytorch.PyTorchBackend`."""
    model = model.eval()
    if fuse and hasattr(model, "fuse"):
        model.fuse()
    model = model.to(device)
    if half:
        model = model.half()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def trace_size(imgsz: tuple[int, int], stride: int, dynamic: bool) -> tuple[int, int]:
    """The input size to trace with: ``imgsz``, except that a dynamic export avoids a 7-cell side.

    EfficientFormer skips resampling its 7x7 attention-bias table when the token grid is 7x7
    (224 px); a trace at that size would record no resampling and run wrong at other sizes.
    """
    from efyolo.models.efficientformer import BIAS_RESOLUTION, SIZE_DIVISOR

    if not dynamic:
        return imgsz
    return tuple(s + stride if s // SIZE_DIVISOR == BIAS_RESOLUTION else s for s in imgsz)  # type: ignore[return-value]


def export_module(
    model: nn.Module,
    fmt: str,
    path: str | Path,
    names: Sequence[str],
    imgsz: tuple[int, int],
    batch: int = 1,
    dynamic: bool = False,
    simplify: bool = False,
    opset: int | None = None,
    half: bool = False,
    nms: NmsOptions | None = None,
    device: torch.device | str = "cpu",
    model_name: str | None = None,
) -> Path:
    """Export a prepared detector (see :func:`prepare_model`) to ``path`` in format ``fmt``.

    Args:
        model: fused eval-mode ``DetectionModel`` on ``device`` (float16 if ``half`` and CUDA);
            changed in place (see :mod:`efyolo.export.fold`).
        names: class names to embed.
        imgsz: ``(h, w)``, multiples of the model stride.
        other arguments: as :func:`export_model`.
    """
    from efyolo.export.fold import materialize_attention_bias, rewrite_pool_mixers
    from efyolo.export.metadata import build_metadata

    device = torch.device(device)
    stride = int(getattr(model, "max_stride", 32))
    if not dynamic:
        materialize_attention_bias(model, imgsz)
    if fmt in ("onnx", "openvino"):
        rewrite_pool_mixers(model)
    meta = build_metadata(fmt, list(names), stride, imgsz, batch, dynamic, half, nms and nms.as_kwargs(), model_name)
    dtype = torch.float16 if half and fmt in CUDA_HALF_FORMATS else torch.float32
    example = torch.zeros(batch, 3, *trace_size(imgsz, stride, dynamic), device=device, dtype=dtype)
    nms_kwargs = nms.as_kwargs() if nms else None
    path = Path(path)
    if fmt == "onnx":
        from efyolo.export.onnx import export_onnx

        return export_onnx(model, example, path, meta, opset, dynamic, simplify, nms_kwargs)
    if fmt == "torchscript":
        from efyolo.export.torchscript import export_torchscript

        return export_torchscript(model, example, path, meta, nms_kwargs)
    if fmt == "openvino":
        from efyolo.export.openvino import export_openvino

        return export_openvino(model, example, path, meta, opset, dynamic, simplify, nms_kwargs, half)
    from efyolo.export.coreml import export_coreml

    return export_coreml(model, example, path, meta, half)


def export_model(
    weights: str | Path,
    format: str = "onnx",  # noqa: A002  (the CLI's --format)
    imgsz: int | Sequence[int] | None = None,
    batch: int = 1,
    dynamic: bool = False,
    simplify: bool = False,
    opset: int | None = None,
    half: bool = False,
    nms: bool | NmsOptions = False,
    device: str | torch.device = "cpu",
    output: str | Path | None = None,
) -> Path:
    """Export an efyolo checkpoint for deployment.

    Args:
        weights: ``.pt`` checkpoint.
        format: ``onnx``, ``torchscript``, ``openvino`` or ``coreml``.
        imgsz: export size, one int or ``(h, w)``, multiples of the stride (default: the
            checkpoint's training size, else 640). With ``dynamic`` it is the traced and default size.
        batch: batch size of the fixed input shape.
        dynamic: free batch, height and width (ONNX, OpenVINO, TorchScript).
        simplify: simplify the ONNX graph with onnxslim (ONNX, OpenVINO).
        opset: ONNX opset, 17 or newer (default 17).
        half: float16 (ONNX and TorchScript on CUDA; OpenVINO stores float16 weights; CoreML
            computes in float16).
        nms: ``True`` or :class:`NmsOptions` to end the graph with NMS: output ``[B, max_det, 6]``
            ``(x1, y1, x2, y2, score, class)`` (ONNX, OpenVINO, TorchScript).
        device: where to trace (``cpu``, ``0``, ``cuda:0``).
        output: where to write (default :func:`export_path`).

    Returns:
        The written file (or folder, for OpenVINO and CoreML).

    Raises:
        EfyoloError: bad weights, unknown format, size not a multiple of the stride, an option
            the format cannot do, or a missing optional package.
    """
    from efyolo.models.checkpoint import load_checkpoint, model_from_checkpoint
    from efyolo.utils.checks import DEFAULT_IMGSZ, check_imgsz
    from efyolo.utils.devices import select_device

    fmt = check_format(format)
    dev = select_device(device)
    nms_opts = NmsOptions() if nms is True else (nms or None)
    check_options(fmt, batch, dynamic, half, nms_opts, dev, opset)
    ckpt = load_checkpoint(weights, map_location="cpu")
    model = model_from_checkpoint(ckpt, source=weights)
    size = check_imgsz(imgsz if imgsz is not None else ckpt.get("imgsz") or DEFAULT_IMGSZ, model.max_stride)
    names = list(model.names)
    cfg = ckpt.get("model_config") or {}
    model_name = cfg.get("name") or Path(str(cfg.get("yaml_file", ""))).stem or None
    half_model = half and fmt in CUDA_HALF_FORMATS
    model = prepare_model(model, dev if fmt in CUDA_HALF_FORMATS else torch.device("cpu"), half_model)
    out = Path(output) if output is not None else export_path(weights, fmt)
    out.parent.mkdir(parents=True, exist_ok=True)
    return export_module(
        model, fmt, out, names, size, batch, dynamic, simplify, opset, half, nms_opts,
        next(model.parameters()).device, model_name,
    )
