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
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from efyolo.errors import EfyoloError

CUDA_HALF_FORMATS = ("onnx", "torchscript")  # float16 tracing needs CUDA; the others compress on CPU
# formats whose converters get EfficientFormer's pooling mixers as depthwise convolutions (see fold.py)
POOL_AS_CONV_FORMATS = ("onnx", "openvino")


def __getattr__(name: str) -> Any:
    """``FORMATS``: ``{name: suffix}`` of every registered format (kept for callers of the old table)."""
    if name == "FORMATS":
        from efyolo.export.formats import all_formats

        return {f.name: f.suffix for f in all_formats().values()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    """Normalise a format name or alias (``ONNX``, ``tflite``) to its registered name; unknown names
    raise :class:`EfyoloError`."""
    from efyolo.export.formats import get_format

    return get_format(fmt).name


def export_path(weights: str | Path, fmt: str, half: bool = False, int8: bool = False) -> Path:
    """Where the export of ``weights`` goes: next to it, same stem (``best.pt`` -> ``best.onnx``,
    ``best_int8.onnx``); see :func:`efyolo.export.formats.export_path`."""
    from efyolo.export import formats

    return formats.export_path(weights, fmt, half, int8)


def check_options(
    fmt: str, batch: int, dynamic: bool, half: bool, nms: NmsOptions | None, device: torch.device, opset: int | None,
    int8: bool = False,
) -> None:
    """Refuse combinations a format cannot do, before any work (the format's registered abilities).

    Raises:
        EfyoloError: naming the option and why.
    """
    from efyolo.export.formats import get_format
    from efyolo.export.onnx import check_opset

    spec = get_format(fmt)
    if batch < 1:
        raise EfyoloError(f"--batch must be at least 1, got {batch}")
    unsupported = [flag for flag, on, ok in (("--dynamic", dynamic, spec.dynamic), ("--nms", nms is not None, spec.nms),
                                             ("--half", half, spec.half), ("--int8", int8, spec.int8)) if on and not ok]
    if unsupported:
        can = [f.name for f in _formats_with(unsupported[0])]
        raise EfyoloError(f"{spec.name} export does not support {' or '.join(unsupported)} "
                          f"({unsupported[0]} works with: {', '.join(can) or 'none'})")
    if half and int8:
        raise EfyoloError("--half and --int8 exclude each other: choose one precision")
    if half and spec.half == "cuda" and device.type != "cuda":
        raise EfyoloError(f"--half for {spec.name} needs a CUDA device (--device 0); got {device}")
    if spec.name in ("onnx", "openvino"):
        check_opset(opset)
    if nms is not None:
        if not 0 <= nms.conf <= 1 or not 0 <= nms.iou <= 1:
            raise EfyoloError(f"--conf {nms.conf} and --iou {nms.iou} must be in [0, 1]")
        if nms.max_det < 1:
            raise EfyoloError(f"--max-det must be at least 1, got {nms.max_det}")


def _formats_with(flag: str) -> list[Any]:
    from efyolo.export.formats import all_formats

    attr = {"--dynamic": "dynamic", "--nms": "nms", "--half": "half", "--int8": "int8"}[flag]
    return [f for f in all_formats().values() if getattr(f, attr)]


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
    calibration: Any = None,
    int8_options: Mapping[str, Any] | None = None,
) -> Path:
    """Export a prepared detector (see :func:`prepare_model`) to ``path`` in format ``fmt``.

    Args:
        model: fused eval-mode ``DetectionModel`` on ``device`` (float16 if ``half`` and CUDA);
            changed in place (see :mod:`efyolo.export.fold`).
        names: class names to embed.
        imgsz: ``(h, w)``, multiples of the model stride.
        calibration: a :class:`efyolo.export.calibration.CalibrationSet` for an INT8 export.
        int8_options: how to quantize (:class:`efyolo.export.onnx_int8.Int8Options` fields).
        other arguments: as :func:`export_model`.
    """
    from efyolo.export.fold import materialize_attention_bias, rewrite_pool_mixers
    from efyolo.export.formats import ExportJob, get_format
    from efyolo.export.metadata import build_metadata

    spec = get_format(fmt)
    device = torch.device(device)
    stride = int(getattr(model, "max_stride", 32))
    if not dynamic:
        materialize_attention_bias(model, imgsz)
    if spec.name in POOL_AS_CONV_FORMATS:
        rewrite_pool_mixers(model)
    int8 = calibration is not None
    meta = build_metadata(spec.name, list(names), stride, imgsz, batch, dynamic, half, nms and nms.as_kwargs(),
                          model_name, int8=int8)
    dtype = torch.float16 if half and spec.half == "cuda" else torch.float32
    example = torch.zeros(batch, 3, *trace_size(imgsz, stride, dynamic), device=device, dtype=dtype)
    job = ExportJob(model, example, Path(path), meta, opset, dynamic, simplify, nms.as_kwargs() if nms else None,
                    half, calibration, dict(int8_options or {}))
    return spec.writer(job)


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
    int8: bool = False,
    data: str | Path | None = None,
    calib: int | None = None,
    calib_split: str = "train",
    int8_options: Mapping[str, Any] | None = None,
) -> Path:
    """Export an efyolo checkpoint for deployment.

    Args:
        weights: ``.pt`` checkpoint.
        format: a registered format (:func:`efyolo.export.formats.all_formats`): ``onnx``,
            ``torchscript``, ``openvino``, ``coreml``, ``litert`` (alias ``tflite``), ``ncnn``.
        imgsz: export size, one int or ``(h, w)``, multiples of the stride (default: the
            checkpoint's training size, else 640). With ``dynamic`` it is the traced and default size.
        batch: batch size of the fixed input shape.
        dynamic: free batch, height and width (ONNX, OpenVINO, TorchScript).
        simplify: simplify the ONNX graph with onnxslim (ONNX, OpenVINO).
        opset: ONNX opset, 17 or newer (default 17).
        half: float16 (ONNX and TorchScript on CUDA; OpenVINO and ncnn store float16 weights;
            CoreML computes in float16; LiteRT float16 weights).
        nms: ``True`` or :class:`NmsOptions` to end the graph with NMS: output ``[B, max_det, 6]``
            ``(x1, y1, x2, y2, score, class)`` (ONNX, OpenVINO, TorchScript).
        device: where to trace (``cpu``, ``0``, ``cuda:0``).
        output: where to write (default :func:`export_path`).
        int8: post-training INT8 quantization calibrated on ``data`` (ONNX, OpenVINO, LiteRT).
        data: dataset YAML whose ``calib_split`` images calibrate ``int8``.
        calib: calibration images (default 300, or all when the split has fewer).
        calib_split: the split to calibrate on (default ``train``).
        int8_options: :class:`efyolo.export.onnx_int8.Int8Options` fields (method, per_channel, ...).

    Returns:
        The written file (or folder, for OpenVINO, CoreML and ncnn).

    Raises:
        EfyoloError: bad weights, unknown format, size not a multiple of the stride, an option
            the format cannot do, INT8 without usable calibration images, or a missing optional package.
    """
    from efyolo.models.checkpoint import load_checkpoint, model_from_checkpoint
    from efyolo.utils.checks import DEFAULT_IMGSZ, check_imgsz
    from efyolo.utils.devices import select_device
    from efyolo.export.formats import get_format

    spec = get_format(format)
    dev = select_device(device)
    nms_opts = NmsOptions() if nms is True else (nms or None)
    check_options(spec.name, batch, dynamic, half, nms_opts, dev, opset, int8)
    if int8 and data is None:
        raise EfyoloError("--int8 needs --data: a dataset YAML whose images calibrate the quantization")
    if int8:
        from efyolo.export.onnx_int8 import Int8Options

        Int8Options.from_mapping(int8_options)  # bad options fail before any work
    ckpt = load_checkpoint(weights, map_location="cpu")
    model = model_from_checkpoint(ckpt, source=weights)
    size = check_imgsz(imgsz if imgsz is not None else ckpt.get("imgsz") or DEFAULT_IMGSZ, model.max_stride)
    calibration = None
    if int8:
        from efyolo.export.calibration import load_calibration

        calibration = load_calibration(data, size, batch, calib, calib_split)
    names = list(model.names)
    cfg = ckpt.get("model_config") or {}
    model_name = cfg.get("name") or Path(str(cfg.get("yaml_file", ""))).stem or None
    half_model = half and spec.half == "cuda"
    model = prepare_model(model, dev if spec.half == "cuda" else torch.device("cpu"), half_model)
    out = Path(output) if output is not None else export_path(weights, spec.name, half, int8)
    out.parent.mkdir(parents=True, exist_ok=True)
    return export_module(
        model, spec.name, out, names, size, batch, dynamic, simplify, opset, half, nms_opts,
        next(model.parameters()).device, model_name, calibration, int8_options,
    )
