"""ONNX export: ``torch.onnx.export`` (TorchScript-based tracer), optional onnxslim, metadata, checker.

The tracer (``dynamo=False``) is used because ``torch.export`` cannot capture the detector
(``DetectionModel.max_stride`` reads the stride tensor as Python numbers, a data-dependent guard)
and because the tracer's constant folding turns everything that depends only on weights and the
fixed input size (the EfficientFormer attention bias, the head's grids) into initializers.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from efyolo.errors import EfyoloError
from efyolo.utils.files import temp_file_beside
from efyolo.export.metadata import encode
from efyolo.export.nms_graph import EndToEnd
from efyolo.export.formats import ExportFormat, ExportJob, register
from efyolo.export.requires import require

MIN_OPSET = 17
DEFAULT_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "images", "output0"


def max_opset() -> int:
    """The newest opset torch's tracing exporter writes (20 in torch 2.4-2.14)."""
    try:
        from torch.onnx import _constants

        return int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20))
    except ImportError:
        return 20


def check_opset(opset: int | None) -> int:
    """``None`` -> :data:`DEFAULT_OPSET`; otherwise the opset if this torch can write it.

    Raises:
        EfyoloError: below :data:`MIN_OPSET` or above :func:`max_opset`.
    """
    if opset is None:
        return DEFAULT_OPSET
    hi = max_opset()
    if not MIN_OPSET <= int(opset) <= hi:
        raise EfyoloError(f"--opset {opset}: supported opsets are {MIN_OPSET} to {hi}")
    return int(opset)


@contextmanager
def quiet_tracing() -> Iterator[None]:
    """Silence the tracer's expected warnings (Python ints taken from shapes, exporter deprecation)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*The feature will be removed.*")
        yield


def export_onnx(
    model: nn.Module,
    example: torch.Tensor,
    path: str | Path,
    metadata: Mapping[str, Any],
    opset: int | None = None,
    dynamic: bool = False,
    simplify: bool = False,
    nms: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` (fused, eval mode) as an ONNX file with the metadata embedded.

    Args:
        model: ``[B, 3, H, W] -> [B, N, 5 + nc]`` detector.
        example: the input to trace with; its shape is the fixed shape unless ``dynamic``.
        path: output file (written through a temporary file in the same folder).
        metadata: see :mod:`efyolo.export.metadata`; stored in ``metadata_props``.
        opset: ONNX opset (default :data:`DEFAULT_OPSET`).
        dynamic: free batch, height and width.
        simplify: run onnxslim over the graph.
        nms: ``{"conf", "iou", "max_det", "agnostic"}`` to end the graph with NMS
            (output ``[B, max_det, 6]``), or ``None`` for raw predictions.

    Returns:
        ``path``.
    """
    onnx = require("onnx", "ONNX export")
    opset = check_opset(opset)
    path = Path(path)
    net = (EndToEnd(model, onnx=True, **nms) if nms else model).eval()
    axes = None
    if dynamic:
        out_axes = {0: "batch"} if nms else {0: "batch", 1: "anchors"}
        axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}, OUTPUT_NAME: out_axes}
    fd, tmp = temp_file_beside(path)  # the umask's mode, not mkstemp's 0600
    os.close(fd)
    try:
        with torch.no_grad(), quiet_tracing():
            torch.onnx.export(
                net, (example,), tmp, dynamo=False, opset_version=opset, do_constant_folding=True,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=axes,
            )
        proto = onnx.load(tmp)
        if simplify:
            proto = simplify_onnx(proto)
        set_metadata(proto, metadata)
        onnx.checker.check_model(proto)
        onnx.save(proto, tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def simplify_onnx(proto: Any) -> Any:
    """Constant-fold and clean the graph with onnxslim (keeps the model's inputs and outputs)."""
    onnxslim = require("onnxslim", "ONNX --simplify")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return onnxslim.slim(proto)


def set_metadata(proto: Any, metadata: Mapping[str, Any]) -> None:
    """Replace the model's ``metadata_props`` by ``metadata`` (values JSON-encoded)."""
    del proto.metadata_props[:]
    for key, value in encode(metadata).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "efyolo"
    proto.producer_version = str(metadata.get("efyolo", ""))


def write(job: ExportJob) -> Path:
    """The registered writer: float ONNX, or INT8 (QDQ) when the job carries calibration images."""
    if job.calibration is not None:
        from efyolo.export.onnx_int8 import write_int8_onnx

        return write_int8_onnx(job, export_onnx, set_metadata)
    return export_onnx(job.model, job.example, job.path, job.metadata, job.opset, job.dynamic, job.simplify, job.nms)


FORMAT = register(
    ExportFormat("onnx", ".onnx", write, dynamic=True, nms=True, half="cuda", int8=True, packages=("onnx",))
)
