"""INT8 OpenVINO IR: NNCF post-training quantization of the converted model.

NNCF (OpenVINO's own quantizer) inserts FakeQuantize nodes from activation statistics of the
calibration batches; the CPU plugin then runs the quantized convolutions and matrix products in
INT8. The same float scopes as the INT8 ONNX path (:func:`efyolo.export.onnx_int8.float_nodes`)
stay float: the Detect head's decoding (and NMS), and optionally the head's final convolutions and
the attention softmaxes. OpenVINO keeps the ONNX node names as friendly names, so the scopes are
matched as name patterns. ``preset`` ``mixed`` quantizes activations asymmetrically (their ranges
are one-sided after SiLU/GELU) and weights symmetrically; attention models get NNCF's transformer
model type, which also keeps its softmax-adjacent patterns sane.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Mapping

from efyolo.errors import EfyoloError
from efyolo.export.onnx_int8 import Int8Options, Scopes, quiet_logging
from efyolo.export.requires import require


def ignored_patterns(scopes: Scopes, options: Int8Options) -> list[str]:
    """Regular expressions over OpenVINO friendly names for what stays float (see the module docstring)."""
    head = re.escape(scopes.head)
    patterns = [f"^(?!{re.escape(scopes.layers)}).*", f"^{head}(?!m\\.\\d+/Conv).*"]
    if "head" in options.float_groups("openvino"):
        patterns.append(f"^{head}m\\.\\d+/Conv.*")
    if "softmax" in options.float_groups("openvino"):
        patterns.append(".*/Softmax.*")
    return patterns


@contextmanager
def quiet_nncf(nncf: Any) -> Iterator[None]:
    """NNCF's INFO lines and progress bars (printed to stdout/stderr) off while it runs."""
    logger = logging.getLogger("nncf")
    before = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.setLevel(before)


def has_attention(ov_model: Any) -> bool:
    return any(op.get_type_name() == "Softmax" or op.get_type_name() == "SoftMax" for op in ov_model.get_ops())


def quantize_openvino(
    ov_model: Any, calibration: Iterable[Any], scopes: Scopes, options: Mapping[str, Any] | None = None
) -> tuple[Any, dict[str, Any]]:
    """Quantize a converted OpenVINO model with NNCF; returns ``(model, report for the metadata)``.

    Args:
        calibration: ``float32 [B, 3, H, W]`` batches at the model's input shape.
        scopes: node-name prefixes of the layers and the head.
        options: :class:`efyolo.export.onnx_int8.Int8Options` fields; ``method`` and ``reduce_range``
            are ONNX Runtime notions and are ignored here (NNCF calibrates min/max per its preset).

    Raises:
        EfyoloError: NNCF failed (its message, one line).
    """
    nncf = require("nncf", "INT8 OpenVINO export")
    opts = Int8Options.from_mapping(options)
    batches = list(calibration)
    ignored = nncf.IgnoredScope(patterns=ignored_patterns(scopes, opts), validate=False)
    model_type = nncf.ModelType.TRANSFORMER if has_attention(ov_model) else None
    try:
        with quiet_logging(), quiet_nncf(nncf):
            quantized = nncf.quantize(
                ov_model, nncf.Dataset(batches), preset=nncf.QuantizationPreset.MIXED, subset_size=len(batches),
                model_type=model_type, ignored_scope=ignored,
            )
    except Exception as err:  # NNCF raises its own and OpenVINO's exception types
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise EfyoloError(f"NNCF INT8 quantization failed: {first[:300]}") from None
    fq = sum(op.get_type_name() == "FakeQuantize" for op in quantized.get_ops())
    if fq == 0:
        raise EfyoloError("NNCF INT8 quantization inserted no quantizers (nothing would run in INT8)")
    report = {"tool": "nncf", "preset": "mixed", "model_type": "transformer" if model_type else "default",
              "keep_float": list(opts.float_groups("openvino")), "fake_quantize_nodes": fq}
    return quantized, report
