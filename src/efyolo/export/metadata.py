"""What every exported model carries so that a runtime needs nothing else.

Fields (one flat dict of JSON values)::

    format          "efyolo-export"
    version         METADATA_VERSION (readers refuse newer versions)
    export_format   "onnx" | "torchscript" | "openvino" | "coreml" | "litert" | "ncnn"
    names           class names, list[str]
    stride          largest stride (input sides must be multiples of it), int
    imgsz           [h, w] export / default inference size
    batch           batch size of the export (the fixed batch unless ``dynamic``)
    dynamic         whether batch and image size are free
    half            float16 weights and inputs
    precision       "fp32" | "fp16" | "int8" (files written before this key: fp32 or fp16 by ``half``)
    quantization    (INT8 only) how it was quantized: method, per_channel, what stayed float,
                    the calibration set (data, split, images)
    nms             end-to-end output ``[B, max_det, 6]`` (x1, y1, x2, y2, score, class)
                    instead of raw predictions ``[B, N, 5 + nc]``
    nms_conf, nms_iou, max_det   the NMS settings baked into the graph (when ``nms``)
    model           model name from the checkpoint's config (informational)
    efyolo          efyolo version that wrote the file

Each format stores the dict its own way (ONNX ``metadata_props``, TorchScript ``_extra_files``,
OpenVINO ``rt_info`` plus a ``metadata.yaml`` next to the IR, CoreML ``user_defined_metadata``,
LiteRT inside the ``.tflite`` file, ncnn a ``metadata.yaml`` in the model folder):
one string per key holding the JSON of the value, read back by :func:`decode`.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from efyolo.errors import EfyoloError

FORMAT = "efyolo-export"
METADATA_VERSION = 1
REQUIRED = ("names", "stride", "imgsz")


def build_metadata(
    export_format: str,
    names: list[str],
    stride: int,
    imgsz: tuple[int, int],
    batch: int,
    dynamic: bool,
    half: bool,
    nms: Mapping[str, Any] | None,
    model_name: str | None = None,
    int8: bool = False,
) -> dict[str, Any]:
    """The metadata dict of one export (see the module docstring for the fields).

    Args:
        nms: ``{"conf": float, "iou": float, "max_det": int}`` when NMS is in the graph, else ``None``.
    """
    from efyolo import __version__

    meta: dict[str, Any] = {
        "format": FORMAT,
        "version": METADATA_VERSION,
        "export_format": export_format,
        "names": [str(n) for n in names],
        "stride": int(stride),
        "imgsz": [int(imgsz[0]), int(imgsz[1])],
        "batch": int(batch),
        "dynamic": bool(dynamic),
        "half": bool(half),
        "precision": "int8" if int8 else "fp16" if half else "fp32",
        "nms": nms is not None,
    }
    if nms is not None:
        meta.update(nms_conf=float(nms["conf"]), nms_iou=float(nms["iou"]), max_det=int(nms["max_det"]))
    if model_name:
        meta["model"] = str(model_name)
    meta["efyolo"] = __version__
    return meta


def precision(meta: Mapping[str, Any]) -> str:
    """``"fp32"``, ``"fp16"`` or ``"int8"`` of a read metadata dict (older files have no ``precision`` key)."""
    return str(meta.get("precision") or ("fp16" if meta.get("half") else "fp32"))


def encode(meta: Mapping[str, Any]) -> dict[str, str]:
    """``{key: value}`` -> ``{key: json string}`` (what string-only metadata stores hold)."""
    return {k: json.dumps(v) for k, v in meta.items()}


def decode(props: Mapping[str, str], source: str) -> dict[str, Any]:
    """Inverse of :func:`encode`, then :func:`validate`.

    Args:
        props: string metadata read from a file (keys other than ours are kept as text).
        source: the file, for messages.
    """
    if props.get("format") is None:
        raise EfyoloError(
            f"{source} carries no efyolo metadata (class names, stride); export it with `efyolo export`"
        )
    meta: dict[str, Any] = {}
    for key, text in props.items():
        try:
            meta[key] = json.loads(text)
        except (TypeError, ValueError):
            meta[key] = text  # foreign keys need not be JSON
    return validate(meta, source)


def validate(meta: Any, source: str) -> dict[str, Any]:
    """Check a metadata dict read back from ``source``; returns it.

    Raises:
        EfyoloError: not written by efyolo's exporter, written by a newer version, or a
            required field is missing or malformed.
    """
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise EfyoloError(f"{source}: metadata 'format' is {found!r}, expected {FORMAT!r}")
    if not isinstance(meta.get("version"), int) or meta["version"] > METADATA_VERSION:
        raise EfyoloError(
            f"{source}: metadata version {meta.get('version')!r} is newer than this efyolo reads; upgrade efyolo"
        )
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise EfyoloError(f"{source}: metadata is missing key(s) {', '.join(missing)}")
    imgsz = meta["imgsz"]
    if (
        not isinstance(meta["names"], list)
        or not isinstance(meta["stride"], int)
        or not (isinstance(imgsz, list) and len(imgsz) == 2 and all(isinstance(v, int) for v in imgsz))
    ):
        raise EfyoloError(f"{source}: metadata 'names' must be a list, 'stride' an int and 'imgsz' [h, w]")
    return meta
