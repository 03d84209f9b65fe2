"""INT8 ONNX: static post-training quantization with ONNX Runtime's tools, QDQ format.

Pipeline (``float.onnx`` -> ``best_int8.onnx``):

1. the float32 export of the same model and size (:func:`efyolo.export.onnx.export_onnx`);
2. ``quant_pre_process``: shape inference and basic graph optimization, so that every tensor has a
   known shape and can be quantized;
3. ``quantize_static``: run the calibration images through the float graph, record each activation's
   range (``method``), then insert QuantizeLinear/DequantizeLinear pairs around the quantized ops.
   ONNX Runtime's CPU kernels run each ``DQ -> Conv -> Q`` group as one integer convolution.

What stays float (:func:`float_nodes`): the Detect head's decoding (sigmoid, grid offsets, anchor
scaling and the concatenation into ``[B, N, 5 + nc]``): its outputs are pixel coordinates up to the
image size next to probabilities in ``[0, 1]``, and one 8-bit scale for both would leave boxes a few
pixels coarse. Optionally (``keep_float``) also the head's last convolutions and the attention
softmaxes; the defaults were chosen by measurement (``docs/int8.md``).

Activations are unsigned 8-bit with a zero point, weights signed 8-bit, symmetric, per output
channel: the combination ONNX Runtime documents for x86 CPUs. ``reduce_range`` (7-bit weights)
avoids saturating the 16-bit intermediate sums of the AVX2 ``vpmaddubsw`` path on CPUs without
VNNI; it is off by default (VNNI CPUs and ARM do not need it) and costs accuracy.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from efyolo.errors import EfyoloError
from efyolo.export.requires import require

METHODS = ("minmax", "entropy", "percentile")
KEEP_FLOAT = ("head", "softmax")  # optional groups kept in float besides the head's decoding
# measured per format (docs/int8.md, 2026-12-02): what stays float when the user says nothing
DEFAULT_KEEP_FLOAT: dict[str, tuple[str, ...]] = {"onnx": ("head",), "openvino": ()}


@dataclass(frozen=True)
class Int8Options:
    """How to quantize (the defaults are the measured choice, see ``docs/int8.md``).

    Attributes:
        method: activation-range calibration: ``minmax`` (min/max over the set), ``entropy``
            (KL-divergence threshold) or ``percentile`` (99.999th percentile of |x|).
        per_channel: one weight scale per output channel (else one per tensor).
        reduce_range: 7-bit weights (for CPUs without VNNI; see the module docstring).
        keep_float: extra op groups to leave in float32: ``"head"`` (the Detect head's final
            1x1 convolutions), ``"softmax"`` (attention softmaxes); ``None``: the format's measured
            default (:data:`DEFAULT_KEEP_FLOAT`: the head stays float in ONNX, where quantizing it
            cost yolov5s 0.017 mAP50-95 and bought no speed; NNCF's OpenVINO quantization keeps
            accuracy with it quantized); ``()`` quantizes everything the float scopes allow.
    """

    method: str = "minmax"
    per_channel: bool = True
    reduce_range: bool = False
    keep_float: tuple[str, ...] | None = None

    def float_groups(self, fmt: str) -> tuple[str, ...]:
        """The op groups kept float for format ``fmt`` ("onnx", "openvino", "litert")."""
        return DEFAULT_KEEP_FLOAT.get(fmt, ()) if self.keep_float is None else tuple(self.keep_float)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise EfyoloError(f"INT8 calibration method {self.method!r}: choose from {', '.join(METHODS)}")
        unknown = [k for k in self.keep_float or () if k not in KEEP_FLOAT]
        if unknown:
            raise EfyoloError(f"INT8 keep_float {unknown}: choose from {', '.join(KEEP_FLOAT)}")

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any] | None) -> Int8Options:
        opts = dict(options or {})
        if opts.get("keep_float") is not None:
            opts["keep_float"] = tuple(opts["keep_float"])
        unknown = set(opts) - {"method", "per_channel", "reduce_range", "keep_float"}
        if unknown:
            raise EfyoloError(f"unknown INT8 option(s): {', '.join(sorted(unknown))}")
        return cls(**opts)


@dataclass
class QuantizationReport:
    """What was quantized and what stayed float (stored in the export's metadata)."""

    options: dict[str, Any]
    float_nodes: list[str] = field(default_factory=list)
    quantized_ops: dict[str, int] = field(default_factory=dict)  # op type -> nodes fed by DequantizeLinear
    images_used: int | None = None  # calibration images the quantizer saw (histogram methods may use fewer)

    def as_metadata(self) -> dict[str, Any]:
        return {**self.options, "float_nodes": len(self.float_nodes), "quantized_ops": self.quantized_ops}


@dataclass(frozen=True)
class Scopes:
    """ONNX node-name prefixes of the detector's layers and of its Detect head (the tracer names each
    node by its module path: ``/model.3/cv1/conv/Conv``; inside the ``--nms`` wrapper ``/model/model.3/...``)."""

    layers: str  # "/model." : every node of the layer stack
    head: str  # "/model.24/" : the Detect head's nodes


def detector_scopes(model: Any, wrapped: bool = False) -> Scopes:
    """The :class:`Scopes` of a ``DetectionModel`` (``wrapped``: traced inside ``EndToEnd``)."""
    root = "/model" if wrapped else ""
    for name, module in model.named_modules():
        if module is getattr(model, "detect", None):
            return Scopes(f"{root}/model.", f"{root}/{onnx_scope(name)}/")
    raise EfyoloError("the model has no Detect head to keep in float")


def onnx_scope(module_name: str) -> str:
    """The tracer's scope of a module path: list indices stay attached to their list
    (``model.24.m.0`` -> ``model.24/m.0``)."""
    parts: list[str] = []
    for part in module_name.split("."):
        if part.isdigit() and parts:
            parts[-1] += "." + part
        else:
            parts.append(part)
    return "/".join(parts)


def float_nodes(graph: Any, scopes: Scopes, keep_float: Sequence[str]) -> list[str]:
    """Names of the nodes to leave unquantized (see the module docstring): everything outside the
    layer stack (NMS of ``--nms`` exports), the head except its final convolutions, and the optional
    groups of :data:`KEEP_FLOAT`."""
    names = []
    for node in graph.node:
        in_head = node.name.startswith(scopes.head)
        final_conv = in_head and node.op_type == "Conv"
        outside = not node.name.startswith(scopes.layers)
        if (outside or (in_head and not final_conv) or (final_conv and "head" in keep_float)
                or (node.op_type == "Softmax" and "softmax" in keep_float)):
            names.append(node.name)
    return names


# ORT 1.32's histogram calibrators (entropy, percentile) keep every activation of every calibration
# image in memory before building histograms (MinMax reduces as it goes): yolov5s at 320 px with 300
# images was killed at 23.7 GB. They get at most this many pixels of calibration input (64 images at
# 320x320, 16 at 640x640), about 5 GB for yolov5s.
HISTOGRAM_PIXEL_BUDGET = 64 * 320 * 320


def histogram_budget(batches: list[Any], method: str) -> list[Any]:
    """The calibration batches a histogram method can hold (all of them for minmax), with a notice."""
    if method == "minmax" or not batches:
        return batches
    shape = batches[0].shape  # (B, 3, H, W)
    keep = max(1, HISTOGRAM_PIXEL_BUDGET // (shape[0] * shape[2] * shape[3]))
    if keep < len(batches):
        from efyolo.utils.log import LOGGER

        LOGGER.warning(f"INT8 {method} calibration: using {keep * shape[0]} of {len(batches) * shape[0]} images "
                       "(ONNX Runtime's histogram calibrators hold every activation in memory; minmax has no limit)")
        step = len(batches) / keep  # evenly spread, like the calibration set itself
        batches = [batches[int(i * step)] for i in range(keep)]
    return batches


def chunk_size(batches: int, preferred: int = 16) -> int:
    """Calibration outputs held in memory at once (ORT's ``CalibMaxIntermediateOutputs``: all of a
    640 px model's activations for hundreds of images would not fit). ONNX Runtime 1.32 fails with
    "No data is collected" when the batch count is an exact multiple of it, so pick one that is not."""
    size = preferred
    while batches >= size and batches % size == 0:
        size += 1
    return size


class _Reader:
    """ONNX Runtime's CalibrationDataReader over letterboxed batches."""

    def __init__(self, input_name: str, batches: Iterable[Any]) -> None:
        self.input_name = input_name
        self.batches = list(batches)
        self._it = iter(self.batches)

    def get_next(self) -> dict[str, Any] | None:
        batch = next(self._it, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:
        self._it = iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


@contextmanager
def quiet_logging(level: int = logging.ERROR) -> Iterator[None]:
    """Raise the root logger's level for the quantizers' chatter (per-tensor warnings, progress)."""
    root = logging.getLogger()
    before = root.level
    root.setLevel(max(before, level))
    try:
        yield
    finally:
        root.setLevel(before)


def count_quantized_ops(proto: Any) -> dict[str, int]:
    """``{op type: nodes}`` among nodes reading a DequantizeLinear output (what runs in INT8)."""
    dq_out = {o for n in proto.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") and any(i in dq_out for i in node.input):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def is_quantized(proto: Any) -> bool:
    """Whether an ONNX graph holds INT8 (QDQ or QOperator) nodes."""
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger") for n in proto.graph.node)


def quantize_onnx(
    float_path: str | Path,
    out_path: str | Path,
    calibration: Iterable[Any],
    scopes: Scopes,
    options: Int8Options | None = None,
) -> QuantizationReport:
    """Quantize the float32 ONNX file ``float_path`` into ``out_path`` (QDQ, static).

    Args:
        calibration: ``float32 [B, 3, H, W]`` batches at the graph's input shape.
        scopes: node-name prefixes of the layers and the head (:func:`detector_scopes`).
        options: see :class:`Int8Options`.

    Raises:
        EfyoloError: ONNX Runtime's quantizer failed (its message, one line).
    """
    onnx = require("onnx", "INT8 ONNX export")
    require("onnxruntime", "INT8 ONNX export")  # the quantizer ships with it
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    options = options or Int8Options()
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[options.method]
    with tempfile.TemporaryDirectory(prefix=".efyolo-int8-", dir=Path(out_path).parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        proto = onnx.load(str(prepared))
        keep = float_nodes(proto.graph, scopes, options.float_groups("onnx"))
        input_name = proto.graph.input[0].name
        batches = histogram_budget(list(calibration), options.method)
        try:
            with warnings.catch_warnings(), quiet_logging():
                warnings.simplefilter("ignore")
                quantize_static(
                    str(prepared), str(out_path), _Reader(input_name, batches),
                    quant_format=QuantFormat.QDQ, per_channel=options.per_channel, reduce_range=options.reduce_range,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=keep,
                    calibrate_method=method, calibration_providers=["CPUExecutionProvider"],
                    extra_options={"CalibMaxIntermediateOutputs": chunk_size(len(batches))},
                )
        except Exception as err:  # the quantizer raises plain Exceptions and onnx/ort errors
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise EfyoloError(f"ONNX Runtime INT8 quantization failed: {first[:300]}") from None
    result = onnx.load(str(out_path))
    return QuantizationReport({**asdict(options), "keep_float": list(options.float_groups("onnx"))}, keep,
                              count_quantized_ops(result), sum(b.shape[0] for b in batches))


def write_int8_onnx(job: Any, export_onnx: Any, set_metadata: Any) -> Path:
    """The ``--format onnx --int8`` writer: float export, quantize, metadata; atomic at ``job.path``.

    ``export_onnx`` and ``set_metadata`` are :mod:`efyolo.export.onnx`'s (passed in: that module
    dispatches here, so importing it back would make a cycle)."""
    from efyolo.utils.files import temp_file_beside

    onnx = require("onnx", "INT8 ONNX export")
    options = Int8Options.from_mapping(job.int8_options)
    path = Path(job.path)
    fd, tmp = temp_file_beside(path)
    os.close(fd)
    float_tmp = Path(tmp).with_name(Path(tmp).name + ".float.onnx")
    try:
        export_onnx(job.model, job.example, float_tmp, job.metadata, job.opset, job.dynamic, job.simplify, job.nms)
        scopes = detector_scopes(job.model, wrapped=bool(job.nms))
        report = quantize_onnx(float_tmp, tmp, job.calibration, scopes, options)
        proto = onnx.load(tmp)
        meta = dict(job.metadata)
        calib = job.calibration.describe()
        if report.images_used is not None:
            calib["images"] = report.images_used
        meta["quantization"] = {**report.as_metadata(), "calibration": calib}
        set_metadata(proto, meta)
        onnx.save(proto, tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
        float_tmp.unlink(missing_ok=True)
    return path
