"""CoreML export (``.mlpackage``, ML program) through coremltools from a traced module.

Conversion works on Linux; running a CoreML model needs macOS, so efyolo has no CoreML runtime
backend. Fixed input shape only, raw predictions only (no NMS in the graph).
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from efyolo.export.formats import ExportFormat, ExportJob, register
from efyolo.export.metadata import encode
from efyolo.export.onnx import INPUT_NAME, OUTPUT_NAME, quiet_tracing
from efyolo.export.requires import require


def export_coreml(
    model: nn.Module,
    example: torch.Tensor,
    path: str | Path,
    metadata: Mapping[str, Any],
    half: bool = False,
) -> Path:
    """Write ``path`` (a ``.mlpackage`` folder, replaced if it exists).

    Args:
        model: fused, eval-mode detector on CPU, float32.
        example: the fixed input shape to convert for.
        metadata: stored as ``user_defined_metadata`` (JSON strings).
        half: float16 compute precision (weights and activations).
    """
    ct = require("coremltools", "CoreML export")
    register_missing_ops()
    path = Path(path)
    with torch.no_grad(), quiet_tracing():
        traced = torch.jit.trace(model.eval(), example, strict=False, check_trace=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # coremltools warns about untested torch versions
        mlmodel = ct.convert(
            traced,
            inputs=[ct.TensorType(name=INPUT_NAME, shape=tuple(example.shape))],
            outputs=[ct.TensorType(name=OUTPUT_NAME)],
            convert_to="mlprogram",
            compute_precision=ct.precision.FLOAT16 if half else ct.precision.FLOAT32,
        )
    mlmodel.user_defined_metadata.update(encode(metadata))
    mlmodel.short_description = f"efyolo {metadata.get('model', 'detector')}: [B, N, 5 + nc] predictions"
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as tmp:
        build = Path(tmp) / path.name
        mlmodel.save(str(build))
        if path.exists():
            shutil.rmtree(path)
        build.rename(path)
    return path


def register_missing_ops() -> None:
    """Teach coremltools (9.0, tested up to torch 2.7) the traced ops it lacks, once per process.

    * ``resolve_conj`` / ``resolve_neg``: no-ops on real tensors (torch records them when a tensor
      is read as Python numbers, e.g. ``stride.tolist()``);
    * ``lerp(x, y, w) = x + w * (y - x)``: the fused EfficientFormer pooling mixer;
    * ``Int`` of a one-element constant (EfficientFormer's ``H // 32`` when reshaping tokens).
    """
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY as registry

    def identity(context: Any, node: Any) -> None:
        context.add(context[node.inputs[0]], node.name)

    def lerp(context: Any, node: Any) -> None:
        x, y, w = (context[i] for i in node.inputs[:3])
        context.add(mb.add(x=x, y=mb.mul(x=w, y=mb.sub(x=y, y=x)), name=node.name))

    for name, fn in (("resolve_conj", identity), ("resolve_neg", identity), ("lerp", lerp)):
        if registry.get_func(name) is None:
            registry.set_func_by_name(fn, name)

    to_int = registry.get_func("int")
    if not getattr(to_int, "efyolo_scalar", False):

        def int_of_scalar(context: Any, node: Any) -> None:
            # aten::Int of a traced size expression (H // 32) arrives as a one-element array
            val = context[node.inputs[0]].val
            if val is not None and np.ndim(val) > 0 and np.size(val) == 1:
                context.add(mb.const(val=np.int32(np.asarray(val).reshape(())), name=node.name))
            else:
                to_int(context, node)

        int_of_scalar.efyolo_scalar = True  # type: ignore[attr-defined]
        registry.set_func_by_name(int_of_scalar, "int")


def write(job: ExportJob) -> Path:
    """The registered writer."""
    return export_coreml(job.model, job.example, job.path, job.metadata, job.half)


FORMAT = register(
    ExportFormat("coreml", ".mlpackage", write, half="cpu", packages=("coremltools",), runs_here=False)
)
