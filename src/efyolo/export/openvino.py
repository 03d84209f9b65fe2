"""OpenVINO IR export: ONNX first (same graph, NMS included), then ``openvino.convert_model``.

Layout of ``<stem>_openvino_model/``: ``<stem>.xml`` + ``<stem>.bin`` (the IR; metadata in its
``rt_info`` under ``efyolo``) and ``metadata.yaml`` (the same metadata, for people and tools).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
import yaml
from torch import nn

from efyolo.errors import EfyoloError
from efyolo.export.formats import ExportFormat, ExportJob, register
from efyolo.export.metadata import decode, encode
from efyolo.export.onnx import export_onnx
from efyolo.export.requires import require

RT_INFO_KEY = "efyolo"
SIDECAR = "metadata.yaml"


def export_openvino(
    model: nn.Module,
    example: torch.Tensor,
    out_dir: str | Path,
    metadata: Mapping[str, Any],
    opset: int | None = None,
    dynamic: bool = False,
    simplify: bool = False,
    nms: Mapping[str, Any] | None = None,
    half: bool = False,
    calibration: Any = None,
    int8_options: Mapping[str, Any] | None = None,
) -> Path:
    """Write the IR folder ``out_dir`` (replacing an earlier export there).

    Args:
        half: store the weights in float16 (the CPU plugin computes in float32 either way).
        calibration: letterboxed ``float32 [B, 3, H, W]`` batches: quantize to INT8 with NNCF
            (:mod:`efyolo.export.openvino_int8`) and record how in the metadata.
        int8_options: options of :func:`efyolo.export.openvino_int8.quantize_openvino`.
        other arguments: as :func:`efyolo.export.onnx.export_onnx`.

    Returns:
        ``out_dir``.
    """
    ov = require("openvino", "OpenVINO export")
    out_dir = Path(out_dir)
    stem = out_dir.name.removesuffix("_openvino_model") or "model"
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.", dir=out_dir.parent) as tmp:
        onnx_path = export_onnx(model, example, Path(tmp) / f"{stem}.onnx", metadata, opset, dynamic, simplify, nms)
        ov_model = ov.convert_model(str(onnx_path))
        if calibration is not None:
            from efyolo.export.onnx_int8 import detector_scopes
            from efyolo.export.openvino_int8 import quantize_openvino

            scopes = detector_scopes(model, wrapped=bool(nms))
            ov_model, report = quantize_openvino(ov_model, calibration, scopes, int8_options)
            metadata = {**metadata, "quantization": {**report, "calibration": calibration.describe()}}
        for key, value in encode(metadata).items():
            ov_model.set_rt_info(value, [RT_INFO_KEY, key])
        build = Path(tmp) / "ir"
        build.mkdir()
        ov.save_model(ov_model, str(build / f"{stem}.xml"), compress_to_fp16=half)
        (build / SIDECAR).write_text(yaml.safe_dump(dict(metadata), sort_keys=False))
        if out_dir.exists():
            if not list(out_dir.glob("*.xml")):
                raise EfyoloError(f"{out_dir} exists and is not an OpenVINO model folder; move it away first")
            shutil.rmtree(out_dir)
        build.rename(out_dir)
    return out_dir


def find_xml(path: str | Path) -> Path:
    """The IR ``.xml`` of an OpenVINO model given as the file or its folder.

    Raises:
        EfyoloError: a folder without exactly one ``.xml``.
    """
    path = Path(path)
    if path.is_file():
        return path
    xmls = sorted(path.glob("*.xml"))
    if len(xmls) != 1:
        raise EfyoloError(f"{path}: expected one OpenVINO .xml in the folder, found {len(xmls)}")
    return xmls[0]


def read_metadata(ov_model: Any, xml: Path) -> dict[str, Any]:
    """The efyolo metadata of a read IR: its ``rt_info``, else the ``metadata.yaml`` beside it."""
    rt = ov_model.get_rt_info()
    if RT_INFO_KEY in rt:
        section = ov_model.get_rt_info([RT_INFO_KEY]).astype(dict)
        return decode({str(k): v.astype(str) for k, v in section.items()}, str(xml))  # values are OVAny
    sidecar = xml.parent / SIDECAR
    if sidecar.is_file():
        from efyolo.export.metadata import validate

        return validate(yaml.safe_load(sidecar.read_text()), str(sidecar))
    return decode({}, str(xml))  # raises: no metadata


def write(job: ExportJob) -> Path:
    """The registered writer (INT8 through NNCF when the job carries calibration images)."""
    return export_openvino(
        job.model, job.example, job.path, job.metadata, job.opset, job.dynamic, job.simplify, job.nms, job.half,
        job.calibration, job.int8_options,
    )


FORMAT = register(
    ExportFormat(
        "openvino", "_openvino_model", write, dynamic=True, nms=True, half="cpu", int8=True,
        packages=("openvino", "onnx"),
    )
)
