"""LiteRT (TFLite) export: ``litert_torch.convert`` straight from PyTorch, ai-edge-quantizer for
float16 weights or full-integer INT8, and the metadata as a ``metadata`` entry of the flatbuffer.

Why litert-torch: it lowers the model through ``torch.export`` and StableHLO to a ``.tflite``
without TensorFlow. The other route (ONNX -> onnx2tf -> TensorFlow's converter) needs TensorFlow,
whose pins (numpy 1.26, an old onnxruntime) conflict with the rest of efyolo's extras.

The file keeps the PyTorch model's interface, whatever the precision: input ``float32 [B, 3, H, W]``
(NCHW, in ``[0, 1]``), output ``float32 [B, N, 5 + nc]``. The converter transposes to NHWC inside
the graph, and the INT8 model quantizes its input and dequantizes its output itself.

* ``half``: ai-edge-quantizer's ``float_casting`` weight-only recipe stores the weights of
  CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED (/ TRANSPOSE_CONV) in float16, each behind a
  DEQUANTIZE op; compute stays float32 (XNNPACK folds the DEQUANTIZE into its packed weights).
  Other constants (EfficientFormer's attention bias, the head's grids) stay float32.
* ``calibration``: ai-edge-quantizer's ``static_wi8_ai8`` recipe (int8 symmetric per-channel
  weights, int8 asymmetric per-tensor activations, ranges from running the float model on the
  calibration images), with the graph's input and output left float: the model starts with a
  QUANTIZE and ends with a DEQUANTIZE. Ops the recipe has no int8 kernel for (EXP, REDUCE_MAX in
  EfficientFormer V2's attention) run in float32 between DEQUANTIZE/QUANTIZE pairs.

Metadata: one TFLite ``metadata`` entry named :data:`METADATA_NAME` whose buffer holds the
metadata dict as JSON (UTF-8). The flatbuffer is rewritten with the schema's object API shipped in
ai-edge-litert; :func:`read_metadata` reads it back with the standard library only, so the
runtime works with any TFLite interpreter.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from efyolo.errors import EfyoloError
from efyolo.export.formats import ExportFormat, ExportJob, register
from efyolo.export.metadata import decode
from efyolo.export.requires import require
from efyolo.utils.capture import captured_output
from efyolo.utils.files import temp_file_beside

METADATA_NAME = "efyolo"
FILE_IDENTIFIER = b"TFL3"  # bytes 4..8 of every TFLite flatbuffer


def failure_message(what: str, err: BaseException, output: str = "") -> str:
    """One line for a failed conversion step: the op it names (``aten.*`` / ``tfl.*`` /
    ``stablehlo.*``, if any) and the meaningful line of the exception, else of the output."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    said = [ln for ln in output.splitlines() if "error:" in ln]
    line = next((ln for ln in lines if "error:" in ln), None) or (lines[0] if lines else None)
    if line is None or (said and "error:" not in line):
        line = said[-1].strip() if said else (line or type(err).__name__)
    line = re.sub(r"^.*?error: ", "", line)  # drop the MLIR source location
    op = re.search(r"\b((?:aten|tfl|stablehlo|prims)\.[A-Za-z0-9_.]*[A-Za-z0-9_])", line)
    where = f" for {op.group(1)}" if op else ""
    return f"{what} failed{where}: {line[:300]}"


class _SquareAsProduct(TorchFunctionMode):
    """``x ** 2`` -> ``x * x`` while tracing.

    TFLite's POW broadcasts up to 4-D only, and the head squares ``[B, na, ny, nx, 2]`` box sizes
    (5-D), which the converter refuses ("failed to legalize operation 'tfl.pow'"). The product is
    the same float32 value (torch computes ``pow(x, 2)`` as ``x * x``).
    """

    POW = (torch.pow, torch.Tensor.pow, torch.Tensor.__pow__)

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in self.POW and len(args) == 2 and not kwargs and isinstance(args[0], torch.Tensor):
            exponent = args[1]
            if not isinstance(exponent, torch.Tensor) and exponent == 2:
                return args[0] * args[0]
        return func(*args, **kwargs)


class _ForConversion(nn.Module):
    """The detector as the converter traces it: same maths, ops that TFLite takes."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with _SquareAsProduct():
            return self.model(x)


def convert_flatbuffer(model: nn.Module, example: torch.Tensor) -> bytes:
    """``model`` -> float32 ``.tflite`` bytes, input ``example.shape`` NCHW, converter output silenced.

    Raises:
        EfyoloError: one line naming the op the converter stopped at.
    """
    with captured_output() as out:
        litert_torch = require("litert_torch", "LiteRT export", "litert")  # its import logs too
        try:
            with torch.no_grad():
                edge = litert_torch.convert(_ForConversion(model).eval(), (example.float(),))
            return bytes(edge.model_content())
        except Exception as err:  # noqa: BLE001  (torch.export, lowering and MLIR raise many types)
            failure = err
    raise EfyoloError(failure_message("litert conversion", failure, out.text)) from None


def quantize_float16(content: bytes) -> bytes:
    """Weight-only float16: conv / fully-connected weights stored as float16 (see the module docstring)."""
    with captured_output() as out:
        aeq = require("ai_edge_quantizer", "LiteRT --half", "litert")
        from ai_edge_quantizer import qtyping
        from ai_edge_quantizer.algorithm_manager import AlgorithmName

        try:
            quantizer = aeq.Quantizer(bytearray(content))
            quantizer.add_weight_only_config(
                ".*", qtyping.TFLOperationName.ALL_SUPPORTED, 16, algorithm_key=AlgorithmName.FLOAT_CASTING
            )
            return bytes(quantizer.quantize(enable_progress_bar=False, enable_progress_report=False).quantized_model)
        except Exception as err:  # noqa: BLE001  (the quantizer raises ValueError, RuntimeError, ...)
            failure = err
    raise EfyoloError(failure_message("litert float16 quantization", failure, out.text)) from None


def calibration_inputs(calibration: Iterable[np.ndarray], shape: tuple[int, ...]) -> list[np.ndarray]:
    """The calibration images as model inputs of ``shape`` ``[b, 3, H, W]`` (batches regrouped by
    ``b``; an incomplete last group is dropped).

    Raises:
        EfyoloError: no images, or images of another size.
    """
    images = []
    for sample in calibration:
        arr = np.asarray(sample, dtype=np.float32)
        arr = arr[None] if arr.ndim == 3 else arr
        if arr.ndim != 4 or tuple(arr.shape[1:]) != tuple(shape[1:]):
            raise EfyoloError(
                f"LiteRT int8 calibration images must be float32 [B, {', '.join(map(str, shape[1:]))}] "
                f"(the export shape), got {list(arr.shape)}"
            )
        images.extend(arr)
    b = shape[0]
    inputs = [np.ascontiguousarray(np.stack(images[i : i + b])) for i in range(0, len(images) - b + 1, b)]
    if not inputs:
        raise EfyoloError(f"LiteRT int8 needs at least {b} calibration image(s), got {len(images)}")
    return inputs


COMPUTE_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL", "TRANSPOSE_CONV")


def float_tail_regex(content: bytes) -> str:
    """A regex (ai-edge-quantizer matches it against each op's "scope", its output tensor names
    joined by ``;`` plus a final ``;``) for the ops downstream of the last convolutions: the head's
    box decoding (sigmoid, grid, anchors, concatenation of ``[xywh, obj, cls]``).

    They must stay float32: their tensors put pixel boxes (up to ~1500 px at 640) next to
    probabilities in ``[0, 1]``, and one per-tensor int8 scale for both rounds every probability
    to 0 (measured: class scores constant, box errors of hundreds of pixels). Found from the graph,
    not from names: an op is in the tail when no convolution / matmul depends on its output.
    """
    from ai_edge_litert import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = schema.Model.GetRootAs(content, 0)
    codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]
    graph = model.Subgraphs(0)
    ops = []  # (op type, input tensor ids, output tensor ids)
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = codes[op.OpcodeIndex()]
        kind = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "")
        ops.append((kind, [int(t) for t in op.InputsAsNumpy() if t >= 0], [int(t) for t in op.OutputsAsNumpy()]))
    producer = {t: i for i, (_, _, outs) in enumerate(ops) for t in outs}
    feeds_compute = [False] * len(ops)  # op i's output reaches a convolution / matmul
    stack = [producer[t] for kind, ins, _ in ops if kind in COMPUTE_OPS for t in ins if t in producer]
    while stack:
        i = stack.pop()
        if not feeds_compute[i]:
            feeds_compute[i] = True
            stack.extend(producer[t] for t in ops[i][1] if t in producer)
    scopes = [
        "".join(graph.Tensors(t).Name().decode() + ";" for t in outs)
        for i, (kind, _, outs) in enumerate(ops)
        if kind not in COMPUTE_OPS and not feeds_compute[i]
    ]
    return "^(?:" + "|".join(re.escape(s) for s in scopes) + ")$" if scopes else "(?!)"


def quantize_int8(content: bytes, inputs: list[np.ndarray]) -> bytes:
    """Full-integer INT8 with float32 input and output (see the module docstring), ranges calibrated
    on ``inputs`` (each the model's input shape)."""
    with captured_output() as out:
        aeq = require("ai_edge_quantizer", "LiteRT int8", "litert")
        from ai_edge_litert.interpreter import Interpreter
        from ai_edge_quantizer import qtyping, recipe
        from ai_edge_quantizer.algorithm_manager import AlgorithmName

        try:
            signatures = Interpreter(model_content=content).get_signature_list()  # {"serving_default": {...}}
            (key, sig), = signatures.items()
            (input_name,) = sig["inputs"]
            quantizer = aeq.Quantizer(bytearray(content), recipe.static_wi8_ai8())
            for op in (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT):  # keep float I/O
                quantizer.update_quantization_recipe(".*", op, algorithm_key=AlgorithmName.NO_QUANTIZE)
            quantizer.update_quantization_recipe(  # the box decoding stays float32
                float_tail_regex(content), qtyping.TFLOperationName.ALL_SUPPORTED,
                algorithm_key=AlgorithmName.NO_QUANTIZE,
            )
            ranges = quantizer.calibrate(
                {key: [{input_name: x} for x in inputs]}, num_threads=torch.get_num_threads()
            )
            result = quantizer.quantize(ranges, enable_progress_bar=False, enable_progress_report=False)
            return bytes(result.quantized_model)
        except Exception as err:  # noqa: BLE001  (the quantizer and the calibration interpreter)
            failure = err
    raise EfyoloError(failure_message("litert int8 quantization", failure, out.text)) from None


def embed_metadata(content: bytes, metadata: Mapping[str, Any]) -> bytes:
    """The flatbuffer with ``metadata`` as JSON in the entry :data:`METADATA_NAME` (replacing an
    earlier one). Repacking keeps every buffer 4-byte aligned, as the converter writes them."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    name = METADATA_NAME.encode()
    entries = [m for m in (model.metadata or []) if m.name not in (name, METADATA_NAME)]
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(dict(metadata)).encode(), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(model.buffers) - 1
    model.metadata = entries + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def export_litert(
    model: nn.Module,
    example: torch.Tensor,
    path: str | Path,
    metadata: Mapping[str, Any],
    half: bool = False,
    calibration: Iterable[np.ndarray] | None = None,
) -> Path:
    """Write ``model`` as a ``.tflite`` file with the metadata embedded.

    Args:
        model: fused, eval-mode detector on CPU, float32, attention bias constant
            (:func:`efyolo.export.fold.materialize_attention_bias`): ``[B, 3, H, W] -> [B, N, 5 + nc]``.
        example: float32 input at the export shape (its shape is the file's fixed input shape).
        path: output file (written through a temporary file in the same folder).
        metadata: see :mod:`efyolo.export.metadata`.
        half: float16 weights, float32 compute.
        calibration: float32 ``[B, 3, H, W]`` letterboxed images: full-integer INT8 calibrated on them.

    Returns:
        ``path``.

    Raises:
        EfyoloError: a missing package, a conversion or quantization failure (one line), or
            calibration images of the wrong shape.
    """
    path = Path(path)
    if half and calibration is not None:
        raise EfyoloError("LiteRT export: choose float16 (--half) or int8 calibration, not both")
    inputs = calibration_inputs(calibration, tuple(example.shape)) if calibration is not None else None
    content = convert_flatbuffer(model, example)
    if inputs is not None:
        content = quantize_int8(content, inputs)
    elif half:
        content = quantize_float16(content)
    content = embed_metadata(content, metadata)
    fd, tmp = temp_file_beside(path)  # the umask's mode, not mkstemp's 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


# -- reading back (standard library only: any TFLite interpreter can run the file) -------------------


def _field(buf: Any, table: int, index: int) -> int | None:
    """Absolute position of field ``index`` of the flatbuffer table at ``table``, or ``None`` if unset."""
    vtable = table - struct.unpack_from("<i", buf, table)[0]
    vtable_size = struct.unpack_from("<H", buf, vtable)[0]
    slot = 4 + 2 * index
    rel = struct.unpack_from("<H", buf, vtable + slot)[0] if slot < vtable_size else 0
    return table + rel if rel else None


def _deref(buf: Any, pos: int) -> int:
    return pos + struct.unpack_from("<I", buf, pos)[0]


def _vector(buf: Any, table: int, index: int) -> tuple[int, int]:
    """``(first element position, length)`` of a vector field (``(0, 0)`` if unset)."""
    pos = _field(buf, table, index)
    return (0, 0) if pos is None else _vector_at(buf, _deref(buf, pos))


def _vector_at(buf: Any, vec: int) -> tuple[int, int]:
    return vec + 4, struct.unpack_from("<I", buf, vec)[0]


def metadata_entries(buf: Any) -> dict[str, bytes]:
    """``{name: bytes}`` of a TFLite flatbuffer's ``metadata`` (schema: ``Model.buffers`` is field 4,
    ``Model.metadata`` field 6; ``Metadata {name, buffer}``; ``Buffer {data, offset, size}``, where
    a non-zero ``offset`` places the data outside the flatbuffer, counted from the file start).

    Raises:
        EfyoloError: not a TFLite flatbuffer (message without the file; callers add it).
        struct.error: a truncated or corrupt flatbuffer.
    """
    if len(buf) < 8 or bytes(buf[4:8]) != FILE_IDENTIFIER:
        raise EfyoloError(f"no {FILE_IDENTIFIER.decode()} file identifier")
    model = _deref(buf, 0)
    buffers, n_buffers = _vector(buf, model, 4)
    first, count = _vector(buf, model, 6)
    entries = {}
    for i in range(count):
        meta = _deref(buf, first + 4 * i)
        name_pos = _field(buf, meta, 0)
        index_pos = _field(buf, meta, 1)
        if name_pos is None:
            continue
        start, length = _vector_at(buf, _deref(buf, name_pos))
        name = bytes(buf[start : start + length]).decode("utf-8", errors="replace")
        index = struct.unpack_from("<I", buf, index_pos)[0] if index_pos is not None else 0
        if index >= n_buffers:
            raise struct.error(f"metadata {name!r} names buffer {index} of {n_buffers}")
        buffer = _deref(buf, buffers + 4 * index)
        data, size = _vector(buf, buffer, 0)
        offset_pos = _field(buf, buffer, 1)
        offset = struct.unpack_from("<Q", buf, offset_pos)[0] if offset_pos is not None else 0
        if offset > 1:  # data stored after the flatbuffer
            size_pos = _field(buf, buffer, 2)
            data, size = offset, struct.unpack_from("<Q", buf, size_pos)[0] if size_pos is not None else 0
        if data + size > len(buf):
            raise struct.error(f"metadata {name!r} runs past the end of the file")
        entries[name] = bytes(buf[data : data + size])
    return entries


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The efyolo metadata embedded in the ``.tflite`` file at ``path``.

    Raises:
        EfyoloError: naming the file: unreadable, not TFLite, corrupt, or without efyolo metadata.
    """
    import mmap

    path = Path(path)
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            entries = metadata_entries(buf)
    except (OSError, ValueError, struct.error, EfyoloError) as err:  # mmap of an empty file: ValueError
        raise EfyoloError(f"{path} is not a readable LiteRT (TFLite) model ({str(err).strip()[:200]})") from None
    raw = entries.get(METADATA_NAME)
    if raw is None:
        return decode({}, str(path))  # raises: no metadata
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise EfyoloError(f"{path}: efyolo metadata is not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise EfyoloError(f"{path}: efyolo metadata is not a JSON object")
    return decode({str(k): json.dumps(v) for k, v in meta.items()}, str(path))


def write(job: ExportJob) -> Path:
    """The registered writer (float32, ``--half`` float16 weights, ``--int8`` full-integer)."""
    return export_litert(job.model, job.example, job.path, job.metadata, job.half, job.calibration)


FORMAT = register(
    ExportFormat("litert", ".tflite", write, aliases=("tflite",), half="cpu", int8=True,
                 packages=("litert_torch", "ai_edge_litert"), extra="litert")
)
